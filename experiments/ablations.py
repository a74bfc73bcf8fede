"""The evaluation experiments of docs/results.md, each one resumable command.

The label-fraction and strength ablations are the library's (``causaldiffae ablate``,
:mod:`causaldiffae.ablation`, docs/ablations.md); ``fraction`` and ``strength`` here only call them::

    python experiments/ablations.py fraction --data pendulum --steps 600 --out runs/ablation      # = causaldiffae ablate label-fraction
    python experiments/ablations.py fraction --data pendulum --time 10m --out runs/ablation-10m  # 10 minutes of training per run
    python experiments/ablations.py strength --run runs/ablation/pendulum/runs/causal-1-seed0 --data pendulum --out runs/strength
    python experiments/ablations.py recon-steps --run runs/pendulum --data pendulum --out runs/recon
    python experiments/ablations.py baselines --run runs/pendulum --diffae runs/pendulum-diffae --data pendulum --out runs/baselines
    python experiments/ablations.py references --data pendulum --n 64 --out runs/references

``recon-steps`` writes the invert-then-decode table against the number of DDIM steps; ``baselines``
compares CausalDiffAE (DDIM abduction), the reference procedure (forward-noising abduction) and
Diff-AE on ``--n`` held-out images: effectiveness MAE of the intervened node / its descendants /
the others (anti-causal predictors, normalised label units; intended values from the simulator, or
from the model's SCM on data without one), ground-truth pixel MAE (0-255) and SSIM where there is a
simulator, invert-then-decode MSE/SSIM and composition (null intervention, 1 and 10 cycles, L1 0-255).
``references`` scores the two references every table needs on the same images and interventions
(no model query, seconds): **do nothing** (the factual image returned unchanged) and the **floor**
(the simulator's true counterfactual), read by the same predictors (default: the shipped ones).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from causaldiffae import ablation  # noqa: E402
from causaldiffae import counterfactual as cf  # noqa: E402
from causaldiffae import metrics  # noqa: E402


def _data(model, spec: str, n: int, seed: int = 0):
    """``n`` seeded test images of ``spec``, their labels and factual table, and the simulator (or None)."""
    from causaldiffae.data import open_dataset

    ds = open_dataset(spec, model.graph.label_columns, size=model.image_shape[1], split="test")
    sim = metrics.find_simulator(spec, size=model.image_shape[1])
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(ds), size=min(n, len(ds)), replace=False))
    sub = ds.subset(idx)
    images, labels = sub.batch(np.arange(len(sub)))
    table = metrics._table_for(model.graph, labels, sub.extra)
    return images, labels, table, sim


def _predictors(path: Path, model, spec: str):
    """Anti-causal predictors at ``path``, trained on the data's train split first if missing."""
    from causaldiffae.data import open_dataset
    from causaldiffae.predictors import load_predictors, train_predictors

    if not path.exists():
        ds = open_dataset(spec, model.graph.label_columns, size=model.image_shape[1], split="train")
        train_predictors(model.graph, ds, path, progress=True)
    return load_predictors(path)


def score(model, images, labels, table, sim, predictors, steps: int = 20, strength: float = 1.0,
          abduction: str = "ddim", composition: bool = True) -> dict[str, Any]:
    """The baselines' scores (module docstring) as one flat dict; ground truth only with a simulator."""
    simulator, size, _ = sim if sim is not None else (None, None, None)
    row: dict[str, Any] = {}
    effs, gts = [], []
    for do in metrics.default_interventions(model.graph, labels, seed=0):
        res = cf.counterfactual(model, images, do=do, strength=strength, steps=steps, abduction=abduction)
        effs.append(metrics.effectiveness(model, predictors, images, do, labels=labels, simulator=simulator, table=table,
                                          counterfactuals=res))
        if simulator is not None:
            gts.append(metrics.ground_truth_error(model, images, table, do, simulator, size=size, counterfactuals=res))
        (node,) = do
        row[f"mae_{node}"] = effs[-1]["intervened"]
    for key in ("intervened", "descendants", "non_descendants"):
        vals = [e[key] for e in effs if e.get(key) is not None]
        row[f"eff_{key}"] = float(np.mean(vals)) if vals else None
    if gts:
        row["gt_mae_255"] = float(np.mean([g["mae_255"] for g in gts]))
        row["gt_ssim"] = float(np.mean([g["ssim"] for g in gts]))
    rec = cf.counterfactual(model, images, do={}, steps=steps, abduction=abduction).images
    row["recon_mse"] = float(metrics.mse(rec, images).mean())
    row["recon_ssim"] = float(metrics.ssim(rec, images).mean())
    if composition and abduction == "ddim":
        comp = metrics.composition(model, images, cycles=(1, 10), steps=steps)
        row.update({f"composition_l1_{k}": v for k, v in comp["l1"].items()})
    return row


