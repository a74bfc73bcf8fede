"""Morpho-MNIST in the counterfactual benchmark's units (Melistas et al. 2024), shipped model.

    OMP_NUM_THREADS=2 python experiments/morpho_field.py [--n 64] [--steps 20] [--strength 2] [--seed 0]

On ``--n`` scenes of the test split (held-out digits), for do(thickness), do(intensity) and
do(digit) (each image gets another image's value, as ``causaldiffae evaluate`` does): thickness MAE
(pixels) and intensity MAE (0-255) by the shipped predictors (thickness given the intended
intensity) and by morphometry of the image, and digit accuracy, for the model, the do-nothing
baseline (the factual image) and the floor (the simulator's true counterfactual; none for
do(digit), which has no true counterfactual); then composition L1 (0-255) after 1 and 10 null
cycles. Prints markdown rows for docs/results.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from causaldiffae import metrics
from causaldiffae.data import ImageLabelDataset
from causaldiffae.data.generate import model_generator_params
from causaldiffae.data.simulator import simulator_from_params
from causaldiffae.model import CausalDiffAE
from causaldiffae.predictors import default_predictors_path, load_predictors


def fmt(v):
    return "-" if v is None else f"{v:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--strength", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cycles", type=int, default=10)
    ap.add_argument("--predictors", help="predictors file (default: the shipped ones)")
    ap.add_argument("--save", help="save the images (factual, counterfactuals, truth) to this .pt file")
    ap.add_argument("--rescore", help="score images saved with --save instead of running the model")
    args = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.time()
    model, meta = CausalDiffAE.load("morphomnist")
    pred = load_predictors(args.predictors or default_predictors_path("morphomnist"))
    sim = simulator_from_params(model_generator_params("morphomnist", meta))
    g = model.graph
    H = model.image_shape[1]
    table = sim.split_rows("test", args.n, seed=args.seed)
    images, labels = ImageLabelDataset.from_arrays(sim.render(table, H), table[g.label_columns].to_numpy(np.float32), g.nodes).batch(range(len(table)))
    saved = torch.load(args.rescore) if args.rescore else {}
    ab = None if args.rescore else model.abduct(images, steps=args.steps)
    print(f"{len(table)} test digits, {args.steps} DDIM steps, strength {args.strength}, seed {args.seed}")
    print("| intervention | row | thickness MAE px (predictor) | thickness MAE px (morphometry) | intensity MAE (predictor) | intensity MAE (morphometry) | digit accuracy |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for do in metrics.default_interventions(g, labels, seed=args.seed):
        (node,) = do
        x_cf = saved[node] if args.rescore else model.predict(ab, model.intervene(ab, do), strength=args.strength, steps=args.steps)
        saved[node] = x_cf
        raw, cf = sim(table, {node: do[node].numpy()}, size=H)
        intended = {c: cf[c].to_numpy() for c in ("thickness", "intensity", "digit")}
        rows = [("model", x_cf), ("do-nothing", images)]
        if sim.has_true_counterfactual(do):
            truth, _ = ImageLabelDataset.from_arrays(raw, np.zeros((len(table), 1)), ["u"]).batch(range(len(table)))
            rows.append(("floor (true cf)", truth))
        for name, x in rows:
            r = sim.field_metrics(x, intended, predictors=pred, do=do)
            print(f"| do({node}) | {name} | {fmt(r['thickness_mae_px']['predictor'])} | {fmt(r['thickness_mae_px']['morphometry'])} | "
                  f"{fmt(r['intensity_mae']['predictor'])} | {fmt(r['intensity_mae']['morphometry'])} | {fmt(r['digit_accuracy']['predictor'])} |")
        if not sim.has_true_counterfactual(do):
            print(f"| do({node}) | floor | no true counterfactual: {sim.no_true_counterfactual[node]} | | | | |")
    if args.save:
        torch.save(saved, args.save)
    if args.rescore:
        return
    comp = metrics.composition(model, images, cycles=(1, args.cycles), steps=args.steps)
    print(f"composition L1 (0-255): after 1 cycle {comp['l1']['1']:.3f}, after {args.cycles} cycles {comp['l1'][str(args.cycles)]:.3f}")
    print(f"{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
