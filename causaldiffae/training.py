"""Training: AdamW + EMA + gradient clipping + KL/label warm-up, atomic checkpoints, resume, torchrun.

The entry point is :func:`train`. It runs the same under ``python`` and under
``torchrun --nproc_per_node N`` (DistributedDataParallel; gloo on CPU, nccl on CUDA).

Determinism. Every random draw of a step (the diffusion time steps and noise, the
null-condition mask for guidance, the guide's reparameterisation noise, the order of the data) is
made for the *global* batch from a generator seeded by ``(seed, step)``; each process takes its
own slice. Hence a run resumed from a checkpoint continues exactly as if it had not stopped, and N
processes compute the same update as one process on the same global batch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
import torch.distributed as torch_dist
from pyro.poutine.messenger import Messenger
from tqdm.auto import tqdm

from causaldiffae.checkpoint import CHECKPOINT_NAME, atomic_write_text, load_checkpoint, save_checkpoint
from causaldiffae.errors import CheckpointError, ConfigError, TrainingError
from causaldiffae.graph import CausalGraph
from causaldiffae.model import (  # noqa: F401  (build_model, checkpoint_meta, load_model: their home is model.py)
    CausalDiffAE,
    ModelConfig,
    _prefixed,
    assert_same_graph,
    build_model,
    checkpoint_meta,
    load_model,
)


@dataclass
class TrainConfig:
    """Optimisation settings (the model's own settings live in :class:`ModelConfig`).

    Attributes:
        steps: total optimisation steps (the run stops there; ``--steps`` on the CLI).
        batch_size: global batch size (split across processes).
        lr, weight_decay, betas: AdamW.
        grad_clip: max global gradient norm (0 = off).
        ema_decay: decay of the exponential moving average of the weights used for sampling.
        warmup_steps: gamma(step) ramps linearly from 0 to 1 over this many steps.
        label_fraction: fraction of the training set that keeps its labels (fixed, seeded subset).
        seed: seeds the labelled subset, the initialisation and every per-step draw.
        checkpoint_every: steps between checkpoints (also written at the end).
        log_every: steps between JSON log lines in RUN/log.jsonl.
        sample_every: steps between PNG grids in RUN/samples (0 = off).
        sample_steps: DDIM steps for those grids.
    """

    steps: int = 20000
    batch_size: int = 64
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    warmup_steps: int = 2000
    label_fraction: float = 1.0
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 50
    sample_every: int = 2000
    sample_steps: int = 20

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # JSON gives lists
        if not 0.0 < self.label_fraction <= 1.0:
            raise ConfigError(f"label_fraction must be in (0, 1], got {self.label_fraction}")
        if self.steps < 0 or self.batch_size < 1:
            raise ConfigError(f"steps must be >= 0 and batch_size >= 1, got {self.steps} and {self.batch_size}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")

    def gamma(self, step: int) -> float:
        """The warm-up weight gamma(step) of the KL and label terms."""
        return 1.0 if self.warmup_steps <= 0 else min(1.0, step / self.warmup_steps)


@dataclass
class RunConfig:
    """A whole run: the model, the optimisation, and which data it reads."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "train": dataclasses.asdict(self.train)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunConfig":
        unknown = set(d) - {"model", "train"}
        if unknown:
            raise ConfigError(f"unknown config sections {sorted(unknown)}; known: ['model', 'train']")
        tr = dict(d.get("train", {}))
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        if set(tr) - known:
            raise ConfigError(f"unknown train config keys {sorted(set(tr) - known)}; known: {sorted(known)}")
        return cls(model=ModelConfig.from_dict(d.get("model", {})), train=TrainConfig(**tr))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RunConfig":
        """Read a YAML or JSON config file (sections ``model`` and ``train``)."""
        import yaml

        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file {p} does not exist")
        try:
            d = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML/JSON: {e}") from e
        if not isinstance(d, Mapping):
            raise ConfigError(f"{p}: expected a mapping with sections 'model' and 'train'")
        try:
            return cls.from_dict(d)
        except TypeError as e:
            raise ConfigError(f"{p}: {e}") from e


# ---------------------------------------------------------------------------- random numbers
class FixedNoise(Messenger):
    """Effect handler: reparameterised sample sites take ``loc + scale * eps`` with given ``eps``.

    ``noise`` maps a site name to a standard-normal tensor shaped like the site's value. The site
    stays a latent (not observed) sample site, so traces, replay and KL terms are unchanged; only
    the random numbers come from the caller (common random numbers across processes and resumes).
    """

    def __init__(self, noise: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.noise = noise

    def _pyro_sample(self, msg) -> None:
        eps = self.noise.get(msg["name"])
        if eps is None or msg["is_observed"] or msg["value"] is not None:
            return
        base = msg["fn"]
        while hasattr(base, "base_dist"):
            base = base.base_dist
        msg["value"] = base.loc + base.scale * eps


@dataclass
class StepNoise:
    """All random numbers of one step, for this process's slice of the global batch."""

    indices: torch.Tensor  # (b,) data indices
    t: torch.Tensor  # (b,) diffusion time steps
    noise: torch.Tensor  # (b, C, H, W)
    cond_mask: torch.Tensor  # (b,) True = conditional, False = null condition
    eps: torch.Tensor  # (b, D) guide reparameterisation noise


def step_noise(
    step: int, seed: int, n_data: int, global_batch: int, image_shape: tuple[int, int, int], latent_dim: int,
    timesteps: int, p_uncond: float, rank: int = 0, world: int = 1,
) -> StepNoise:
    """Draw the random numbers of ``step`` for the global batch and return this rank's slice.

    The data order is a seeded permutation per epoch; ``step`` picks its window, so resuming at
    any step reproduces the same batches.
    """
    per_epoch = max(1, n_data // global_batch)
    epoch, pos = divmod(step, per_epoch)
    perm = torch.randperm(n_data, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    idx = perm[pos * global_batch : (pos + 1) * global_batch]
    if idx.numel() < global_batch:  # data smaller than a batch: sample with replacement
        g = torch.Generator().manual_seed(seed * 7919 + step)
        idx = torch.randint(n_data, (global_batch,), generator=g)
    g = torch.Generator().manual_seed((seed + 1) * 2_147_483_647 + step)
    t = torch.randint(timesteps, (global_batch,), generator=g)
    noise = torch.randn((global_batch, *image_shape), generator=g)
    cond_mask = torch.rand(global_batch, generator=g) >= p_uncond
    eps = torch.randn((global_batch, latent_dim), generator=g)
    sl = slice(rank * global_batch // world, (rank + 1) * global_batch // world)
    return StepNoise(idx[sl], t[sl], noise[sl], cond_mask[sl], eps[sl])


# ---------------------------------------------------------------------------- distributed
@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1); else single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if world <= 1:
        return DistInfo(0, 1, torch.device(want))
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="nccl" if want == "cuda" else "gloo")
    dev = torch.device(f"cuda:{local}") if want == "cuda" else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return DistInfo(rank, world, dev)


# ---------------------------------------------------------------------------- state
def model_tensors(model: CausalDiffAE, ema: CausalDiffAE | None, optimizer: torch.optim.Optimizer | None) -> dict[str, torch.Tensor]:
    """Flatten weights, EMA weights and optimiser state into one name -> tensor dict."""
    out = {f"model.{k}": v for k, v in model.state_dict().items()}
    if ema is not None:
        out.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    if optimizer is not None:
        for pid, st in optimizer.state_dict()["state"].items():
            for k, v in st.items():
                out[f"optim.{pid}.{k}"] = v if isinstance(v, torch.Tensor) else torch.tensor(v)
    return out


def _optim_state(tensors: Mapping[str, torch.Tensor], param_groups: list[dict]) -> dict:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in _prefixed(tensors, "optim.").items():
        pid, name = k.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    return {"state": state, "param_groups": param_groups}


def export_model(run_or_checkpoint: str | os.PathLike, out: str | os.PathLike, dtype: str = "float16") -> Path:
    """Write an inference-only checkpoint: the EMA weights (no optimiser state, no raw weights)
    and the metadata, in ``dtype`` ("float16" halves the size; the model loads back in float32).

    The result loads with :meth:`CausalDiffAE.load` like a run; it cannot be resumed.
    """
    if dtype not in ("float16", "float32"):
        raise CheckpointError(f"export dtype must be float16 or float32, got {dtype!r}")
    tensors, meta = load_checkpoint(run_or_checkpoint)
    prefix = "ema." if any(k.startswith("ema.") for k in tensors) else "model."
    cast = getattr(torch, dtype)
    weights = {f"ema.{k}": (v.to(cast) if v.is_floating_point() else v).contiguous() for k, v in _prefixed(tensors, prefix).items()}
    meta["exported"] = {"from": str(run_or_checkpoint), "dtype": dtype, "step": meta.get("step")}
    return save_checkpoint(out, weights, meta)


# ---------------------------------------------------------------------------- the loop
@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach(), 1.0 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


class _Loss(torch.nn.Module):
    """The model's loss as a module forward, so DistributedDataParallel can wrap it."""

    def __init__(self, model: CausalDiffAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, labels: torch.Tensor, noise: StepNoise, gamma: float) -> dict[str, torch.Tensor]:
        names = {f"u_{n}": noise.eps[:, self.model.graph.block(n)] for n in self.model.graph.nodes}
        with FixedNoise(names):
            return self.model.loss_terms(images, labels, gamma=gamma, t=noise.t, noise=noise.noise, cond_mask=noise.cond_mask)


def train(
    graph: CausalGraph,
    dataset,
    run_dir: str | os.PathLike,
    config: RunConfig | None = None,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    data_info: Mapping[str, Any] | None = None,
) -> Path:
    """Train a CausalDiffAE on ``dataset`` and write checkpoints into ``run_dir``.

    Args:
        graph: the causal graph (label normalisation should already be filled in).
        dataset: an :class:`~causaldiffae.data.ImageLabelDataset` (labels in label units).
        run_dir: output folder: ``checkpoint.safetensors``, ``config.json``, ``log.jsonl``, ``samples/``.
        config: model and optimisation settings.
        resume: continue from ``run_dir``'s checkpoint (its config wins; ``config.train.steps`` may extend it).
        device: "cpu" or "cuda" (default: cuda when available).
        progress: show a tqdm bar on the main process.
        data_info: JSON-safe description of the data (stored in checkpoints).

    Returns:
        The checkpoint path.
    """
    run_dir = Path(run_dir)
    info = init_distributed(device)
    ckpt_path = run_dir / CHECKPOINT_NAME
    start = 0
    tensors: dict[str, torch.Tensor] | None = None
    meta: dict[str, Any] = {}
    if resume:
        tensors, meta = load_checkpoint(ckpt_path)
        if "exported" in meta:
            raise CheckpointError(f"{ckpt_path} is an exported (inference-only) model; resume the run it came from")
        saved = CausalGraph.from_dict(meta["graph"])
        assert_same_graph(saved, graph, ckpt_path)
        graph = saved  # keeps the label normalisation the run started with
        steps = config.train.steps if config is not None else None
        config = RunConfig.from_dict(meta["config"])
        if steps is not None:
            config.train.steps = steps
        start = int(meta["step"])
    config = config or RunConfig()
    tc, mc = config.train, config.model

    labelled = dataset.with_label_fraction(tc.label_fraction, seed=tc.seed) if tc.label_fraction < 1.0 else dataset
    model = build_model(graph, mc, seed=tc.seed).to(info.device)
    ema = model.ema_copy()
    decay_params = [p for n, p in model.named_parameters() if p.ndim > 1]
    other_params = [p for n, p in model.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay_params, "weight_decay": tc.weight_decay}, {"params": other_params, "weight_decay": 0.0}],
        lr=tc.lr, betas=tc.betas,
    )
    if tensors is not None:
        model.load_state_dict(_prefixed(tensors, "model."))
        ema.load_state_dict(_prefixed(tensors, "ema."))
        optimizer.load_state_dict(_optim_state(tensors, optimizer.state_dict()["param_groups"]))
    wrapped: torch.nn.Module = _Loss(model)
    if info.world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            wrapped, device_ids=[info.device.index] if info.device.type == "cuda" else None, find_unused_parameters=True
        )

    data_meta = {**(data_info or {}), "n": len(dataset), "label_fraction": tc.label_fraction, "labelled": labelled.labelled_count()}
    extra = {"labelled_digest": labelled.labelled_digest()}
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.json", json.dumps({"graph": graph.to_dict(), **config.to_dict(), "data": data_meta}, indent=2))
        if resume and meta.get("labelled_digest") not in (None, extra["labelled_digest"]):
            raise TrainingError(f"{ckpt_path}: the labelled subset differs from the one the run started with")

    def save(step: int) -> None:
        if info.is_main:
            save_checkpoint(ckpt_path, model_tensors(model, ema, optimizer), checkpoint_meta(graph, config, step, data_meta, extra))

    bar = tqdm(total=tc.steps, initial=start, disable=not (progress and info.is_main), desc="train", unit="step", dynamic_ncols=True)
    log_file = open(run_dir / "log.jsonl", "a") if info.is_main else None
    model.train()
    last_good = start if resume else None
    t0, seen = time.perf_counter(), 0
    try:
        for step in range(start, tc.steps):
            sn = step_noise(step, tc.seed, len(labelled), tc.batch_size, model.image_shape, graph.latent_dim,
                            mc.timesteps, mc.p_uncond if mc.p_uncond > 0 else 0.0, info.rank, info.world)
            images, labels = labelled.batch(sn.indices)
            images, labels = images.to(info.device), labels.to(info.device)
            sn = StepNoise(*(x.to(info.device) for x in dataclasses.astuple(sn)))
            terms = wrapped(images, labels, sn, tc.gamma(step))
            loss = terms["loss"]
            terms = {k: v.detach() for k, v in terms.items()}
            if not torch.isfinite(loss):
                where = f"the last good checkpoint is {ckpt_path} (step {last_good})" if last_good is not None else "no checkpoint was written yet"
                parts = ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())
                raise TrainingError(f"non-finite loss at step {step} ({parts}); stopped, {where}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            optimizer.step()
            ema_update(ema, model, tc.ema_decay)
            seen += images.shape[0] * info.world
            done = step + 1
            if info.is_main:
                rate = seen / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(loss=f"{float(terms['loss']):.4f}", diff=f"{float(terms['diffusion']):.4f}", kl=f"{float(terms['kl']):.3g}",
                                label=f"{float(terms['label']):.3g}", gamma=f"{tc.gamma(step):.2f}", img_s=f"{rate:.1f}")
                bar.update(1)
                if done % tc.log_every == 0 or done == tc.steps:
                    row = {k: round(float(v), 6) for k, v in terms.items()} | {"step": done, "images_per_s": round(rate, 2),
                          "label_weight": mc.label_weight, "kl_weight": mc.kl_weight}
                    log_file.write(json.dumps(row) + "\n")
                    log_file.flush()
                if tc.sample_every and done % tc.sample_every == 0:
                    write_sample_grid(ema, labelled, run_dir / "samples" / f"step{done:07d}.png", steps=tc.sample_steps, seed=tc.seed)
            if done % tc.checkpoint_every == 0 or done == tc.steps:
                save(done)
                last_good = done
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()
    if info.world > 1:
        torch_dist.barrier()
    return ckpt_path


def write_sample_grid(model: CausalDiffAE, dataset, path: Path, steps: int = 20, n: int = 6, seed: int = 0) -> Path:
    """A PNG grid: inputs | DDIM reconstructions | prior samples | do(root = its max) for two roots."""
    from causaldiffae import counterfactual as cf

    was_training = model.training
    model.eval()
    # evenly spread over the data set: generated sets are stored in grid order, so the first rows are near-duplicates
    images, labels = dataset.batch(np.linspace(0, len(dataset) - 1, min(n, len(dataset))).round().astype(np.int64))
    images = images.to(next(model.parameters()).device)
    rows = [images, cf.reconstruct(model, images, steps=steps), cf.sample(model, images.shape[0], steps=steps, seed=seed).images]
    names = ["input", "reconstruction", "sample"]
    lo, hi = dataset.label_range()
    for node in model.graph.roots[:2]:
        v = float(hi[model.graph.index(node)])
        if math.isfinite(v):
            rows.append(cf.counterfactual(model, images, do={node: v}, steps=steps).images)
            names.append(f"do({node}={v:.3g})")
    cf.image_grid(rows, path, row_names=names)
    model.train(was_training)
    return path
