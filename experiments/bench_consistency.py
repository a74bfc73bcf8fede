"""What the categorical pseudo-label term and the decoder's latent cycle cost per training step, in one process, interleaved.

    PYTHONPATH=. python experiments/bench_consistency.py --repeat 5 --threads 2

The whole training step (step noise, stratified batch, Pyro-traced loss, backward, clipping,
AdamW, EMA) on the Morpho-MNIST configuration (``experiments/configs/morphomnist_v2.yaml``, batch
64, 32x32, a categorical digit node) with 10 % of the labels, three ways:

- ``off``: ``consistency_weight: 0``;
- ``unlabelled`` (the default): pseudo-labels on the rows lacking the digit label;
- ``all``: the labelled rows' shifted copies trained as well;
- ``cycle``: the default with the decoder's latent cycle at weight 0.1 (``cycle_weight``,
  ``experiments/configs/morphomnist_v2_cycle_01.yaml``): one more UNet forward and backward, one
  UNet forward without gradient and two encoder passes on ``cycle_rows`` (32) rows.

``--modes`` picks some of them (``off`` is always timed: the others are relative to it).

The term adds one encoder forward and backward on the shifted batch (and nothing with every label
present in the default). Each repetition times every mode once, in turn, so that load from other
processes hits all alike; the table reports the median seconds per step over ``--steps`` steps
and each mode's time relative to ``off``, with the CPU's flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from causaldiffae.data import open_dataset  # noqa: E402
from causaldiffae.graph import CausalGraph  # noqa: E402
from causaldiffae.model import build_model  # noqa: E402
from causaldiffae.precision import cpu_flags  # noqa: E402
from causaldiffae.training import RunConfig, StepNoise, _Loss, ema_update, make_optimizer, step_noise  # noqa: E402

CONFIG = ROOT / "experiments" / "configs" / "morphomnist_v2.yaml"
MODES = {"off": {"consistency_weight": 0.0}, "unlabelled": {}, "all": {"consistency_rows": "all"},
         "cycle": {"cycle_weight": 0.1}}


def build(overrides: dict, fraction: float):
    """One mode's training step as a closure (the body of ``train()``'s loop, minus files)."""
    graph = CausalGraph.load("morphomnist_v2")
    run = RunConfig.load(CONFIG)
    tc, mc = run.train, dataclasses.replace(run.model, **overrides)
    data = open_dataset("morphomnist", graph.label_columns, size=mc.unet.image_size, split="train")
    data = data.with_label_fraction(fraction, seed=0)
    mc.unet = dataclasses.replace(mc.unet, in_channels=data.channels)  # as pipeline.fit sizes it from the data
    mc.sync_encoder()
    labelled_rows = np.flatnonzero(~np.isnan(data.labels).all(axis=1))
    model = build_model(graph, mc, seed=0)
    ema, opt, loss_fn = model.ema_copy(), make_optimizer(model, tc, torch.device("cpu")), _Loss(model, "fp32")
    model.train()
    counter = [0]

    def step() -> None:
        s = counter[0]
        counter[0] += 1
        sn = step_noise(s, tc.seed, len(data), tc.batch_size, model.image_shape, graph.latent_dim, mc.timesteps,
                        mc.p_uncond, labelled_rows=labelled_rows, labelled_share=tc.labelled_share)
        images, labels = data.batch(sn.indices)
        terms = loss_fn(images, labels, sn, tc.gamma(s))
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip, foreach=True)
        opt.step()
        ema_update(ema, model, tc.ema_decay)

    return step


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5, help="rounds of every mode, interleaved")
    ap.add_argument("--steps", type=int, default=5, help="training steps per mode per round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fraction", type=float, default=0.1, help="label fraction of the training set")
    ap.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES), help="modes to time besides off")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    modes = ["off"] + [m for m in a.modes if m != "off"]
    steps = {name: build(MODES[name], a.fraction) for name in modes}
    for fn in steps.values():  # warm-up: first-call allocations
        fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(a.repeat):
        for name, fn in steps.items():
            t0 = time.perf_counter()
            for _ in range(a.steps):
                fn()
            times[name].append((time.perf_counter() - t0) / a.steps)
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx2", "avx512f", "avx512_bf16", "amx")))
    print(f"torch {torch.__version__}, {a.threads} threads, CPU flags: {' '.join(flags) or 'unknown'}")
    print(f"Morpho-MNIST v2 config, batch 64, {a.fraction:.0%} labels, median of {a.repeat} rounds x {a.steps} steps")
    print("| mode | s/step | relative to off |\n|---|---:|---:|")
    base = statistics.median(times["off"])
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"| {name} | {m:.3f} | {m / base:.2f}x |")


if __name__ == "__main__":
    main()
