"""Reports of :func:`~causaldiffae.metrics.evaluate`: strict JSON and Markdown."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch


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


def _score(e: Mapping[str, Any], drift_format: str = "+.3f") -> str:
    """The achieved fraction, or ``drift +x`` for a non-descendant, or why there is none."""
    if "drift" in e:
        return "–" if e["drift"] is None else f"drift {e['drift']:{drift_format}}"
    if e.get("achieved_fraction") is None:
        return "– (gap too small)" if e.get("note", "").startswith("do-nothing") else "–"
    return f"{e['achieved_fraction']:.3f}"


def _field_score(e: Mapping[str, Any]) -> str:
    """:func:`_score` for the field's units, whose drifts span px to grey levels (3 significant digits)."""
    return _score(e, drift_format="+.3g")


def _floor_rows(floors: Mapping[str, Any], nodes: list[str]) -> list[tuple[str, list[str]]]:
    """(row name, one cell per node) of the predictor floors, the worst row last."""
    rows = [(row, [_fmt(errs.get(n), 3) for n in nodes]) for row, errs in floors.get("errors", {}).items()]
    rows.append(("worst", [_fmt(floors.get("worst", {}).get(n), 3) for n in nodes]))
    return rows


def floors_lines(results: Mapping[str, Any]) -> list[str]:
    """The predictors' floors (their error on the true counterfactuals) and the gate's verdict, for the terminal."""
    from causaldiffae.metrics.floors import verdict_text

    fl = results.get("predictor_floors")
    if not fl:
        return []
    out = [f"predictor floors (error on the simulator's true counterfactuals; gate <= {fl.get('gate', 0.05):g}): {verdict_text(fl)}"]
    if fl.get("unknown"):
        return out
    nodes = [n for n in results.get("nodes", []) if n in fl.get("metric", {})] or list(fl.get("metric", {}))
    out.append(f"  {'row':<24}" + "".join(f" {n[:16]:>16}" for n in nodes))
    for row, cells in _floor_rows(fl, nodes):
        out.append(f"  {row:<24}" + "".join(f" {c:>16}" for c in cells))
    for row, why in (fl.get("excluded") or {}).items():
        out.append(f"  {row}: left out (no exact true counterfactual: {why})")
    return out


def field_lines(d: Mapping[str, Any], reference_model: str | None = None) -> list[str]:
    """One intervention's scores in the field's units (:func:`causaldiffae.metrics.field.field_table`), for the terminal."""
    out = [f"  field units{f' (published: {reference_model})' if reference_model else ''}:"
           f"{'' if 'floor_note' not in d else ' floor: ' + d['floor_note']}",
           f"    {'score':<24} {'reader':<12} {'role':<15} {'model':>9} {'nothing':>9} {'floor':>9} {'published':>9} {'achieved':>17}"]
    for e in d.get("scores", []):
        out.append(f"    {e['label']:<24} {e['reader']:<12} {e['role']:<15} {_fmt(e['model'], 3):>9} {_fmt(e['do_nothing'], 3):>9} "
                   f"{_fmt(e['floor'], 3):>9} {_fmt(e['published'], 3):>9} {_field_score(e):>17}")
    return out


def summary_lines(results: Mapping[str, Any]) -> list[str]:
    """Plain-text lines for the terminal: the predictors' floors and the gate's verdict; then per
    intervention, per node, model / do-nothing / floor / achieved fraction (or drift) of
    effectiveness and of the latent check, the ground truth on the whole image and on the changed
    region beside the identity's, and the scores in the field's units where the simulator has them."""
    r = results
    eff = (r.get("effectiveness") or {}).get("by_intervention", {})
    lat = (r.get("latent") or {}).get("by_intervention", {})
    gt = (r.get("ground_truth") or {}).get("by_intervention", {})
    fld = (r.get("field") or {}).get("by_intervention", {})
    ref_model = ((r.get("field") or {}).get("reference") or {}).get("model")
    out = floors_lines(r)
    for name in r.get("interventions", []):
        b = (eff.get(name) or {}).get("baselines")
        lt = lat.get(name)
        if b is None and lt is None and name not in gt and name not in fld:
            continue
        out.append(f"{name}  (intended: {r.get('intended_source', '?')}; MAE in normalised units)")
        if b is not None or lt is not None:
            def cells(e: Mapping[str, Any] | None) -> str:
                if e is None:
                    return " ".join(f"{'':>9}" for _ in range(3)) + f" {'':>17}"
                return (f"{_fmt(e['model'], 3):>9} {_fmt(e['do_nothing'], 3):>9} {_fmt(e['floor'], 3):>9} "
                        f"{_score(e):>17}")

            head = f"{'model':>9} {'nothing':>9} {'floor':>9} {'achieved':>17}"
            out.append(f"  {'node':<17} {'role':<15}  images: {head}  |  latent: {head}")
            for node in r.get("nodes", []):
                en = (b or {}).get("per_node", {}).get(node)
                ln = (lt or {}).get("per_node", {}).get(node)
                role = (en or ln or {}).get("role", "?")
                right = f"{'set by do()':>47}" if (ln is not None and role == "intervened") else cells(ln)
                out.append(f"  {node:<17} {role:<15}          {cells(en)}  |          {right}".rstrip())
        if name in gt:
            d = gt[name]
            cr, idt = d.get("changed_region", {}), d.get("identity", {})
            px = cr.get("pixel_fraction")
            out.append(f"  ground truth: whole image MAE {_fmt(d['mae_255'], 3)} (identity {_fmt(idt.get('mae_255'), 3)}), "
                       f"SSIM {_fmt(d['ssim'], 3)} (identity {_fmt(idt.get('ssim'), 3)}); changed region "
                       f"({_fmt(None if px is None else 100 * px, 2)} % of pixels) MAE {_fmt(cr.get('model_mae_255'), 3)} "
                       f"(identity {_fmt(cr.get('identity_mae_255'), 3)}), fraction {_fmt(cr.get('achieved_fraction'), 3)}")
        if name in fld:
            out += field_lines(fld[name], ref_model)
    for name, why in ((r.get("ground_truth") or {}).get("excluded") or {}).items():
        out.append(f"{name}: no ground truth (no exact true counterfactual: {why})")
    return out