def markdown_table(df: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub Markdown table of ``df`` (numbers rounded to ``digits``)."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "-" if np.isnan(v) else f"{v:.{digits}f}"
        return "-" if v is None else str(v)

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _write(rows: list[dict], out: Path, title: str) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "results.csv", index=False)
    (out / "results.md").write_text(f"## {title}\n\n" + markdown_table(df) + "\n")
    print(df.to_string(index=False))
    return df


def reference_rows(model, images, labels, table, sim, predictors) -> list[dict[str, Any]]:
    """The do-nothing and floor rows of :func:`score`'s columns, on the same images and interventions."""
    simulator, size, _ = sim
    rows = {"do nothing (factual image)": [], "floor (true counterfactual)": []}
    gts: dict[str, list] = {k: [] for k in rows}
    for do in metrics.default_interventions(model.graph, labels, seed=0):
        truth, _ = metrics.true_counterfactual_images(model, table, do, simulator, size=size)
        for key, imgs in zip(rows, (images, truth)):
            rows[key].append(metrics.effectiveness(model, predictors, images, do, labels=labels, simulator=simulator,
                                                   table=table, counterfactuals=imgs))
            gts[key].append(metrics.ground_truth_error(model, images, table, do, simulator, counterfactuals=imgs, truth=truth))
    out = []
    for key, effs in rows.items():
        row: dict[str, Any] = {"model": key}
        for g in ("intervened", "descendants", "non_descendants"):
            vals = [e[g] for e in effs if e.get(g) is not None]
            row[f"eff_{g}"] = float(np.mean(vals)) if vals else None
        row["gt_mae_255"] = float(np.mean([g["mae_255"] for g in gts[key]]))
        row["gt_ssim"] = float(np.mean([g["ssim"] for g in gts[key]]))
        row["gt_region_mae_255"] = float(np.mean([g["changed_region"]["model_mae_255"] for g in gts[key]]))
        out.append(row)
    return out


def cmd_references(a) -> None:
    from causaldiffae.model import CausalDiffAE
    from causaldiffae.predictors import load_predictors

    model, _ = CausalDiffAE.load(a.run or a.data)
    images, labels, table, sim = _data(model, a.data, a.n)
    ppath = Path(a.predictors) if a.predictors else Path(metrics.__file__).parents[1] / "pretrained" / f"{a.data}.predictors.safetensors"
    rows = reference_rows(model, images, labels, table, sim, load_predictors(ppath))
    _write(rows, Path(a.out), f"References ({a.data}, {len(labels)} test images, predictors {ppath.name})")


def cmd_fraction(a) -> None:
    import yaml

    out = Path(a.out) / Path(a.data).name
    config = None
    if a.gpu:  # the larger preset, written as a config file so every run's train command reads it
        d = ablation.budget_config(a.steps or ablation.DEFAULT_STEPS, batch_size=a.batch_size, gpu=True).to_dict()
        d["train"]["betas"] = list(d["train"]["betas"])
        if a.time:  # the steps are not known yet: the schedule follows the length the time plan fixes
            d["train"].update(warmup_steps=None, ema_decay=None, checkpoint_every=None)
        out.mkdir(parents=True, exist_ok=True)
        config = out / "gpu-config.yaml"
        config.write_text(yaml.safe_dump(d, sort_keys=False))
    ablation.label_fraction(a.graph or a.data, a.data, out, fractions=a.fractions, seeds=a.seeds, steps=a.steps, time=a.time,
                            config=config, batch_size=a.batch_size, n=a.n, eval_steps=a.steps_eval, jobs=a.jobs,
                            device="cuda" if a.gpu else None)


