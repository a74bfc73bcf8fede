"""A counterfactual demo on a shipped model, with the simulator's exact answers beside it.

``causaldiffae demo`` draws scenes from the *test split* of the data set the model was trained on
(never a training scene: Pendulum's grid is finite and Morpho-MNIST has 5,000 digits, so fresh
draws would repeat training images), rendered as the model saw them (the generator parameters its checkpoint records,
else ``causaldiffae/pretrained/generators.json``). It intervenes on every
node in turn (each image gets the value of another image), and writes one grid: per scene, the
factual image, then for each intervention the model's counterfactual and the simulator's true one
(for an intervention without an exact counterfactual, Morpho-MNIST's do(digit), the simulator's
swap to another writer's digit is shown and no ground truth is scored). It prints, per
intervention, the effectiveness (anti-causal predictors' MAE in normalised units for the
intervened node, its descendants and the rest) and the pixel agreement with the truth.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from causaldiffae import counterfactual as cf
from causaldiffae import metrics
from causaldiffae.checkpoint import PRETRAINED_DIR
from causaldiffae.errors import CheckpointError


def shipped_predictors(name: str) -> Path:
    p = PRETRAINED_DIR / f"{name}.predictors.safetensors"
    if not p.is_file():
        raise CheckpointError(f"no shipped predictors for {name!r} at {p}")
    return p


def run_demo(name: str, out: str | Path = "demo", n: int = 6, steps: int = 20, strength: float = 1.0,
             seed: int = 0) -> dict[str, Any]:
    """Run the demo for the shipped model ``name``; returns the measured figures (also printed)."""
    from causaldiffae.data import ImageLabelDataset
    from causaldiffae.data.generate import model_generator_params
    from causaldiffae.data.simulator import get_simulator, simulator_from_params
    from causaldiffae.model import CausalDiffAE
    from causaldiffae.predictors import load_predictors

    t0 = time.perf_counter()
    model, meta = CausalDiffAE.load(name)
    predictors = load_predictors(shipped_predictors(name))
    g = model.graph
    C, H, _ = model.image_shape
    params = model_generator_params(name, meta)
    simulator = simulator_from_params(params) if params else get_simulator(name, size=H)
    table = demo_scenes(simulator, n, seed)
    raw = simulator.render(table, H)
    images, labels = ImageLabelDataset.from_arrays(raw, table[g.label_columns].to_numpy(np.float32), g.nodes).batch(range(n))
    ab = model.abduct(images, steps=steps, refine=0)  # the demo as drawn in docs/results.md: plain DDIM inversion
    rows: list[list[torch.Tensor]] = [[images[i]] for i in range(n)]
    titles = ["factual"]
    report = []
    for do in metrics.default_interventions(g, labels, seed=seed):
        (node,) = do
        z_cf = model.intervene(ab, do)
        x_cf = model.predict(ab, z_cf, strength=strength, steps=steps)
        truth, _ = metrics.true_counterfactual_images(model, table, do, simulator, size=H)
        exact = simulator.has_true_counterfactual(do)
        eff = metrics.effectiveness(model, predictors, images, do, labels=labels, simulator=simulator, table=table,
                                    counterfactuals=x_cf)
        gt = metrics.ground_truth_error(model, images, table, do, simulator, counterfactuals=x_cf, truth=truth) if exact else None
        report.append({"do": node, "affected": model.scm.affected(do), "effectiveness": eff, "ground_truth": gt,
                       "no_true_counterfactual": None if exact else simulator.no_true_counterfactual[node]})
        for i in range(n):
            rows[i] += [x_cf[i], truth[i]]
        titles += [f"do({node})", "true" if exact else "other writer"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    grid = cf.image_grid([torch.stack(r) for r in rows], out / "grid.png", col_names=titles)
    elapsed = time.perf_counter() - t0
    start = meta.get("init_from") or {}
    trained = (f"fine-tuned {meta.get('step')} steps from a {start['step']}-step model" if start.get("step") is not None
               else f"trained {meta.get('step')} steps")
    print(f"causaldiffae demo: shipped {name!r} model ({trained}), {n} held-out (test split) scenes, "
          f"{steps} DDIM steps, strength {strength}")
    print(f"grid: {grid}  (per row: factual, then for each do(): counterfactual | true counterfactual)")
    print(f"{'intervention':28s} {'MAE intervened':>15s} {'descendants':>12s} {'others':>8s} {'SSIM vs truth':>14s}")
    for r in report:
        e = r["effectiveness"]
        f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"{'do(' + r['do'] + ')':28s} {f(e.get('intervened')):>15s} {f(e.get('descendants')):>12s} "
              f"{f(e.get('non_descendants')):>8s} {f(r['ground_truth'] and r['ground_truth']['ssim']):>14s}")
    print("MAE in normalised label units (label - loc) / scale, read by anti-causal predictors; "
          f"{elapsed:.0f} s in all")
    for r in report:
        if r["no_true_counterfactual"]:
            print(f"do({r['do']}): no ground truth: {r['no_true_counterfactual']}")
    print(f"scenes: rows {table['row'].tolist()} of the test split ({simulator!r})")
    return {"report": report, "grid": str(grid), "seconds": elapsed, "scenes": table}


def demo_scenes(simulator, n: int, seed: int = 0):
    """``n`` rows of the simulator's data set drawn from its test split only (seeded): the label table
    with the exogenous columns, a ``row`` column (row of the generated data set) and ``split`` (all "test")."""
    return simulator.split_rows("test", n, seed=10_000 + seed)
