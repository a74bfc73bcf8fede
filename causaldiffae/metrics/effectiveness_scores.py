"""Effectiveness: do the counterfactual images show the intended label values (anti-causal predictors)?"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import torch

from causaldiffae import counterfactual as cf
from causaldiffae.errors import DataError
from causaldiffae.metrics.baselines import MIN_GAP, score_against_baselines
from causaldiffae.metrics.interventions import (
    _cf_labels_from_table,
    _do_for_numpy,
    _predict,
    node_groups,
    scm_counterfactual_labels,
)


def _categorical(predictors, graph, node: str) -> bool:
    """Whether ``node`` is scored as a class: the predictors say so (a classifier head), or the graph does."""
    is_cat = getattr(predictors, "is_categorical", None)
    if callable(is_cat) and is_cat(node):
        return True
    return getattr(graph.specs.get(node), "type", "continuous") == "categorical"


def label_errors(graph, predictors, images: torch.Tensor, intended: torch.Tensor) -> np.ndarray:
    """Per image and node, ``(B, n_nodes)`` (NaN where intended is): ``|predicted - intended|`` in
    normalised units ``(y - loc) / scale``, and for a categorical node 1 where the predicted class is
    not the intended one, else 0 (its mean is the error rate, 1 - accuracy)."""
    pred = _predict(predictors, images)
    target = torch.as_tensor(intended, dtype=torch.float32).cpu()
    if tuple(target.shape) != tuple(pred.shape):
        raise DataError(f"intended labels have shape {tuple(target.shape)}, the predictors read {tuple(pred.shape)}")
    err = (torch.as_tensor(graph.normalise(pred)) - torch.as_tensor(graph.normalise(target))).abs()
    for j, node in enumerate(graph.nodes):
        if _categorical(predictors, graph, node):
            wrong = (pred[:, j].round() != target[:, j].round()).to(err.dtype)
            err[:, j] = torch.where(torch.isnan(target[:, j]), torch.full_like(wrong, float("nan")), wrong)
    return err.numpy().astype(np.float64)


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
    refine: int = 0,
    refine_carry: bool | None = None,
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
        steps, strength, max_batch, refine, refine_carry: passed to the counterfactual query (the evaluation
            protocol's 20 steps and plain inversion unless set).

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
        result = cf.counterfactual(model, images, do=do, strength=strength, steps=steps, max_batch=max_batch,
                                          refine=refine, refine_carry=refine_carry, residual=False)  # the protocol
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

    err = label_errors(graph, predictors, x_cf, target)
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



def effectiveness_baselines(
    model,
    predictors,
    images: torch.Tensor,
    do: Mapping[str, Any],
    intended: torch.Tensor,
    counterfactuals: torch.Tensor | cf.CounterfactualResult,
    truth: torch.Tensor | None = None,
    min_gap: float = MIN_GAP,
) -> dict[str, Any]:
    """Effectiveness beside its baselines, on the same images and intended values.

    The predictors read three image sets and each is scored against ``intended`` (MAE in
    normalised units, per node): the model's counterfactuals, the factual ``images`` unchanged
    (**do-nothing**) and, where a simulator exists, its true counterfactuals ``truth`` (the
    **floor**). Intervened nodes and descendants get the **achieved fraction**
    ``(do_nothing - model) / (do_nothing - floor)``; non-descendants the **drift**
    ``model - floor`` (see :mod:`causaldiffae.metrics.baselines`).

    Args:
        images: factual images ``(B, C, H, W)`` in [-1, 1].
        intended: ``(B, n_nodes)`` intended counterfactual labels in label units (the simulator's or DoWhy's).
        counterfactuals: the model's counterfactual images (tensor or CounterfactualResult), ``(B, C, H, W)``.
        truth: the true counterfactual images ``(B, C, H, W)``, or None (no floor; fractions against 0).
        min_gap: see :data:`~causaldiffae.metrics.baselines.MIN_GAP`.

    Returns:
        :func:`~causaldiffae.metrics.baselines.score_against_baselines`'s dict plus ``do`` and ``n``.
    """
    graph = model.graph
    roles = node_groups(graph, do)
    x_cf = counterfactuals.images if isinstance(counterfactuals, cf.CounterfactualResult) else torch.as_tensor(counterfactuals)
    B = images.shape[0]
    for what, t in (("counterfactual", x_cf), ("true counterfactual", truth)):
        if t is not None and t.shape[0] != B:
            raise DataError(f"{t.shape[0]} {what} images for {B} factual images")
    err_model = label_errors(graph, predictors, x_cf.cpu(), intended)
    err_nothing = label_errors(graph, predictors, images.cpu(), intended)
    err_floor = None if truth is None else label_errors(graph, predictors, truth.cpu(), intended)
    out = score_against_baselines(graph.nodes, roles, err_model, err_nothing, err_floor, min_gap=min_gap,
                                  floor_source="the simulator's true counterfactuals, read by the same predictors")
    return {"do": list(do), "n": int(B), **out}
