"""Anti-causal predictors: one small CNN per graph node that reads its factor back off an image.

They read the factors back off an image (image -> label, the anti-causal direction), which is what
the effectiveness metric needs (see ``docs/evaluation.md``)::

    sim = get_simulator("pendulum")                        # where the data set has a simulator ...
    path = train_predictors(graph, None, "p.safetensors", simulator=sim, n_samples=8000)
    path = train_predictors(graph, dataset, "p.safetensors")  # ... else on the labelled images
    pred = load_predictors(path)
    labels = pred.predict(images)          # (B, C, H, W) in [-1, 1] -> (B, n_nodes) in label units
    floors = predictor_floors(pred, sim)   # error on the simulator's true counterfactuals of every do()

**Each predictor must read its own factor.** Trained on data from the SCM, a child's predictor can
read the child's *causes* instead of the child (Pendulum's shadow position is a function of the
pendulum and the sun), and then it cannot tell a counterfactual that moved the parent but left the
child from the right one. With a simulator, the predictors train on scenes where every factor is
drawn independently from its marginal (:meth:`~causaldiffae.data.simulator.Simulator.sample_independent`),
so the only way to predict a factor is to look at it. :func:`predictor_floors` is the gate: each
predictor's error on the true counterfactuals of every default intervention (its *floor*) must be
<= :data:`FLOOR_GATE` normalised units (error rate for a categorical node).

Architecture: every node owns an independent network (no weights are shared between nodes):
3x3 convolutions with stride 2 down to at most 8 x 8, one more at stride 1, an adaptive average
pool to 4 x 4 (so the head still sees *where* things are, which matters for positions and angles)
and a two-layer MLP head. A continuous node regresses its normalised label ``(y - loc) / scale``
(squared error); a categorical node (``type=categorical`` in the graph, or ``categorical=[...]``)
has one logit per class (cross-entropy) and predicts the most likely class. A node may be
*conditioned* on other nodes' normalised labels (``condition={"thickness": ["intensity"]}``, as
the Morpho-MNIST benchmark predicts thickness given intensity): their values enter the head; at
prediction time they come from ``given`` or, where not given, from the other predictors. Missing
labels are masked out of the loss. A node's training images may be *augmented*
(:class:`Augmentation`: random whole-pixel shifts, small rotations; opt-in per node, because a
shift changes a position and a rotation an angle): the Morpho-MNIST digit classifier, which sees
only the 3,750 training writers, needs it to read held-out writers. On one CPU thread the four Pendulum regressors read about
3,500 images/s at 32 x 32 (1,700 at 64 x 64).

The file is a checkpoint in the format of :mod:`causaldiffae.checkpoint` (safetensors weights, the
JSON metadata in its header): the graph (with its normalisation), the image shape, the categorical
classes and conditions, the training settings and source, the held-out MAE of every continuous
node in normalised units and the held-out accuracy of every categorical one.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from causaldiffae.checkpoint import PRETRAINED_DIR, load_checkpoint, save_checkpoint
from causaldiffae.errors import CheckpointError, ConfigError, DataError, TrainingError
from causaldiffae.graph import CausalGraph
from causaldiffae.metrics.floors import FLOOR_GATE, gate_verdict  # the gate on true counterfactuals (re-exported)

KIND = "causaldiffae-predictors"
PREDICTORS_NAME = "predictors.safetensors"
POOL = 4


@dataclass(frozen=True)
class Augmentation:
    """Random label-preserving transforms of one node's training images (drawn afresh per image and step).

    Opt-in per node (``train_predictors(..., augment={"digit": Augmentation(shift=2, rotate=15)})``):
    a transform is only label-preserving for a factor it does not change, and a translation changes
    a position, a rotation an angle (Pendulum's factors), so nothing is augmented unless asked.

    Attributes:
        shift: the most whole pixels an image moves along each axis (an integer drawn uniformly from
            ``[-shift, shift]`` per axis); the pixels that enter repeat the border. Exact: no grey
            level changes, so stroke thickness and intensity stay what they were (as long as the
            object stays inside the frame; Morpho-MNIST's digits keep >= 6 pixels of margin at 32 x 32).
        rotate: the most degrees an image turns about its centre (uniform in ``[-rotate, rotate]``),
            resampled bilinearly. The resampling blurs edges: at +-15 degrees a Morpho-MNIST digit's
            measured intensity drops by about 12 grey levels and its thickness moves by about 0.04 px,
            so rotate only for a factor read off the shape (a digit class), not for intensity or thickness.
    """

    shift: int = 0
    rotate: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.shift, bool) or not isinstance(self.shift, (int, np.integer)) or self.shift < 0:
            raise ConfigError(f"augmentation shift must be a whole number of pixels >= 0, got {self.shift!r}")
        if not isinstance(self.rotate, (int, float, np.number)) or not 0 <= float(self.rotate) <= 180:
            raise ConfigError(f"augmentation rotate must be degrees in [0, 180], got {self.rotate!r}")

    @property
    def active(self) -> bool:
        return self.shift > 0 or self.rotate > 0

    @classmethod
    def parse(cls, spec: "Augmentation | Mapping[str, Any] | str") -> "Augmentation":
        """From an :class:`Augmentation`, a mapping (``{"shift": 2, "rotate": 15}``) or a string
        ``"shift=2,rotate=15"`` (either key may be left out)."""
        if isinstance(spec, Augmentation):
            return spec
        if isinstance(spec, str):
            items = {}
            for part in filter(None, (p.strip() for p in spec.split(","))):
                key, sep, value = part.partition("=")
                try:
                    if not sep or key.strip() not in ("shift", "rotate"):
                        raise ValueError
                    items[key.strip()] = int(value) if key.strip() == "shift" else float(value)
                except ValueError:
                    raise ConfigError(f"augmentation {spec!r}: expected shift=PIXELS,rotate=DEGREES (either may be left out)") from None
            spec = items
        unknown = set(spec) - {"shift", "rotate"}
        if unknown:
            raise ConfigError(f"augmentation {dict(spec)!r}: unknown key(s) {sorted(unknown)}; known: shift, rotate")
        return cls(shift=spec.get("shift", 0), rotate=float(spec.get("rotate", 0.0)))

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(B, C, H, W)`` -> the same images, each shifted and rotated at random; ``(B, C, H, W)``."""
        if not self.active:
            return x
        B, _, H, W = x.shape
        dev = x.device
        angle = (torch.rand(B, generator=generator) * 2 - 1) * math.radians(float(self.rotate))
        shift = torch.randint(-self.shift, self.shift + 1, (B, 2), generator=generator).float()
        theta = torch.zeros(B, 2, 3)
        theta[:, 0, 0], theta[:, 0, 1] = angle.cos(), -angle.sin()
        theta[:, 1, 0], theta[:, 1, 1] = angle.sin(), angle.cos()
        theta[:, 0, 2], theta[:, 1, 2] = shift[:, 0] * 2 / W, shift[:, 1] * 2 / H  # normalised coordinates
        grid = nn.functional.affine_grid(theta.to(dev, x.dtype), list(x.shape), align_corners=False)
        return nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _trunk_strides(size: int) -> list[int]:
    """Stride-2 convolutions until the feature map is at most 8 x 8 (at least two), then one stride-1 convolution."""
    strides, s = [], size
    while len(strides) < 2 or s > 8:
        strides.append(2)
        s = (s + 1) // 2
    return strides + [1]


class NodeRegressor(nn.Module):
    """One node's CNN: 3x3 convolutions (SiLU), a 4 x 4 average pool, a two-layer MLP head.

    Args:
        in_channels: image channels.
        size: image size (decides how many stride-2 convolutions there are).
        width: channels of the first convolution; each further one doubles it, up to ``4 * width``.
        hidden: width of the MLP head.
        out_dim: outputs (1 for a regressor, the number of classes for a classifier).
        n_cond: conditioning values appended to the pooled features (0: none).

    ``forward(x (B, C, H, W), cond (B, n_cond) or None) -> (B, out_dim)``.
    """

    def __init__(self, in_channels: int, size: int, width: int = 8, hidden: int = 64, out_dim: int = 1, n_cond: int = 0,
                 pool: int = POOL) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for k, stride in enumerate(_trunk_strides(size)):
            c_out = width * min(2**k, 4)
            layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.SiLU()]
            c_in = c_out
        self.n_cond = int(n_cond)
        self.trunk = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(pool), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(c_in * pool * pool + self.n_cond, hidden), nn.SiLU(), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = self.trunk(x)
        if self.n_cond:
            h = torch.cat([h, cond.to(h.dtype)], dim=1)
        return self.head(h)


class PredictorNet(nn.Module):
    """One :class:`NodeRegressor` per node (no weights shared).

    ``forward(x (B, C, H, W), cond: list of (B, n_cond_j) or None) -> list of (B, out_dim_j)``:
    a normalised label (out_dim 1) or class logits per node.
    """

    def __init__(self, n: int, in_channels: int, size: int, width: int = 8, hidden: int = 64,
                 out_dims: Sequence[int] | None = None, n_conds: Sequence[int] | None = None, pool: int = POOL) -> None:
        super().__init__()
        out_dims = list(out_dims or [1] * n)
        n_conds = list(n_conds or [0] * n)
        self.nets = nn.ModuleList([NodeRegressor(in_channels, size, width, hidden, out_dims[j], n_conds[j], pool) for j in range(n)])

    def forward(self, x: torch.Tensor, cond: Sequence[torch.Tensor | None] | None = None) -> list[torch.Tensor]:
        cond = cond or [None] * len(self.nets)
        return [net(x, c) for net, c in zip(self.nets, cond)]


def _condition_order(nodes: Sequence[str], condition: Mapping[str, Sequence[str]]) -> list[str]:
    """Nodes ordered so that every node comes after the nodes it is conditioned on (raises on a cycle)."""
    import networkx as nx

    g = nx.DiGraph()
    g.add_nodes_from(nodes)
    g.add_edges_from((c, n) for n, cs in condition.items() for c in cs)
    try:
        return list(nx.lexicographical_topological_sort(g, key=list(nodes).index))
    except nx.NetworkXUnfeasible:
        raise ConfigError(f"predictor conditions form a cycle: {dict(condition)}") from None


class Predictors:
    """Trained per-node predictors; :meth:`predict` maps images to labels in label units.

    Attributes:
        graph: the graph whose nodes (and normalisation) the predictors read.
        net: the underlying module.
        image_shape: ``(C, H, W)`` the predictors were trained on.
        categorical: node -> its classes (label units) for categorical nodes.
        condition: node -> the nodes its predictor is conditioned on.
        meta: the checkpoint metadata (training settings and source, held-out scores per node).
    """

    def __init__(self, graph: CausalGraph, net: PredictorNet, image_shape: tuple[int, int, int], meta: Mapping[str, Any] | None = None,
                 categorical: Mapping[str, Sequence[float]] | None = None, condition: Mapping[str, Sequence[str]] | None = None) -> None:
        self.graph = graph
        self.net = net.eval().requires_grad_(False)
        self.image_shape = tuple(image_shape)
        self.meta = dict(meta or {})
        self.categorical = {k: [float(v) for v in vs] for k, vs in (categorical or {}).items()}
        self.condition = {k: list(vs) for k, vs in (condition or {}).items() if vs}
        self._order = _condition_order(graph.nodes, self.condition)

    @property
    def nodes(self) -> list[str]:
        return self.graph.nodes

    def is_categorical(self, node: str) -> bool:
        return node in self.categorical

    def to(self, device: str | torch.device) -> "Predictors":
        self.net.to(device)
        return self

    @torch.no_grad()
    def _outputs(self, images: torch.Tensor, given: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One batch: normalised labels ``(B, n)`` (a categorical node: its class, normalised) and the logits."""
        dev = next(self.net.parameters()).device
        x = images.to(dev, torch.float32)
        B = x.shape[0]
        values = torch.full((B, self.graph.n_nodes), float("nan"))
        given_n = self.graph.normalise(given.float()) if given is not None else None
        logits: dict[str, torch.Tensor] = {}
        for node in self._order:
            j = self.graph.index(node)
            cond = None
            if node in self.condition:
                cols = []
                for c in self.condition[node]:
                    k = self.graph.index(c)
                    v = values[:, k].clone()
                    if given_n is not None:
                        v = torch.where(torch.isnan(given_n[:, k]), v, given_n[:, k])
                    cols.append(v)
                cond = torch.stack(cols, dim=1).to(dev)
            out = self.net.nets[j](x, cond).float().cpu()
            if node in self.categorical:
                logits[node] = out
                classes = torch.tensor(self.categorical[node], dtype=torch.float32)
                values[:, j] = self.graph.normalise_value(node, classes[out.argmax(dim=1)])
            else:
                values[:, j] = out[:, 0]
        return values, logits

    def _check(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or tuple(images.shape[1:]) != self.image_shape:
            raise DataError(f"the predictors take images of shape (B, {', '.join(map(str, self.image_shape))}), "
                            f"got {tuple(images.shape)}")

    def predict_normalised(self, images: torch.Tensor, max_batch: int = 512, given: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, C, H, W)`` in [-1, 1] -> normalised labels ``(B, n_nodes)`` (on CPU).

        ``given``: optional labels ``(B, n_nodes)`` in label units (NaN = not given) used as the
        conditioning inputs of conditioned predictors; the rest come from the predictors themselves.
        """
        self._check(images)
        if given is not None:
            given = torch.as_tensor(given, dtype=torch.float32).cpu()
        out = [self._outputs(images[s : s + max_batch], None if given is None else given[s : s + max_batch])[0]
               for s in range(0, images.shape[0], max_batch)]
        return torch.cat(out) if out else torch.empty(0, self.graph.n_nodes)

    def predict(self, images: torch.Tensor, max_batch: int = 512, given: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, C, H, W)`` in [-1, 1] -> labels in label units ``(B, n_nodes)`` in node order (on CPU);
        a categorical node's column holds its most likely class."""
        return self.graph.denormalise(self.predict_normalised(images, max_batch, given))

    def predict_proba(self, images: torch.Tensor, node: str, max_batch: int = 512, given: torch.Tensor | None = None) -> torch.Tensor:
        """Class probabilities ``(B, n_classes)`` of a categorical node (classes in ``categorical[node]``)."""
        if node not in self.categorical:
            raise DataError(f"node {node!r} is not categorical for these predictors (categorical: {sorted(self.categorical) or 'none'})")
        self._check(images)
        out = [self._outputs(images[s : s + max_batch], None if given is None else torch.as_tensor(given, dtype=torch.float32)[s : s + max_batch])[1][node]
               for s in range(0, images.shape[0], max_batch)]
        return torch.softmax(torch.cat(out), dim=1) if out else torch.empty(0, len(self.categorical[node]))

    __call__ = predict


def default_predictors_path(run: str | os.PathLike) -> Path:
    """Where the predictors of a run live: ``RUN/predictors.safetensors``; for a shipped model's name
    (``pendulum``), the shipped ``causaldiffae/pretrained/<name>.predictors.safetensors``."""
    p = Path(run)
    shipped = PRETRAINED_DIR / f"{p}.predictors.safetensors"
    if not p.exists() and p.suffix == "" and len(p.parts) == 1 and shipped.is_file():
        return shipped
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


def node_scores(predictors: Predictors, predicted: torch.Tensor, target: torch.Tensor) -> dict[str, float | None]:
    """Per node, on label-unit tensors ``(B, n_nodes)`` (NaN targets skipped): the MAE in normalised
    units for a continuous node, the error rate (1 - accuracy) for a categorical one."""
    g = predictors.graph
    pn, tn = g.normalise(predicted.float()), g.normalise(torch.as_tensor(target, dtype=torch.float32))
    out: dict[str, float | None] = {}
    for j, node in enumerate(g.nodes):
        ok = ~torch.isnan(tn[:, j])
        if not ok.any():
            out[node] = None
        elif node in predictors.categorical:
            out[node] = float((predicted[ok, j] != torch.as_tensor(target, dtype=torch.float32)[ok, j]).float().mean())
        else:
            out[node] = float((pn[ok, j] - tn[ok, j]).abs().mean())
    return out


def evaluate_predictors(predictors: Predictors, dataset, indices=None, max_batch: int = 512) -> dict[str, float | None]:
    """Per node on ``dataset`` (rows ``indices``; missing labels skipped): MAE in normalised units for
    a continuous node, error rate (1 - accuracy) for a categorical one (see :func:`node_scores`)."""
    idx = np.arange(len(dataset)) if indices is None else np.asarray(indices)
    preds, targets = [], []
    for s in range(0, idx.size, max_batch):
        x, y = dataset.batch(idx[s : s + max_batch])
        preds.append(predictors.predict(x))
        targets.append(torch.as_tensor(y, dtype=torch.float32))
    if not preds:
        return {n: None for n in predictors.nodes}
    return node_scores(predictors, torch.cat(preds), torch.cat(targets))


def _categorical_classes(graph: CausalGraph, labels: np.ndarray, categorical: Sequence[str] | None,
                         simulator=None) -> dict[str, list[float]]:
    """node -> sorted classes (label units): nodes typed ``categorical`` in the graph (its ``classes``
    if declared), named in ``categorical``, or categorical in the simulator; classes not declared
    are the distinct labelled values."""
    names = set(categorical or [])
    unknown = names - set(graph.nodes)
    if unknown:
        raise ConfigError(f"categorical node(s) {sorted(unknown)} are not in the graph; nodes: {', '.join(graph.nodes)}")
    declared: dict[str, Any] = {}
    for node, spec in graph.specs.items():
        if getattr(spec, "type", "continuous") == "categorical":
            names.add(node)
            if getattr(spec, "classes", None) is not None:
                declared[node] = getattr(spec, "classes")
    for node, classes in (getattr(simulator, "categorical", None) or {}).items():
        if node in graph.nodes:
            names.add(node)
            declared.setdefault(node, classes)
    out = {}
    for node in graph.nodes:
        if node not in names:
            continue
        if node in declared:
            try:
                classes = sorted(float(c) for c in declared[node])
            except (TypeError, ValueError):
                raise ConfigError(f"node {node!r}: categorical classes must be numbers (the label values), got {declared[node]!r}") from None
        else:
            col = labels[:, graph.index(node)]
            classes = sorted(float(v) for v in np.unique(col[~np.isnan(col)]))
        if len(classes) < 2:
            raise DataError(f"categorical node {node!r} needs at least two classes; found {classes}")
        out[node] = classes
    return out


def _class_index(values: torch.Tensor, classes: Sequence[float], node: str) -> torch.Tensor:
    """Label values ``(B,)`` (NaN allowed) -> class indices ``(B,)`` (-1 where missing); names a value that is no class."""
    cls = torch.tensor(classes, dtype=torch.float32)
    ok = ~torch.isnan(values)
    d = (values[:, None] - cls[None, :]).abs()
    idx = d.argmin(dim=1)
    bad = ok & (d.min(dim=1).values > 1e-4)
    if bad.any():
        raise DataError(f"categorical node {node!r}: label {float(values[bad][0]):g} is none of its classes {list(classes)}")
    return torch.where(ok, idx, torch.full_like(idx, -1))


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
    simulator=None,
    n_samples: int = 8000,
    size: int | None = None,
    categorical: Sequence[str] | None = None,
    condition: Mapping[str, Sequence[str]] | None = None,
    pool: int = POOL,
    augment: Mapping[str, Augmentation | Mapping[str, Any] | str] | None = None,
) -> Path:
    """Train one CNN per node of ``graph``; save them.

    Args:
        graph: the causal graph; its normalisation (``loc``/``scale`` for every node) defines the
            regression targets, so use the model's graph to compare in the model's units.
        dataset: an :class:`~causaldiffae.data.ImageLabelDataset` whose label columns follow the
            graph's node order (NaN = missing; masked out of the loss). Used when there is no
            ``simulator`` (users' data); may be None with a simulator.
        out_path: the ``.safetensors`` file to write.
        steps: optimisation steps (Adam, cosine-decayed learning rate).
        batch_size: images per step.
        lr: peak learning rate.
        width, hidden: network size (first conv channels; MLP head width).
        pool: side of the pooled feature map the head sees (finer = better positions and lengths).
        holdout: fraction of the images kept out of training to measure the held-out scores.
        seed: seeds the split, the simulator's draws, the initialisation and the batches.
        progress: show a tqdm bar.
        simulator: a :class:`~causaldiffae.data.simulator.Simulator`: train on ``n_samples`` of its
            scenes with every factor drawn independently (the training split's sources), so each
            predictor reads its own factor and not its causes.
        n_samples: scenes drawn from the simulator.
        size: image size with a simulator (default: the data set's, else the simulator's).
        categorical: nodes to classify (besides those typed ``categorical`` in the graph or the simulator).
        condition: node -> nodes whose (normalised) labels its predictor also takes as input.
        augment: node -> :class:`Augmentation` (or ``{"shift": ..., "rotate": ...}`` / ``"shift=2,rotate=15"``)
            applied to that node's training images only; nodes not named see the images as they
            are (default: none). For a classifier that must generalise to unseen instances (a digit
            read by a classifier that saw 3,750 writers); never for a factor the transform changes.

    Returns:
        ``out_path``. The metadata holds ``val_mae`` (held-out MAE per continuous node, normalised
        units) and ``val_accuracy`` (per categorical node).
    """
    from tqdm.auto import tqdm

    from causaldiffae.data import ImageLabelDataset

    if steps < 1 or batch_size < 1:
        raise TrainingError(f"steps and batch_size must be positive, got steps={steps}, batch_size={batch_size}")
    if dataset is None and simulator is None:
        raise DataError("train_predictors needs a data set or a simulator")
    graph.normalise(np.zeros((1, graph.n_nodes)))  # raises GraphError if a node has no normalisation
    source: dict[str, Any] = {"kind": "labelled images"}
    if simulator is not None:
        missing = [c for c in graph.label_columns if c not in simulator.nodes]
        if missing:
            raise DataError(f"the {simulator.name} simulator has no label for column(s) {missing}; it has {', '.join(simulator.nodes)}")
        H = int(size or (dataset.size if dataset is not None else simulator.size))
        raw, table = simulator.sample_independent(n_samples, np.random.default_rng(seed + 2), split="train", size=H)
        dataset = ImageLabelDataset.from_arrays(raw, table[graph.label_columns].to_numpy(np.float32), graph.nodes)
        source = {"kind": "independent simulator draws", "simulator": simulator.name, "params": simulator.generator_params(),
                  "n_samples": int(n_samples), "split": "train"}
    if dataset.labels.shape[1] != graph.n_nodes:
        raise DataError(f"the data set has {dataset.labels.shape[1]} label columns, the graph {graph.n_nodes} nodes ({', '.join(graph.nodes)})")
    condition = {k: list(v) for k, v in (condition or {}).items() if v}
    for node, conds in condition.items():
        bad = [c for c in [node, *conds] if c not in graph.nodes]
        if bad:
            raise ConfigError(f"predictor condition {node!r} <- {conds}: unknown node(s) {bad}; nodes: {', '.join(graph.nodes)}")
    order = _condition_order(graph.nodes, condition)
    augment = {k: Augmentation.parse(v) for k, v in (augment or {}).items()}
    bad = [k for k in augment if k not in graph.nodes]
    if bad:
        raise ConfigError(f"augmentation for unknown node(s) {bad}; nodes: {', '.join(graph.nodes)}")
    augment = {k: v for k, v in augment.items() if v.active}
    classes = _categorical_classes(graph, dataset.labels, categorical, simulator)
    train_idx, val_idx = _split(dataset, holdout, seed)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + 1)
    aug_gen = torch.Generator().manual_seed(seed + 3)
    C, H = dataset.channels, dataset.size
    out_dims = [len(classes[n]) if n in classes else 1 for n in graph.nodes]
    n_conds = [len(condition.get(n, [])) for n in graph.nodes]
    net = PredictorNet(graph.n_nodes, C, H, width, hidden, out_dims, n_conds, pool).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    t0 = time.time()
    bar = tqdm(range(steps), desc="predictors", disable=not progress, unit="step")
    loss_value = float("nan")
    for step in bar:
        idx = rng.choice(train_idx, size=min(batch_size, train_idx.size), replace=train_idx.size < batch_size)
        x, y = dataset.batch(idx)
        target = graph.normalise(y)
        x = x.to(device)
        losses = []
        for node in order:
            j = graph.index(node)
            cond = None
            if node in condition:  # conditioned on the true labels (missing ones: 0, the normalised centre)
                cond = torch.nan_to_num(torch.stack([target[:, graph.index(c)] for c in condition[node]], dim=1)).to(device)
            out = net.nets[j](augment[node](x, aug_gen) if node in augment else x, cond)
            if node in classes:
                cls = _class_index(y[:, j].float(), classes[node], node).to(device)
                ok = cls >= 0
                if ok.any():
                    losses.append(nn.functional.cross_entropy(out[ok], cls[ok]))
            else:
                t = target[:, j].to(device)
                ok = ~torch.isnan(t)
                if ok.any():
                    losses.append(((out[ok, 0] - t[ok]) ** 2).mean())
        if not losses:
            continue
        loss = torch.stack(losses).sum()
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
        "net": {"width": width, "hidden": hidden, "pool": pool},
        "categorical": classes,
        "condition": condition,
        "source": source,
        "train": {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "holdout": holdout,
                  "augment": {k: asdict(v) for k, v in augment.items()},
                  "n_train": int(train_idx.size), "n_val": int(val_idx.size), "final_loss": loss_value,
                  "seconds": round(time.time() - t0, 2)},
    }
    pred = Predictors(graph, net.cpu(), (C, H, H), meta, categorical=classes, condition=condition)
    val = evaluate_predictors(pred, dataset, val_idx) if val_idx.size else {n: None for n in graph.nodes}
    meta["val_mae"] = {n: v for n, v in val.items() if n not in classes}
    meta["val_accuracy"] = {n: (None if v is None else 1.0 - v) for n, v in val.items() if n in classes}
    maes = [v for v in meta["val_mae"].values() if v is not None]
    meta["val_mae_mean"] = float(np.mean(maes)) if maes else None
    return save_checkpoint(out_path, net.state_dict(), meta)


