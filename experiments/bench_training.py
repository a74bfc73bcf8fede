"""Training speed end to end against the network's own speed, in one process, interleaved.

    PYTHONPATH=. python experiments/bench_training.py --repeat 8 --threads 2

Times, on the shipped Pendulum configuration (batch 64, 32x32, ``experiments/configs/pendulum_v2.yaml``):

- ``unet fp32`` / ``unet bf16``: the UNet alone, forward + backward + AdamW on a fixed batch
  (the figure ``bench_decoder.py`` reports);
- ``networks fp32`` / ``networks bf16``: UNet and semantic encoder alone (the same, with the
  encoder's forward and backward: the network work every step must do);
- ``step before``: the whole training step as it was before this benchmark existed (per-tensor
  EMA, per-tensor AdamW and clipping, fp32);
- ``step fp32`` / ``step auto``: the whole training step as :func:`causaldiffae.training.train`
  runs it now (the loop body: step noise, batch assembly, Pyro-traced loss, backward, clipping,
  fused AdamW, multi-tensor EMA, the logged values read back), in fp32 and at ``precision="auto"``;
- ``step auto, compiled`` (with ``--compile``): the same with the UNet's core under
  ``torch.compile`` (inductor; forward and backward compiled), its compile time reported and the
  number of steps after which the compile has paid for itself.

Each repetition runs every mode once, in turn (A, B, C, A, B, C, ...), so that load from other
processes hits all modes alike; the table reports medians. Then it runs ``train()`` itself for
``--train-steps`` steps in a subprocess and reports its images/s and peak resident memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from causaldiffae.graph import CausalGraph  # noqa: E402
from causaldiffae.precision import cpu_flags, networks_in, resolve_precision  # noqa: E402
from causaldiffae.training import (  # noqa: E402
    RunConfig, StepNoise, _Loss, build_model, compile_unet, ema_update, make_optimizer, step_noise,
)

CONFIG = ROOT / "experiments" / "configs" / "pendulum_v2.yaml"  # the shipped Pendulum model's


def _reference_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """The EMA update as it was: one lerp per parameter."""
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm.detach(), 1.0 - decay)
        for be, bm in zip(ema.buffers(), model.buffers()):
            be.copy_(bm)


def machine() -> str:
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = "unknown CPU"
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma")))
    return (f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, capability "
            f"{torch.backends.cpu.get_cpu_capability()}, flags {' '.join(flags)}")


def build(precision: str, before: bool = False):
    """A training-step closure over the shipped Pendulum configuration and data."""
    from causaldiffae.data import open_dataset

    graph = CausalGraph.load("pendulum")
    run = RunConfig.load(CONFIG)
    tc, mc = run.train, run.model
    data = open_dataset("pendulum", graph.label_columns, size=mc.unet.image_size, split="train")
    model = build_model(graph, mc, seed=0)
    ema = model.ema_copy()
    device = torch.device("cpu")
    if before:
        decay = [p for p in model.parameters() if p.ndim > 1]
        other = [p for p in model.parameters() if p.ndim <= 1]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay}, {"params": other, "weight_decay": 0.0}],
                                lr=tc.lr, betas=tc.betas)
    else:
        opt = make_optimizer(model, tc, device)
    loss_fn = _Loss(model, "fp32" if before else precision)
    model.train()
    counter = [0]

    def step() -> None:  # the body of train()'s loop, minus progress bar and files
        s = counter[0]
        counter[0] += 1
        sn = step_noise(s, tc.seed, len(data), tc.batch_size, model.image_shape, graph.latent_dim, mc.timesteps,
                        mc.p_uncond, 0, 1)
        images, labels = data.batch(sn.indices)
        sn = StepNoise(*(x.to(device) for x in dataclasses.astuple(sn)))
        terms = loss_fn(images, labels, sn, tc.gamma(s))
        loss = terms["loss"]
        terms = {k: v.detach() for k, v in terms.items()}
        if not torch.isfinite(loss):
            raise RuntimeError("non-finite loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if before:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            opt.step()
            _reference_ema(ema, model, tc.ema_decay)
        else:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip, foreach=True)
            opt.step()
            ema_update(ema, model, tc.ema_decay)
        {k: float(v) for k, v in terms.items()}  # the progress bar reads them every step

    return step, model, tc, mc


def networks_only(precision: str, with_encoder: bool):
    """UNet (and encoder) forward + backward + AdamW on a fixed batch, as bench_decoder times it."""
    _, model, tc, mc = build("fp32")
    g = torch.Generator().manual_seed(0)
    B = tc.batch_size
    x = torch.randn(B, *model.image_shape, generator=g)
    t = torch.randint(0, mc.timesteps, (B,), generator=g)
    z = torch.randn(B, model.graph.latent_dim, generator=g)
    target = torch.randn(x.shape, generator=g)
    modules = [model.unet] + ([model.encoder] if with_encoder else [])
    params = [p for m in modules for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)

    def step() -> None:
        with networks_in(precision, modules, "cpu"):
            cond = z
            extra = 0.0
            if with_encoder:
                mu, logvar = model.encoder(x)
                cond = mu
                extra = logvar.pow(2).mean()
            loss = (model.unet(x, t, cond) - target).pow(2).mean() + extra
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def train_subprocess(steps: int, precision: str, threads: int) -> tuple[float, float]:
    """Run ``train()`` for ``steps`` steps in a fresh process: (images/s over the last logged interval, peak RSS GB)."""
    code = f"""
