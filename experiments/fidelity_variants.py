"""Causal fidelity at an equal short budget: the legacy settings against each new setting.

    OMP_NUM_THREADS=1 python experiments/fidelity_variants.py --data pendulum --steps 300 \\
        --variants legacy,mechanism,v,adagn,mean,new --out runs/fidelity

Every variant trains from the same seed with the same budget (``budget_config`` of
``experiments/ablations.py``: warm-up over the first fifth, EMA scaled to the run) and is scored on
``--n`` held-out test images (each node intervened on once, each image taking another image's
value, ``metrics.default_interventions``):

* ``latent_<child>``: the latent-level mechanism fraction, encoder + SCM only (no diffusion): for
  ``do(parent)``, ``1 - mean|d_model - d_true| / mean|d_true|`` where ``d`` is the child's change in
  normalised label units (``d_true`` from the simulator's structural equations, ``d_model`` from
  the abducted latents before and after the SCM's action). 0 = the child does not move, 1 = it
  moves exactly as the truth; the do-nothing baseline is 0 and the floor (truth) is 1 by construction.
* ``achieved_<group>``: the achieved fraction of image counterfactuals (method.md §5),
  ``(err_do_nothing - err_model) / (err_do_nothing - err_floor)`` with the anti-causal predictors
  (the shipped ones, ``pretrained/<data>.predictors.safetensors``), ``err`` the MAE in normalised
  units against the simulator's counterfactual labels; ``err_floor`` scores the simulator's true
  counterfactual images the same way. Averaged over interventions, for the intervened node and for
  the descendants; ``drift_non_descendants`` = ``err_model - err_floor`` of the others.
* ``recon_mse``: invert-then-decode MSE at ``--steps-eval`` DDIM steps.

Runs are resumable (a finished run is only scored). Results: ``OUT/<data>/results.csv`` and
``results.md`` (``--results NAME`` for another name). ``--strength 2 --guidance null|factual
--score-only`` scores the trained runs at another guidance weight and reference.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from causaldiffae import counterfactual as cf  # noqa: E402
from causaldiffae import metrics  # noqa: E402
from causaldiffae.ablation import budget_config  # noqa: E402
from experiments.ablations import _data  # noqa: E402

#: What each variant changes with respect to ``legacy`` (the settings the shipped models were trained with).
LEGACY = {"model": {"mechanism_weight": 0.0, "prediction": "eps", "decoder_latent": "sample", "guidance": "null"},
          "unet": {"cond_shift": False, "cond_hidden": 0}, "train": {"labelled_share": 0.0}}
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "legacy": {},
    "mechanism": {"model": {"mechanism_weight": 1.0}},
    "v": {"model": {"prediction": "v"}},
    "adagn": {"unet": {"cond_shift": True, "cond_hidden": 64}},
    "mean": {"model": {"decoder_latent": "mean"}},
    "factual": {"model": {"guidance": "factual"}},
    "new": {"model": {"mechanism_weight": 1.0, "prediction": "v", "decoder_latent": "mean", "guidance": "factual"},
            "unet": {"cond_shift": True, "cond_hidden": 64}},
}


def variant_config(name: str, steps: int, batch_size: int, seed: int):
    cfg = budget_config(steps, batch_size=batch_size)
    change = VARIANTS[name]
    m = {**LEGACY["model"], **change.get("model", {})}
    u = {**LEGACY["unet"], **change.get("unet", {})}
    cfg.model = dataclasses.replace(cfg.model, unet=dataclasses.replace(cfg.model.unet, **u), **m)
    cfg.train = dataclasses.replace(cfg.train, seed=seed, **{**LEGACY["train"], **change.get("train", {})})
    return cfg


def _norm(graph, labels) -> np.ndarray:
    return np.asarray(torch.as_tensor(graph.normalise(torch.as_tensor(labels, dtype=torch.float32))).numpy(), dtype=np.float64)


@torch.no_grad()
def score(model, images, labels, table, sim, predictors, steps: int, strength: float = 1.0) -> dict[str, Any]:
    g = model.graph
    simulator, size, _ = sim
    row: dict[str, Any] = {}
    groups: dict[str, list[float]] = {"intervened": [], "descendants": [], "drift": []}
    pred_factual = _norm(g, predictors.predict(images))
    for do in metrics.default_interventions(g, labels, seed=0):
        (node,) = do
        cf_images_true, cf_table = simulator(table, {k: v.cpu().numpy() if isinstance(v, torch.Tensor) else v for k, v in do.items()}, size)
        y_true = _norm(g, cf_table[g.label_columns].to_numpy(np.float64))
        y_fact = _norm(g, labels)
        # latent level: encoder + SCM only
        lab_f, lab_cf = metrics.scm_counterfactual_labels(model, images, do)
        d_model = _norm(g, lab_cf) - _norm(g, lab_f)
        d_true = y_true - y_fact
        for child in g.descendants(node):
            j = g.index(child)
            row[f"latent_{child}<-{node}"] = 1.0 - np.abs(d_model[:, j] - d_true[:, j]).mean() / max(np.abs(d_true[:, j]).mean(), 1e-9)
        # image level
        res = cf.counterfactual(model, images, do=do, strength=strength, steps=steps)
        true_imgs = torch.from_numpy(np.asarray(cf_images_true)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        pred_model = _norm(g, predictors.predict(res.images))
        pred_floor = _norm(g, predictors.predict(true_imgs))
        err = lambda p: np.abs(p - y_true).mean(axis=0)  # noqa: E731
        e_model, e_nothing, e_floor = err(pred_model), err(pred_factual), err(pred_floor)
        desc = set(g.descendants(node))
        for j, n in enumerate(g.nodes):
            gap = e_nothing[j] - e_floor[j]
            if n == node or n in desc:
                frac = (e_nothing[j] - e_model[j]) / gap if gap > 1e-3 else np.nan
                groups["intervened" if n == node else "descendants"].append(frac)
                if n == node:
                    row[f"achieved_{n}"] = frac
                else:
                    row[f"achieved_{n}<-{node}"] = frac
            else:
                groups["drift"].append(e_model[j] - e_floor[j])
    row["achieved_intervened"] = float(np.nanmean(groups["intervened"]))
    row["achieved_descendants"] = float(np.nanmean(groups["descendants"])) if groups["descendants"] else None
    row["drift_non_descendants"] = float(np.mean(groups["drift"])) if groups["drift"] else None
    lat = [v for k, v in row.items() if k.startswith("latent_")]
    row["latent_mean"] = float(np.mean(lat)) if lat else None
    rec = cf.counterfactual(model, images, do={}, steps=steps).images
    row["recon_mse"] = float(metrics.mse(rec, images).mean())
    return row


def _write_as(rows: list[dict], out: Path, name: str, title: str) -> None:
    df = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / f"{name}.csv", index=False)
    (out / f"{name}.md").write_text(f"## {title}\n\n" + compact_table(df) + "\n")
    print(df.to_string(index=False))


def compact_table(df: pd.DataFrame) -> str:
    """The table of docs/results.md: latent-level fractions, achieved fractions, drift, reconstruction."""
    lat = [c for c in df.columns if c.startswith("latent_") and c != "latent_mean"]
    roots = [c for c in df.columns if c.startswith("achieved_") and "<-" not in c
             and c not in ("achieved_intervened", "achieved_descendants")]
    extra = [c for c in ("strength", "guidance") if c in df.columns]
    cols = ["variant", *extra, *lat, "latent_mean", *roots, "achieved_descendants", "drift_non_descendants", "recon_mse"]
    head = [c.replace("latent_", "latent ").replace("achieved_", "achieved ").replace("_non_descendants", " (others)") for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(cols)]
    for _, r in df[cols].iterrows():
        cells = [str(r["variant"])] + [str(r[c]) for c in extra] + [
            f"{r[c]:.2f}" if c != "recon_mse" else f"{r[c]:.4f}" for c in cols[1 + len(extra):]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    from causaldiffae.checkpoint import PRETRAINED_DIR, load_checkpoint
    from causaldiffae.model import CausalDiffAE
    from causaldiffae.pipeline import fit
    from causaldiffae.predictors import load_predictors

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="pendulum")
    ap.add_argument("--graph", default=None)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--label-fraction", type=float, default=1.0)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--steps-eval", type=int, default=20)
    ap.add_argument("--strength", type=float, default=1.0)
    ap.add_argument("--out", default="runs/fidelity")
    ap.add_argument("--score-only", action="store_true", help="score finished runs, train nothing")
    ap.add_argument("--guidance", choices=["null", "factual"], help="query guidance for every variant (default: the variant's)")
    ap.add_argument("--results", default="results", help="name of the results files in OUT/<data> (several scorings side by side)")
    ap.add_argument("--table", nargs="+", metavar="CSV", help="print the compact Markdown table of these results.csv files and exit")
    a = ap.parse_args(argv)
    if a.table:
        print(compact_table(pd.concat([pd.read_csv(p) for p in a.table], ignore_index=True)))
        return
    torch.set_num_threads(1)
    out = Path(a.out) / a.data
    predictors = load_predictors(PRETRAINED_DIR / f"{a.data}.predictors.safetensors")
    rows = []
    for seed in map(int, a.seeds.split(",")):
        for name in a.variants.split(","):
            train_as = "legacy" if name == "factual" else name  # guidance is a query setting: same weights
            run = out / f"{train_as}-s{seed}-f{a.label_fraction:g}"
            ck = run / "checkpoint.safetensors"
            done = ck.exists() and load_checkpoint(ck)[1].get("step", 0) >= a.steps
            if not done and not a.score_only:
                fit(a.graph or a.data, a.data, run, variant_config(train_as, a.steps, a.batch_size, seed), resume=ck.exists(),
                    progress=True, label_fraction=a.label_fraction)
            if not ck.exists():
                continue
            model, _ = CausalDiffAE.load(run)
            model.config.guidance = a.guidance or VARIANTS[name].get("model", {}).get("guidance", model.config.guidance)
            images, labels, table, sim = _data(model, a.data, a.n)
            row = {"variant": name, "seed": seed, "steps": a.steps, "batch": a.batch_size, "label_fraction": a.label_fraction,
                   "strength": a.strength, "guidance": model.config.guidance}
            row.update(score(model, images, labels, table, sim, predictors, steps=a.steps_eval, strength=a.strength))
            rows.append(row)
            _write_as(rows, out, a.results, f"Causal fidelity variants ({a.data}, {a.steps} steps x batch {a.batch_size})")


if __name__ == "__main__":
    main()
