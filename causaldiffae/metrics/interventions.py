"""Interventions as the metrics see them: names, node roles, default do()s, label tables, predictor calls."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch

from causaldiffae import counterfactual as cf
from causaldiffae.errors import DataError, InterventionError


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