import json, sys, tempfile, torch
torch.set_num_threads({threads})
sys.path.insert(0, {str(ROOT)!r})
from causaldiffae.data import open_dataset
from causaldiffae.graph import CausalGraph
from causaldiffae.training import RunConfig, train
g = CausalGraph.load("pendulum")
run = RunConfig.load({str(CONFIG)!r})
run.train.steps, run.train.log_every, run.train.checkpoint_every, run.train.sample_every = {steps}, {steps}, 10**9, 0
run.train.precision = {precision!r}
ds = open_dataset("pendulum", g.label_columns, size=run.model.unet.image_size, split="train")
with tempfile.TemporaryDirectory() as d:
    train(g, ds, d, run, progress=False)
    row = [json.loads(l) for l in open(d + "/log.jsonl")][-1]
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))  # kB; reset by exec
print(row["images_per_s"], hwm / 1024**2)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"train() subprocess failed:\n{proc.stderr[-2000:]}")
    out = proc.stdout.split()
    return float(out[-2]), float(out[-1])


def loss_curve(steps: int, precision: str, seed: int, out: str, threads: int) -> None:
    """Train ``steps`` steps of the shipped Pendulum configuration at ``precision`` and ``seed``
    (log every 5 steps into ``out``/log.jsonl): the loss curves of fp32 and bf16 and of two seeds
    are compared in docs/benchmarks.md."""
    from causaldiffae.data import open_dataset
    from causaldiffae.training import train

    torch.set_num_threads(threads)
    g = CausalGraph.load("pendulum")
    run = RunConfig.load(CONFIG)
    run.train.steps, run.train.log_every, run.train.checkpoint_every, run.train.sample_every = steps, 5, 10**9, 0
    run.train.precision, run.train.seed = precision, seed
    ds = open_dataset("pendulum", g.label_columns, size=run.model.unet.image_size, split="train")
    train(g, ds, out, run, progress=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=8, help="interleaved rounds (median reported)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-steps", type=int, default=30, help="steps of the train() subprocess (0 = skip)")
    ap.add_argument("--compile", action="store_true", help="also time the step with the UNet under torch.compile")
    ap.add_argument("--curve", nargs=4, metavar=("STEPS", "PRECISION", "SEED", "OUT"),
                    help="instead: train STEPS steps at PRECISION and SEED into OUT (loss curve)")
    a = ap.parse_args()
    if a.curve:
        return loss_curve(int(a.curve[0]), a.curve[1], int(a.curve[2]), a.curve[3], a.threads)
    torch.set_num_threads(a.threads)
    auto = resolve_precision("auto", "cpu")
    print("machine:", machine())
    print(f"threads {a.threads}, load avg {os.getloadavg()[0]:.1f}; precision auto -> {auto}", flush=True)
    modes: dict[str, Callable[[], None]] = {
        "unet fp32": networks_only("fp32", False),
        "unet bf16": networks_only("bf16", False),
        "networks fp32": networks_only("fp32", True),
        "networks bf16": networks_only("bf16", True),
        "step before": build("fp32", before=True)[0],
        "step fp32": build("fp32")[0],
        "step auto": build("auto")[0],
    }
    compile_s = None
    if a.compile:
        fn, model, _, _ = build("auto")
        compile_unet(model.unet)  # as train() does with `train: compile: true`
        t0 = time.perf_counter()
        fn()  # compiles forward and backward
        compile_s = time.perf_counter() - t0
        print(f"torch.compile: first step {compile_s:.0f} s", flush=True)
        modes["step auto, compiled"] = fn
    times: dict[str, list[float]] = {m: [] for m in modes}
    for fn in modes.values():
        fn()  # warm-up
    for r in range(a.repeat):
        for m, fn in modes.items():
            t0 = time.perf_counter()
            fn()
            times[m].append(time.perf_counter() - t0)
        print(f"  round {r + 1}/{a.repeat}, load avg {os.getloadavg()[0]:.1f}", flush=True)
    B = 64
    ips = {m: B / statistics.median(v) for m, v in times.items()}
    print("\n| mode | images/s (median) | vs unet fp32 | vs step before |\n|---|---|---|---|")
    for m, v in ips.items():
        print(f"| {m} | {v:.1f} | {v / ips['unet fp32']:.2f}x | {v / ips['step before']:.2f}x |")
    print(f"\nstep auto / unet {auto}: {ips['step auto'] / ips['unet ' + auto]:.2f}; "
          f"step auto / networks {auto}: {ips['step auto'] / ips['networks ' + auto]:.2f}; "
          f"step fp32 / networks fp32: {ips['step fp32'] / ips['networks fp32']:.2f}")
    if compile_s is not None:
        saved = B / ips["step auto"] - B / ips["step auto, compiled"]
        pays = f"after {compile_s / saved:.0f} steps" if saved > 0 else "never (no faster)"
        print(f"compiled step: {ips['step auto, compiled'] / ips['step auto']:.2f}x the eager step at auto precision; "
              f"its {compile_s:.0f} s of compilation pay for themselves {pays}")
    print(f"peak RSS of this process ({len(modes)} models): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2:.2f} GB")
    if a.train_steps:
        for p in ("fp32", "auto"):
            rate, rss = train_subprocess(a.train_steps, p, a.threads)
            print(f"train() {a.train_steps} steps, precision {p}: {rate:.1f} images/s, peak RSS {rss:.2f} GB", flush=True)
    print(f"load avg after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
