"""Users' own data: a folder of images with ``labels.csv``, an ``.npz``, or CausalCircuit's npz.

Folder format::

    my_data/
      labels.csv        # a ``file`` column + one column per graph node (empty cell = unlabelled)
      img_0001.png      # PNG or JPEG, paths relative to the folder
      ...

An optional ``split`` column (``train``/``test``) selects a split. Other columns are kept as
per-image metadata (``dataset.extra``). Spaces around headers and cells are ignored (``a, b`` reads
as columns ``a`` and ``b``; a cell of spaces is an empty cell). Images of other sizes than the one
asked for are resized, with one warning saying how many and from which sizes.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from causaldiffae.data.dataset import ImageLabelDataset
from causaldiffae.errors import CausalDiffAEWarning, DataError

CIRCUIT_COLUMNS = ["arm", "blue", "green", "red"]


def _numeric_labels(table: pd.DataFrame, columns: Sequence[str], where: str) -> np.ndarray:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        present = [c for c in table.columns if c != "file"]
        raise DataError(f"{where}: label column(s) {missing} missing for the graph's nodes; columns present: {present}")
    out = np.empty((len(table), len(columns)), np.float32)
    for j, c in enumerate(columns):
        col = pd.to_numeric(table[c], errors="coerce")
        bad = table[c].notna() & col.isna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(f"{where}: column {c!r} has a non-numeric value {table[c].iloc[row]!r} (row {row + 2} of the file)")
        out[:, j] = col.to_numpy(dtype=np.float32)
    return out


def read_label_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read a label CSV as users write them: spaces around headers and cells are dropped, a cell
    holding only spaces is empty (missing), and numbers stored with spaces stay numbers.

    Raises DataError when the file is missing, not text, not a CSV, empty, or has two columns of
    the same name once spaces are dropped.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"label table {str(p)!r} not found")
    if p.is_dir():
        raise DataError(f"label table {str(p)!r} is a folder, not a CSV file")
    try:
        table = pd.read_csv(p, skipinitialspace=True, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"cannot read {p} as a CSV label table: {' '.join(str(e).split())}") from None
    names = [str(c).strip() for c in table.columns]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"{p}: column(s) {dup} appear more than once (spaces around headers are ignored)")
    table.columns = names
    table = table.apply(lambda col: col.str.strip()).replace({"": np.nan, "nan": np.nan, "NaN": np.nan, "NA": np.nan})
    for c in table.columns:  # numeric columns become numbers, as pandas would read them without the spaces
        if c in ("file", "split"):
            continue
        converted = pd.to_numeric(table[c], errors="coerce")
        if converted.notna().sum() == table[c].notna().sum():
            table[c] = converted
    return table


def read_image(path: Path, channels: int | None = None) -> np.ndarray:
    """One image as uint8 ``(H, W, C)``; ``channels`` converts (1 = grey, 3 = RGB, 4 = RGBA)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if channels is not None:
                im = im.convert({1: "L", 3: "RGB", 4: "RGBA"}[channels])
            elif im.mode not in ("L", "RGB", "RGBA"):
                im = im.convert("RGBA" if "A" in im.mode else "RGB")
            arr = np.asarray(im)
    except FileNotFoundError:
        raise DataError(f"image file {path} is listed but does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None
    return arr[..., None] if arr.ndim == 2 else arr


def load_image_files(paths: Sequence[str | os.PathLike], channels: int | None = None, size: int | None = None):
    """Read image files into a float tensor ``(N, C, H, W)`` in [-1, 1].

    All images must share one size and channel count unless ``size``/``channels`` are given
    (then they are converted and resized with the rule of :func:`~causaldiffae.data.resize_images`).
    """
    import torch

    from causaldiffae.data.dataset import resize_images

    arrays = [read_image(Path(p), channels) for p in paths]
    if size is not None:
        arrays = [resize_images(a[None], size)[0] for a in arrays]
    first = arrays[0].shape
    for p, a in zip(paths, arrays):
        if a.shape != first:
            raise DataError(f"images differ in size or channels: {paths[0]} is {first}, {p} is {a.shape}; "
                            "give a size to resize them all")
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return x.contiguous()


def load_folder(folder: str | os.PathLike, columns: Sequence[str], size: int | None = None,
                channels: int | None = None, split: str | None = None) -> ImageLabelDataset:
    """Load a folder in the format above.

    Args:
        folder: the folder holding ``labels.csv``.
        columns: the label column of each graph node, in node order.
        size: resize every image to ``size x size`` (needed when sizes differ).
        channels: convert every image to this many channels (needed when they differ).
        split: keep only rows whose ``split`` column equals this (ignored if there is no such column).
    """
    folder = Path(folder)
    csv = folder / "labels.csv"
    if not folder.is_dir():
        raise DataError(f"data folder {folder} does not exist")
    if not csv.exists():
        raise DataError(f"{folder} has no labels.csv (expected a 'file' column and one column per graph node)")
    table = read_label_csv(csv)
    if "file" not in table.columns:
        raise DataError(f"{csv} has no 'file' column; columns present: {list(table.columns)}")
    if split is not None and "split" in table.columns:
        table = table[table["split"] == split].reset_index(drop=True)
        if table.empty:
            raise DataError(f"{csv} has no rows with split == {split!r}")
    labels = _numeric_labels(table, columns, str(csv))
    if table["file"].isna().any():
        row = int(np.flatnonzero(table["file"].isna().to_numpy())[0])
        raise DataError(f"{csv}: row {row + 2} has an empty 'file' cell")
    images = []
    shape = None
    resized: dict[tuple[int, int], int] = {}
    for f in table["file"]:
        arr = read_image(folder / str(f), channels)
        if size is not None and arr.shape[:2] != (size, size):
            from causaldiffae.data.dataset import resize_images

            key = (arr.shape[1], arr.shape[0])
            resized[key] = resized.get(key, 0) + 1
            arr = resize_images(arr[None], size)[0]
        if shape is None:
            shape, first = arr.shape, f
        elif arr.shape != shape:
            what = "channel counts" if arr.shape[:2] == shape[:2] else "sizes"
            raise DataError(f"{folder}: images of mixed {what}: {first} is {shape}, {f} is {arr.shape}; "
                            f"pass size=... (resize) and channels=... (convert)")
        images.append(arr)
    if resized:
        sizes = ", ".join(f"{w}x{h}: {k}" for (w, h), k in sorted(resized.items(), key=lambda kv: -kv[1]))
        crop = " (non-square ones centre-cropped first)" if any(w != h for w, h in resized) else ""
        warnings.warn(f"{folder}: resized {sum(resized.values())} of {len(images)} images to {size}x{size}{crop}; "
                      f"sizes found: {sizes}", CausalDiffAEWarning, stacklevel=2)
    extra = table.drop(columns=[c for c in columns if c in table.columns])
    return ImageLabelDataset(np.stack(images), labels, columns, extra=extra.reset_index(drop=True))


def _open_npz(path: Path, keys: Sequence[str], what: str, missing: str):
    """Open an ``.npz`` without pickles; DataError when absent, unreadable or lacking one of ``keys``
    (``missing`` is formatted with ``key``; the arrays present are appended)."""
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{what} {path} does not exist") from None
    except (ValueError, OSError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    for key in keys:
        if key not in data:
            raise DataError(missing.format(key=key) + f" (arrays present: {list(data.keys())})")
    return data


def load_npz(path: str | os.PathLike, columns: Sequence[str], size: int | None = None) -> ImageLabelDataset:
    """An ``.npz`` with ``images`` (N, H, W[, C]) and ``labels`` (N, n); an optional ``columns``
    array names the label columns (else they are taken in the given node order)."""
    path = Path(path)
    data = _open_npz(path, ("images", "labels"), "data file", f"{path} has no {{key!r}} array")
    labels = np.asarray(data["labels"])
    if not np.issubdtype(labels.dtype, np.number):
        raise DataError(f"{path}: 'labels' must be numeric, got dtype {labels.dtype}")
    if labels.ndim == 1:
        labels = labels[:, None]
    if "columns" in data:
        names = [str(c) for c in data["columns"]]
        labels = _numeric_labels(pd.DataFrame(labels, columns=names), columns, str(path))
    elif labels.shape[1] != len(columns):
        raise DataError(f"{path}: 'labels' has {labels.shape[1]} columns but the graph has {len(columns)} nodes {list(columns)}; "
                        "add a 'columns' array naming them")
    return ImageLabelDataset(data["images"], labels, columns, size=size)


def load_causal_circuit(path: str | os.PathLike, size: int | None = None, columns: Sequence[str] = CIRCUIT_COLUMNS) -> ImageLabelDataset:
    """CausalCircuit's published npz (Brehmer et al. 2022): ``original_latents`` (N, 2, 4), ``imgs`` (N, H, W, 3).

    Each record holds a pair of images (before/after an intervention) in the original release;
    here the first of each pair is used: ``labels = original_latents[:, 0, :]`` in the order
    (arm, blue, green, red) and the matching image ``imgs[i]`` (or ``imgs[i, 0]`` when ``imgs``
    also stores the pair).
    """
    path = Path(path)
    data = _open_npz(path, ("original_latents", "imgs"), "CausalCircuit file",
                     f"{path} is not in CausalCircuit's layout: no {{key!r}} array")
    lat = np.asarray(data["original_latents"], dtype=np.float32)
    if lat.ndim != 3 or lat.shape[1:] != (2, 4):
        raise DataError(f"{path}: 'original_latents' should be (N, 2, 4), got {lat.shape}")
    imgs = np.asarray(data["imgs"])
    if imgs.ndim == 5:
        imgs = imgs[:, 0]
    if imgs.shape[0] != lat.shape[0]:
        raise DataError(f"{path}: {imgs.shape[0]} images but {lat.shape[0]} latent records")
    return ImageLabelDataset(imgs, lat[:, 0, :], list(columns), size=size)
