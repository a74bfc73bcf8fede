"""The evaluation driver: every metric that applies, on held-out images of a data set, as one JSON-safe dict."""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from causaldiffae import counterfactual as cf
from causaldiffae.errors import DataError
from causaldiffae.metrics.baselines import MIN_GAP, mean_fraction
from causaldiffae.metrics.disentanglement import dci
from causaldiffae.metrics.effectiveness_scores import effectiveness, effectiveness_baselines
from causaldiffae.metrics.field import field_table, has_field_metrics
from causaldiffae.metrics.floors import FLOOR_GATE, evaluation_floors
from causaldiffae.metrics.ground_truth import CHANGE_TOLERANCE, ground_truth_error, true_counterfactual_images
from causaldiffae.metrics.images import reconstruction
from causaldiffae.metrics.intended import dowhy_intended, fit_dowhy_scm
from causaldiffae.metrics.latent import mechanism_check
from causaldiffae.metrics.interventions import _cf_labels_from_table, _table_for, default_interventions, do_label
from causaldiffae.metrics.soundness import composition, reversibility

METRICS = ("reconstruction", "effectiveness", "composition", "reversibility", "ground_truth", "latent", "dci", "field")
INTENDED_SOURCES = ("auto", "simulator", "dowhy", "scm")


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
    refine_carry: bool | None = None,
    residual: bool = False,
    residual_gate: float | None = None,
    min_gap: float = MIN_GAP,
    change_tolerance: float = CHANGE_TOLERANCE,
    counterfactual_fn: Callable[[torch.Tensor, Mapping[str, Any]], torch.Tensor] | None = None,
    floor_gate: float = FLOOR_GATE,
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
        refine_carry: whether those corrections reuse their network call in the next step (None:
            the library's query default, ``DEFAULT_REFINE_CARRY``).
        residual: every query carries the reconstruction residual (see
            :func:`causaldiffae.counterfactual.abduct_residual`); off by default, as in the protocol
            the published figures were scored with. Composition then holds by construction.
        residual_gate: its gate in grey levels (None: ``DEFAULT_RESIDUAL_GATE``).
        min_gap: achieved fractions need ``do_nothing - floor`` of at least this (normalised units;
            :data:`~causaldiffae.metrics.baselines.MIN_GAP`).
        change_tolerance: grey levels that make a pixel "changed" (:data:`~causaldiffae.metrics.ground_truth.CHANGE_TOLERANCE`).
        counterfactual_fn: score these counterfactuals instead of the model's:
            ``counterfactual_fn(images, do) -> (B, C, H, W)`` in [-1, 1] (e.g. a baseline, or the
            identity ``lambda x, do: x``); reconstruction, composition and reversibility, which
            query the model itself, are then skipped. The latent check always reads the model.
        floor_gate: the most a predictor may err on the true counterfactuals (:data:`~causaldiffae.metrics.floors.FLOOR_GATE`).

    Effectiveness carries its baselines (``effectiveness.by_intervention[do].baselines``: model /
    do-nothing / floor / achieved fraction / drift, :func:`effectiveness_baselines`); ground truth
    the identity's score and the changed region (:func:`ground_truth_error`); ``latent`` the
    mechanism check of encoder + SCM (:func:`~causaldiffae.metrics.latent.mechanism_check`).

    With effectiveness, ``predictor_floors`` holds the predictors' floors (their error on the
    simulator's true counterfactuals of every intervention, and on the factual images, row
    ``none``) and the gate (every floor <= ``floor_gate``), laid out as
    :func:`causaldiffae.predictors.predictor_floors` does; they are the effectiveness table's floor
    column where its intended labels are the simulator's (the same quantity, read once), else read
    from the true counterfactuals already rendered (:func:`~causaldiffae.metrics.floors.evaluation_floors`).
    Without a simulator ``predictor_floors`` says they are unknown. ``field`` (a simulator with
    ``field_metrics``, e.g. Morpho-MNIST) scores each intervention in the field's units beside
    do-nothing, floor and the published best (:func:`~causaldiffae.metrics.field.field_table`).
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
    if "field" in want and not has_field_metrics(simulator):
        skipped["field"] = ("no simulator for this data set" if simulator is None else
                            f"the {getattr(simulator, 'name', '') or 'given'} simulator defines no scores in the field's units "
                            "(Simulator.field_metrics)")
        want.discard("field")
    if counterfactual_fn is not None:
        for m in ("reconstruction", "composition", "reversibility"):
            if m in want:
                skipped[m] = "scores the model's own queries, not those of counterfactual_fn"
                want.discard(m)
    needs_cf = bool({"effectiveness", "ground_truth", "field"} & want)
    needs_target = bool({"effectiveness", "latent"} & want)
    stages = (("reconstruction" in want) + ("composition" in want) + ("dci" in want)
              + len(interventions) * ((needs_cf or "latent" in want) + ("reversibility" in want)))
    bar = tqdm(total=stages, desc="evaluate", disable=not progress, unit="stage")
    t0 = time.time()
    out: dict[str, Any] = {
        "n": int(images.shape[0]), "steps": steps, "strength": strength, "refine": refine,
        "refine_carry": cf.resolve_refine_carry(refine_carry) if refine else None,
        "residual": cf.resolve_residual(residual, residual_gate)[1] if residual else None, "nodes": graph.nodes, "seed": seed,
        "interventions": [do_label(d) for d in interventions], "min_gap": min_gap,
    }
    if counterfactual_fn is not None:
        out["counterfactuals_from"] = getattr(counterfactual_fn, "__name__", "counterfactual_fn")

    def stage(name: str) -> None:
        bar.set_description(f"evaluate: {name}")

    try:
        x = images.to(dev)
        if "reconstruction" in want:
            stage("reconstruction")
            out["reconstruction"] = reconstruction(model, x, steps=recon_steps, max_batch=max_batch, refine=refine,
                                                    refine_carry=refine_carry).to_dict(orient="records")
            bar.update()
        if "composition" in want:
            stage("composition")
            out["composition"] = composition(model, x, cycles=composition_cycles, steps=steps, max_batch=max_batch, refine=refine,
                                             refine_carry=refine_carry, residual=residual, residual_gate=residual_gate)
            bar.update()

        source = intended
        dowhy_scm = None
        if needs_target:
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
            if "latent" in want and source == "scm":
                skipped["latent"] = "needs intended labels from a simulator or DoWhy (the model's own SCM cannot check itself)"
                want.discard("latent")

        eff, gt, rev, lat, field = {}, {}, {}, {}, {}
        gt_excluded: dict[str, str] = {}
        floor_rows: dict[str, dict[str, Any]] = {}  # per intervention: the predictors' floor, or what to read it from
        for do in interventions:
            name = do_label(do)
            # a simulator that cannot answer this do() exactly (Morpho-MNIST's do(digit) swaps in another
            # writer) gives no ground truth for it: its pixels would score the writer, not the model
            inexact = getattr(simulator, "no_true_counterfactual", {}) if simulator is not None else {}
            no_truth = [inexact[k] for k in do if k in inexact]
            if needs_cf or "latent" in want:
                stage(f"counterfactual {name}")
                truth = cf_table = None
                if simulator is not None and ({"ground_truth", "effectiveness", "field"} & want or source == "simulator"):
                    truth, cf_table = true_counterfactual_images(model, table, do, simulator, size=simulator_size)
                target = None
                if source == "simulator" and needs_target:
                    target = _cf_labels_from_table(graph, cf_table)
                elif source == "dowhy" and needs_target:
                    target = dowhy_intended(graph, None, labels, do, scm=dowhy_scm)
                res = None
                if needs_cf:
                    if counterfactual_fn is None:
                        res = cf.counterfactual(model, x, do=do, strength=strength, steps=steps, max_batch=max_batch, refine=refine,
                                                refine_carry=refine_carry, residual=residual, residual_gate=residual_gate)
                    else:
                        res = torch.as_tensor(counterfactual_fn(x, do)).detach().float().cpu()
                if "effectiveness" in want:
                    eff[name] = effectiveness(model, predictors, x, do, labels=labels, intended=target, counterfactuals=res)
                    eff[name]["intended"] = source
                    if target is not None:
                        eff[name]["baselines"] = effectiveness_baselines(model, predictors, x.cpu(), do, target, res,
                                                                         truth=truth, min_gap=min_gap)
                    if truth is not None and not no_truth:
                        if source == "simulator" and "baselines" in eff[name]:  # the same quantity: no second reading
                            floor_rows[name] = {"floor": {n: e["floor"] for n, e in eff[name]["baselines"]["per_node"].items()}}
                        else:
                            floor_rows[name] = {"truth": truth, "labels": _cf_labels_from_table(graph, cf_table)}
                if "field" in want:
                    intended_values = {nd: cf_table[nd].to_numpy() for nd in graph.nodes if nd in cf_table.columns}
                    x_cf = res.images if isinstance(res, cf.CounterfactualResult) else res
                    ft = field_table(simulator, graph, do, x_cf.cpu(), x.cpu(), None if no_truth else truth, intended_values,
                                     predictors=predictors, no_truth="; ".join(no_truth) or None)
                    if ft is not None:
                        field[name] = ft
                if "ground_truth" in want and no_truth:
                    gt_excluded[name] = "; ".join(no_truth)
                elif "ground_truth" in want:
                    gt[name] = ground_truth_error(model, x.cpu(), table, do, simulator, counterfactuals=res, truth=truth,
                                                  change_tolerance=change_tolerance)
                if "latent" in want:
                    lat[name] = mechanism_check(model, x, do, target, labels, min_gap=min_gap)
                bar.update()
            if "reversibility" in want:
                stage(f"reversibility {name}")
                rev[name] = reversibility(model, x, do, cycles=reversibility_cycles, steps=steps, strength=strength,
                                          original=labels, max_batch=max_batch, refine=refine,
                                          refine_carry=refine_carry, residual=residual, residual_gate=residual_gate)
                bar.update()
        if eff:
            out["effectiveness"] = {
                "mean": {k: _summary_mean(eff.values(), k) for k in ("intervened", "descendants", "non_descendants")},
                "by_intervention": eff,
            }
            base = [d["baselines"] for d in eff.values() if "baselines" in d]
            if base:
                out["effectiveness"]["mean_achieved_fraction"] = {g: mean_fraction(base, g) for g in ("intervened", "descendants")}
        if gt:
            out["ground_truth"] = {
                "mean": {k: _summary_mean(gt.values(), k) for k in ("mae_255", "ssim")},
                "identity_mean": {k: _summary_mean([d["identity"] for d in gt.values()], k) for k in ("mae_255", "ssim")},
                "changed_region_mean": {k: _summary_mean([d["changed_region"] for d in gt.values()], k)
                                        for k in ("model_mae_255", "identity_mae_255", "achieved_fraction")},
                "by_intervention": gt,
            }
        if gt_excluded:
            out.setdefault("ground_truth", {"by_intervention": {}})["excluded"] = gt_excluded
        if "effectiveness" in want:
            if simulator is None:
                out["predictor_floors"] = {"unknown": "no simulator for this data set: the predictors' error on true "
                                                      "counterfactuals cannot be measured, so every effectiveness figure is "
                                                      "only as good as the predictors' validation error", "gate": float(floor_gate)}
            else:
                excluded = {do_label(d): "; ".join(v for k, v in getattr(simulator, "no_true_counterfactual", {}).items() if k in d)
                            for d in interventions if do_label(d) not in floor_rows}
                out["predictor_floors"] = evaluation_floors(graph, predictors, x.cpu(), labels, floor_rows,
                                                            excluded={k: v for k, v in excluded.items() if v}, gate=floor_gate)
        if "field" in want:
            if field:
                out["field"] = {"simulator": getattr(simulator, "name", None), "units": dict(simulator.field_units),
                                "reference": getattr(simulator, "field_reference", None), "by_intervention": field}
            else:
                skipped["field"] = "the simulator's field_metrics returned nothing for these interventions"
        if lat:
            out["latent"] = {"mean_achieved_fraction": {"descendants": mean_fraction(list(lat.values()), "descendants")},
                             "by_intervention": lat}
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

