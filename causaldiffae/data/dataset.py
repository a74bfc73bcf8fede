"""One dataset type for every source: images in memory, labels in label units, a mask of which exist.

:class:`ImageLabelDataset` holds ``uint8`` images ``(N, H, W, C)`` and float labels ``(N, n_nodes)``
(NaN = missing) in the graph's node order. Items and batches come out as float images
``(C, H, W)`` in [-1, 1] and labels in label units; normalisation is the graph's job.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
import torch

from causaldiffae.errors import DataError


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize ``(N, H, W, C)`` uint8 images to ``size x size``.

    The rule: a square image is resized with Pillow's antialiased LANCZOS filter; a non-square one
    is first centre-cropped to a square. Images that already have the size are returned as they are.
    """
    from PIL import Image

    n, h, w, c = images.shape
    if h == w == size:
        return images
    out = np.empty((n, size, size, c), np.uint8)
    for i in range(n):
        img = images[i]
        if h != w:
            s = min(h, w)
            top, left = (h - s) // 2, (w - s) // 2
            img = img[top : top + s, left : left + s]
        pil = Image.fromarray(img[..., 0] if c == 1 else img)
        arr = np.asarray(pil.resize((size, size), Image.LANCZOS))
        out[i] = arr[..., None] if c == 1 else arr
    return out


class ImageLabelDataset(torch.utils.data.Dataset):
    """Images with (possibly missing) labels for the nodes of a causal graph.

    Args:
        images: ``(N, H, W, C)`` uint8 (``(N, H, W)`` is read as one channel).
        labels: ``(N, n_nodes)`` float in label units, NaN where a label is missing.
        columns: the label column of each node, in the graph's node order.
        size: resize to ``size x size`` (see :func:`resize_images`); None keeps the size.
        extra: optional per-image metadata (a pandas DataFrame with N rows), e.g. generator state
            that true counterfactuals need.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, columns: Sequence[str], size: int | None = None, extra=None) -> None:
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4:
            raise DataError(f"images must be (N, H, W[, C]); got shape {images.shape}")
        if images.dtype != np.uint8:
            if np.issubdtype(images.dtype, np.floating) and images.size and images.max() <= 1.0 + 1e-6 and images.min() >= -1e-6:
                images = np.round(images * 255)
            images = np.clip(images, 0, 255).astype(np.uint8)
        labels = np.asarray(labels, dtype=np.float32)
        if labels.ndim == 1:
            labels = labels[:, None]
        if labels.shape != (images.shape[0], len(columns)):
            raise DataError(f"labels have shape {labels.shape}, expected ({images.shape[0]}, {len(columns)}) for columns {list(columns)}")
        if images.shape[-1] not in (1, 3, 4):
            raise DataError(f"images have {images.shape[-1]} channels; 1, 3 or 4 are supported")
        if size is not None:
            images = resize_images(images, size)
        self.images = np.ascontiguousarray(images)
        self.labels = labels
        self.columns = list(columns)
        self.extra = extra

    @classmethod
    def from_arrays(cls, images: np.ndarray, labels: np.ndarray, columns: Sequence[str], size: int | None = None, extra=None) -> "ImageLabelDataset":
        """Build from in-memory arrays (see the class docstring)."""
        return cls(images, labels, columns, size=size, extra=extra)

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def channels(self) -> int:
        return int(self.images.shape[-1])

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        img, lab = self.batch(torch.tensor([i]))
        return {"image": img[0], "labels": lab[0], "mask": ~torch.isnan(lab[0])}

    def batch(self, indices: torch.Tensor | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``(b, C, H, W)`` float in [-1, 1] and labels ``(b, n_nodes)`` (NaN = missing)."""
        idx = np.asarray(indices, dtype=np.int64)
        x = torch.from_numpy(self.images[idx]).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
        return x.contiguous(), torch.from_numpy(self.labels[idx].copy())

    # ------------------------------------------------------------------ labels
    def label_mask(self) -> torch.Tensor:
        """``(N, n_nodes)`` bool: which labels are present."""
        return torch.from_numpy(~np.isnan(self.labels))

    def labelled_count(self) -> int:
        """Number of images with at least one label."""
        return int((~np.isnan(self.labels)).any(axis=1).sum())

    def labelled_digest(self) -> str:
        """A short hash of which labels are present (identifies a labelled subset)."""
        return hashlib.sha256(np.packbits(~np.isnan(self.labels)).tobytes()).hexdigest()[:16]

    def label_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-node ``(loc, scale)`` from the present labels: the midpoint and half the range.

        With this choice the training labels map to [-1, 1]. A node with no labels (or a constant
        one) gets loc 0 / scale 1 for the missing part. The graph's declared values take precedence.
        """
        lo, hi = self.label_range()
        loc = np.where(np.isfinite(lo), (lo + hi) / 2, 0.0)
        half = np.where(np.isfinite(lo), (hi - lo) / 2, 1.0)
        return loc.astype(np.float64), np.where(half > 0, half, 1.0).astype(np.float64)

    def label_range(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-node min and max of the present labels (NaN for a node without labels)."""
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                return np.nanmin(self.labels, axis=0).astype(np.float64), np.nanmax(self.labels, axis=0).astype(np.float64)

    def with_label_fraction(self, fraction: float, seed: int = 0) -> "ImageLabelDataset":
        """A copy where a fixed, seeded subset of ``round(fraction * N)`` images keeps its labels.

        The subset is drawn among the images that have labels; all other images get NaN labels.
        The same ``(fraction, seed)`` always selects the same images.
        """
        if not 0.0 < fraction <= 1.0:
            raise DataError(f"label fraction must be in (0, 1], got {fraction}")
        labels = self.labels.copy()
        has = np.flatnonzero((~np.isnan(labels)).any(axis=1))
        keep_n = int(round(fraction * len(self)))
        rng = np.random.default_rng(seed)
        keep = rng.permutation(has)[: min(keep_n, has.size)]
        drop = np.setdiff1d(np.arange(len(self)), keep)
        labels[drop] = np.nan
        out = ImageLabelDataset.__new__(ImageLabelDataset)
        out.images, out.labels, out.columns, out.extra = self.images, labels, self.columns, self.extra
        return out

    def subset(self, indices: Sequence[int]) -> "ImageLabelDataset":
        """The images at ``indices`` (a view of the images, a copy of the labels)."""
        idx = np.asarray(indices, dtype=np.int64)
        out = ImageLabelDataset.__new__(ImageLabelDataset)
        out.images, out.labels, out.columns = self.images[idx], self.labels[idx].copy(), self.columns
        out.extra = None if self.extra is None else self.extra.iloc[idx].reset_index(drop=True)
        return out


