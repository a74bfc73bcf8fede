"""Benchmark: counterfactual images per second (abduction by DDIM inversion + DDIM decoding).

    python experiments/bench_counterfactual.py [--batch 64] [--model pendulum] [--repeat 3] [--also 10/10/1 10/10/1c ...]

Times the full query (encode, invert, intervene, decode) on ``--batch`` images with a shipped (or
``--run``) model, in one process, the variants interleaved (A, B, C, A, B, C, ...) and the median
reported, so that load from other processes hits them alike:

- ``before``: the query the speed issue measured (20 inversion + 20 decoding steps, guidance at
  ``--strength`` 1.5 at every step: 60 network forwards per image), fp32, channels_last;
- ``before, eager``: the same in plain fp32 eager mode;
- ``default``: :func:`causaldiffae.counterfactual.counterfactual` with its defaults (query
  settings ``causaldiffae.counterfactual.DEFAULT_*``, its default guidance weight and refine) at
  the default inference precision (``causaldiffae.model.INFERENCE_PRECISION``);
- ``--also INV/DEC/REFINE``: more settings of the quality-cost curve (``bench_queries.py``) at the
  default precision and weight; the corrections are exact, or carried with a ``c`` suffix
  (``10/10/1c``, see ``refine_carry``); a further ``p`` suffix drops the reconstruction residual
  (``10/10/1cp``: the default query before the residual, see ``residual``).

The ``before`` queries never carry the residual (the speed issue's query had none).

Then the default query runs alone in a fresh process, which reports its peak resident memory.
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _load(args):
    from causaldiffae.model import CausalDiffAE

    model, _ = CausalDiffAE.load(args.run or args.model)
    return model


def peak_rss_gb() -> float:
    """Peak resident memory of this process (VmHWM, which exec resets; ru_maxrss would not)."""
    try:
        return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024**2
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--strength", type=float, default=1.5, help="the guidance weight of the 'before' query")
    ap.add_argument("--also", nargs="*", default=[], metavar="INV/DEC/REFINE",
                    help="more queries at the default precision and weight, e.g. 10/10/1 (exact corrections) or 10/10/1c (carried)")
    ap.add_argument("--model", default="pendulum", help="shipped model name")
    ap.add_argument("--run", default=None, help="a run folder or checkpoint instead of --model")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from causaldiffae import counterfactual as cf
    from causaldiffae.model import INFERENCE_PRECISION
    from causaldiffae.precision import resolve_precision

    model = _load(args)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch, *model.image_shape, generator=g) * 2 - 1
    root = model.graph.roots[0]
    do = {root: float(model.graph.denormalise_value(root, 0.5))}
    if args.memory_only:
        model.counterfactual(images, do=do)  # the default query
        print(f"{peak_rss_gb():.3f}")
        return

    dec, inv, guided = cf.query_settings()
    w0 = inspect.signature(cf.counterfactual).parameters["strength"].default
    r0 = cf.resolve_refine(inspect.signature(cf.counterfactual).parameters["refine"].default)
    c0 = cf.resolve_refine_carry(None)
    before = dict(steps=20, strength=args.strength, refine=0, residual=False)
    res0 = cf.resolve_residual(None)
    variants = {  # name: (inference mode, precision, query keywords)
        f"before (20 + 20 steps, guided at w = {args.strength:g}, fp32, channels_last)": ("auto", "fp32", before),
        "before, fp32 eager": ("eager", "fp32", before),
        f"default ({inv} + {dec} steps, w = {w0:g}, refine {r0}{' carried' if c0 and r0 else ''}"
        f"{', residual (gate ' + format(res0[1], 'g') + ')' if res0[0] else ''}, {INFERENCE_PRECISION})":
            ("auto", INFERENCE_PRECISION, {}),
    }
    for spec in args.also:
        plain = spec.endswith("p")
        spec = spec.rstrip("p")
        carry = spec.endswith("c")
        i, d, r = (int(v) for v in spec.rstrip("c").split("/"))
        residual = res0[0] and not plain
        variants[f"{i} + {d} steps, w = {w0:g}, refine {r}{' carried' if carry and r else ''}"
                 f"{', residual' if residual else ''}, {INFERENCE_PRECISION}"] = (
            "auto", INFERENCE_PRECISION, dict(steps=d, inversion_steps=i, refine=r, refine_carry=carry, residual=residual))
    copies = {}
    for name, (mode, precision, kw) in variants.items():
        m = _load(args).set_inference_mode(mode, precision)
        m.counterfactual(images[:2], do=do, **kw)  # warm-up
        copies[name] = (m, kw)
    nfe = {name: cf.forwards_per_image(kw.get("steps"), kw.get("inversion_steps"), None, kw.get("strength", w0),
                                       kw.get("refine", r0), kw.get("refine_carry", c0), kw.get("residual"))
           for name, (_, _, kw) in variants.items()}
    print(f"machine: {open('/proc/cpuinfo').read().split('model name')[1].split(':')[1].splitlines()[0].strip()}, "
          f"{os.cpu_count()} logical CPUs, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"bf16 units: {resolve_precision('auto') == 'bf16'}, load avg {os.getloadavg()[0]:.1f}")
    print(f"batch {args.batch}, {model.image_shape[1]}x{model.image_shape[2]}, model {args.run or args.model}", flush=True)
    times: dict[str, list[float]] = {k: [] for k in copies}
    for r in range(args.repeat):
        for name, (m, kw) in copies.items():
            t0 = time.perf_counter()
            m.counterfactual(images, do=do, **kw)
            times[name].append(time.perf_counter() - t0)
        print(f"  round {r + 1}/{args.repeat}, load avg {os.getloadavg()[0]:.1f}", flush=True)
    ips = {k: args.batch / statistics.median(v) for k, v in times.items()}
    first = next(iter(ips))
    print("\n| query | forwards/image | counterfactual images/s (median) | vs before |\n|---|---|---|---|")
    for k, v in ips.items():
        print(f"| {k} | {nfe[k]} | {v:.2f} | {v / ips[first]:.2f}x |")
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-only", "--batch", str(args.batch),
                          "--model", args.model] + (["--run", args.run] if args.run else [])
                         + (["--threads", str(args.threads)] if args.threads else []),
                         capture_output=True, text=True, check=True).stdout.split()
    print(f"\npeak resident memory of a default query on {args.batch} images (fresh process): {float(out[-1]):.2f} GB")
    print(f"load avg after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