def cmd_strength(a) -> None:
    ablation.strength(a.run, a.data, a.out, n=a.n, eval_steps=a.steps_eval)


def cmd_recon_steps(a) -> None:
    from causaldiffae.model import CausalDiffAE

    model, _ = CausalDiffAE.load(a.run)
    images, *_ = _data(model, a.data, a.n)
    df = metrics.reconstruction(model, images, steps=(10, 20, 50, 100))
    Path(a.out).mkdir(parents=True, exist_ok=True)
    df.to_csv(Path(a.out) / "results.csv", index=False)
    (Path(a.out) / "results.md").write_text(markdown_table(df, 4) + "\n")
    print(df.to_string(index=False))


def cmd_baselines(a) -> None:
    from causaldiffae.model import CausalDiffAE

    rows = []
    entries = [("CausalDiffAE (DDIM abduction)", a.run, "ddim"), ("reference (noise abduction)", a.run, "noise")]
    if a.diffae:
        entries.append(("Diff-AE (no mechanisms)", a.diffae, "ddim"))
    for name, run, abduction in entries:
        model, _ = CausalDiffAE.load(run)
        images, labels, table, sim = _data(model, a.data, a.n)
        row = {"model": name}
        row.update(score(model, images, labels, table, sim, _predictors(Path(a.run) / "predictors.safetensors", model, a.data),
                         steps=a.steps_eval, strength=a.strength, abduction=abduction, composition=abduction == "ddim"))
        rows.append(row)
    _write(rows, Path(a.out), f"Baselines ({a.data})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fraction", help="= causaldiffae ablate label-fraction (into OUT/<data name>)")
    f.add_argument("--data", required=True, help="a generated data set (pendulum, morphomnist) or its folder")
    f.add_argument("--graph", help="graph (default: the shipped graph named like the data)")
    f.add_argument("--fractions", type=float, nargs="+", default=list(ablation.FRACTIONS))
    f.add_argument("--seeds", type=int, default=3)
    budget = f.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, help="training steps per run (default: 600, unless --time)")
    budget.add_argument("--time", help="training time of EACH run, e.g. 10m (= causaldiffae ablate label-fraction --time)")
    f.add_argument("--batch-size", type=int)
    f.add_argument("--jobs", type=int, default=1)
    f.add_argument("--gpu", action="store_true", help="the larger model preset (ModelConfig.gpu_preset), batch 128, on CUDA")
    f.add_argument("--out", default="runs/ablation")
    s = sub.add_parser("strength", help="= causaldiffae ablate strength")
    s.add_argument("--run", nargs="+", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--out", default="runs/strength")
    r = sub.add_parser("recon-steps")
    r.add_argument("--run", required=True)
    r.add_argument("--data", required=True)
    r.add_argument("--out", default="runs/recon")
    b = sub.add_parser("baselines")
    b.add_argument("--run", required=True)
    b.add_argument("--diffae")
    b.add_argument("--data", required=True)
    b.add_argument("--strength", type=float, default=1.0)
    b.add_argument("--out", default="runs/baselines")
    c = sub.add_parser("references")
    c.add_argument("--data", required=True, help="pendulum or morphomnist (or a generated folder, with --run)")
    c.add_argument("--run", help="the model whose graph and image size to use (default: the shipped model named like --data)")
    c.add_argument("--predictors", help="default: the shipped predictors of --data")
    c.add_argument("--out", default="runs/references")
    for q in (f, s, r, b, c):
        q.add_argument("--n", type=int, default=64, help="held-out images scored")
        q.add_argument("--steps-eval", type=int, default=20, help="DDIM steps of every query")
    a = p.parse_args()
    torch.manual_seed(0)
    from causaldiffae.errors import CausalDiffAEError

    try:
        {"fraction": cmd_fraction, "strength": cmd_strength, "recon-steps": cmd_recon_steps, "baselines": cmd_baselines,
         "references": cmd_references}[a.cmd](a)
    except CausalDiffAEError as e:  # a bad value (e.g. --time 10x): one line, as from causaldiffae ablate
        print(f"ablations.py: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