# ---------------------------------------------------------------------------- batch sampling
def _window(rows: np.ndarray, count: int, step: int, key: int) -> np.ndarray:
    """``count`` rows for ``step``: consecutive windows of a seeded permutation of ``rows`` per epoch."""
    per_epoch = max(1, rows.size // count)
    epoch, pos = divmod(step, per_epoch)
    perm = rows[torch.randperm(rows.size, generator=torch.Generator().manual_seed(key + epoch)).numpy()]
    out = perm[pos * count : (pos + 1) * count]
    if out.size < count:  # fewer rows than the share: draw with replacement
        g = torch.Generator().manual_seed(key * 31 + step)
        out = rows[torch.randint(rows.size, (count,), generator=g).numpy()]
    return out


def batch_indices(step: int, seed: int, n_data: int, global_batch: int, labelled_rows: Sequence[int] | None = None,
                  labelled_share: float = 0.0) -> torch.Tensor:
    """Data indices ``(global_batch,)`` int64 of training step ``step``, a pure function of its arguments
    (so a resumed run draws the same batches).

    Plain sampling (``labelled_share == 0`` or no ``labelled_rows``): a seeded permutation of all rows
    per epoch, ``step`` picks its window (with replacement when the data is smaller than a batch).

    Stratified sampling (semi-supervised runs): ``k = max(1, round(max(labelled_share, f) * B))`` rows
    of every batch come from ``labelled_rows`` (``f`` = their fraction of the data) and the other
    ``B - k`` from the remaining rows, each stream a seeded permutation of its own. At 1% labels and
    B = 64 a plain batch holds 0.64 labelled rows on average (none in about half the steps); a
    stratified one holds ``k >= 1`` in every step.
    """
    share = float(labelled_share)
    if not 0.0 <= share <= 1.0:
        raise DataError(f"labelled_share must be in [0, 1], got {labelled_share}")
    rows = None if labelled_rows is None else np.unique(np.asarray(labelled_rows, dtype=np.int64))
    if share == 0.0 or rows is None or rows.size == 0 or rows.size >= n_data:
        per_epoch = max(1, n_data // global_batch)
        epoch, pos = divmod(step, per_epoch)
        perm = torch.randperm(n_data, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        idx = perm[pos * global_batch : (pos + 1) * global_batch]
        if idx.numel() < global_batch:  # data smaller than a batch: sample with replacement
            g = torch.Generator().manual_seed(seed * 7919 + step)
            idx = torch.randint(n_data, (global_batch,), generator=g)
        return idx
    k = min(global_batch, max(1, int(round(max(share, rows.size / n_data) * global_batch))))
    rest = np.setdiff1d(np.arange(n_data, dtype=np.int64), rows)
    parts = [_window(rows, k, step, seed * 1_000_003 + 17)]
    if global_batch > k:
        parts.append(_window(rest, global_batch - k, step, seed * 1_000_003 + 29))
    return torch.from_numpy(np.concatenate(parts))

