"""Counterfactual quality against network evaluations per image (NFE), on a shipped model.

    PYTHONPATH=. python experiments/bench_queries.py --model pendulum --n 64 --out runs/nfe

For each query setting (DDIM inversion steps, decoding steps, how many of the decoding steps use
guidance, guidance weight w, refine and whether it is carried) it answers one intervention per node on ``--n`` held-out
(test split) images, each image taking another image's value (``metrics.default_interventions``),
and scores the answers against the simulator's true counterfactuals:

- ``gt_mae``: pixel MAE (0-255) against the true counterfactual image, whole image;
- ``gt_changed``: the same MAE restricted to the pixels where the true counterfactual differs
  from the factual image (by more than 2 levels in some channel): the part an intervention must
  change, where copying the input scores badly;
- ``eff_int`` / ``eff_desc`` / ``eff_other``: effectiveness, the anti-causal predictors' MAE (normalised
  label units) against the simulator's counterfactual labels, for the intervened node, its
  descendants and the other nodes;
- ``null_l1``: the null query (abduct, decode with the unchanged latents), L1 (0-255) to the input;
- ``d_gt_vs_first`` / ``d_changed_vs_first`` (and ``_se``): the paired difference, per image, of the
  whole-image and changed-region error against the first setting run (the speed issue's query
  unless ``--only`` starts elsewhere), with its standard error: how settings compare on the same
  images, far better resolved than the two ± of the separate means;
- ``af_changed`` / ``af_int`` / ``af_desc``: the achieved fraction of the changed-region error and of
  the intervened and descendant effectiveness: (do-nothing - setting) / (do-nothing - floor) of the
  mean errors (1: the true counterfactual; 0: the factual image returned unchanged).

Beside them: the do-nothing answer (the factual image itself) and the floor (the true
counterfactual image scored the same way: 0 pixel error; the predictors' own error on true images).
``±`` is the standard error over images (pixel scores) of the mean over interventions. Writes
``results.csv`` / ``results.md`` and a plot into ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from causaldiffae import counterfactual as cf  # noqa: E402
from causaldiffae import metrics  # noqa: E402

# (inversion steps, decoding steps, guided steps (None = all), guidance weight, refine, refine_carry);
# refine_carry: the corrections reuse their network call in the next inversion step (False: exact)
SETTINGS = [
    (20, 20, None, 1.5, 0, False),  # the query the speed issue started from: 60 NFE
    (20, 20, 0, 1.0, 0, False),  # the default query since the causal-fidelity models (w = 1): 40 NFE
    (20, 20, 0, 1.0, 1, False),  # exact abduction (refine = 1)
    (50, 50, 0, 1.0, 0, False),  # the fine end of the curve
    (15, 15, 0, 1.0, 0, False),
    (20, 10, 0, 1.0, 0, False),
    (10, 20, 0, 1.0, 0, False),
    (10, 10, 0, 1.0, 0, False),
    (10, 10, 0, 1.0, 1, False),  # the default from the first cost curve: 30 NFE
    (8, 8, 0, 1.0, 0, False),
    (5, 5, 0, 1.0, 0, False),
    (20, 20, None, 2.0, 0, False),
    (10, 10, None, 2.0, 0, False),
    (15, 15, 0, 1.0, 1, False),
    (10, 10, None, 1.5, 1, False),  # those settings at the speed issue's guidance weight
    (10, 10, 0, 1.0, 1, True),  # one carried correction: the default now, 21 NFE
    (12, 12, 0, 1.0, 1, True),
    (15, 15, 0, 1.0, 1, True),
    (20, 20, 0, 1.0, 1, True),
    (8, 8, 0, 1.0, 1, True),
]


def _per_image_mae(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> np.ndarray:
    """Per-image MAE on the 0-255 scale of ``(B, C, H, W)`` images in [-1, 1], optionally over ``mask`` ``(B, 1, H, W)``."""
    err = (a - b).abs().mul(127.5)
    if mask is None:
        return err.flatten(1).mean(1).numpy()
    m = mask.expand_as(err).float()
    return ((err * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1)).numpy()


def load(model_name: str, n: int, seed: int = 0):
    from causaldiffae.data import open_dataset
    from causaldiffae.demo import PRETRAINED_DIR
    from causaldiffae.model import CausalDiffAE
    from causaldiffae.predictors import load_predictors

    model, _ = CausalDiffAE.load(model_name)
    predictors = load_predictors(PRETRAINED_DIR / f"{model_name}.predictors.safetensors")
    size = model.image_shape[1]
    ds = open_dataset(model_name, model.graph.label_columns, size=size, split="test")
    simulator, native, _ = metrics.find_simulator(model_name, size=size)
    rng = np.random.default_rng(seed)
    sub = ds.subset(np.sort(rng.choice(len(ds), size=min(n, len(ds)), replace=False)))
    images, labels = sub.batch(np.arange(len(sub)))
    table = metrics._table_for(model.graph, labels, sub.extra)
    return model, predictors, images, labels, table, simulator, native


def score_answers(model, predictors, images, labels, table, simulator, native, answers):
    """Scores of ``answers``: one ``(B, C, H, W)`` tensor per intervention of ``default_interventions``."""
    gt, gtc, effs = [], [], {"intervened": [], "descendants": [], "non_descendants": []}
    for do, x_cf in zip(metrics.default_interventions(model.graph, labels, seed=0), answers):
        truth, _ = metrics.true_counterfactual_images(model, table, do, simulator, size=native)
        changed = ((truth - images).abs().mul(127.5) > 2).any(1, keepdim=True)
        gt.append(_per_image_mae(x_cf, truth))
        gtc.append(_per_image_mae(x_cf, truth, changed))
        e = metrics.effectiveness(model, predictors, images, do, labels=labels, simulator=simulator, table=table,
                                  counterfactuals=x_cf)
        for k in effs:
            if e[k] is not None:
                effs[k].append(e[k])
    gt, gtc = np.mean(gt, 0), np.mean(gtc, 0)  # per image, mean over interventions
    se = lambda v: float(v.std(ddof=1) / np.sqrt(len(v)))  # noqa: E731
    return {"_gt": gt, "_gtc": gtc, "gt_mae": float(gt.mean()), "gt_mae_se": se(gt), "gt_changed": float(gtc.mean()), "gt_changed_se": se(gtc),
            "eff_int": float(np.mean(effs["intervened"])),
            "eff_desc": float(np.mean(effs["descendants"])) if effs["descendants"] else None,
            "eff_other": float(np.mean(effs["non_descendants"])) if effs["non_descendants"] else None}


def _label(r) -> str:
    """``inv/dec`` plus the guidance weight and refine where they are not the plain query's."""
    lab = f"{int(r.inv)}/{int(r.dec)}"
    if r.w != 1:
        lab += f" w{r.w:g}" + ("" if int(r.guided) == int(r.dec) else f"x{int(r.guided)}")
    carried = bool(r.get("carry", False)) and r.carry == r.carry  # absent / NaN in older result files
    return lab + (f" r{int(r.refine)}" + ("c" if carried else "") if r.refine else "")


