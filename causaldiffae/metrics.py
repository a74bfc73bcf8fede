"""Evaluation metrics for counterfactual image models (``docs/evaluation.md`` defines each one).

Plain functions over a trained :class:`~causaldiffae.model.CausalDiffAE`; images are float tensors
``(B, C, H, W)`` in [-1, 1], labels ``(B, n_nodes)`` in label units (node order, NaN = missing)::

    reconstruction(model, x)                        # MSE / PSNR / SSIM of DDIM invert + decode, per step count
    effectiveness(model, predictors, x, {"a": 0.5}) # MAE (normalised units) of predicted vs intended labels
    composition(model, x)                           # L1 (0-255) after 1 and 10 null interventions
    reversibility(model, x, {"a": 0.5})             # L1 (0-255) after do() and back, per cycle
    ground_truth_error(model, x, table, do, pendulum.true_counterfactual)
    dci(z, labels)                                  # Eastwood & Williams' disentanglement / completeness / informativeness
    evaluate(model, dataset, predictors)            # everything that applies, as one JSON-safe dict

Conventions: MSE and PSNR are computed on the [0, 1] scale, L1 and pixel MAE on the 0-255 scale
(no rounding to integers), SSIM with scikit-image (``data_range`` of the scale, ``channel_axis``
for the channels). Every function averages over the images; the per-image arrays come from
:func:`mse`, :func:`psnr`, :func:`ssim` and :func:`l1_255`.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from causaldiffae import counterfactual as cf
from causaldiffae.errors import DataError, InterventionError

METRICS = ("reconstruction", "effectiveness", "composition", "reversibility", "ground_truth", "dci")
INTENDED_SOURCES = ("auto", "simulator", "dowhy", "scm")


# ----------------------------------------------------------------------------------------------
# per-image distances
# ----------------------------------------------------------------------------------------------
def _unit(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """``(B, C, H, W)`` in [-1, 1] -> float64 ``(B, H, W, C)`` in [0, 1]."""
    t = torch.as_tensor(x).detach().float().cpu().clamp(-1, 1)
    return ((t.permute(0, 2, 3, 1).numpy().astype(np.float64)) + 1.0) / 2.0


def _check_pair(a, b) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise DataError(f"image batches differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.ndim != 4:
        raise DataError(f"images must be (B, C, H, W), got shape {tuple(a.shape)}")


def mse(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Per-image mean squared error on the [0, 1] scale, ``(B,)``."""
    _check_pair(a, b)
    return ((_unit(a) - _unit(b)) ** 2).mean(axis=(1, 2, 3))


