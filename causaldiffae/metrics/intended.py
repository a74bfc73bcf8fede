"""Intended counterfactual labels where there is no simulator: DoWhy's invertible SCM fitted on the label table."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import torch

from causaldiffae.errors import DataError, InterventionError
from causaldiffae.metrics.interventions import _do_for_numpy, node_groups


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

