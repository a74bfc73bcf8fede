"""Scores beside their baselines: the do-nothing score, the floor, the achieved fraction and the drift.

Every effectiveness-like score (an error against intended label values, lower is better) means
something only next to two references measured on the same images and targets:

* **do-nothing**: the error when nothing changes (the factual image, or the factual label);
* **floor**: the error of the true answer scored the same way (the simulator's true counterfactual
  image read by the same predictors), i.e. the best any model can get with this measuring stick.

From them, for an intervened node or a descendant::

    achieved_fraction = (do_nothing - model) / (do_nothing - floor)   # 0: nothing moved, 1: as good as the truth

and for a non-descendant (which should not move)::

    drift = model - floor                                            # 0: as still as the truth

The fraction is left out (None, with a note saying why) when ``do_nothing - floor`` is below
:data:`MIN_GAP` normalised units: the intended change is then smaller than the error the
predictors are allowed on the truth itself, so no model can be told from the identity.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

#: Smallest ``do_nothing - floor`` (normalised label units, ``(y - loc) / scale``) for which the
#: achieved fraction is reported: the same 0.05 that a predictor may err on the simulator's true
#: counterfactuals (its floor) and still be accepted (docs/evaluation.md).
MIN_GAP = 0.05

ROLES = ("intervened", "descendant", "non_descendant")
GROUP_KEYS = {"intervened": "intervened", "descendant": "descendants", "non_descendant": "non_descendants"}


def _nanmean(x: np.ndarray) -> float | None:
    x = np.asarray(x, dtype=np.float64)
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else None


def achieved_fraction(do_nothing: float | None, model: float | None, floor: float | None,
                      min_gap: float = MIN_GAP) -> tuple[float | None, str | None]:
    """``(do_nothing - model) / (do_nothing - floor)`` and None, or None and the reason it is not defined.

    A missing ``floor`` (no simulator) is taken as 0, a perfect reading; the fraction is then a
    lower bound of the one against the real floor (which is >= 0).
    """
    if do_nothing is None or model is None:
        return None, "no score"
    fl = 0.0 if floor is None else floor
    gap = do_nothing - fl
    if gap < min_gap:
        return None, (f"do-nothing - floor = {gap:.3g} < {min_gap:g}: the intended change is within the "
                      f"measuring error, no model can be told from doing nothing")
    return (do_nothing - model) / gap, None


def score_against_baselines(
    nodes: list[str],
    roles: Mapping[str, str],
    err_model: np.ndarray,
    err_do_nothing: np.ndarray,
    err_floor: np.ndarray | None,
    min_gap: float = MIN_GAP,
    floor_source: str = "simulator",
) -> dict[str, Any]:
    """Per node and per role group: model / do-nothing / floor error, achieved fraction or drift.

    Args:
        nodes: node names in the column order of the error arrays.
        roles: node -> "intervened" / "descendant" / "non_descendant" (:func:`~causaldiffae.metrics.node_groups`).
        err_model, err_do_nothing: ``(B, n_nodes)`` absolute errors (NaN where the target is missing).
        err_floor: the same for the true answer, or None where there is none (then floor = 0, see
            :func:`achieved_fraction`).
        floor_source: what the floor is, for the report.

    Returns:
        ``{"per_node": {node: {...}}, "intervened": {...} | None, "descendants": ..., "non_descendants": ...,
        "min_gap", "floor_source"}``; each entry holds ``role, model, do_nothing, floor`` and either
        ``achieved_fraction`` (+ ``note`` when it is None) or ``drift``. Group entries compare the
        means over the group's nodes.
    """
    def entry(role: str, m: float | None, dn: float | None, fl: float | None) -> dict[str, Any]:
        e: dict[str, Any] = {"role": role, "model": m, "do_nothing": dn, "floor": fl}
        if role == "non_descendant":
            ref = fl if err_floor is not None else dn
            e["drift"] = None if (m is None or ref is None) else m - ref
        else:
            e["achieved_fraction"], note = achieved_fraction(dn, m, fl, min_gap)
            if note:
                e["note"] = note
        return e

    per_node = {}
    for j, n in enumerate(nodes):
        fl = None if err_floor is None else _nanmean(err_floor[:, j])
        per_node[n] = entry(roles[n], _nanmean(err_model[:, j]), _nanmean(err_do_nothing[:, j]), fl)
    out: dict[str, Any] = {"per_node": per_node}
    for role in ROLES:
        cols = [j for j, n in enumerate(nodes) if roles[n] == role]
        if not cols:
            out[GROUP_KEYS[role]] = None
            continue
        fl = None if err_floor is None else _nanmean(err_floor[:, cols])
        out[GROUP_KEYS[role]] = entry(role, _nanmean(err_model[:, cols]), _nanmean(err_do_nothing[:, cols]), fl)
    out["min_gap"] = min_gap
    out["floor_source"] = floor_source if err_floor is not None else "none (floor taken as 0: fractions are lower bounds)"
    return out


def mean_fraction(items: list[Mapping[str, Any]], group: str) -> float | None:
    """Mean achieved fraction of ``group`` ("intervened" / "descendants") over interventions where it is defined."""
    vals = [d[group]["achieved_fraction"] for d in items
            if d.get(group) and d[group].get("achieved_fraction") is not None and not math.isnan(d[group]["achieved_fraction"])]
    return float(np.mean(vals)) if vals else None