def _floors_markdown(r: Mapping[str, Any]) -> list[str]:
    from causaldiffae.metrics.floors import verdict_text

    fl = r.get("predictor_floors")
    if not fl:
        return []
    lines = ["## Predictor floors (how far to trust the effectiveness figures)", "",
             f"Each anti-causal predictor's error on the simulator's true counterfactuals of every intervention (row `none`: "
             f"the factual images), against the simulator's labels: normalised MAE, or error rate for a categorical node. "
             f"Gate: every entry <= {fl.get('gate', 0.05):g}. **Verdict: {verdict_text(fl)}.**", ""]
    if fl.get("unknown"):
        return lines
    nodes = [n for n in r.get("nodes", []) if n in fl.get("metric", {})] or list(fl.get("metric", {}))
    src = set((fl.get("source") or {}).values())
    lines += ["| row | " + " | ".join(f"{n} ({'error rate' if fl['metric'][n] == 'error_rate' else 'MAE'})" for n in nodes) + " |",
              "|---|" + "---:|" * len(nodes)]
    for row, cells in _floor_rows(fl, nodes):
        lines.append(f"| {'**worst**' if row == 'worst' else row} | " + " | ".join(cells) + " |")
    lines.append("")
    if src == {"effectiveness floor"}:
        lines += ["The intervention rows are the floor column of the effectiveness table (its intended labels are the "
                  "simulator's, so it is the same quantity, read once).", ""]
    elif src:
        lines += ["The intervention rows are read from the true counterfactuals this evaluation rendered, against the "
                  "simulator's labels (the effectiveness floor scores them against other intended labels).", ""]
    if fl.get("excluded"):
        lines += ["Left out of the gate (no exact true counterfactual): "
                  + "; ".join(f"{k}: {v}" for k, v in fl["excluded"].items()), ""]
    return lines