def achieved_fractions(df: pd.DataFrame) -> pd.DataFrame:
    """Add ``af_changed`` / ``af_int`` / ``af_desc``: the share of the achievable change each setting makes,
    ``(do-nothing - setting) / (do-nothing - floor)`` of the mean errors (1 = the true counterfactual,
    0 = the factual image returned unchanged)."""
    base = df[df.setting.str.startswith("do nothing")].iloc[0]
    floor = df[df.setting.str.startswith("floor")].iloc[0]
    df = df.copy()
    for key, col in (("gt_changed", "af_changed"), ("eff_int", "af_int"), ("eff_desc", "af_desc")):
        if key in df and not pd.isna(base[key]) and base[key] - floor[key] > 0:
            df[col] = (base[key] - df[key]) / (base[key] - floor[key])
    return df


def plot(csv: Path, out: Path, title: str = "") -> None:
    """Scores against forwards per image, the do-nothing answer as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = pd.read_csv(csv)
    base = df[df.setting.str.startswith("do nothing")].iloc[0]
    runs = df[df.nfe > 0]
    panels = [("gt_changed", "changed-region error (0-255)"), ("eff_int", "effectiveness MAE, intervened"),
              ("gt_mae", "whole-image error (0-255)"), ("null_l1", "null query L1 (0-255)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.0))
    for ax, (key, panel) in zip(axes, panels):
        ax.scatter(runs.nfe, runs[key], s=14)
        for _, r in runs.iterrows():
            ax.annotate(_label(r), (r.nfe, r[key]), fontsize=6)
        if key in base and not pd.isna(base[key]):
            ax.axhline(base[key], ls="--", c="grey", lw=0.8, label="do nothing")
        ax.set_xlabel("network forwards per image"), ax.set_title(panel, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"labels: inversion / decoding steps, w = guidance weight at every decoding step (none: w = 1), "
                 f"r1 = refine 1 (exact), r1c = one carried correction; {title}", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print("wrote", out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="pendulum", help="a shipped model with a simulator (pendulum, morphomnist)")
    ap.add_argument("--n", type=int, default=64, help="held-out images")
    ap.add_argument("--out", default="runs/nfe")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--precision", default="auto", help="inference precision of the UNet (fp32, bf16, auto: the library default)")
    ap.add_argument("--only", type=int, nargs="*", help="indices into SETTINGS")
    ap.add_argument("--plot", help="only draw the plot of --out's results.csv into this PNG")
    ap.add_argument("--title", default="", help="the plot's subtitle (model, images)")
    a = ap.parse_args()
    if a.plot:
        return plot(Path(a.out) / "results.csv", Path(a.plot), a.title)
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model, predictors, images, labels, table, simulator, native = load(a.model, a.n)
    model.set_inference_mode("auto", a.precision)
    interventions = metrics.default_interventions(model.graph, labels, seed=0)
    rows = []
    truths = [metrics.true_counterfactual_images(model, table, do, simulator, size=native)[0] for do in interventions]
    base = dict(setting="do nothing (factual image)", nfe=0)
    per_image: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    rows.append(base | score_answers(model, predictors, images, labels, table, simulator, native, [images] * len(truths)))
    rows.append(dict(setting="floor (true counterfactual)", nfe=0)
                | score_answers(model, predictors, images, labels, table, simulator, native, truths))
    for r in rows:
        r.pop("_gt"), r.pop("_gtc")
    print(pd.DataFrame(rows).to_string(index=False), flush=True)
    chosen = [SETTINGS[i] for i in a.only] if a.only else SETTINGS
    for inv, dec, guided, w, refine, carry in chosen:
        t0 = time.perf_counter()
        answers = [cf.counterfactual(model, images, do=do, strength=w, steps=dec, inversion_steps=inv, guided_steps=guided,
                                     refine=refine, refine_carry=carry).images for do in interventions]
        null = cf.counterfactual(model, images, do={}, strength=w, steps=dec, inversion_steps=inv, guided_steps=guided,
                                 refine=refine, refine_carry=carry).images
        secs = time.perf_counter() - t0
        row = dict(setting=f"inv {inv}, dec {dec}, guided {'all' if guided is None else guided}, w {w}"
                   + (f", refine {refine}" + (" carried" if carry else "") if refine else ""),
                   inv=inv, dec=dec, guided=dec if guided is None else guided, w=w, refine=refine,
                   carry=bool(carry and refine), nfe=cf.forwards_per_image(dec, inv, guided, w, refine, carry))
        row |= score_answers(model, predictors, images, labels, table, simulator, native, answers)
        per_image[row["setting"]] = (row.pop("_gt"), row.pop("_gtc"))
        ref = per_image[next(iter(per_image))]  # paired against the first setting run (SETTINGS[0] unless --only)
        for k, (mine, theirs) in (("gt", (per_image[row["setting"]][0], ref[0])), ("changed", (per_image[row["setting"]][1], ref[1]))):
            d = mine - theirs
            row[f"d_{k}_vs_first"] = float(d.mean())
            row[f"d_{k}_vs_first_se"] = float(d.std(ddof=1) / np.sqrt(len(d))) if d.any() else 0.0
        row["null_l1"] = float(_per_image_mae(null, images).mean())
        row["seconds"] = round(secs, 1)
        rows.append(row)
        print(pd.DataFrame([row]).to_string(index=False, header=len(rows) == 3), flush=True)
        pd.DataFrame(rows).to_csv(out / "results.csv", index=False)
    df = achieved_fractions(pd.DataFrame(rows))
    df.to_csv(out / "results.csv", index=False)
    print(df.to_string(index=False))


if __name__ == "__main__":
    main()
