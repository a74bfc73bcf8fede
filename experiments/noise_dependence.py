"""How much of one factor does another node's abducted noise carry?

Under the SCM every node's exogenous noise ``u_i`` is independent of the others, so the noise the
encoder abducts for a child must not carry its parent: what it carries, ``do(parent)`` keeps in the
child (``z'_child = f(z'_parent) + u_child``). For each run this script encodes test images (the
encoder alone: the posterior mean of ``u``, what a query abducts) and prints

* ``corr²``: for each pair of nodes, the mean squared correlation across images between their
  noise blocks' dimensions (0 for independent noise), and
* ``R²``: for each continuous node and each *other* node's noise block, the share of the node's
  true label variance a linear fit on that block explains (0 for independent noise; the node's own
  block gives its reading's R² for comparison).

    python experiments/noise_dependence.py --data morphomnist --run morphomnist runs/ablation/morpho-v2-1200-cycle_01-amd/runs/causal-0.1-seed0
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from causaldiffae.data import open_dataset
from causaldiffae.data.generate import model_generator_params, resolve_generated
from causaldiffae.model import CausalDiffAE


def r_squared(x: np.ndarray, y: np.ndarray) -> float:
    """Share of ``y``'s variance explained by a least-squares fit on ``x`` ``(N, d)`` with an intercept."""
    a = np.c_[x, np.ones(len(x))]
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    return float(1 - ((a @ coef - y) ** 2).mean() / y.var())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", nargs="+", required=True, help="shipped names or run folders")
    ap.add_argument("--data", required=True, help="the data the runs were trained on")
    ap.add_argument("--n", type=int, default=1024, help="test images encoded (the first n)")
    args = ap.parse_args()
    torch.set_grad_enabled(False)

    for run in args.run:
        model, meta = CausalDiffAE.load(run)
        g, size = model.graph, model.image_shape[1]
        spec = resolve_generated(args.data, size, model_generator_params(run, meta))
        data = open_dataset(spec, g.label_columns, size=size, split="test")
        images, labels = data.batch(np.arange(min(args.n, len(data))))
        u = torch.cat([model.encode(images[s:s + 256])[0] for s in range(0, len(images), 256)]).numpy()
        y = np.asarray(labels, dtype=np.float64)
        c = (u - u.mean(0)) / (u.std(0) + 1e-6)
        corr = c.T @ c / len(c)
        pairs = [f"{a}-{b} {float((corr[g.block(a), g.block(b)] ** 2).mean()):.3f}"
                 for k, a in enumerate(g.nodes) for b in g.nodes[k + 1:]]
        fits = [f"{n} from u_{b} {r_squared(u[:, g.block(b)], y[:, i]):.3f}"
                for i, n in enumerate(g.nodes) if not g.is_categorical(n) for b in g.nodes]
        print(f"{run} ({len(u)} test images)\n  corr²: " + ", ".join(pairs) + "\n  R²: " + ", ".join(fits))


if __name__ == "__main__":
    main()
