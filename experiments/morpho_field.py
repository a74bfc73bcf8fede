"""Morpho-MNIST in the counterfactual benchmark's units (Melistas et al. 2024), shipped model: a thin
caller of ``causaldiffae.metrics.evaluate(..., metrics=("field", "composition", "effectiveness"))``.

    OMP_NUM_THREADS=2 python experiments/morpho_field.py [--n 64] [--steps 20] [--strength 2] [--seed 0]

It scores the same thing as ``causaldiffae evaluate --run morphomnist --data morphomnist --metrics
field composition effectiveness --strength 2`` (the field table: thickness MAE in pixels and intensity
MAE 0-255 by the shipped predictors and by morphometry, digit accuracy, each beside do-nothing,
floor and the published best; composition beside the published figures; the predictors' floors
and gate), on the pick of docs/results.md: ``--n`` rows of the simulator's test split (held-out
writers) drawn with ``--seed`` (``Simulator.split_rows``) rather than the generated folder's. Prints
the Markdown sections and writes nothing.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--strength", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cycles", type=int, default=10, help="composition: null cycles of the second column")
    ap.add_argument("--predictors", help="predictors file (default: the shipped ones)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.time()
    model, meta = CausalDiffAE.load("morphomnist")
    pred = load_predictors(args.predictors or default_predictors_path("morphomnist"))
    sim = simulator_from_params(model_generator_params("morphomnist", meta))
    g, H = model.graph, model.image_shape[1]
    table = sim.split_rows("test", args.n, seed=args.seed)
    dataset = ImageLabelDataset.from_arrays(sim.render(table, H), table[g.label_columns].to_numpy(np.float32), g.nodes)
    res = metrics.evaluate(model, dataset, predictors=pred, simulator=sim, table=table, n=len(table), steps=args.steps,
                           strength=args.strength, composition_cycles=sorted({1, args.cycles}), seed=args.seed,
                           metrics=("field", "composition", "effectiveness"))
    md = metrics.to_markdown(res, title=f"Morpho-MNIST in the benchmark's units ({len(table)} test digits, "
                                        f"{args.steps} DDIM steps, strength {args.strength}, seed {args.seed})")
    print(md)
    print(f"{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
