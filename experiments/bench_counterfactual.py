"""Benchmark: counterfactual images per second (abduction by DDIM inversion + guided DDIM decoding).

    python experiments/bench_counterfactual.py [--batch 64] [--size 32] [--steps 20] [--strength 1.5]
        [--run RUN] [--repeat 2]

With ``--run`` it times a trained model; otherwise a freshly initialised model with the default
configuration on the shipped Pendulum graph (speed does not depend on the weights). It times the
full query (encode, invert, intervene, decode with guidance) in the model's default (fastest)
inference mode and in plain fp32 eager mode, and reports peak resident memory of this process.
"""

from __future__ import annotations

import argparse
import platform
import resource
import time

import torch


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--strength", type=float, default=1.5)
    ap.add_argument("--run", default=None)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    from causaldiffae.graph import CausalGraph
    from causaldiffae.model import CausalDiffAE, ModelConfig
    from causaldiffae.networks import UNetConfig

    if args.run:
        model, _ = CausalDiffAE.load(args.run)
    else:
        graph = CausalGraph.load("pendulum")
        model = CausalDiffAE(graph, ModelConfig(unet=UNetConfig(image_size=args.size))).eval().requires_grad_(False)
    images = torch.rand(args.batch, *model.image_shape) * 2 - 1
    root = model.graph.roots[0]
    do = {root: float(model.graph.denormalise_value(root, 0.5))}

    def run(mode: str) -> float:
        model.set_inference_mode(mode)
        model.counterfactual(images[:2], do=do, strength=args.strength, steps=2)  # warm-up / compile
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            model.counterfactual(images, do=do, strength=args.strength, steps=args.steps)
            best = min(best, time.perf_counter() - t0)
        return args.batch / best

    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"batch {args.batch}, {args.size}x{args.size}, {args.steps} inversion + {args.steps} decoding steps, "
          f"guidance w={args.strength} (cond + null passes batched)")
    eager = run("eager")
    print(f"fp32 eager:            {eager:7.2f} counterfactual images/s")
    fast = run("auto")
    print(f"default (fastest) mode: {fast:7.2f} counterfactual images/s  ({fast / eager:.2f}x eager; "
          f"mode {model.inference_mode} -> {getattr(model.denoiser(), 'mode', 'eager')})")
    print(f"peak resident memory:   {peak_rss_gb():.2f} GB")


if __name__ == "__main__":
    main()