def _field_markdown(r: Mapping[str, Any]) -> list[str]:
    f = r.get("field")
    if not f:
        why = (r.get("skipped") or {}).get("field")
        return ["## Scores in the field's units", "", f"Not reported: {why}.", ""] if why else []
    ref = f.get("reference") or {}
    lines = ["## Scores in the field's units" + (f" ({f['simulator']})" if f.get("simulator") else ""), "",
             "Each score of the simulator's `field_metrics` for the model's counterfactuals, the factual images (do-nothing) "
             "and the simulator's true counterfactuals (floor), against the simulator's intended values; published = "
             f"{ref.get('model', 'the published best model')}. Achieved fraction = (do-nothing - model) / (do-nothing - floor) "
             "on errors (the perfect value stands in for a missing floor); drift = model - floor, in error, for a non-descendant "
             "(model - do-nothing where there is no floor).", "",
             "| intervention | score | reader | role | model | do-nothing | floor | published | achieved fraction / drift |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    notes = []
    for name, d in f["by_intervention"].items():
        for e in d["scores"]:
            lines.append(f"| {name} | {e['label']} | {e['reader']} | {e['role']} | {_fmt(e['model'], 3)} | {_fmt(e['do_nothing'], 3)} | "
                         f"{_fmt(e['floor'], 3)} | {_fmt(e['published'], 3)} | {_field_score(e)} |")
        if d.get("floor_note"):
            notes.append(f"- {name}: floor left out: {d['floor_note']}")
    lines.append("")
    comp = ref.get("composition_l1") if isinstance(ref, Mapping) else None
    if comp and "composition" in r:
        ours = r["composition"]["l1"]
        lines += ["Composition L1 (0-255): " + "; ".join(f"after {k} cycle(s) {_fmt(ours.get(k), 3)} (published {_fmt(v, 3)})"
                                                       for k, v in comp.items() if k in ours), ""]
    return lines + (notes + [""] if notes else [])


def to_markdown(results: Mapping[str, Any], title: str = "Evaluation") -> str:
    """A Markdown report of :func:`evaluate`'s results: one table per metric."""
    r = results
    refine = (f", {r['refine']} inversion correction(s) per step"
              + {True: " (carried)", False: " (exact)"}.get(r.get("refine_carry"), "") if r.get("refine") else "")
    if r.get("residual"):
        refine += f", the reconstruction residual carried (gate {r['residual']:g} grey levels)"
    lines = [f"# {title}", "", f"{r.get('n')} images, {r.get('steps')} DDIM steps{refine}, guidance {r.get('strength')}; "
             f"interventions: {', '.join(r.get('interventions', [])) or '(none)'}.", ""]
    lines += _floors_markdown(r)
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
        rows = [(name, d["baselines"]) for name, d in e["by_intervention"].items() if "baselines" in d]
        if rows:
            lines += ["### Effectiveness beside its baselines", "",
                      "do-nothing = the factual image read by the same predictors; floor = the simulator's true counterfactual "
                      "read by them; achieved fraction = (do-nothing - model) / (do-nothing - floor) for intervened nodes and "
                      "descendants (0: nothing moved, 1: as good as the truth); drift = model - floor for non-descendants.", "",
                      "| intervention | node | role | model | do-nothing | floor | achieved fraction / drift |",
                      "|---|---|---|---:|---:|---:|---:|"]
            notes = []
            for name, b in rows:
                for node, en in b["per_node"].items():
                    lines.append(f"| {name} | {node} | {en['role']} | {_fmt(en['model'], 3)} | {_fmt(en['do_nothing'], 3)} | "
                                 f"{_fmt(en['floor'], 3)} | {_score(en)} |")
                    if en.get("note"):
                        notes.append(f"- {name} {node}: {en['note']}")
            mf = e.get("mean_achieved_fraction", {})
            lines += ["", f"Mean achieved fraction: intervened {_fmt(mf.get('intervened'), 3)}, descendants {_fmt(mf.get('descendants'), 3)}.", ""]
            if notes:
                lines += notes + [""]
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
        lines += ["## Ground-truth error (model vs the simulator's true counterfactuals)", "",
                  "Identity = the factual image returned unchanged. Changed region = pixels where the true counterfactual "
                  "differs from the factual image; region fraction = (identity - model) / identity there (0: nothing drawn, 1: the truth).", "",
                  "| intervention | pixel MAE (0-255) | identity | SSIM | identity | changed pixels | region MAE | identity | region fraction |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, d in g["by_intervention"].items():
            idt, cr = d.get("identity", {}), d.get("changed_region", {})
            px = cr.get("pixel_fraction")
            lines.append(f"| {name} | {_fmt(d['mae_255'])} | {_fmt(idt.get('mae_255'))} | {_fmt(d['ssim'])} | {_fmt(idt.get('ssim'))} | "
                         f"{_fmt(None if px is None else 100 * px, 3)}{'' if px is None else ' %'} | {_fmt(cr.get('model_mae_255'))} | "
                         f"{_fmt(cr.get('identity_mae_255'))} | {_fmt(cr.get('achieved_fraction'), 3)} |")
        im, cm = g.get("identity_mean", {}), g.get("changed_region_mean", {})
        if "mean" in g:
            lines.append(f"| **mean** | {_fmt(g['mean']['mae_255'])} | {_fmt(im.get('mae_255'))} | {_fmt(g['mean']['ssim'])} | "
                         f"{_fmt(im.get('ssim'))} | | {_fmt(cm.get('model_mae_255'))} | {_fmt(cm.get('identity_mae_255'))} | "
                         f"{_fmt(cm.get('achieved_fraction'), 3)} |")
        lines.append("")
        if g.get("excluded"):
            lines += ["Left out (no exact true counterfactual): "
                      + "; ".join(f"{k}: {v}" for k, v in g["excluded"].items()), ""]
    lines += _field_markdown(r)
    if "latent" in r:
        lat = r["latent"]
        lines += ["## Latent-level mechanism check (encoder + SCM, no diffusion; label readout vs intended, normalised units)", "",
                  "do-nothing = the factual label; floor = the readout's own error on the factual image; "
                  "slope = readout change regressed on the true change (1: the full change).", "",
                  "| intervention | node | role | model | do-nothing | floor | achieved fraction / drift | slope |",
                  "|---|---|---|---:|---:|---:|---:|---:|"]
        for name, d in lat["by_intervention"].items():
            for node, e in d["per_node"].items():
                if e["role"] == "intervened":
                    continue
                lines.append(f"| {name} | {node} | {e['role']} | {_fmt(e['model'], 3)} | {_fmt(e['do_nothing'], 3)} | "
                             f"{_fmt(e['floor'], 3)} | {_score(e)} | {_fmt(d['change_slope'].get(node), 3)} |")
        lines += ["", f"Mean descendant fraction: {_fmt(lat['mean_achieved_fraction']['descendants'], 3)}.", ""]
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

