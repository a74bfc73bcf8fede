"""Speed of the diffusion decoder's UNet: inference modes, training, memory, against the matmul peak.

    PYTHONPATH=. python experiments/bench_decoder.py --batch 64 --repeat 5 --config cpu

Timings are the best of ``--repeat`` rounds, the modes interleaved within each round, so that load
from other processes on a shared machine distorts them as little as possible.

With diffusers installed (``pip install causaldiffae[bench]``) it also times a peer: diffusers'
``UNet2DModel`` with the same widths, depth, attention resolution and group count (its parameter
count and FLOPs are printed beside ours), for inference and for training, interleaved with ours;
training there is reported as the median of ``--steps`` interleaved steps.
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


def peer_unet(cfg: UNetConfig):
    """diffusers' UNet2DModel with our widths, depth, attention resolution and groups (None without diffusers).

    Time conditioning by scale-shift group norm like ours; the latent enters as an "identity"
    class embedding added to the time embedding (ours scales every block by it, slightly more work).
    """
    try:
        from diffusers import UNet2DModel
    except ImportError:
        return None
    n = len(cfg.channel_mult)
    res = [cfg.image_size // 2**i for i in range(n)]
    down = tuple("AttnDownBlock2D" if r in cfg.attention_resolutions else "DownBlock2D" for r in res)
    up = tuple("AttnUpBlock2D" if r in cfg.attention_resolutions else "UpBlock2D" for r in reversed(res))
    widths = tuple(cfg.base_channels * m for m in cfg.channel_mult)
    attn_w = [w for w, r in zip(widths, res) if r in cfg.attention_resolutions] or [widths[-1]]
    return UNet2DModel(sample_size=cfg.image_size, in_channels=cfg.in_channels, out_channels=cfg.in_channels,
                       block_out_channels=widths, layers_per_block=cfg.num_res_blocks, down_block_types=down,
                       up_block_types=up, norm_num_groups=cfg.num_groups, attention_head_dim=attn_w[0] // cfg.num_heads,
                       resnet_time_scale_shift="scale_shift", class_embed_type="identity")


def peer_comparison(cfg: UNetConfig, batch: int, repeat: int, steps: int, device: str) -> None:
    """Ours against diffusers' UNet2DModel: inference forwards/s and training images/s, interleaved."""
    peer = peer_unet(cfg)
    if peer is None:
        print("\n(diffusers not installed: no peer comparison; pip install causaldiffae[bench])")
        return
    from causaldiffae.precision import resolve_precision

    torch.manual_seed(0)
    ours = UNet(cfg, COND_DIM).to(device)
    peer = peer.to(device)
    x, t, z = _inputs(cfg, batch, device)
    zc = torch.randn(batch, peer.time_embedding.linear_2.out_features)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        peer(x[:1], t[:1], class_labels=zc[:1])
    print(f"\npeer: diffusers UNet2DModel, {sum(p.numel() for p in peer.parameters()) / 1e6:.2f} M parameters, "
          f"{fc.get_total_flops() / 1e9:.3f} GFLOP/image; ours {sum(p.numel() for p in ours.parameters()) / 1e6:.2f} M")
    auto = resolve_precision("auto", device)
    dev = device.split(":")[0]
    peer_cl = peer_unet(cfg).to(device).to(memory_format=torch.channels_last)
    peer_cl.load_state_dict(peer.state_dict())
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def peer_run(model, xx, bf16=False):
        def run():
            with torch.inference_mode(), torch.autocast(dev, dtype=torch.bfloat16, enabled=bf16):
                return model(xx, t, class_labels=zc).sample
        return run

    ours_default = FastUNet(UNet(cfg, COND_DIM).to(device), mode="auto", precision="auto")
    ours_fp32 = FastUNet(UNet(cfg, COND_DIM).to(device), mode="auto", precision="fp32")
    ours_eager = FastUNet(UNet(cfg, COND_DIM).to(device), mode="eager")
    inf = {
        "ours eager fp32": lambda: ours_eager(x, t, z),
        "ours channels_last fp32": lambda: ours_fp32(x, t, z),
        f"ours default (channels_last, {auto})": lambda: ours_default(x, t, z),
        "peer eager fp32": peer_run(peer, x),
        "peer channels_last fp32": peer_run(peer_cl, x_cl),
        "peer bf16 autocast": peer_run(peer, x, True),
    }
    for f in inf.values():
        f()
    best = {k: float("inf") for k in inf}
    for _ in range(repeat):
        for k, f in inf.items():
            best[k] = min(best[k], _best(f, device))
    ips = {k: batch / v for k, v in best.items()}
    print("\n| inference (batch %d) | forwards/s | vs peer eager fp32 |\n|---|---|---|" % batch)
    for k, v in ips.items():
        print(f"| {k} | {v:.0f} | {v / ips['peer eager fp32']:.2f}x |")
    peer_best = max(v for k, v in ips.items() if k.startswith("peer"))
    ours_best = ips[f"ours default (channels_last, {auto})"]
    print(f"ours default / peer's fastest mode: {ours_best / peer_best:.2f}x; "
          f"ours eager fp32 / peer eager fp32: {ips['ours eager fp32'] / ips['peer eager fp32']:.2f}x")

    target = torch.randn_like(x)

    def train_step(model, call, bf16):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

        def step():
            with torch.autocast(dev, dtype=torch.bfloat16, enabled=bf16):
                out = call(model)
            loss = (out.float() - target).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    tr = {
        "ours fp32": train_step(UNet(cfg, COND_DIM).to(device).train(), lambda m: m(x, t, z), False),
        "peer fp32": train_step(peer_unet(cfg).to(device).train(), lambda m: m(x, t, class_labels=zc).sample, False),
        "ours bf16": train_step(UNet(cfg, COND_DIM).to(device).train(), lambda m: m(x, t, z), True),
        "peer bf16": train_step(peer_unet(cfg).to(device).train(), lambda m: m(x, t, class_labels=zc).sample, True),
    }
    for f in tr.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in tr}
    for _ in range(steps):
        for k, f in tr.items():
            times[k].append(_best(f, device))
    med = {k: batch / sorted(v)[len(v) // 2] for k, v in times.items()}
    print("\n| training (fwd+bwd+AdamW, batch %d) | images/s (median) |\n|---|---|" % batch)
    for k, v in med.items():
        print(f"| {k} | {v:.1f} |")
    print(f"ours / peer: fp32 {med['ours fp32'] / med['peer fp32']:.2f}x, bf16 {med['ours bf16'] / med['peer bf16']:.2f}x; "
          f"ours at {auto} / peer's fastest: {med['ours ' + auto] / max(med['peer fp32'], med['peer bf16']):.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeat", type=int, default=5, help="timed rounds per mode (best is reported)")
    p.add_argument("--steps", type=int, default=4, help="timed training steps (best is reported)")
    p.add_argument("--config", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--device", default="cpu")
    p.add_argument("--modes", default="eager,channels_last,bf16_autocast,jit,compile",
                   help="comma-separated inference modes")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: torch's default)")
    p.add_argument("--peer-only", action="store_true", help="only the comparison with diffusers' UNet2DModel")
    p.add_argument("--train-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--channels-last", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.train_worker:
        return train_worker(a.config, a.batch, a.steps, a.device, a.channels_last)
    warnings.simplefilter("ignore")

    cfg = _config(a.config)
    if a.peer_only:
        print(f"machine: {_machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
              f"load avg {os.getloadavg()[0]:.2f}")
        peer_comparison(cfg, a.batch, a.repeat, max(a.steps, 5), a.device)
        print(f"\nload avg after: {os.getloadavg()[0]:.2f}")
        return
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
    peer_comparison(cfg, a.batch, a.repeat, max(a.steps, 5), a.device)
    print(f"\nload avg after: {os.getloadavg()[0]:.2f}")


def _machine() -> str:
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    from causaldiffae.precision import cpu_flags

    flags = " ".join(sorted(f for f in cpu_flags() if f.startswith(("avx512_bf16", "amx", "avx2", "avx512f"))))
    return f"{cpu}, {os.cpu_count()} logical CPUs, capability {torch.backends.cpu.get_cpu_capability()}, flags {flags}"


if __name__ == "__main__":
    main()
