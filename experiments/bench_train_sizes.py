"""Seconds per training step of the default model by image size: the table of docs/training.md#how-long.

    python experiments/bench_train_sizes.py --sizes 16 32 64 --steps 4 --threads 2

Times ``--steps`` optimisation steps (batch ``--batch-size``, after one untimed step) of the
default ``ModelConfig`` at each size on random grey images with three labelled nodes, the same
work as ``causaldiffae train`` does per step (previews and checkpoints not included). Prints a
Markdown table with the CPU, the thread count and the load average during the measurement (on a
shared machine the figures are slower than on an idle one: say so beside them).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def seconds_per_step(size: int, steps: int, batch: int) -> float:
    import networkx as nx

    from causaldiffae.data import ImageLabelDataset
    from causaldiffae.graph import CausalGraph
    from causaldiffae.model import ModelConfig
    from causaldiffae.networks import UNetConfig
    from causaldiffae.training import _Loss, build_model, step_noise

    g = nx.DiGraph()
    for n in ("a", "b", "c"):
        g.add_node(n, dim=2, loc=0.0, scale=1.0)
    g.add_edge("a", "b")
    graph = CausalGraph.from_networkx(g)
    rng = np.random.default_rng(0)
    ds = ImageLabelDataset.from_arrays(rng.integers(0, 255, (256, size, size, 1), dtype=np.uint8),
                                       rng.normal(size=(256, 3)).astype(np.float32), ["a", "b", "c"])
    cfg = ModelConfig(unet=UNetConfig(image_size=size, in_channels=1))
    model = build_model(graph, cfg)
    loss_fn = _Loss(model)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4)
    times = []
    for step in range(steps + 1):
        t = time.perf_counter()
        sn = step_noise(step, 0, len(ds), batch, model.image_shape, graph.latent_dim, cfg.timesteps, cfg.p_uncond)
        x, y = ds.batch(sn.indices)
        loss = loss_fn(x, y, sn, 1.0)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return float(np.median(times[1:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--steps", type=int, default=4, help="timed steps per size (after one untimed)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    for size in a.sizes:
        load0 = os.getloadavg()[0]
        s = seconds_per_step(size, a.steps, a.batch_size)
        rows.append((size, s, (load0 + os.getloadavg()[0]) / 2))
        print(f"{size}x{size}: {s:.2f} s/step (median of {a.steps}), load {rows[-1][2]:.1f}", flush=True)
    print(f"\n{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {a.threads} threads, batch {a.batch_size}\n")
    print("| image size | s/step | steps in 10 min | steps in 1 h | load average |")
    print("|---|---|---|---|---|")
    for size, s, load in rows:
        print(f"| {size}x{size} | {s:.2f} | {int(600 / s)} | {int(3600 / s)} | {load:.1f} |")


if __name__ == "__main__":
    main()
