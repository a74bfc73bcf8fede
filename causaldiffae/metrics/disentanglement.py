"""DCI disentanglement, completeness and informativeness (Eastwood & Williams, 2018) of the latent code."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from causaldiffae.errors import DataError


def _regressor(method: str, alpha: float, n: int):
    """A scikit-learn linear regressor for one factor (intercept fitted; inputs already standardised)."""
    from sklearn.linear_model import Lasso, Ridge

    if method == "lasso":
        return Lasso(alpha=alpha, max_iter=10000)
    return Ridge(alpha=alpha * n)


def _entropy_rows(p: np.ndarray, base: int) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(p > 0, np.log(np.where(p > 0, p, 1.0)), 0.0)
    return -(p * logs).sum(axis=1) / math.log(base)


def dci(
    z: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    blocks: Sequence[slice | Sequence[int]] | None = None,
    method: str = "lasso",
    alpha: float = 0.01,
    train_fraction: float = 0.8,
    seed: int = 0,
    factor_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """DCI disentanglement, completeness and informativeness (Eastwood & Williams, 2018).

    For each factor ``k`` a linear regressor (scikit-learn) predicts the standardised factor from
    the standardised code ``z`` on a training split: ``method`` "lasso" minimises
    ``1/(2n) ||t - Z w - b||^2 + alpha ||w||_1``, "ridge" ``1/n ||t - Z w - b||^2 + alpha ||w||^2``
    (sklearn's Ridge with ``alpha * n``, so ``alpha`` means the same at any sample size);
    the importance ``R[i, k] = |w_ik|``. With ``blocks`` (e.g. the graph's latent blocks), the
    importances of each block's coordinates are summed, so the code units are blocks.

    * disentanglement: ``sum_i rho_i (1 - H_K(P_i.))`` with ``P_ik = R_ik / sum_k R_ik`` and weights
      ``rho_i = sum_k R_ik / sum R`` (units with zero importance carry no weight);
    * completeness: the mean over factors of ``1 - H_D(P_.k)``, ``P_ik = R_ik / sum_i R_ik``;
    * informativeness: the mean held-out R^2 of the regressors (``r2`` per factor); ``mae`` per
      factor is the held-out mean absolute error in the units of ``labels``.

    Entropies use log base K (factors) and D (code units). Rows with a missing label are left out
    of that factor's regression.

    Returns:
        ``{"disentanglement", "completeness", "informativeness", "r2", "mae", "importance",
        "units", "method", "alpha", "n_train", "n_test"}``.
    """
    Z = np.asarray(torch.as_tensor(z).detach().cpu().numpy(), dtype=np.float64)
    Y = np.asarray(torch.as_tensor(labels).detach().cpu().numpy(), dtype=np.float64)
    if Y.ndim == 1:
        Y = Y[:, None]
    if Z.ndim != 2 or Y.ndim != 2 or Z.shape[0] != Y.shape[0]:
        raise DataError(f"dci needs z (N, D) and labels (N, K) with the same N; got {Z.shape} and {Y.shape}")
    if method not in ("lasso", "ridge"):
        raise DataError(f"dci method must be 'lasso' or 'ridge', got {method!r}")
    N, D = Z.shape
    K = Y.shape[1]
    names = list(factor_names) if factor_names is not None else [str(k) for k in range(K)]
    rng = np.random.default_rng(seed)
    perm = rng.permutation(N)
    n_train = int(round(train_fraction * N))
    if n_train < 5 or N - n_train < 2:
        raise DataError(f"dci needs more examples: {N} give {n_train} for training and {N - n_train} for testing")
    tr, te = perm[:n_train], perm[n_train:]
    mu, sd = Z[tr].mean(axis=0), Z[tr].std(axis=0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    Zs = (Z - mu) / sd
    R = np.zeros((D, K))
    r2, mae = [], []
    for k in range(K):
        y = Y[:, k]
        trk, tek = tr[~np.isnan(y[tr])], te[~np.isnan(y[te])]
        if trk.size < 5 or tek.size < 2:
            r2.append(float("nan"))
            mae.append(float("nan"))
            continue
        ym, ys = y[trk].mean(), y[trk].std()
        ys = ys if ys > 1e-12 else 1.0
        t = (y[trk] - ym) / ys
        reg = _regressor(method, alpha, trk.size).fit(Zs[trk], t)
        R[:, k] = np.abs(reg.coef_)
        pred = reg.predict(Zs[tek]) * ys + ym
        sst = ((y[tek] - y[tek].mean()) ** 2).sum()
        r2.append(float(1 - ((y[tek] - pred) ** 2).sum() / sst) if sst > 0 else float("nan"))
        mae.append(float(np.abs(y[tek] - pred).mean()))
    if blocks is not None:
        R = np.stack([R[b].sum(axis=0) if isinstance(b, slice) else R[list(b)].sum(axis=0) for b in blocks])
    units = R.shape[0]
    total = R.sum()
    if total <= 0:
        dis = comp = float("nan")
    else:
        row = R.sum(axis=1)
        keep = row > 0
        if K > 1:
            P = R[keep] / row[keep, None]
            dis = float(((1 - _entropy_rows(P, K)) * (row[keep] / total)).sum())
        else:
            dis = float("nan")
        col = R.sum(axis=0)
        keepc = col > 0
        if units > 1:
            Q = (R[:, keepc] / col[keepc]).T
            comp = float(np.mean(1 - _entropy_rows(Q, units)))
        else:
            comp = float("nan")
    finite = [v for v in r2 if not math.isnan(v)]
    return {
        "disentanglement": dis, "completeness": comp, "informativeness": float(np.mean(finite)) if finite else float("nan"),
        "r2": dict(zip(names, r2)), "mae": dict(zip(names, mae)), "importance": R.tolist(),
        "units": "blocks" if blocks is not None else "dimensions", "method": method, "alpha": alpha,
        "n_train": int(tr.size), "n_test": int(te.size),
    }

