"""Speed of the diffusion decoder's UNet: inference modes, training, memory, against the matmul peak.

    PYTHONPATH=. python experiments/bench_decoder.py --batch 64 --repeat 5 --config cpu

Timings are the best of ``--repeat`` rounds, the modes interleaved within each round, so that load
from other processes on a shared machine distorts them as little as possible.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import time
import warnings
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from causaldiffae.networks import FastUNet, UNet, UNetConfig  # noqa: E402

COND_DIM = 16


def _config(name: str) -> UNetConfig:
    return UNetConfig.gpu_preset() if name == "gpu" else UNetConfig()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _best(fn: Callable[[], object], device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def matmul_peak(device: str, n: int = 2048, reps: int = 5) -> float:
    """fp32 GEMM GFLOP/s (best of ``reps``) of an ``n x n`` product."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    return max(2 * n**3 / _best(lambda: a @ b, device) for _ in range(reps)) / 1e9


def _inputs(cfg: UNetConfig, batch: int, device: str):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g).to(device)
    t = torch.randint(0, 1000, (batch,), generator=g).to(device)
    z = torch.randn(batch, COND_DIM, generator=g).to(device)
    return x, t, z


def train_worker(config: str, batch: int, steps: int, device: str, channels_last: bool) -> None:
    """Run training steps and print images/s and ru_maxrss (MB) on one line (used in a subprocess)."""
    torch.manual_seed(0)
    cfg = _config(config)
    model = UNet(cfg, COND_DIM).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, t, z = _inputs(cfg, batch, device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    target = torch.randn_like(x)

    def step() -> None:
        loss = (model(x, t, z) - target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    best = min(_best(step, device) for _ in range(steps))
    print(f"{batch / best:.2f} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeat", type=int, default=5, help="timed rounds per mode (best is reported)")
    p.add_argument("--steps", type=int, default=4, help="timed training steps (best is reported)")
    p.add_argument("--config", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--device", default="cpu")
    p.add_argument("--modes", default="eager,channels_last,bf16_autocast,jit,compile",
                   help="comma-separated inference modes")
    p.add_argument("--train-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--channels-last", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.train_worker:
        return train_worker(a.config, a.batch, a.steps, a.device, a.channels_last)
    warnings.simplefilter("ignore")

    cfg = _config(a.config)
    torch.manual_seed(0)
    unet = UNet(cfg, COND_DIM).to(a.device).eval()
    n_params = sum(p.numel() for p in unet.parameters())
    x, t, z = _inputs(cfg, a.batch, a.device)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        unet(x[:1], t[:1], z[:1])
    gflop = fc.get_total_flops() / 1e9
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    print(f"machine: {cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, load avg {os.getloadavg()[0]:.2f}")
    print(f"config {a.config}: {cfg}")
    print(f"parameters {n_params / 1e6:.2f} M, forward {gflop:.3f} GFLOP/image, batch {a.batch}")
    peak = matmul_peak(a.device)
    print(f"fp32 matmul peak (2048^3 sgemm): {peak:.1f} GFLOP/s")

    runners: dict[str, Callable[[], object]] = {}
    ref = FastUNet(unet, mode="eager")
    for mode in a.modes.split(","):
        t0 = time.perf_counter()
        if mode == "bf16_autocast":
            def run(ref=ref):
                with torch.autocast(a.device.split(":")[0], dtype=torch.bfloat16):
                    return ref(x, t, z)
        else:
            m = UNet(cfg, COND_DIM).to(a.device)
            m.load_state_dict(unet.state_dict())
            fast = FastUNet(m, mode=mode)
            run = (lambda fast=fast: fast(x, t, z))
        run()  # warm-up (compiles lazily for "compile")
        setup = time.perf_counter() - t0
        runners[mode] = run
        print(f"  prepared {mode:14s} in {setup:6.1f} s", flush=True)
    times = {m: float("inf") for m in runners}
    for _ in range(a.repeat):
        for m, run in runners.items():
            times[m] = min(times[m], _best(run, a.device))
    base = a.batch / times.get("eager", float("nan"))
    print(f"\n| mode | images/s | GFLOP/s | of peak | vs eager |\n|---|---|---|---|---|")
    for m, s in times.items():
        ips = a.batch / s
        print(f"| inference {m} | {ips:.0f} | {ips * gflop:.1f} | {ips * gflop / peak:.0%} | {ips / base:.2f}x |")
    for cl in (False, True):
        cmd = [sys.executable, os.path.abspath(__file__), "--train-worker", "--config", a.config, "--batch",
               str(a.batch), "--steps", str(a.steps), "--device", a.device] + (["--channels-last"] if cl else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
        ips, rss = float(out[0]), float(out[1])
        name = "training fp32 channels_last" if cl else "training fp32"
        print(f"| {name} (fwd+bwd+AdamW) | {ips:.0f} | {3 * ips * gflop:.1f} | {3 * ips * gflop / peak:.0%} "
              f"| peak RSS {rss / 1024:.2f} GB |")
    print(f"\nload avg after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
