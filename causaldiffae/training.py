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
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
import torch.distributed as torch_dist
from pyro.poutine.messenger import Messenger
from tqdm.auto import tqdm

from causaldiffae.data.dataset import batch_indices
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
from causaldiffae.precision import check_precision, networks_in


# The schedule of a run follows its length unless set explicitly: a run of ``steps`` steps warms the
# KL and label terms up over its first fifth, averages weights over about a twentieth of it (EMA
# horizon 1 / (1 - decay)), writes four preview grids, ten checkpoints and fifty log lines, each
# capped at the values every run used before (2,000 / 0.999 / 2,000 / 500 / 50), which a
# 20,000-step run (the default length) gets exactly; a 400-step run is no longer cut off inside a
# 2,000-step warm-up.
def auto_warmup_steps(steps: int) -> int:
    return max(1, min(2000, steps // 5))


def auto_ema_decay(steps: int) -> float:
    return min(0.999, max(0.9, 1.0 - 20.0 / max(steps, 1)))


def auto_sample_every(steps: int) -> int:
    return max(1, min(2000, steps // 4))


def auto_checkpoint_every(steps: int) -> int:
    return max(1, min(500, steps // 10))


def auto_log_every(steps: int) -> int:
    return max(1, min(50, steps // 50))


_AUTO = {"warmup_steps": auto_warmup_steps, "ema_decay": auto_ema_decay, "sample_every": auto_sample_every,
         "checkpoint_every": auto_checkpoint_every, "log_every": auto_log_every}


@dataclass
class TrainConfig:
    """Optimisation settings (the model's own settings live in :class:`ModelConfig`).

    The fields that default to None follow the run's length (``auto_*`` above; see
    :meth:`resolved`); a number given explicitly always wins. Configs saved before this rule
    hold explicit numbers, so old runs resume with the schedule they were started with.

    Attributes:
        steps: total optimisation steps (the run stops there; ``--steps`` on the CLI).
        batch_size: global batch size (split across processes).
        lr, weight_decay, betas: AdamW.
        grad_clip: max global gradient norm (0 = off).
        ema_decay: decay of the exponential moving average of the weights used for sampling
            (None: ``1 - 20 / steps`` within [0.9, 0.999]).
        warmup_steps: gamma(step) ramps linearly from 0 to 1 over this many steps (None: a fifth of
            the run, at most 2,000).
        label_fraction: fraction of the training set that keeps its labels (fixed, seeded subset).
        seed: seeds the labelled subset, the initialisation and every per-step draw.
        checkpoint_every: steps between checkpoints, also written at the end and on Ctrl-C
            (None: a tenth of the run, at most 500).
        log_every: steps between JSON log lines in RUN/log.jsonl (None: a fiftieth, at most 50).
        sample_every: steps between preview grids in RUN/samples, also written at the end (0 = off;
            None: a quarter of the run, at most 2,000).
        sample_steps: DDIM steps for those grids.
        labelled_share: when only part of the data is labelled (``label_fraction < 1``), the share of
            every batch drawn from the labelled rows (stratified sampling, see
            :func:`causaldiffae.data.dataset.batch_indices`); 0 = plain random batches.
        precision: "auto" (bf16 autocast of the UNet and encoder where the device has bf16 units,
            else fp32), "fp32" or "bf16"; see :mod:`causaldiffae.precision`. A run saved before
            this setting existed resumes in fp32.
        compile: run the UNet under ``torch.compile`` (inductor; forward and backward). Off by
            default: on the development CPU it made the whole step 1.11x faster under load, which
            pays for a compilation from inductor's on-disk cache (17 s) within about 100 steps but
            not for a first, cold compilation (8 minutes under load) within a 2,400-step run, and
            it was no faster in a run on a quiet machine (0.94x; ``docs/benchmarks.md``). Falls back to
            eager, with a warning, where compiling fails.

    A field missing from a saved config takes its value in :data:`LEGACY_TRAIN_FIELDS`.
    """

    steps: int = 20000
    batch_size: int = 64
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    ema_decay: float | None = None
    warmup_steps: int | None = None
    label_fraction: float = 1.0
    seed: int = 0
    checkpoint_every: int | None = None
    log_every: int | None = None
    sample_every: int | None = None
    sample_steps: int = 10
    labelled_share: float = 0.25
    precision: str = "auto"
    compile: bool = False

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # JSON gives lists
        check_precision(self.precision)
        if not 0.0 < self.label_fraction <= 1.0:
            raise ConfigError(f"label_fraction must be in (0, 1], got {self.label_fraction}")
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(f"steps and batch_size must be >= 1, got {self.steps} and {self.batch_size}")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        for name in ("checkpoint_every", "log_every"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "sample_every"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")

    def resolved(self, steps: int | None = None) -> "TrainConfig":
        """A copy with every schedule field that is None filled in for a run of ``steps`` (default: ``self.steps``)."""
        steps = self.steps if steps is None else steps
        fill = {k: rule(steps) for k, rule in _AUTO.items() if getattr(self, k) is None}
        return dataclasses.replace(self, steps=steps, **fill)

    def gamma(self, step: int) -> float:
        """The warm-up weight gamma(step) of the KL and label terms."""
        warmup = self.warmup_steps if self.warmup_steps is not None else auto_warmup_steps(self.steps)
        return 1.0 if warmup <= 0 else min(1.0, step / warmup)


#: TrainConfig fields added after the first shipped models, with the values those runs used.
LEGACY_TRAIN_FIELDS: dict[str, Any] = {"labelled_share": 0.0, "precision": "fp32"}


@dataclass
class RunConfig:
    """A whole run: the model, the optimisation, and which data it reads."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "train": dataclasses.asdict(self.train)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], saved: bool = False) -> "RunConfig":
        """Build from a mapping; ``saved=True`` for a checkpoint's config (missing fields take their
        legacy values, see :meth:`ModelConfig.from_dict`)."""
        unknown = set(d) - {"model", "train"}
        if unknown:
            raise ConfigError(f"unknown config sections {sorted(unknown)}; known: ['model', 'train']")
        tr = dict(d.get("train", {}))
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        if set(tr) - known:
            raise ConfigError(f"unknown train config keys {sorted(set(tr) - known)}; known: {sorted(known)}")
        if saved:
            tr = {**LEGACY_TRAIN_FIELDS, **tr}
        return cls(model=ModelConfig.from_dict(d.get("model", {}), saved=saved), train=TrainConfig(**tr))

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
    shift: torch.Tensor  # (b, 2) uniform in [0, 1): the consistency term's image shifts (ModelConfig.consistency_shift)
    pick: torch.Tensor  # (b,) uniform in [0, 1): the node the cycle term sets in each row (ModelConfig.cycle_weight)


def step_noise(
    step: int, seed: int, n_data: int, global_batch: int, image_shape: tuple[int, int, int], latent_dim: int,
    timesteps: int, p_uncond: float, rank: int = 0, world: int = 1, labelled_rows=None, labelled_share: float = 0.0,
) -> StepNoise:
    """Draw the random numbers of ``step`` for the global batch and return this rank's slice.

    The data order is a seeded permutation per epoch; ``step`` picks its window, so resuming at
    any step reproduces the same batches (with ``labelled_share``, stratified: see
    :func:`~causaldiffae.data.dataset.batch_indices`).
    """
    idx = batch_indices(step, seed, n_data, global_batch, labelled_rows, labelled_share)
    g = torch.Generator().manual_seed((seed + 1) * 2_147_483_647 + step)
    t = torch.randint(timesteps, (global_batch,), generator=g)
    noise = torch.randn((global_batch, *image_shape), generator=g)
    cond_mask = torch.rand(global_batch, generator=g) >= p_uncond
    eps = torch.randn((global_batch, latent_dim), generator=g)
    shift = torch.rand((global_batch, 2), generator=g)  # drawn after the others, so the draws above are unchanged
    pick = torch.rand((global_batch,), generator=g)  # likewise after shift
    sl = slice(rank * global_batch // world, (rank + 1) * global_batch // world)
    return StepNoise(idx[sl], t[sl], noise[sl], cond_mask[sl], eps[sl], shift[sl], pick[sl])


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


def sampling_weights(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint's EMA weights (the ones sampling uses), or its raw weights when it has no EMA."""
    prefix = "ema." if any(k.startswith("ema.") for k in tensors) else "model."
    return _prefixed(tensors, prefix)


def start_weights(tensors: Mapping[str, torch.Tensor], model: torch.nn.Module, where: Any) -> dict[str, torch.Tensor]:
    """The weights a fine-tuning run starts from: a checkpoint's EMA weights (its raw weights when
    it has no EMA), checked against ``model``'s parameter names and shapes and cast to its dtypes.

    Raises:
        ConfigError: naming ``where`` and the first differing parameters, when the checkpoint's
            network is not the one ``model`` was built as (another UNet width, latent size, ...).
    """
    weights = sampling_weights(tensors)
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    extra = sorted(set(weights) - set(own))
    shapes = sorted(k for k in set(own) & set(weights) if tuple(own[k].shape) != tuple(weights[k].shape))
    if missing or extra or shapes:
        parts = [f"{what} {names[:3]}{' ...' if len(names) > 3 else ''}" for what, names in
                 (("missing", missing), ("not in this network", extra), ("other shape", shapes)) if names]
        raise ConfigError(f"{where}: its network differs from the one the config describes ({'; '.join(parts)}); "
                          f"fine-tune with the model settings it was trained with (omit --config to take them from it)")
    return {k: weights[k].to(own[k].dtype) for k in own}


def export_model(run_or_checkpoint: str | os.PathLike, out: str | os.PathLike, dtype: str = "float16") -> Path:
    """Write an inference-only checkpoint: the EMA weights (no optimiser state, no raw weights)
    and the metadata, in ``dtype`` ("float16" halves the size; the model loads back in float32).

    The result loads with :meth:`CausalDiffAE.load` like a run; it cannot be resumed.
    """
    if dtype not in ("float16", "float32"):
        raise CheckpointError(f"export dtype must be float16 or float32, got {dtype!r}")
    tensors, meta = load_checkpoint(run_or_checkpoint)
    cast = getattr(torch, dtype)
    weights = {f"ema.{k}": (v.to(cast) if v.is_floating_point() else v).contiguous() for k, v in sampling_weights(tensors).items()}
    meta["exported"] = {"from": str(run_or_checkpoint), "dtype": dtype, "step": meta.get("step")}
    return save_checkpoint(out, weights, meta)


# ---------------------------------------------------------------------------- the loop
@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """``ema <- ema + (1 - decay) (model - ema)`` for every parameter; buffers are copied.

    One multi-tensor (foreach) kernel per list instead of one small op per tensor.
    """
    pe, pm = list(ema.parameters()), [p.detach() for p in model.parameters()]
    if pe:
        torch._foreach_lerp_(pe, pm, 1.0 - decay)
    be, bm = list(ema.buffers()), list(model.buffers())
    if be:
        torch._foreach_copy_(be, bm)


def make_optimizer(model: torch.nn.Module, tc: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over ``model``: weight decay on the matrices and kernels only, the fused kernel where
    the device has one (one pass over all parameters instead of a dozen small ops per tensor)."""
    decay_params = [p for n, p in model.named_parameters() if p.ndim > 1]
    other_params = [p for n, p in model.named_parameters() if p.ndim <= 1]
    fused = device.type in ("cpu", "cuda") and all(p.dtype == torch.float32 for p in model.parameters())
    return torch.optim.AdamW(
        [{"params": decay_params, "weight_decay": tc.weight_decay}, {"params": other_params, "weight_decay": 0.0}],
        lr=tc.lr, betas=tc.betas, fused=fused or None,
    )


def compile_unet(unet: torch.nn.Module, backend: str = "inductor") -> None:
    """Run ``unet.core`` under ``torch.compile`` (``backend``) from now on (training: forward and backward).

    The compiled function replaces the bound method on this instance only, so parameters, state
    dicts and checkpoints are unchanged. If compiling fails (no C++ compiler, an unsupported
    platform) the first call warns once and the network stays eager.
    """
    eager = unet.core
    compiled = torch.compile(eager, dynamic=False, backend=backend)

    def first_call(*args, **kwargs):  # compiles; later calls go straight to the compiled function
        try:
            out = compiled(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - compile errors surface on the first call
            warnings.warn(f"torch.compile of the UNet failed ({type(exc).__name__}: {exc}); training it eagerly",
                          RuntimeWarning, stacklevel=2)
            unet.core = eager
            return eager(*args, **kwargs)
        unet.core = compiled
        return out

    unet.core = first_call


class _Loss(torch.nn.Module):
    """The model's loss as a module forward, so DistributedDataParallel can wrap it."""

    def __init__(self, model: CausalDiffAE, precision: str = "fp32") -> None:
        super().__init__()
        self.model = model
        self.precision = check_precision(precision)

    def forward(self, images: torch.Tensor, labels: torch.Tensor, noise: StepNoise, gamma: float) -> dict[str, torch.Tensor]:
        names = {f"u_{n}": noise.eps[:, self.model.graph.block(n)] for n in self.model.graph.nodes}
        with FixedNoise(names), networks_in(self.precision, [self.model.unet, self.model.encoder], images.device):
            return self.model.loss_terms(images, labels, gamma=gamma, t=noise.t, noise=noise.noise, cond_mask=noise.cond_mask,
                                         shift=noise.shift, pick=noise.pick)


RUN_FILES = (CHECKPOINT_NAME, "config.json", "log.jsonl", "summary.json", "preview.png", "samples")


def existing_run_files(run_dir: str | os.PathLike) -> list[str]:
    """The files of a previous run in ``run_dir`` (empty when there is none)."""
    run_dir = Path(run_dir)
    return [name for name in RUN_FILES if (run_dir / name).exists()]


def clear_run(run_dir: str | os.PathLike) -> None:
    """Remove a previous run's files from ``run_dir`` (only those :data:`RUN_FILES` names; nothing else)."""
    import shutil

    for name in existing_run_files(run_dir):
        path = Path(run_dir) / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def parse_duration(text: str) -> float:
    """``"90s"``, ``"30m"``, ``"1h"``, ``"1h30m"``, ``"1.5h"`` or plain seconds ``"600"`` -> seconds (> 0)."""
    import re

    t = str(text).strip().lower()
    m = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m(?:in)?)?\s*(?:(\d+(?:\.\d+)?)s?)?", t)
    if not t or m is None or not any(m.groups()) or (m.group(3) and not t.endswith("s") and (m.group(1) or m.group(2))):
        raise ConfigError(f"cannot read the time budget {text!r}: use e.g. 90s, 10m, 1h or 1h30m")
    h, mi, sec = (float(g) if g else 0.0 for g in m.groups())
    seconds = 3600 * h + 60 * mi + sec
    if seconds <= 0:
        raise ConfigError(f"the time budget must be positive, got {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """Seconds -> ``"45 s"``, ``"12.5 min"``, ``"1.6 h"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _truncate_log(path: Path, last_step: int) -> None:
    """Keep only the rows of ``path`` (log.jsonl) up to ``last_step``: a resumed run rewrites the
    steps after its checkpoint, and the log must not hold a step twice."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if int(json.loads(line)["step"]) <= last_step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line of a killed run
    atomic_write_text(path, "".join(k + "\n" for k in keep))


class _StopRequest:
    """Ctrl-C (SIGINT) while training: the first one asks the loop to stop after the current step
    (then a checkpoint is written); a second one interrupts at once, without saving."""

    def __init__(self, say) -> None:
        self.requested = False
        self.forced = False
        self._say = say
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            self.forced = True
            raise KeyboardInterrupt
        self.requested = True
        self._say("Ctrl-C: stopping after this step and saving a checkpoint (press Ctrl-C again to quit without saving)")

    def __enter__(self) -> "_StopRequest":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def train(
    graph: CausalGraph,
    dataset,
    run_dir: str | os.PathLike,
    config: RunConfig | None = None,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    data_info: Mapping[str, Any] | None = None,
    time_budget: float | None = None,
    overwrite: bool = False,
    verbose: bool = True,
    heldout=None,
    heldout_n: int = 64,
    heldout_steps: int = 10,
    heldout_what: str = "held-out",
    init_from: str | os.PathLike | None = None,
) -> Path:
    """Train a CausalDiffAE on ``dataset`` and write checkpoints into ``run_dir``.

    Args:
        graph: the causal graph (label normalisation should already be filled in).
        dataset: an :class:`~causaldiffae.data.ImageLabelDataset` (labels in label units).
        run_dir: output folder: ``checkpoint.safetensors``, ``config.json``, ``log.jsonl``,
            ``samples/`` and ``preview.png`` (the latest preview grid).
        config: model and optimisation settings (schedule fields left None follow the run's length).
        resume: continue from ``run_dir``'s checkpoint (its config wins; ``config.train.steps`` may extend it).
        device: "cpu" or "cuda" (default: cuda when available).
        progress: show a tqdm bar on the main process (without one, a line per log interval is printed).
        data_info: JSON-safe description of the data (stored in checkpoints).
        time_budget: seconds of training: the speed of the first steps fixes the number of steps
            (at most ``config.train.steps``, counted from the resume point) and with it the schedule;
            the run stops with a checkpoint when the time is up.
        overwrite: replace a previous run in ``run_dir`` (without it, and without ``resume``, a
            folder holding a run is refused).
        verbose: print the plan, the measured speed and where things were written.
        heldout: a data set of images the run did not train on (e.g. the test split): at the end,
            :func:`heldout_summary` on ``heldout_n`` of them at ``heldout_steps`` DDIM steps is written
            to ``RUN/summary.json`` and printed as the last line (``heldout_what`` names the images).
            A time budget keeps time for it.
        init_from: fine-tuning: a new run starts from this trained model's weights (an exported
            model, a run folder or checkpoint, or a shipped model's name) instead of a fresh
            initialisation; the raw weights and the EMA both start there, the optimiser starts
            afresh. Its graph (label scales included) is kept and must match ``graph``; the
            config's model section must describe the same network (see :func:`start_weights`).
            Recorded in the checkpoint as ``init_from``.

    Ctrl-C stops after the current step, writes a checkpoint and raises KeyboardInterrupt; the
    message says from which step ``resume`` continues. ``log.jsonl`` never holds a step twice.

    Returns:
        The checkpoint path.
    """
    run_dir = Path(run_dir)
    info = init_distributed(device)
    ckpt_path = run_dir / CHECKPOINT_NAME
    start = 0
    tensors: dict[str, torch.Tensor] | None = None
    meta: dict[str, Any] = {}

    def say(msg: str) -> None:
        if verbose and info.is_main:
            tqdm.write(msg)

    if time_budget is not None and not time_budget > 0:
        raise ConfigError(f"time_budget must be > 0 seconds, got {time_budget}")
    if init_from is not None and resume:
        raise ConfigError(f"init_from ({init_from}) starts a new run; a resumed run continues from its own checkpoint")
    init: dict[str, Any] = {}
    if init_from is not None:
        init_tensors, init_meta = load_checkpoint(init_from)
        saved = CausalGraph.from_dict(init_meta["graph"])
        assert_same_graph(saved, graph, init_from)
        graph = saved  # the label scales the weights were trained with
        init = {"init_from": {"model": str(init_from), "step": init_meta.get("step")}}  # an export keeps its run's step
    if resume:
        tensors, meta = load_checkpoint(ckpt_path)
        if "exported" in meta:
            raise CheckpointError(f"{ckpt_path} is an exported (inference-only) model; resume the run it came from")
        saved = CausalGraph.from_dict(meta["graph"])
        assert_same_graph(saved, graph, ckpt_path)
        graph = saved  # keeps the label normalisation the run started with
        steps = config.train.steps if config is not None else None
        config = RunConfig.from_dict(meta["config"], saved=True)
        start = int(meta["step"])
        if steps is not None and steps != config.train.steps:
            # warm-up and EMA stay those of the run as started (a longer run must not re-open the
            # warm-up); the intervals follow the new length
            first = config.train.resolved()
            config.train.warmup_steps, config.train.ema_decay = first.warmup_steps, first.ema_decay
            config.train.steps = steps
        if time_budget is None and config.train.steps < start:
            raise ConfigError(f"{ckpt_path} is already at step {start}; give --steps above {start} to extend it")
    else:
        found = existing_run_files(run_dir)
        if found and not overwrite:
            raise TrainingError(f"{run_dir} already holds a run ({', '.join(found)}); pass --resume {run_dir} to continue it "
                                f"or --overwrite to replace it")
    config = config or RunConfig()
    tc, mc = config.train, config.model  # tc: resolved below, once the run's length is known

    labelled = dataset.with_label_fraction(tc.label_fraction, seed=tc.seed) if tc.label_fraction < 1.0 else dataset
    if resume and meta.get("labelled_digest") not in (None, labelled.labelled_digest()):
        raise TrainingError(f"{ckpt_path}: the labelled subset differs from the one the run started with")
    labelled_rows = np.flatnonzero(~np.isnan(labelled.labels).all(axis=1)) if tc.label_fraction < 1.0 else None
    model = build_model(graph, mc, seed=tc.seed).to(info.device)
    ema = model.ema_copy()
    optimizer = make_optimizer(model, tc, info.device)
    if tensors is not None:
        model.load_state_dict(_prefixed(tensors, "model."))
        ema.load_state_dict(_prefixed(tensors, "ema."))
        optimizer.load_state_dict(_optim_state(tensors, optimizer.state_dict()["param_groups"]))
    elif init_from is not None:
        weights = start_weights(init_tensors, model, init_from)
        model.load_state_dict(weights)
        ema.load_state_dict(weights)
    if tc.compile:
        compile_unet(model.unet)  # after the EMA copy: the copy stays eager
    wrapped: torch.nn.Module = _Loss(model, tc.precision)
    if info.world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            wrapped, device_ids=[info.device.index] if info.device.type == "cuda" else None, find_unused_parameters=True
        )

    data_meta = {**(data_info or {}), "n": len(dataset), "label_fraction": tc.label_fraction, "labelled": labelled.labelled_count()}
    extra = {"labelled_digest": labelled.labelled_digest(), **init}
    if resume and "init_from" in meta:
        extra["init_from"] = meta["init_from"]
    if info.is_main:
        if overwrite and not resume:
            clear_run(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        _truncate_log(run_dir / "log.jsonl", start)

    def write_config() -> None:
        if info.is_main:
            atomic_write_text(run_dir / "config.json", json.dumps({"graph": graph.to_dict(), **config.to_dict(), "data": data_meta}, indent=2))

    def save(step: int) -> None:
        if info.is_main:
            save_checkpoint(ckpt_path, model_tensors(model, ema, optimizer), checkpoint_meta(graph, config, step, data_meta, extra))

    def preview(step: int) -> None:
        if info.is_main:
            path = write_sample_grid(ema, labelled, run_dir / "samples" / f"step{step:07d}.png", steps=tc.sample_steps, seed=tc.seed)
            import shutil

            shutil.copyfile(path, run_dir / "preview.png")

    def plan_line(sched: TrainConfig, per_step: float | None) -> str:
        n = sched.steps - start
        epochs = n * tc.batch_size / max(len(labelled), 1)
        eta = f", about {format_duration(n * per_step)} at the measured {per_step:.2f} s/step" if per_step else ""
        previews = f"previews every {sched.sample_every} steps -> {run_dir / 'samples'} (latest: {run_dir / 'preview.png'})" \
            if sched.sample_every else "no previews"
        return (f"plan: steps {start} -> {sched.steps} ({n} steps of {tc.batch_size} images, {epochs:.1f} passes over "
                f"{len(labelled)} images{eta}); warm-up {sched.warmup_steps} steps, EMA horizon "
                f"{1 / max(1 - sched.ema_decay, 1e-9):.0f} steps; {previews}; checkpoint every {sched.checkpoint_every} "
                f"steps -> {ckpt_path}; log -> {run_dir / 'log.jsonl'}")

    # The plan. With a time budget, a provisional upper bound runs until the first steps are timed;
    # ``tc`` is always the resolved schedule (``config.train`` keeps None for "follows the length").
    max_steps = config.train.steps
    calibrate = min(10, max(2, (max_steps - start) // 20)) if time_budget is None else 10**9
    tc = config.train.resolved()
    if time_budget is not None:
        say(f"time budget {format_duration(time_budget)}: timing the first steps to fix the number of steps "
            f"and the schedule")
        tc = dataclasses.replace(tc, sample_every=0, checkpoint_every=10**9)  # nothing is written before the plan is fixed
    else:
        say(plan_line(tc, None))
    write_config()

    bar = tqdm(total=tc.steps, initial=start, disable=not (progress and info.is_main), desc="train", unit="step", dynamic_ncols=True)
    log_file = open(run_dir / "log.jsonl", "a") if info.is_main else None
    model.train()
    last_good = start if resume else None
    t0, seen = time.perf_counter(), 0
    t_first = None  # wall clock after the first step (its set-up cost is not the speed)
    stop_reason = None
    completed = start
    stopper = _StopRequest(say)
    preview_s = 0.0

    def summary_cost(preview_seconds: float) -> float:
        # network evaluations x images: a preview puts 6 images through about 5 * sample_steps
        # evaluations (one inversion, four decodings); the check about heldout_steps * (2 + nodes) for heldout_n images
        units_preview = 6 * 5 * max(tc.sample_steps, 1)
        units_check = min(check_n, len(heldout)) * heldout_steps * (2 + len(graph.nodes))
        return preview_seconds * units_check / units_preview

    final_reserve = 0.0
    check_n = heldout_n

    def fix_unplanned_steps() -> None:
        # stopped before the time budget's plan was made: the run is as long as it got
        if time_budget is not None and calibrate != -1:
            config.train.steps = completed
            write_config()

    try:
        with stopper:
            step = start
            while step < tc.steps:
                sn = step_noise(step, tc.seed, len(labelled), tc.batch_size, model.image_shape, graph.latent_dim,
                                mc.timesteps, mc.p_uncond if mc.p_uncond > 0 else 0.0, info.rank, info.world,
                                labelled_rows=labelled_rows,
                                labelled_share=tc.labelled_share if tc.label_fraction < 1.0 else 0.0)
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
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip, foreach=True)
                optimizer.step()
                ema_update(ema, model, tc.ema_decay)
                seen += images.shape[0] * info.world
                done = completed = step + 1

                now = time.perf_counter()
                if t_first is None:
                    t_first = now
                elif calibrate != -1 and (done - start - 1 == calibrate or (
                        time_budget is not None and now - t0 >= min(0.05 * time_budget, 60.0) and done - start >= 3)):
                    per_step = (now - t_first) / (done - start - 1)
                    if time_budget is not None:
                        # time one preview (it is the first one of the run), then share what is left
                        # between steps, the run's four previews and the held-out check at the end
                        t_prev = time.perf_counter()
                        if config.train.sample_every != 0:
                            preview(done)
                        preview_s = time.perf_counter() - t_prev
                        # previews get at most 15% of the budget and the held-out check 10% (fewer
                        # previews, fewer check images when the machine is slow)
                        n_previews = 0
                        if config.train.sample_every is None and preview_s > 0:
                            n_previews = int(min(4, max(1, 0.15 * time_budget // preview_s)))
                        per_step_all = per_step + (preview_s / config.train.sample_every if config.train.sample_every else 0.0)
                        if heldout is not None:
                            check_n = int(min(heldout_n, max(8, heldout_n * 0.1 * time_budget // max(summary_cost(preview_s), 1e-9))))
                        reserve = n_previews * preview_s + (summary_cost(preview_s) if heldout is not None else 0.0)
                        left = time_budget - (time.perf_counter() - t0)
                        planned = done + int(max(0.97 * left - reserve, 0.0) / per_step_all)
                        config.train.steps = max(done, min(max_steps, planned))
                        if info.world > 1:  # every process follows rank 0's plan
                            plan = torch.tensor([config.train.steps], device=info.device)
                            torch_dist.broadcast(plan, src=0)
                            config.train.steps = int(plan.item())
                        if n_previews:
                            config.train.sample_every = max(1, (config.train.steps - start) // n_previews)
                        tc = config.train.resolved()
                        write_config()
                        bar.total = tc.steps
                        bar.refresh()
                        say(plan_line(tc, per_step).replace("plan:", f"plan for {format_duration(time_budget)}:", 1)
                            + (f"; then a held-out check on {min(check_n, len(heldout))} images" if heldout is not None else ""))
                        final_reserve = summary_cost(preview_s) if heldout is not None else 0.0
                    else:
                        say(f"measured {per_step:.2f} s/step over the first {done - start - 1} steps: "
                            f"about {format_duration((tc.steps - done) * per_step)} to go")
                    calibrate = -1
                if (time_budget is not None and calibrate == -1 and done < tc.steps
                        and time.perf_counter() - t0 + preview_s + final_reserve >= time_budget):
                    stop_reason = "time"  # what is left is the final preview and the held-out check
                if stopper.requested:
                    stop_reason = "interrupt"
                if info.world > 1:
                    flag = torch.tensor([{None: 0.0, "time": 1.0, "interrupt": 2.0}[stop_reason]], device=info.device)
                    torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MAX)
                    stop_reason = {0.0: None, 1.0: "time", 2.0: "interrupt"}[float(flag.item())]
                last = done == tc.steps or stop_reason is not None
                if info.is_main:
                    rate = seen / max(now - t0, 1e-9)
                    bar.set_postfix(loss=f"{float(terms['loss']):.4f}", diff=f"{float(terms['diffusion']):.4f}", kl=f"{float(terms['kl']):.3g}",
                                    label=f"{float(terms['label']):.3g}", gamma=f"{tc.gamma(step):.2f}", img_s=f"{rate:.1f}")
                    bar.update(1)
                    if done % tc.log_every == 0 or last:
                        row = {k: round(float(v), 6) for k, v in terms.items()} | {"step": done, "images_per_s": round(rate, 2),
                              "elapsed_s": round(now - t0, 4), "label_weight": mc.label_weight, "kl_weight": mc.kl_weight}
                        log_file.write(json.dumps(row) + "\n")
                        log_file.flush()
                        if not progress:
                            of = "" if calibrate > 0 and time_budget is not None else f"/{tc.steps}"  # total unknown until the plan
                            say(f"step {done}{of}  loss {row['loss']:.4f}  diffusion {row['diffusion']:.4f}  "
                                f"kl {row['kl']:.3g}  label {row['label']:.3g}  gamma {tc.gamma(step):.2f}  "
                                f"{rate:.1f} images/s  {format_duration(now - t0)} elapsed")
                    if tc.sample_every and (done % tc.sample_every == 0 or (last and stop_reason != "interrupt")):
                        preview(done)
                if stop_reason is not None:
                    fix_unplanned_steps()
                if done % tc.checkpoint_every == 0 or last:
                    save(done)
                    last_good = done
                if stop_reason is not None:
                    break
                step = done
    except KeyboardInterrupt:
        if stopper.forced:  # a second Ctrl-C: quit now, keep the last checkpoint as it is
            say(f"stopped without saving; {ckpt_path} holds step {last_good}" if last_good is not None
                else "stopped without saving; no checkpoint was written")
            raise
        # raised outside the signal handler (e.g. by a callback): ``completed`` steps are whole
        stop_reason = "interrupt"
        if completed > start and last_good != completed:
            fix_unplanned_steps()
            save(completed)
            last_good = completed
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()
    if info.world > 1:
        torch_dist.barrier()
    elapsed = time.perf_counter() - t0
    if stop_reason == "interrupt":
        where = (f"{ckpt_path} holds step {last_good}; `--resume {run_dir}` continues from step {last_good}"
                 if last_good is not None else "no checkpoint was written (no step had finished)")
        say(f"interrupted after {format_duration(elapsed)}: {where}")
        raise KeyboardInterrupt
    if stop_reason == "time":
        say(f"time budget used up after step {completed} of the planned {tc.steps} ({format_duration(elapsed)}); "
            f"checkpoint {ckpt_path}; `--resume {run_dir}` continues to step {tc.steps}")
    else:
        say(f"trained steps {start} -> {completed} in {format_duration(elapsed)}; checkpoint {ckpt_path}")
    if heldout is not None and info.is_main:
        ema.eval()
        summary = heldout_summary(ema, heldout, n=check_n, steps=heldout_steps, seed=tc.seed)
        summary.update({"step": completed, "images": heldout_what})
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
        say(format_summary(summary))
    return ckpt_path


@torch.no_grad()
def heldout_summary(model: CausalDiffAE, dataset, n: int = 64, steps: int = 10, seed: int = 0) -> dict[str, Any]:
    """How good a model is on images it did not train on, in one cheap pass.

    ``n`` images (a seeded pick) are DDIM-inverted once (``steps`` steps) and decoded
    (a) with their own latents: reconstruction MSE (images in [-1, 1]) and SSIM;
    (b) under do(node = another image's label), once per node with labels: the model's own encoder
    reads the node back from the decoded image, and ``counterfactual`` is the mean
    |read value - target| in normalised label units, beside ``do_nothing`` (the same for the
    reconstruction, which did not move) and ``floor`` (the encoder's error on the real images
    against their true labels: the best the reading can show).

    Returns a JSON-safe dict: ``n``, ``steps``, ``recon_mse``, ``recon_ssim``, ``interventions``
    (node -> {counterfactual, do_nothing, floor}).
    """
    from causaldiffae import counterfactual as cf
    from causaldiffae import metrics

    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(dataset), size=min(n, len(dataset)), replace=False))
    images, labels = dataset.batch(idx)
    device = next(model.parameters()).device
    images = images.to(device)
    graph = model.graph
    ab = cf.abduct(model, images, steps=steps)
    recon = cf.predict(model, ab, ab.z, steps=steps)
    out: dict[str, Any] = {"n": int(images.shape[0]), "steps": steps,
                           "recon_mse": float(metrics.mse(recon, images).mean()),
                           "recon_ssim": float(metrics.ssim(recon, images).mean()), "interventions": {}}

    def read(x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> normalised labels (B, n_nodes)
        return graph.normalise(model.predict_labels(model.encode(x)[1])).cpu()

    on_recon, on_real = read(recon), read(images)
    truth = graph.normalise(labels.cpu())
    for do in metrics.default_interventions(graph, labels):
        (node,) = do
        j = graph.index(node)
        target = torch.as_tensor(graph.normalise_value(node, do[node]), dtype=torch.float32)
        moved = read(cf.predict(model, ab, cf.intervene(model, ab, do), steps=steps))
        present = ~torch.isnan(truth[:, j])
        out["interventions"][node] = {
            "counterfactual": float((moved[:, j] - target).abs().mean()),
            "do_nothing": float((on_recon[:, j] - target).abs().mean()),
            "floor": float((on_real[present, j] - truth[present, j]).abs().mean()) if present.any() else None,
        }
    return out


def format_summary(s: Mapping[str, Any]) -> str:
    """One line for :func:`heldout_summary`'s dict."""
    line = (f"{s.get('images', 'held-out')} check ({s['n']} images, {s['steps']} DDIM steps): reconstruction MSE "
            f"{s['recon_mse']:.4f}, SSIM {s['recon_ssim']:.3f}")
    if s["interventions"]:
        parts = [f"{k} {v['counterfactual']:.2f} / {v['do_nothing']:.2f} / " + ("-" if v["floor"] is None else f"{v['floor']:.2f}")
                 for k, v in s["interventions"].items()]
        line += ("; do(node = another image's value), |encoder reading - target| in normalised units, "
                 "counterfactual / do-nothing image / real images (floor): " + ", ".join(parts))
    return line


def write_sample_grid(model: CausalDiffAE, dataset, path: Path, steps: int = 10, n: int = 6, seed: int = 0) -> Path:
    """A PNG preview: inputs | DDIM reconstructions | prior samples | do(root = its max) for two roots.

    The reconstructions and the counterfactuals share one DDIM inversion of the inputs (the
    counterfactuals are the reconstructions' decoding with the intervened latents).
    """
    from causaldiffae import counterfactual as cf

    was_training = model.training
    model.eval()
    # evenly spread over the data set: generated sets are stored in grid order, so the first rows are near-duplicates
    images, labels = dataset.batch(np.linspace(0, len(dataset) - 1, min(n, len(dataset))).round().astype(np.int64))
    images = images.to(next(model.parameters()).device)
    ab = cf.abduct(model, images, steps=steps)
    rows = [images, cf.predict(model, ab, ab.z, steps=steps), cf.sample(model, images.shape[0], steps=steps, seed=seed).images]
    names = ["input", "reconstruction", "sample"]
    lo, hi = dataset.label_range()
    for node in model.graph.roots[:2]:
        v = float(hi[model.graph.index(node)])
        if math.isfinite(v):
            rows.append(cf.predict(model, ab, cf.intervene(model, ab, {node: v}), steps=steps))
            names.append(f"do({node}={v:.3g})")
    cf.image_grid([r.cpu() for r in rows], path, row_names=names)
    model.train(was_training)
    return path
