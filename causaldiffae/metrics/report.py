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

