"""Draw counterfactuals with and without the reconstruction residual beside the true ones.

For one shipped model (or run) and one node: ``evaluate``'s pick of test images and its
intervention on that node (each image set to another's value), decoded plainly and with the
residual carried (``counterfactual(..., residual=True)``), and the simulator's true counterfactual.
Rows: factual | plain | residual | truth, one column per image; the caption gives the whole-image
pixel error (0-255) of both against the truth over the whole pick.

    python experiments/residual_figure.py morphomnist thickness -o docs/images/residual_morphomnist_thickness.png
    python experiments/residual_figure.py pendulum light -o docs/images/residual_pendulum_light.png
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from causaldiffae import counterfactual as cf
from causaldiffae import metrics as M
from causaldiffae.data import open_dataset
from causaldiffae.data.generate import model_generator_params, resolve_generated
from causaldiffae.metrics.ground_truth import true_counterfactual_images
from causaldiffae.metrics.interventions import _table_for, default_interventions
from causaldiffae.model import CausalDiffAE


def evaluation_pick(run: str, data_name: str | None, n: int):
    """A shipped model (or run) and ``evaluate``'s seeded pick of ``n`` test images (seed 0):
    ``(model, images (n, C, H, W), labels (n, n_nodes), factual table, simulator, simulator size)``."""
    model, meta = CausalDiffAE.load(run)
    size = model.image_shape[1]
    spec = resolve_generated(data_name or run, size, model_generator_params(run, meta))
    data = open_dataset(spec, model.graph.label_columns, size=size, split="test")
    sim, sim_size, _ = M.find_simulator(spec, size)
    rng = np.random.default_rng(0)  # evaluate's pick and interventions (seed 0)
    idx = np.sort(rng.choice(len(data), size=min(n, len(data)), replace=False))
    images, labels = data.batch(idx)
    table = _table_for(model.graph, labels, None if data.extra is None else data.extra.iloc[idx].reset_index(drop=True))
    return model, images, labels, table, sim, sim_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a shipped name (pendulum, morphomnist) or a run folder")
    ap.add_argument("node", help="the node to intervene on")
    ap.add_argument("--data", help="the data (default: the run's name)")
    ap.add_argument("--n", type=int, default=64, help="test images scored (evaluate's seeded pick)")
    ap.add_argument("--show", type=int, default=8, help="images drawn")
    ap.add_argument("--steps", type=int, default=20, help="DDIM steps (evaluate's protocol: 20, refine 0)")
    ap.add_argument("--refine", type=int, default=0)
    ap.add_argument("--gate", type=float, default=None, help="the residual's gate in grey levels (default: the library's)")
    ap.add_argument("-o", "--out", required=True)
    args = ap.parse_args()

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, images, labels, table, sim, sim_size = evaluation_pick(args.run, args.data, args.n)
    do = next(d for d in default_interventions(model.graph, labels, seed=0) if args.node in d)
    truth, _ = true_counterfactual_images(model, table, do, sim, size=sim_size)
    q = dict(steps=args.steps, refine=args.refine)
    plain = cf.counterfactual(model, images, do=do, residual=False, **q).images
    carried = cf.counterfactual(model, images, do=do, residual=True, residual_gate=args.gate, **q).images

    def mae(x):
        return float((cf.to_uint8(x).astype(float) - cf.to_uint8(truth).astype(float)).__abs__().mean())

    k = args.show
    caption = (f"{args.run}: do({args.node} = another test image's value), {args.steps} DDIM steps, refine {args.refine}; "
               f"pixel MAE to the truth over {len(images)} images: plain {mae(plain):.2f}, residual {mae(carried):.2f}, "
               f"factual {mae(images):.2f}")
    cf.image_grid([images[:k], plain[:k], carried[:k], truth[:k]], args.out,
                  row_names=["factual", "plain", "residual", "truth"], caption=caption)
    print(caption)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
