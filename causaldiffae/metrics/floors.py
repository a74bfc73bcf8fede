"""The anti-causal predictors' floors inside an evaluation, and the gate that says how far to trust them.

A predictor's **floor** on an intervention is its error on the simulator's *true* counterfactual
images, scored against the simulator's counterfactual labels (normalised MAE for a continuous
node, error rate for a categorical one). :func:`causaldiffae.predictors.predictor_floors` measures
it on freshly rendered scenes; :func:`evaluate <causaldiffae.metrics.evaluate>` already holds the
true counterfactuals of its own images, so it derives the same table from them
(:func:`evaluation_floors`) instead of rendering and reading them a second time. The **gate**:
every floor (and the error on the factual images, row ``none``) <= ``gate`` (0.05,
:data:`causaldiffae.predictors.FLOOR_GATE`). A predictor over the gate reads something else than
its own factor (its causes, a confounder) or reads it too coarsely, and every effectiveness figure
of that node is only as good as that floor.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

#: The most a predictor may err on the true counterfactuals (normalised units / error rate); also
#: :data:`causaldiffae.predictors.FLOOR_GATE` (defined here: metrics must not import the predictors module).
FLOOR_GATE = 0.05


def gate_verdict(errors: Mapping[str, Mapping[str, float | None]], gate: float = FLOOR_GATE) -> dict[str, Any]:
    """``errors`` ``{row: {node: error}}`` -> ``{"worst": {node: max error over rows}, "passed": bool,
    "failures": [[row, node, error], ...]}`` (errors above ``gate``; None entries are skipped)."""
    nodes: list[str] = []
    for r in errors.values():
        nodes += [n for n in r if n not in nodes]
    worst = {n: max((r[n] for r in errors.values() if r.get(n) is not None), default=None) for n in nodes}
    failures = [[row, n, float(e)] for row, r in errors.items() for n, e in r.items() if e is not None and e > gate]
    return {"worst": worst, "passed": not failures, "failures": failures}


def verdict_text(floors: Mapping[str, Any]) -> str:
    """One line: ``gate met (worst 0.034 <= 0.05)``, ``gate missed: do(a) b 0.07, ...`` or why the floors are unknown."""
    if floors.get("unknown"):
        return f"floors unknown: {floors['unknown']}"
    if floors.get("passed"):
        worst = [v for v in floors.get("worst", {}).values() if v is not None]
        return f"gate met (worst {max(worst):.3g} <= {floors['gate']:g})" if worst else "gate met"
    fails = ", ".join(f"{row} {node} {err:.3g}" for row, node, err in floors.get("failures", []))
    return f"gate missed: {fails} (> {floors['gate']:g})"


def _column_means(err: np.ndarray, nodes: list[str]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for j, n in enumerate(nodes):
        col = err[:, j][~np.isnan(err[:, j])]
        out[n] = float(col.mean()) if col.size else None
    return out


def evaluation_floors(
    graph,
    predictors,
    factual_images,
    factual_labels,
    rows: Mapping[str, Mapping[str, Any]],
    excluded: Mapping[str, str] | None = None,
    gate: float = FLOOR_GATE,
) -> dict[str, Any]:
    """The predictors' floors of one evaluation, as :func:`causaldiffae.predictors.predictor_floors` lays them out.

    Args:
        graph: the model's graph (node order, normalisation).
        predictors: the anti-causal predictors.
        factual_images: ``(B, C, H, W)`` in [-1, 1], the evaluated images (row ``none``).
        factual_labels: ``(B, n_nodes)`` their labels in label units (NaN = missing).
        rows: per intervention name, either ``{"floor": {node: error}}`` (already measured: the floor
            column of the effectiveness table when its intended labels are the simulator's, the same
            quantity) or ``{"truth": (B, C, H, W), "labels": (B, n_nodes)}`` (the true counterfactual
            images and the simulator's labels, read here once).
        excluded: intervention name -> why it has no exact true counterfactual (left out of the gate).
        gate: see :data:`FLOOR_GATE`.

    Returns:
        ``{"errors": {"none" | do: {node: error}}, "metric": {node: "mae" | "error_rate"}, "worst",
        "gate", "passed", "failures", "excluded", "n", "source": {do: "effectiveness floor" | "true counterfactuals"}}``.
    """
    from causaldiffae.metrics.effectiveness_scores import _categorical, label_errors

    nodes = list(graph.nodes)
    errors = {"none": _column_means(label_errors(graph, predictors, factual_images, factual_labels), nodes)}
    source: dict[str, str] = {}
    for name, row in rows.items():
        if "floor" in row:
            errors[name] = {n: row["floor"].get(n) for n in nodes}
            source[name] = "effectiveness floor"
        else:
            errors[name] = _column_means(label_errors(graph, predictors, row["truth"], row["labels"]), nodes)
            source[name] = "true counterfactuals"
    return {
        "errors": errors,
        "metric": {n: "error_rate" if _categorical(predictors, graph, n) else "mae" for n in nodes},
        **gate_verdict(errors, gate), "gate": float(gate), "excluded": dict(excluded or {}),
        "n": int(factual_images.shape[0]), "source": source,
    }