def predictor_floors(
    predictors: Predictors,
    simulator,
    n: int = 64,
    seed: int = 0,
    split: str = "test",
    interventions: Sequence[Mapping[str, Any]] | None = None,
    gate: float = FLOOR_GATE,
) -> dict[str, Any]:
    """The predictors' floors: their error on the simulator's *true* counterfactuals of every intervention.

    ``n`` scenes of the simulator's ``split`` rows (the test split by default: held-out sources) are
    rendered at the predictors' size; for the factual scenes (row ``"none"``) and for each
    intervention (default: :func:`causaldiffae.metrics.default_interventions` of the scenes' labels,
    the ones ``evaluate`` makes) the true counterfactual is rendered and every node is scored
    against the simulator's counterfactual labels: MAE in normalised units for a continuous node,
    error rate (1 - accuracy) for a categorical one. A predictor that reads its own factor scores
    low on *every* row; one that reads the factor's causes fails on the interventions on the factor.

    Interventions the simulator cannot answer exactly (:attr:`Simulator.no_true_counterfactual`,
    e.g. Morpho-MNIST's do(digit)) are listed under ``"excluded"`` with the reason.

    Returns:
        ``{"errors": {do: {node: error}}, "metric": {node: "mae" | "error_rate"}, "worst": {node:
        max error over the rows}, "gate": gate, "passed": all worst <= gate, "failures": [[do, node,
        error], ...], "excluded": {do: reason}, "n": scenes, "split": split}``; :func:`floors_frame`
        turns it into a table.
    """
    from causaldiffae.data import ImageLabelDataset
    from causaldiffae.metrics import default_interventions

    g = predictors.graph
    missing = [c for c in g.label_columns if c not in simulator.nodes]
    if missing:
        raise DataError(f"the {simulator.name} simulator has no label for column(s) {missing}")
    _, H, _ = predictors.image_shape
    table = simulator.split_rows(split, n, seed)
    labels = np.array(table[g.label_columns].to_numpy(np.float32))
    x, _ = ImageLabelDataset.from_arrays(simulator.render(table, H), labels, g.nodes).batch(range(len(table)))
    errors = {"none": node_scores(predictors, predictors.predict(x), torch.as_tensor(labels))}
    excluded: dict[str, str] = {}
    dos = interventions if interventions is not None else default_interventions(g, torch.as_tensor(labels), seed=seed)
    for do in dos:
        name = ", ".join(sorted(do))
        if not simulator.has_true_counterfactual(do):
            excluded[name] = "; ".join(simulator.no_true_counterfactual[k] for k in do if k in simulator.no_true_counterfactual)
            continue
        do_np = {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v) for k, v in do.items()}
        raw, cf = simulator.true_counterfactual(table, do_np, size=H)
        cf_labels = np.array(cf[g.label_columns].to_numpy(np.float32))
        xc, _ = ImageLabelDataset.from_arrays(raw, cf_labels, g.nodes).batch(range(len(table)))
        errors[name] = node_scores(predictors, predictors.predict(xc), torch.as_tensor(cf_labels))
    return {
        "errors": errors,
        "metric": {node: "error_rate" if predictors.is_categorical(node) else "mae" for node in g.nodes},
        **gate_verdict(errors, gate), "gate": float(gate),
        "excluded": excluded, "n": int(len(table)), "split": split, "simulator": simulator.generator_params(),
    }


def floors_frame(floors: Mapping[str, Any]):
    """:func:`predictor_floors`' errors as a pandas DataFrame: one row per intervention (``none`` =
    factual scenes), one column per node."""
    import pandas as pd

    return pd.DataFrame.from_dict(floors["errors"], orient="index")


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
        categorical = {str(k): [float(c) for c in v] for k, v in (meta.get("categorical") or {}).items()}  # older files: none
        condition = {str(k): [str(c) for c in v] for k, v in (meta.get("condition") or {}).items()}
        out_dims = [len(categorical[n]) if n in categorical else 1 for n in graph.nodes]
        n_conds = [len(condition.get(n, [])) for n in graph.nodes]
        net = PredictorNet(graph.n_nodes, C, H, int(meta["net"]["width"]), int(meta["net"]["hidden"]), out_dims, n_conds,
                           int(meta["net"].get("pool", POOL)))
        net.load_state_dict(tensors)
        pred = Predictors(graph, net, (C, H, W), meta, categorical=categorical, condition=condition)
    except (KeyError, TypeError, ValueError, RuntimeError, ConfigError) as e:
        raise CheckpointError(f"{p}: predictors metadata or weights are invalid: {e}") from e
    return pred.to(device)
