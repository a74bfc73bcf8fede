"""Scores in the units the field publishes for a data set (a simulator's ``field_metrics``), beside their baselines.

A simulator may define :meth:`~causaldiffae.data.simulator.Simulator.field_metrics` (scores of one
image set against intended values, e.g. Morpho-MNIST's thickness MAE in pixels), the units of each
score (:attr:`~causaldiffae.data.simulator.Simulator.field_units`: the node it reads, whether higher
is better, a label) and the published figures to compare with (``field_reference``, keyed by
intervention name). :func:`field_table` scores the model's counterfactuals, the factual images
(**do-nothing**) and the simulator's true counterfactuals (**floor**, where it has an exact one) of
one intervention, and puts the published figure and the achieved fraction (or drift) beside each
score. Nothing here knows a data set: the simulator brings the metrics and their units.

The achieved fraction in field units, on errors ``err(v) = v - best`` (lower is better) or
``best - v`` (higher is better; ``best`` is the perfect value, 0 or 1)::

    fraction = (err(do_nothing) - err(model)) / (err(do_nothing) - err(floor))   # 0: nothing moved, 1: the truth

With no floor the perfect value stands in for it (a lower bound of the real fraction). The fraction
is left out when the gap ``err(do_nothing) - err(floor)`` is not larger than ``err(floor)``: the
intended change is then within the measuring error of the truth itself. A non-descendant gets the
drift ``err(model) - err(floor)`` (> 0: worse than the truth; without a floor ``err(model) -
err(do_nothing)``: what the intervention disturbed).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from causaldiffae.metrics.interventions import do_label, node_groups


def has_field_metrics(simulator) -> bool:
    """Whether ``simulator`` defines scores in the field's units (a non-empty ``field_units``)."""
    return simulator is not None and bool(getattr(simulator, "field_units", None)) and callable(getattr(simulator, "field_metrics", None))


def _err(v: float | None, unit: Mapping[str, Any]) -> float | None:
    if v is None:
        return None
    best = float(unit.get("best", 1.0 if unit.get("higher_is_better") else 0.0))
    return best - v if unit.get("higher_is_better") else v - best


def field_fraction(model: float | None, do_nothing: float | None, floor: float | None, role: str,
                   unit: Mapping[str, Any]) -> dict[str, Any]:
    """``{"achieved_fraction": f}`` (with ``note`` where it is None) or ``{"drift": d}`` for a non-descendant."""
    m, dn = _err(model, unit), _err(do_nothing, unit)
    if role == "non_descendant":  # against the truth, or where there is none against doing nothing
        ref = _err(floor, unit) if floor is not None else dn
        return {"drift": None if (m is None or ref is None) else m - ref}
    fl = _err(floor, unit) if floor is not None else 0.0
    if m is None or dn is None:
        return {"achieved_fraction": None, "note": "no score"}
    gap = dn - fl
    if gap <= max(fl, 0.0):
        return {"achieved_fraction": None, "note": f"do-nothing - floor = {gap:.3g} is within the floor's own error "
                                                   f"{fl:.3g}: the change cannot be told from the measuring error"}
    return {"achieved_fraction": (dn - m) / gap}


def field_table(
    simulator,
    graph,
    do: Mapping[str, Any],
    counterfactuals: torch.Tensor,
    factual: torch.Tensor,
    truth: torch.Tensor | None,
    intended: Mapping[str, np.ndarray],
    predictors=None,
    no_truth: str | None = None,
) -> dict[str, Any] | None:
    """One intervention in the field's units: model / do-nothing / floor / published / fraction per score and reader.

    Args:
        simulator: a simulator with ``field_metrics``, ``field_units`` and (optionally) ``field_reference``.
        graph: the model's graph (the roles of the nodes under ``do``).
        do: the intervention.
        counterfactuals, factual: ``(B, C, H, W)`` in [-1, 1]: the model's counterfactuals and the factual images.
        truth: the simulator's true counterfactuals ``(B, C, H, W)``, or None where it has no exact one.
        intended: node -> ``(B,)`` intended values (the simulator's counterfactual labels).
        predictors: passed to ``field_metrics`` (scores read by a predictor are None without them).
        no_truth: why there is no floor (the simulator's ``no_true_counterfactual`` reason).

    Returns:
        None if ``field_metrics`` returns None, else ``{"do", "n", "scores": [{"metric", "label", "reader",
        "node", "role", "model", "do_nothing", "floor", "published", "achieved_fraction" | "drift", "note"?}],
        "raw": {"model" | "do_nothing" | "floor": field_metrics' dict}, "floor_note"?}``.
    """
    units = dict(getattr(simulator, "field_units", {}) or {})
    reference = getattr(simulator, "field_reference", None) or {}
    name = do_label(do)
    raw = {"model": simulator.field_metrics(counterfactuals, intended, predictors=predictors, do=do),
           "do_nothing": simulator.field_metrics(factual, intended, predictors=predictors, do=do)}
    if raw["model"] is None:
        return None
    if truth is not None:
        raw["floor"] = simulator.field_metrics(truth, intended, predictors=predictors, do=do)
    roles = node_groups(graph, do)
    published = reference.get(name, {}) if isinstance(reference, Mapping) else {}
    scores = []
    for key, unit in units.items():
        model_v = raw["model"].get(key)
        if not isinstance(model_v, Mapping):
            continue
        for reader in model_v:
            m = model_v.get(reader)
            dn = (raw["do_nothing"].get(key) or {}).get(reader)
            fl = (raw.get("floor") or {}).get(key, {}).get(reader) if "floor" in raw else None
            if m is None and dn is None and fl is None:
                continue
            role = roles.get(unit.get("node"), "?")
            row = {"metric": key, "label": unit.get("label", key), "reader": reader, "node": unit.get("node"), "role": role,
                   "model": m, "do_nothing": dn, "floor": fl, "published": published.get(key)}
            if role != "?":
                row.update(field_fraction(m, dn, fl, role, unit))
            scores.append(row)
    out: dict[str, Any] = {"do": list(do), "n": int(counterfactuals.shape[0]), "scores": scores, "raw": raw}
    if truth is None:
        out["floor_note"] = f"no true counterfactual ({no_truth})" if no_truth else "no true counterfactual"
    return out