def psnr(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Per-image PSNR in dB on the [0, 1] scale, ``10 log10(1 / MSE)``; ``inf`` for identical images."""
    m = mse(a, b)
    with np.errstate(divide="ignore"):
        return np.where(m > 0, 10.0 * np.log10(1.0 / np.maximum(m, 1e-300)), np.inf)


def _win_size(h: int, w: int) -> int:
    s = min(7, h, w)
    return s if s % 2 == 1 else s - 1


def _ssim_hwc(x: np.ndarray, y: np.ndarray, data_range: float) -> np.ndarray:
    from skimage.metrics import structural_similarity

    win = _win_size(x.shape[1], x.shape[2])
    if win < 3:
        raise DataError(f"SSIM needs images of at least 3 x 3 pixels, got {x.shape[1]} x {x.shape[2]}")
    return np.array([structural_similarity(x[i], y[i], channel_axis=-1, data_range=data_range, win_size=win)
                     for i in range(x.shape[0])])


def ssim(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Per-image SSIM (scikit-image, [0, 1] scale, its default uniform 7 x 7 window, or the largest odd one that fits), ``(B,)``."""
    _check_pair(a, b)
    return _ssim_hwc(_unit(a), _unit(b), 1.0)


def l1_255(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Per-image mean absolute difference on the 0-255 scale, ``(B,)``."""
    _check_pair(a, b)
    return (np.abs(_unit(a) - _unit(b)) * 255.0).mean(axis=(1, 2, 3))


def _mean(x) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(np.mean(x)) if x.size else float("nan")


# ----------------------------------------------------------------------------------------------
# reconstruction
# ----------------------------------------------------------------------------------------------
def reconstruction(model, images: torch.Tensor, steps: Sequence[int] = (10, 20, 50, 100), max_batch: int = 64,
                   progress: bool = False, refine: int = 0) -> pd.DataFrame:
    """Reconstruction quality of DDIM inversion followed by DDIM decoding, for each step count.

    Returns a DataFrame with one row per step count and the columns ``steps``, ``mse`` and ``psnr``
    ([0, 1] scale), ``ssim`` and ``l1_255`` (the mean over images of each per-image value).
    """
    from tqdm.auto import tqdm

    model.check_images(images)
    rows = []
    for s in tqdm(list(steps), desc="reconstruction", disable=not progress, leave=False):
        rec = cf.reconstruct(model, images, steps=int(s), max_batch=max_batch, refine=refine).cpu()
        x = images.cpu()
        rows.append({"steps": int(s), "mse": _mean(mse(rec, x)), "psnr": _mean(psnr(rec, x)),
                     "ssim": _mean(ssim(rec, x)), "l1_255": _mean(l1_255(rec, x))})
    return pd.DataFrame(rows, columns=["steps", "mse", "psnr", "ssim", "l1_255"])


# ----------------------------------------------------------------------------------------------
# interventions: helpers
# ----------------------------------------------------------------------------------------------
def _predict(predictors, images: torch.Tensor) -> torch.Tensor:
    fn = predictors.predict if hasattr(predictors, "predict") else predictors
    out = torch.as_tensor(fn(images)).detach().float().cpu()
    if out.ndim != 2 or out.shape[0] != images.shape[0]:
        raise DataError(f"the predictors returned shape {tuple(out.shape)} for {images.shape[0]} images; expected (B, n_nodes)")
    return out


def _do_for_numpy(do: Mapping[str, Any]) -> dict[str, Any]:
    """Tensors -> numpy arrays (simulators and DoWhy work in numpy); callables and numbers as they are."""
    return {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v) for k, v in do.items()}


def do_label(do: Mapping[str, Any]) -> str:
    """A short name for an intervention: ``do(a,b)``."""
    return f"do({','.join(do)})"


def node_groups(graph, do: Mapping[str, Any]) -> dict[str, str]:
    """Each node's role under ``do``: ``"intervened"``, ``"descendant"`` (of an intervened node) or ``"non_descendant"``."""
    for n in do:
        if n not in graph.nodes:
            raise InterventionError(f"unknown node {n!r} in do(); known nodes: {', '.join(graph.nodes)}")
    desc = {d for n in do for d in graph.descendants(n)}
    return {n: ("intervened" if n in do else "descendant" if n in desc else "non_descendant") for n in graph.nodes}


@torch.no_grad()
def scm_counterfactual_labels(model, images: torch.Tensor, do: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's own factual and counterfactual label values ``(B, n_nodes)`` (label units) under ``do``.

    Abduction of ``u`` and ``z`` only (the encoder), then the SCM's action; no diffusion steps.
    """
    u, z = model.encode(images.to(next(model.parameters()).device))
    ab = cf.Abduction(images=images, u=u, z=z, x_T=images, steps=0)
    z_cf = cf.intervene(model, ab, do)
    return model.predict_labels(z).cpu(), model.predict_labels(z_cf).cpu()


def _table_for(graph, labels: torch.Tensor | np.ndarray, extra: pd.DataFrame | None = None) -> pd.DataFrame:
    """Labels in node order -> a table with one column per node (named by node and by label column) + extra columns."""
    arr = np.asarray(torch.as_tensor(labels).cpu().numpy(), dtype=np.float64)
    cols: dict[str, Any] = {}
    for j, n in enumerate(graph.nodes):
        cols[n] = arr[:, j]
    for j, c in enumerate(graph.label_columns):
        cols.setdefault(c, arr[:, j])
    table = pd.DataFrame(cols)
    if extra is not None:
        extra = extra.reset_index(drop=True)
        table = pd.concat([table, extra[[c for c in extra.columns if c not in table.columns]]], axis=1)
    return table


def _cf_labels_from_table(graph, cf_table: pd.DataFrame) -> torch.Tensor:
    cols = []
    for n, c in zip(graph.nodes, graph.label_columns):
        key = n if n in cf_table.columns else c
        if key not in cf_table.columns:
            raise DataError(f"the simulator's counterfactual table has no column for node {n!r}; columns: {list(cf_table.columns)}")
        cols.append(np.asarray(cf_table[key], dtype=np.float64))
    return torch.as_tensor(np.stack(cols, axis=1), dtype=torch.float32)


# ----------------------------------------------------------------------------------------------
# DoWhy: intended values where there is no simulator
# ----------------------------------------------------------------------------------------------
def _label_frame(graph, label_table) -> pd.DataFrame:
    if isinstance(label_table, pd.DataFrame):
        cols = {}
        for n, c in zip(graph.nodes, graph.label_columns):
            key = n if n in label_table.columns else c
            if key not in label_table.columns:
                raise DataError(f"the label table has no column for node {n!r} (looked for {n!r} and {c!r}); columns: {list(label_table.columns)}")
            cols[n] = pd.to_numeric(label_table[key], errors="coerce").astype(np.float64)
        return pd.DataFrame(cols)
    arr = np.asarray(torch.as_tensor(label_table).cpu().numpy() if isinstance(label_table, torch.Tensor) else label_table, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != graph.n_nodes:
        raise DataError(f"the label table has shape {arr.shape}, expected (N, {graph.n_nodes}) for nodes {graph.nodes}")
    return pd.DataFrame(arr, columns=graph.nodes)


def fit_dowhy_scm(graph, label_table, mechanisms: str = "auto", max_rows: int = 5000, seed: int = 0):
    """Fit DoWhy's ``InvertibleStructuralCausalModel`` over the graph's nodes on a label table.

    Args:
        graph: the causal graph (its edges become the DoWhy graph; nodes are named as in the graph).
        label_table: a DataFrame with one column per node (node name or label column) or an
            ``(N, n_nodes)`` array in node order; rows with a missing label are dropped.
        mechanisms: "auto" (``gcm.auto.assign_causal_mechanisms``, GOOD quality: empirical
            distributions for roots, additive noise models with the best of a few regressors for
            the others) or "linear" (additive noise models with linear regression).
        max_rows: subsample the table to this many rows (seeded) to bound the fitting time.
    """
    import networkx as nx
    from dowhy import gcm
    from dowhy.gcm import config as gcm_config

    frame = _label_frame(graph, label_table).dropna().reset_index(drop=True)
    if len(frame) < 10:
        raise DataError(f"fitting DoWhy's SCM needs at least 10 fully labelled rows, the label table has {len(frame)}")
    if len(frame) > max_rows:
        frame = frame.sample(n=max_rows, random_state=seed).reset_index(drop=True)
    g = nx.DiGraph()
    g.add_nodes_from(graph.nodes)
    g.add_edges_from(graph.edges)
    scm = gcm.InvertibleStructuralCausalModel(g)
    progress, n_jobs = gcm_config.show_progress_bars, gcm_config.default_n_jobs
    gcm_config.disable_progress_bars()
    gcm_config.set_default_n_jobs(1)
    try:
        if mechanisms == "auto":
            gcm.auto.assign_causal_mechanisms(scm, frame)
        elif mechanisms == "linear":
            for n in graph.nodes:
                if graph.parents(n):
                    scm.set_causal_mechanism(n, gcm.AdditiveNoiseModel(gcm.ml.create_linear_regressor()))
                else:
                    scm.set_causal_mechanism(n, gcm.EmpiricalDistribution())
        else:
            raise DataError(f"DoWhy mechanisms must be 'auto' or 'linear', got {mechanisms!r}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gcm.fit(scm, frame)
    finally:
        gcm_config.show_progress_bars = progress
        gcm_config.set_default_n_jobs(n_jobs)
    return scm


def dowhy_intended(graph, label_table, factual_labels, do: Mapping[str, Any], scm=None, mechanisms: str = "auto") -> torch.Tensor:
    """Intended counterfactual labels from DoWhy's gcm, for data without a simulator.

    An invertible SCM over the labels (:func:`fit_dowhy_scm`, or ``scm`` already fitted) abducts
    each example's noise from its factual labels, applies ``do`` and propagates it
    (``gcm.counterfactual_samples``). Per-example ``do`` values are handled by grouping the rows
    that share a value.

    Args:
        graph: the causal graph.
        label_table: the labels to fit the SCM on (see :func:`fit_dowhy_scm`); ignored when ``scm`` is given.
        factual_labels: ``(B, n_nodes)`` label units, node order (rows with a NaN give NaN rows).
        do: node -> number, per-example values ``(B,)``, or a callable on the factual value.

    Returns:
        ``(B, n_nodes)`` float tensor of counterfactual labels in label units.
    """
    from dowhy import gcm

    if scm is None:
        scm = fit_dowhy_scm(graph, label_table, mechanisms=mechanisms)
    node_groups(graph, do)
    facts = _label_frame(graph, factual_labels)
    B = len(facts)
    out = np.full((B, graph.n_nodes), np.nan)
    ok = ~facts.isna().any(axis=1).to_numpy()
    const: dict[str, Callable] = {}
    per_row: dict[str, np.ndarray] = {}
    for name, v in _do_for_numpy(do).items():
        if callable(v):
            const[name] = lambda x, f=v: float(np.asarray(f(np.asarray(x, dtype=np.float64))))
            continue
        arr = np.asarray(v, dtype=np.float64).reshape(-1)
        if arr.size == 1:
            const[name] = lambda x, c=float(arr[0]): c
        elif arr.size == B:
            per_row[name] = arr
        else:
            raise InterventionError(f"do({name}=...): got {arr.size} values for {B} examples")
    keys = [tuple(per_row[k][i] for k in per_row) for i in range(B)]
    rows_of: dict[tuple, list[int]] = {}
    for i in np.flatnonzero(ok):
        rows_of.setdefault(keys[i], []).append(int(i))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for key, rows in rows_of.items():
            interventions = dict(const)
            for name, value in zip(per_row, key):
                interventions[name] = lambda x, c=float(value): c
            res = gcm.counterfactual_samples(scm, interventions, observed_data=facts.iloc[rows].reset_index(drop=True))
            out[rows] = res[graph.nodes].to_numpy(dtype=np.float64)
    return torch.as_tensor(out, dtype=torch.float32)


# ----------------------------------------------------------------------------------------------
# effectiveness
# ----------------------------------------------------------------------------------------------
def effectiveness(
    model,
    predictors,
    images: torch.Tensor,
    do: Mapping[str, Any],
    labels: torch.Tensor | None = None,
    intended: torch.Tensor | None = None,
    simulator: Callable | None = None,
    table: pd.DataFrame | None = None,
    counterfactuals: torch.Tensor | cf.CounterfactualResult | None = None,
    steps: int = 20,
    strength: float = 1.0,
    max_batch: int = 64,
) -> dict[str, Any]:
    """Effectiveness: do the counterfactual images show the intended label values?

    The predictors read the labels of the counterfactual images; the result is the MAE, in
    normalised units ``(y - loc) / scale`` of the model's graph, between the predicted and the
    intended values, for the intervened nodes, their descendants and the non-descendants
    separately, and per node.

    Intended values, first that applies:

    1. ``intended`` ``(B, n_nodes)`` label units, given (e.g. by :func:`dowhy_intended`);
    2. ``simulator(table, do)`` (a ``true_counterfactual`` function and the factual table): the
       simulator's counterfactual labels;
    3. the model's SCM: intervened and descendant nodes take the SCM's counterfactual label values
       (``CounterfactualResult.labels_counterfactual``); non-descendants keep their factual values,
       ``labels`` (the true factual labels) when given, else the predictors' reading of the factual image.

    Args:
        model: a trained CausalDiffAE.
        predictors: an object with ``predict(images) -> (B, n_nodes)`` label units (see
            :mod:`causaldiffae.predictors`), or such a callable.
        images: factual images ``(B, C, H, W)`` in [-1, 1].
        do: the intervention (see :func:`causaldiffae.counterfactual.counterfactual`).
        counterfactuals: score these images (a tensor or a CounterfactualResult) instead of generating them.
        steps, strength, max_batch: passed to the counterfactual query.

    Returns:
        ``{"do", "intended", "intervened", "descendants", "non_descendants", "per_node", "groups", "n"}``;
        a group with no node is None.
    """
    graph = model.graph
    groups = node_groups(graph, do)
    do = dict(do)
    B = images.shape[0]
    result = counterfactuals if isinstance(counterfactuals, cf.CounterfactualResult) else None
    if counterfactuals is None:
        result = cf.counterfactual(model, images, do=do, strength=strength, steps=steps, max_batch=max_batch)
    x_cf = result.images if result is not None else torch.as_tensor(counterfactuals)
    if x_cf.shape[0] != B:
        raise DataError(f"{x_cf.shape[0]} counterfactual images for {B} factual images")

    if intended is not None:
        target, source = torch.as_tensor(intended, dtype=torch.float32).cpu(), "given"
    elif simulator is not None:
        if table is None:
            raise DataError("a simulator needs the factual table (labels and exogenous columns) of the images")
        _, cf_table = simulator(table, _do_for_numpy(do))
        target, source = _cf_labels_from_table(graph, cf_table), "simulator"
    else:
        if result is not None:
            scm_cf = result.labels_counterfactual.cpu()
        else:
            _, scm_cf = scm_counterfactual_labels(model, images, do)
        factual = torch.as_tensor(labels, dtype=torch.float32).cpu() if labels is not None else _predict(predictors, images)
        target = factual.clone()
        for j, n in enumerate(graph.nodes):
            if groups[n] != "non_descendant":
                target[:, j] = scm_cf[:, j]
        source = "scm"
    if tuple(target.shape) != (B, graph.n_nodes):
        raise DataError(f"intended labels have shape {tuple(target.shape)}, expected ({B}, {graph.n_nodes})")

    pred = _predict(predictors, x_cf)
    err = (torch.as_tensor(graph.normalise(pred)) - torch.as_tensor(graph.normalise(target))).abs().numpy()
    per_node = {}
    for j, n in enumerate(graph.nodes):
        col = err[:, j][~np.isnan(err[:, j])]
        per_node[n] = float(col.mean()) if col.size else None

    def group_mae(role: str):
        cols = [j for j, n in enumerate(graph.nodes) if groups[n] == role]
        if not cols:
            return None
        vals = err[:, cols]
        vals = vals[~np.isnan(vals)]
        return float(vals.mean()) if vals.size else None

    return {
        "do": list(do), "intended": source, "intervened": group_mae("intervened"), "descendants": group_mae("descendant"),
        "non_descendants": group_mae("non_descendant"), "per_node": per_node, "groups": groups, "n": int(B),
    }


# ----------------------------------------------------------------------------------------------
# composition and reversibility
# ----------------------------------------------------------------------------------------------
def composition(model, images: torch.Tensor, cycles: Sequence[int] = (1, 10), steps: int = 20, max_batch: int = 64,
                progress: bool = False, refine: int = 0) -> dict[str, Any]:
    """Composition: apply the null intervention (abduct, then decode with the unchanged latents)
    repeatedly, each time from the previous output; the mean L1 distance (0-255) to the input
    after each number of cycles in ``cycles``.

    Returns ``{"cycles": [...], "steps": S, "l1": {"1": ..., "10": ...}}``.
    """
    from tqdm.auto import tqdm

    model.check_images(images)
    cycles = sorted({int(c) for c in cycles})
    if not cycles or cycles[0] < 1:
        raise DataError(f"composition cycles must be positive integers, got {cycles}")
    x0 = images.cpu()
    x = images
    out: dict[str, float] = {}
    for k in tqdm(range(1, cycles[-1] + 1), desc="composition", disable=not progress, leave=False):
        x = cf.reconstruct(model, x, steps=steps, max_batch=max_batch, refine=refine)
        if k in cycles:
            out[str(k)] = _mean(l1_255(x.cpu(), x0))
    return {"cycles": cycles, "steps": steps, "l1": out}


def reversibility(model, images: torch.Tensor, do: Mapping[str, Any], cycles: int = 5, steps: int = 20,
                  strength: float = 1.0, original: torch.Tensor | None = None, max_batch: int = 64,
                  progress: bool = False, refine: int = 0) -> dict[str, Any]:
    """Reversibility: intervene with ``do``, then set the same nodes back to their original values;
    repeat ``cycles`` times, each cycle starting from the previous cycle's output; the mean L1
    distance (0-255) to the input after each cycle.

    ``original`` ``(B, n_nodes)`` label units gives the values to go back to (the true factual labels);
    where it is None or NaN, the model's abducted factual label values are used.

    Returns ``{"do": [...], "cycles": C, "steps": S, "l1": [after cycle 1, ..., after cycle C]}``.
    """
    from tqdm.auto import tqdm

    graph = model.graph
    node_groups(graph, do)
    if cycles < 1:
        raise DataError(f"reversibility needs at least one cycle, got {cycles}")
    abducted, _ = scm_counterfactual_labels(model, images, {})
    back_values = abducted.clone()
    if original is not None:
        orig = torch.as_tensor(original, dtype=torch.float32).cpu()
        back_values = torch.where(torch.isnan(orig), abducted, orig)
    back = {n: back_values[:, graph.nodes.index(n)] for n in do}
    x0, x = images.cpu(), images
    l1 = []
    for _ in tqdm(range(cycles), desc="reversibility", disable=not progress, leave=False):
        x = cf.counterfactual(model, x, do=do, strength=strength, steps=steps, max_batch=max_batch, refine=refine).images
        x = cf.counterfactual(model, x, do=back, strength=strength, steps=steps, max_batch=max_batch, refine=refine).images
        l1.append(_mean(l1_255(x.cpu(), x0)))
    return {"do": list(do), "cycles": int(cycles), "steps": steps, "l1": l1}


# ----------------------------------------------------------------------------------------------
# ground truth
# ----------------------------------------------------------------------------------------------
def true_counterfactual_images(model, table: pd.DataFrame, do: Mapping[str, Any], simulator: Callable,
                               size: int | None = None) -> tuple[torch.Tensor, pd.DataFrame]:
    """The simulator's counterfactuals as model-ready images ``(B, C, H, W)`` in [-1, 1], and its label table.

    ``size`` is the size the simulator renders at (the data set's native size); the images are
    then resized to the model's size with the data loader's rule
    (:func:`~causaldiffae.data.resize_images`).
    """
    from causaldiffae.data import resize_images

    C, H, _ = model.image_shape
    imgs, cf_table = simulator(table, _do_for_numpy(do), size=size or H)
    imgs = np.asarray(imgs)
    if imgs.ndim == 3:
        imgs = imgs[..., None]
    imgs = resize_images(imgs.astype(np.uint8), H)
    if imgs.shape[-1] != C:
        raise DataError(f"the simulator renders {imgs.shape[-1]}-channel images, the model takes {C}")
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    return x.contiguous(), cf_table


def ground_truth_error(
    model, images: torch.Tensor, table: pd.DataFrame, do: Mapping[str, Any], simulator: Callable,
    steps: int = 20, strength: float = 1.0, size: int | None = None,
    counterfactuals: torch.Tensor | cf.CounterfactualResult | None = None, max_batch: int = 64,
    truth: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Pixel MAE (0-255) and SSIM between the model's counterfactuals and the true ones.

    Args:
        model: a trained CausalDiffAE.
        images: factual images ``(B, C, H, W)`` in [-1, 1], one per row of ``table``.
        table: the factual rows: a column per node plus the simulator's exogenous columns
            (e.g. Morpho-MNIST's ``source`` and ``eps_intensity``).
        do: the intervention.
        simulator: ``true_counterfactual(table, do, size) -> (uint8 images (N, H, W, C), cf table)``,
            e.g. :func:`causaldiffae.data.pendulum.true_counterfactual`.
        size: the size the simulator renders at (default: the model's); resized to the model's size.
        counterfactuals: the model's counterfactual images (tensor or CounterfactualResult) if already computed.
        truth: the true counterfactual images ``(B, C, H, W)`` if already rendered
            (:func:`true_counterfactual_images`); then ``table`` and ``simulator`` are not used.

    Returns:
        ``{"do", "mae_255", "ssim", "n"}`` (means over the images; SSIM on the 0-255 scale).
    """
    node_groups(model.graph, do)
    if truth is None:
        if table is None or len(table) != images.shape[0]:
            raise DataError(f"the factual table has {None if table is None else len(table)} rows for {images.shape[0]} images")
        truth, _ = true_counterfactual_images(model, table, do, simulator, size=size)
    if counterfactuals is None:
        counterfactuals = cf.counterfactual(model, images, do=do, strength=strength, steps=steps, max_batch=max_batch)
    x_cf = counterfactuals.images if isinstance(counterfactuals, cf.CounterfactualResult) else counterfactuals
    x_cf = x_cf.cpu()
    _check_pair(x_cf, truth)
    a, b = _unit(x_cf) * 255.0, _unit(truth) * 255.0
    return {"do": list(do), "mae_255": float(np.abs(a - b).mean()), "ssim": _mean(_ssim_hwc(a, b, 255.0)), "n": int(images.shape[0])}


# ----------------------------------------------------------------------------------------------
# DCI
# ----------------------------------------------------------------------------------------------
def _lasso(X: np.ndarray, y: np.ndarray, alpha: float, max_iter: int = 1000, tol: float = 1e-7) -> np.ndarray:
    """Coordinate descent for ``min_w 1/(2n) ||y - X w||^2 + alpha ||w||_1`` (X, y centred)."""
    n, d = X.shape
    w = np.zeros(d)
    r = y.astype(np.float64).copy()
    sq = (X**2).sum(axis=0) / n
    for _ in range(max_iter):
        biggest = 0.0
        for j in range(d):
            if sq[j] == 0:
                continue
            rho = X[:, j] @ r / n + sq[j] * w[j]
            new = np.sign(rho) * max(abs(rho) - alpha, 0.0) / sq[j]
            delta = new - w[j]
            if delta != 0.0:
                r -= delta * X[:, j]
                w[j] = new
                biggest = max(biggest, abs(delta))
        if biggest < tol:
            break
    return w


def _ridge(X: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    n, d = X.shape
    return np.linalg.solve(X.T @ X / n + alpha * np.eye(d), X.T @ y / n)


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

    For each factor ``k`` a linear regressor predicts the standardised factor from the standardised
    code ``z`` on a training split (``method`` "lasso", L1-penalised with ``alpha``, or "ridge");
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
        X = Zs[trk] - Zs[trk].mean(axis=0)
        t = (y[trk] - ym) / ys
        w = _lasso(X, t, alpha) if method == "lasso" else _ridge(X, t, alpha)
        R[:, k] = np.abs(w)
        pred = ((Zs[tek] - Zs[trk].mean(axis=0)) @ w) * ys + ym
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


# ----------------------------------------------------------------------------------------------
# everything at once
# ----------------------------------------------------------------------------------------------
def default_interventions(graph, labels: torch.Tensor, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """One intervention per node: the node is set, image by image, to the label of another image
    of the batch (a seeded permutation without fixed points; missing labels are replaced by labels
    drawn from the present ones). Nodes with no label in the batch are skipped."""
    labels = torch.as_tensor(labels, dtype=torch.float32).cpu()
    B = labels.shape[0]
    rng = np.random.default_rng(seed)
    out = []
    for j, n in enumerate(graph.nodes):
        col = labels[:, j].numpy().astype(np.float64)
        present = col[~np.isnan(col)]
        if present.size == 0:
            continue
        col = np.where(np.isnan(col), rng.choice(present, size=B), col)
        if B > 1:
            order = rng.permutation(B)
            perm = np.empty(B, dtype=np.int64)
            perm[order] = np.roll(order, 1)  # a cyclic shift of a random order: no image keeps its own value
            values = col[perm]
        else:
            values = col
        out.append({n: torch.as_tensor(values, dtype=torch.float32)})
    return out


def _summary_mean(items: Iterable[dict], key: str):
    vals = [d[key] for d in items if d.get(key) is not None and not (isinstance(d[key], float) and math.isnan(d[key]))]
    return float(np.mean(vals)) if vals else None


def evaluate(
    model,
    dataset,
    predictors=None,
    simulator: Callable | None = None,
    interventions: Sequence[Mapping[str, Any]] | None = None,
    n: int = 64,
    steps: int = 20,
    strength: float = 1.0,
    recon_steps: Sequence[int] = (10, 20, 50, 100),
    composition_cycles: Sequence[int] = (1, 10),
    reversibility_cycles: int = 5,
    intended: str = "auto",
    table: pd.DataFrame | None = None,
    simulator_size: int | None = None,
    dci_n: int = 2000,
    dowhy_mechanisms: str = "auto",
    dowhy_table=None,
    metrics: Sequence[str] = METRICS,
    seed: int = 0,
    max_batch: int = 64,
    progress: bool = True,
    refine: int = 0,
) -> dict[str, Any]:
    """Run every metric that applies on ``n`` images of ``dataset``; a JSON-safe dict.

    Args:
        model: a trained CausalDiffAE.
        dataset: an ImageLabelDataset at the model's size and channels (labels in node order).
        predictors: anti-causal predictors (effectiveness is skipped without them).
        simulator: a ``true_counterfactual(table, do, size)`` function (enables ground truth and
            the simulator's intended labels); ``table`` defaults to the labels plus ``dataset.extra``.
        interventions: a list of ``do`` mappings; default :func:`default_interventions` (every node once).
        n: images evaluated (a seeded random subset).
        steps: DDIM steps of every counterfactual query; ``recon_steps`` those of the reconstruction table.
        intended: where effectiveness' intended labels come from: "simulator", "dowhy", "scm", or
            "auto" (the simulator if given, else DoWhy fitted on the data set's labels, else the SCM).
        simulator_size: the size the simulator renders at (the data's native size).
        dci_n: images encoded for DCI (the encoder only, cheap).
        dowhy_mechanisms: "auto" or "linear" (see :func:`fit_dowhy_scm`).
        dowhy_table: the label table DoWhy's SCM is fitted on (default: all labels of ``dataset``).
        metrics: which of :data:`METRICS` to run.
        refine: fixed-point corrections per DDIM inversion step in every query (see
            :func:`causaldiffae.counterfactual.abduct`).
    """
    from tqdm.auto import tqdm

    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise DataError(f"unknown metric(s) {unknown}; known: {', '.join(METRICS)}")
    if intended not in INTENDED_SOURCES:
        raise DataError(f"intended must be one of {INTENDED_SOURCES}, got {intended!r}")
    graph = model.graph
    C, H, W = model.image_shape
    if (dataset.channels, dataset.size) != (C, H):
        raise DataError(f"the data set's images are {dataset.size}x{dataset.size} with {dataset.channels} channel(s); "
                        f"the model takes {H}x{W} with {C}")
    if len(dataset) == 0:
        raise DataError("the data set is empty")
    if n < 1:
        raise DataError(f"n must be positive, got {n}")
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(dataset), size=min(n, len(dataset)), replace=False))
    images, labels = dataset.batch(idx)
    dev = next(model.parameters()).device
    if simulator is not None and table is None:
        extra = None if dataset.extra is None else dataset.extra.iloc[idx].reset_index(drop=True)
        table = _table_for(graph, labels, extra)
    elif table is not None and len(table) == len(dataset):
        table = table.iloc[idx].reset_index(drop=True)
    if interventions is None:
        interventions = default_interventions(graph, labels, seed=seed)
    interventions = [dict(d) for d in interventions]
    for d in interventions:
        cf.check_do(model, d, images.shape[0])

    want = set(metrics)
    skipped: dict[str, str] = {}
    if "effectiveness" in want and predictors is None:
        skipped["effectiveness"] = "no predictors (train them with `causaldiffae predictors`)"
        want.discard("effectiveness")
    if "ground_truth" in want and simulator is None:
        skipped["ground_truth"] = "no simulator for this data set"
        want.discard("ground_truth")
    needs_cf = bool({"effectiveness", "ground_truth"} & want)
    stages = (("reconstruction" in want) + ("composition" in want) + ("dci" in want)
              + len(interventions) * (needs_cf + ("reversibility" in want)))
    bar = tqdm(total=stages, desc="evaluate", disable=not progress, unit="stage")
    t0 = time.time()
    out: dict[str, Any] = {
        "n": int(images.shape[0]), "steps": steps, "strength": strength, "refine": refine, "nodes": graph.nodes, "seed": seed,
        "interventions": [do_label(d) for d in interventions],
    }

    def stage(name: str) -> None:
        bar.set_description(f"evaluate: {name}")

    try:
        x = images.to(dev)
        if "reconstruction" in want:
            stage("reconstruction")
            out["reconstruction"] = reconstruction(model, x, steps=recon_steps, max_batch=max_batch, refine=refine).to_dict(orient="records")
            bar.update()
        if "composition" in want:
            stage("composition")
            out["composition"] = composition(model, x, cycles=composition_cycles, steps=steps, max_batch=max_batch, refine=refine)
            bar.update()

        source = intended
        dowhy_scm = None
        if "effectiveness" in want:
            if source == "auto":
                source = "simulator" if simulator is not None else "dowhy"
            if source == "simulator" and simulator is None:
                raise DataError("intended='simulator' needs a simulator (a generated Pendulum or Morpho-MNIST data set)")
            if source == "dowhy":
                try:
                    dowhy_scm = fit_dowhy_scm(graph, dataset.labels if dowhy_table is None else dowhy_table,
                                              mechanisms=dowhy_mechanisms, seed=seed)
                except DataError as e:
                    if intended == "dowhy":
                        raise
                    source = "scm"
                    out["intended_note"] = f"DoWhy not used ({e}); the SCM's counterfactual labels are intended"
            out["intended_source"] = source

        eff, gt, rev = {}, {}, {}
        for do in interventions:
            name = do_label(do)
            if needs_cf:
                stage(f"counterfactual {name}")
                res = cf.counterfactual(model, x, do=do, strength=strength, steps=steps, max_batch=max_batch, refine=refine)
                truth = cf_table = None
                if simulator is not None and ("ground_truth" in want or source == "simulator"):
                    truth, cf_table = true_counterfactual_images(model, table, do, simulator, size=simulator_size)
                if "effectiveness" in want:
                    target = None
                    if source == "simulator":
                        target = _cf_labels_from_table(graph, cf_table)
                    elif source == "dowhy":
                        target = dowhy_intended(graph, None, labels, do, scm=dowhy_scm)
                    eff[name] = effectiveness(model, predictors, x, do, labels=labels, intended=target, counterfactuals=res)
                    eff[name]["intended"] = source
                if "ground_truth" in want:
                    gt[name] = ground_truth_error(model, x, table, do, simulator, counterfactuals=res, truth=truth)
                bar.update()
            if "reversibility" in want:
                stage(f"reversibility {name}")
                rev[name] = reversibility(model, x, do, cycles=reversibility_cycles, steps=steps, strength=strength,
                                          original=labels, max_batch=max_batch, refine=refine)
                bar.update()
        if eff:
            out["effectiveness"] = {
                "mean": {k: _summary_mean(eff.values(), k) for k in ("intervened", "descendants", "non_descendants")},
                "by_intervention": eff,
            }
        if gt:
            out["ground_truth"] = {"mean": {k: _summary_mean(gt.values(), k) for k in ("mae_255", "ssim")}, "by_intervention": gt}
        if rev:
            curves = np.array([r["l1"] for r in rev.values()])
            out["reversibility"] = {"mean": curves.mean(axis=0).tolist(), "by_intervention": rev}

        if "dci" in want:
            stage("dci")
            labelled = np.flatnonzero((~np.isnan(dataset.labels)).any(axis=1))
            pick = np.sort(rng.choice(labelled, size=min(dci_n, labelled.size), replace=False)) if labelled.size else labelled
            if pick.size >= 10:
                zs, ys = [], []
                for s in range(0, pick.size, 256):
                    xb, yb = dataset.batch(pick[s : s + 256])
                    zs.append(model.encode(xb.to(dev))[1].cpu())
                    ys.append(yb)
                Z, Y = torch.cat(zs), torch.as_tensor(graph.normalise(torch.cat(ys)))
                blocks = [graph.block(nm) for nm in graph.nodes]
                out["dci"] = dci(Z, Y, factor_names=graph.nodes, seed=seed)
                out["dci_blocks"] = dci(Z, Y, blocks=blocks, factor_names=graph.nodes, seed=seed)
            else:
                skipped["dci"] = f"needs at least 10 labelled images, the data set has {pick.size}"
            bar.update()
    finally:
        bar.close()
    out["skipped"] = skipped
    out["seconds"] = round(time.time() - t0, 2)
    return out


# ----------------------------------------------------------------------------------------------
# output files
# ----------------------------------------------------------------------------------------------
def to_jsonable(obj: Any) -> Any:
    """Make ``obj`` strict-JSON safe: numpy scalars -> Python, ``inf`` -> "inf", ``nan`` -> None."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        if math.isnan(v):
            return None
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return v
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    return obj


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        if math.isinf(v):
            return "∞" if v > 0 else "-∞"
        return f"{v:.{digits}g}"
    return str(v)


def to_markdown(results: Mapping[str, Any], title: str = "Evaluation") -> str:
    """A Markdown report of :func:`evaluate`'s results: one table per metric."""
    r = results
    refine = f", {r['refine']} inversion correction(s) per step" if r.get("refine") else ""
    lines = [f"# {title}", "", f"{r.get('n')} images, {r.get('steps')} DDIM steps{refine}, guidance {r.get('strength')}; "
             f"interventions: {', '.join(r.get('interventions', [])) or '(none)'}.", ""]
    if "reconstruction" in r:
        lines += ["## Reconstruction (DDIM invert + decode)", "", "| steps | MSE | PSNR (dB) | SSIM | L1 (0-255) |", "|---:|---:|---:|---:|---:|"]
        for row in r["reconstruction"]:
            lines.append(f"| {row['steps']} | {_fmt(row['mse'])} | {_fmt(row['psnr'])} | {_fmt(row['ssim'])} | {_fmt(row['l1_255'])} |")
        lines.append("")
    if "effectiveness" in r:
        e = r["effectiveness"]
        nodes = r.get("nodes", [])
        lines += [f"## Effectiveness (MAE, normalised units; intended: {r.get('intended_source', '?')})", "",
                  "| intervention | intervened | descendants | non-descendants | " + " | ".join(nodes) + " |",
                  "|---|---:|---:|---:|" + "---:|" * len(nodes)]
        for name, d in e["by_intervention"].items():
            lines.append(f"| {name} | {_fmt(d['intervened'])} | {_fmt(d['descendants'])} | {_fmt(d['non_descendants'])} | "
                         + " | ".join(_fmt(d["per_node"].get(nd)) for nd in nodes) + " |")
        m = e["mean"]
        lines.append(f"| **mean** | {_fmt(m['intervened'])} | {_fmt(m['descendants'])} | {_fmt(m['non_descendants'])} |" + " |" * len(nodes))
        lines.append("")
    if "composition" in r:
        c = r["composition"]
        ks = list(c["l1"])
        lines += ["## Composition (null intervention repeated; L1 to the input, 0-255)", "",
                  "| " + " | ".join(f"{k} cycle{'s' if k != '1' else ''}" for k in ks) + " |", "|" + "---:|" * len(ks),
                  "| " + " | ".join(_fmt(c["l1"][k]) for k in ks) + " |", ""]
    if "reversibility" in r:
        rv = r["reversibility"]
        C = len(rv["mean"])
        lines += ["## Reversibility (do, then back; L1 to the input after each cycle, 0-255)", "",
                  "| intervention | " + " | ".join(f"cycle {i + 1}" for i in range(C)) + " |", "|---|" + "---:|" * C]
        for name, d in rv["by_intervention"].items():
            lines.append(f"| {name} | " + " | ".join(_fmt(v) for v in d["l1"]) + " |")
        lines.append("| **mean** | " + " | ".join(_fmt(v) for v in rv["mean"]) + " |")
        lines.append("")
    if "ground_truth" in r:
        g = r["ground_truth"]
        lines += ["## Ground-truth error (model vs simulator counterfactuals)", "", "| intervention | pixel MAE (0-255) | SSIM |", "|---|---:|---:|"]
        for name, d in g["by_intervention"].items():
            lines.append(f"| {name} | {_fmt(d['mae_255'])} | {_fmt(d['ssim'])} |")
        lines.append(f"| **mean** | {_fmt(g['mean']['mae_255'])} | {_fmt(g['mean']['ssim'])} |")
        lines.append("")
    for key, what in (("dci", "latent dimensions"), ("dci_blocks", "latent blocks")):
        if key in r:
            d = r[key]
            lines += [f"## DCI ({what}; {d['method']} importances)", "",
                      "| disentanglement | completeness | informativeness (R²) |", "|---:|---:|---:|",
                      f"| {_fmt(d['disentanglement'])} | {_fmt(d['completeness'])} | {_fmt(d['informativeness'])} |", ""]
    if r.get("skipped"):
        lines += ["## Skipped", ""] + [f"- {k}: {v}" for k, v in r["skipped"].items()] + [""]
    if r.get("intended_note"):
        lines += [f"Note: {r['intended_note']}", ""]
    return "\n".join(lines)


def write_report(results: Mapping[str, Any], out: str | Path, title: str = "Evaluation") -> tuple[Path, Path]:
    """Write ``out/metrics.json`` (strict JSON) and ``out/metrics.md``; returns both paths."""
    from causaldiffae.checkpoint import atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / "metrics.json", out / "metrics.md"
    atomic_write_text(js, json.dumps(to_jsonable(results), indent=2, allow_nan=False) + "\n")
    atomic_write_text(md, to_markdown(results, title) + "\n")
    return js, md


# ----------------------------------------------------------------------------------------------
# simulators of generated data sets
# ----------------------------------------------------------------------------------------------
def find_simulator(data_spec: Any, size: int | None = None) -> tuple[Callable, int, str] | None:
    """The true-counterfactual function of a generated data set, or None.

    ``data_spec`` is a folder whose ``generator.json`` names the generator (``pendulum`` or
    ``morphomnist``), or the name of a generated set in the data cache. Returns
    ``(true_counterfactual, native_size, generator_name)``.
    """
    from causaldiffae.data.generate import GENERATORS, data_cache_dir, true_counterfactual_function

    s = str(data_spec)
    folder = Path(s)
    if s in GENERATORS and not folder.exists():
        folder = data_cache_dir() / f"{s}-{size or 32}"
    meta = folder / "generator.json"
    if not folder.is_dir() or not meta.exists():
        return None
    try:
        params = json.loads(meta.read_text())
    except (json.JSONDecodeError, OSError) as e:
        raise DataError(f"{meta} is not readable JSON: {e}") from None
    name = params.get("generator") if isinstance(params, dict) else None
    if name not in GENERATORS:
        raise DataError(f"{meta} names an unknown generator {name!r}; known: {', '.join(GENERATORS)}")
    true_counterfactual = true_counterfactual_function(name)
    return true_counterfactual, int(params.get("size") or size or 32), name
