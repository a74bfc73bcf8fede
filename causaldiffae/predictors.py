"""Anti-causal predictors: one small CNN regressor per graph node, trained on real labelled images.

They read the factors back off an image (image -> label, the anti-causal direction), which is what
the effectiveness metric needs (see ``docs/evaluation.md``)::

    path = train_predictors(graph, dataset, "runs/pendulum/predictors.safetensors", steps=2000)
    pred = load_predictors(path)
    labels = pred.predict(images)          # (B, C, H, W) in [-1, 1] -> (B, n_nodes) in label units

Architecture: every node owns an independent network (no weights are shared between nodes):
3x3 convolutions with stride 2 down to at most 8 x 8, one more at stride 1, an adaptive average
pool to 4 x 4 (so the head still sees *where* things are, which matters for positions and angles)
and a two-layer MLP head. Each network regresses its node's normalised label ``(y - loc) / scale``
(the graph's normalisation) with a squared error, masked where the label is missing. On one CPU
thread the four Pendulum regressors read about 3,500 images/s at 32 x 32 (1,700 at 64 x 64).

The file is a checkpoint in the format of :mod:`causaldiffae.checkpoint` (safetensors weights, the
JSON metadata in its header): the graph (with its normalisation), the image shape, the training
settings and the held-out MAE of every node in normalised units.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from causaldiffae.checkpoint import load_checkpoint, save_checkpoint
from causaldiffae.errors import CheckpointError, DataError, TrainingError
from causaldiffae.graph import CausalGraph

KIND = "causaldiffae-predictors"
PREDICTORS_NAME = "predictors.safetensors"
POOL = 4


def _trunk_strides(size: int) -> list[int]:
    """Stride-2 convolutions until the feature map is at most 8 x 8 (at least two), then one stride-1 convolution."""
    strides, s = [], size
    while len(strides) < 2 or s > 8:
        strides.append(2)
        s = (s + 1) // 2
    return strides + [1]


class NodeRegressor(nn.Module):
    """One node's CNN: 3x3 convolutions (SiLU), a 4 x 4 average pool, a two-layer MLP head -> one number.

    Args:
        in_channels: image channels.
        size: image size (decides how many stride-2 convolutions there are).
        width: channels of the first convolution; each further one doubles it, up to ``4 * width``.
        hidden: width of the MLP head.
    """

    def __init__(self, in_channels: int, size: int, width: int = 8, hidden: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for k, stride in enumerate(_trunk_strides(size)):
            c_out = width * min(2**k, 4)
            layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.SiLU()]
            c_in = c_out
        self.trunk = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(POOL), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(c_in * POOL * POOL, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))[:, 0]


class PredictorNet(nn.Module):
    """One :class:`NodeRegressor` per node (no weights shared); ``(B, C, H, W) -> (B, n)`` normalised labels."""

    def __init__(self, n: int, in_channels: int, size: int, width: int = 8, hidden: int = 64) -> None:
        super().__init__()
        self.nets = nn.ModuleList([NodeRegressor(in_channels, size, width, hidden) for _ in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([net(x) for net in self.nets], dim=1)


class Predictors:
    """Trained per-node regressors; :meth:`predict` maps images to labels in label units.

    Attributes:
        graph: the graph whose nodes (and normalisation) the regressors predict.
        net: the underlying module (outputs normalised labels).
        image_shape: ``(C, H, W)`` the regressors were trained on.
        meta: the checkpoint metadata (training settings, held-out MAE per node).
    """

    def __init__(self, graph: CausalGraph, net: PredictorNet, image_shape: tuple[int, int, int], meta: Mapping[str, Any] | None = None) -> None:
        self.graph = graph
        self.net = net.eval().requires_grad_(False)
        self.image_shape = tuple(image_shape)
        self.meta = dict(meta or {})

    @property
    def nodes(self) -> list[str]:
        return self.graph.nodes

    def to(self, device: str | torch.device) -> "Predictors":
        self.net.to(device)
        return self

    @torch.no_grad()
    def predict_normalised(self, images: torch.Tensor, max_batch: int = 512) -> torch.Tensor:
        """``(B, C, H, W)`` in [-1, 1] -> normalised labels ``(B, n_nodes)`` (on CPU)."""
        if images.ndim != 4 or tuple(images.shape[1:]) != self.image_shape:
            raise DataError(f"the predictors take images of shape (B, {', '.join(map(str, self.image_shape))}), "
                            f"got {tuple(images.shape)}")
        dev = next(self.net.parameters()).device
        out = [self.net(images[s : s + max_batch].to(dev, torch.float32)).cpu() for s in range(0, images.shape[0], max_batch)]
        return torch.cat(out) if out else torch.empty(0, self.graph.n_nodes)

    def predict(self, images: torch.Tensor, max_batch: int = 512) -> torch.Tensor:
        """``(B, C, H, W)`` in [-1, 1] -> labels in label units ``(B, n_nodes)`` in node order (on CPU)."""
        return self.graph.denormalise(self.predict_normalised(images, max_batch))

    __call__ = predict


def default_predictors_path(run: str | os.PathLike) -> Path:
    """Where ``causaldiffae predictors`` puts the predictors of a run: ``RUN/predictors.safetensors``."""
    p = Path(run)
    return (p if p.is_dir() or p.suffix != ".safetensors" else p.parent) / PREDICTORS_NAME


def _split(dataset, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    labelled = np.flatnonzero((~np.isnan(dataset.labels)).any(axis=1))
    if labelled.size < 2:
        raise DataError(f"training predictors needs labelled images; the data set has {labelled.size}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(labelled)
    n_val = int(round(holdout * perm.size)) if holdout > 0 else 0
    n_val = min(max(n_val, 1 if holdout > 0 else 0), perm.size - 1)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _masked_mae(pred: torch.Tensor, target: torch.Tensor) -> list[float | None]:
    err = (pred - target).abs()
    out = []
    for j in range(target.shape[1]):
        ok = ~torch.isnan(err[:, j])
        out.append(float(err[ok, j].mean()) if ok.any() else None)
    return out


def evaluate_predictors(predictors: Predictors, dataset, indices=None, max_batch: int = 512) -> dict[str, float | None]:
    """MAE of the predictors in normalised units, per node, on ``dataset`` (rows ``indices``; missing labels skipped)."""
    idx = np.arange(len(dataset)) if indices is None else np.asarray(indices)
    preds, targets = [], []
    for s in range(0, idx.size, max_batch):
        x, y = dataset.batch(idx[s : s + max_batch])
        preds.append(predictors.predict_normalised(x))
        targets.append(predictors.graph.normalise(y))
    mae = _masked_mae(torch.cat(preds), torch.cat(targets))
    return dict(zip(predictors.nodes, mae))


def train_predictors(
    graph: CausalGraph,
    dataset,
    out_path: str | os.PathLike,
    steps: int = 2000,
    batch_size: int = 64,
    lr: float = 2e-3,
    width: int = 8,
    hidden: int = 64,
    holdout: float = 0.1,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Path:
    """Train one CNN regressor per node of ``graph`` on the labelled images of ``dataset``; save them.

    Args:
        graph: the causal graph; its normalisation (``loc``/``scale`` for every node) defines the
            regression targets, so use the model's graph to compare in the model's units.
        dataset: an :class:`~causaldiffae.data.ImageLabelDataset` whose label columns follow the
            graph's node order (NaN = missing; masked out of the loss).
        out_path: the ``.safetensors`` file to write.
        steps: optimisation steps (Adam, cosine-decayed learning rate).
        batch_size: images per step.
        lr: peak learning rate.
        width, hidden: network size (first conv channels; MLP head width).
        holdout: fraction of the labelled images kept out of training to measure the MAE.
        seed: seeds the split, the initialisation and the batches.
        progress: show a tqdm bar.

    Returns:
        ``out_path``. The metadata holds ``val_mae`` (held-out MAE per node, normalised units).
    """
    from tqdm.auto import tqdm

    if steps < 1 or batch_size < 1:
        raise TrainingError(f"steps and batch_size must be positive, got steps={steps}, batch_size={batch_size}")
    if dataset.labels.shape[1] != graph.n_nodes:
        raise DataError(f"the data set has {dataset.labels.shape[1]} label columns, the graph {graph.n_nodes} nodes ({', '.join(graph.nodes)})")
    graph.normalise(np.zeros((1, graph.n_nodes)))  # raises GraphError if a node has no normalisation
    train_idx, val_idx = _split(dataset, holdout, seed)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + 1)
    C, H = dataset.channels, dataset.size
    net = PredictorNet(graph.n_nodes, C, H, width, hidden).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    t0 = time.time()
    bar = tqdm(range(steps), desc="predictors", disable=not progress, unit="step")
    loss_value = float("nan")
    for step in bar:
        idx = rng.choice(train_idx, size=min(batch_size, train_idx.size), replace=train_idx.size < batch_size)
        x, y = dataset.batch(idx)
        target = graph.normalise(y).to(device)
        mask = ~torch.isnan(target)
        pred = net(x.to(device))
        loss = ((pred - torch.nan_to_num(target)) ** 2 * mask).sum() / mask.sum().clamp_min(1)
        if not torch.isfinite(loss):
            raise TrainingError(f"predictor training diverged at step {step} (loss {loss.item()})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_value = float(loss.detach())
        if progress and step % 50 == 0:
            bar.set_postfix(loss=f"{loss_value:.4f}")
    net.eval()
    meta = {
        "kind": KIND,
        "graph": graph.to_dict(),
        "image_shape": [C, H, H],
        "net": {"width": width, "hidden": hidden},
        "train": {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "holdout": holdout,
                  "n_train": int(train_idx.size), "n_val": int(val_idx.size), "final_loss": loss_value,
                  "seconds": round(time.time() - t0, 2)},
    }
    pred = Predictors(graph, net.cpu(), (C, H, H), meta)
    val = evaluate_predictors(pred, dataset, val_idx) if val_idx.size else {n: None for n in graph.nodes}
    meta["val_mae"] = val
    meta["val_mae_mean"] = float(np.mean([v for v in val.values() if v is not None])) if any(v is not None for v in val.values()) else None
    return save_checkpoint(out_path, net.state_dict(), meta)


def load_predictors(path: str | os.PathLike, device: str | torch.device = "cpu") -> Predictors:
    """Load predictors written by :func:`train_predictors` (a file, or a run folder holding ``predictors.safetensors``)."""
    p = Path(path)
    if p.is_dir():
        p = p / PREDICTORS_NAME
    if not p.exists():
        raise CheckpointError(f"no predictors at {p}; train them with `causaldiffae predictors`")
    tensors, meta = load_checkpoint(p)
    if not isinstance(meta, dict) or meta.get("kind") != KIND:
        raise CheckpointError(f"{p} is a causaldiffae checkpoint but not a predictors file (kind {meta.get('kind') if isinstance(meta, dict) else None!r})")
    try:
        graph = CausalGraph.from_dict(meta["graph"])
        C, H, W = (int(v) for v in meta["image_shape"])
        net = PredictorNet(graph.n_nodes, C, H, int(meta["net"]["width"]), int(meta["net"]["hidden"]))
        net.load_state_dict(tensors)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{p}: predictors metadata or weights are invalid: {e}") from e
    return Predictors(graph, net, (C, H, W), meta).to(device)
