"""Per-image distances (MSE, PSNR, SSIM, L1) and the reconstruction table.

Images are float tensors ``(B, C, H, W)`` in [-1, 1]. MSE and PSNR are computed on the [0, 1]
scale, L1 on the 0-255 scale (no rounding to integers), SSIM with scikit-image (``data_range`` of
the scale, ``channel_axis`` for the channels).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch

from causaldiffae import counterfactual as cf
from causaldiffae.errors import DataError


def _unit(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """``(B, C, H, W)`` in [-1, 1] -> float64 ``(B, H, W, C)`` in [0, 1]."""
    t = torch.as_tensor(x).detach().float().cpu().clamp(-1, 1)
    return ((t.permute(0, 2, 3, 1).numpy().astype(np.float64)) + 1.0) / 2.0


def _check_pair(a, b) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise DataError(f"image batches differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.ndim != 4:
        raise DataError(f"images must be (B, C, H, W), got shape {tuple(a.shape)}")


def mse(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Per-image mean squared error on the [0, 1] scale, ``(B,)``."""
    _check_pair(a, b)
    return ((_unit(a) - _unit(b)) ** 2).mean(axis=(1, 2, 3))


def psnr(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Per-image PSNR in dB on the [0, 1] scale, ``10 log10(1 / MSE)``; ``inf`` for identical images."""
    m = mse(a, b)
    with np.errstate(divide="ignore"):
        return np.where(m > 0, 10.0 * np.log10(1.0 / np.maximum(m, 1e-300)), np.inf)


def _win_size(h: int, w: int) -> int:
    s = min(7, h, w)
    return s if s % 2 == 1 else s - 1


def _ssim_hwc(x: np.ndarray, y: np.ndarray, data_range: float) -> np.ndarray:
    from skimage.metrics import structural_similarity

    win = _win_size(x.shape[1], x.shape[2])
    if win < 3:
        raise DataError(f"SSIM needs images of at least 3 x 3 pixels, got {x.shape[1]} x {x.shape[2]}")
    return np.array([structural_similarity(x[i], y[i], channel_axis=-1, data_range=data_range, win_size=win)
                     for i in range(x.shape[0])])


def ssim(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Per-image SSIM (scikit-image, [0, 1] scale, its default uniform 7 x 7 window, or the largest odd one that fits), ``(B,)``."""
    _check_pair(a, b)
    return _ssim_hwc(_unit(a), _unit(b), 1.0)


def l1_255(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Per-image mean absolute difference on the 0-255 scale, ``(B,)``."""
    _check_pair(a, b)
    return (np.abs(_unit(a) - _unit(b)) * 255.0).mean(axis=(1, 2, 3))


def _mean(x) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(np.mean(x)) if x.size else float("nan")


# ----------------------------------------------------------------------------------------------
# reconstruction
# ----------------------------------------------------------------------------------------------
def reconstruction(model, images: torch.Tensor, steps: Sequence[int] = (10, 20, 50, 100), max_batch: int = 64,
                   progress: bool = False, refine: int = 0,
                   refine_carry: bool | None = None) -> pd.DataFrame:
    """Reconstruction quality of DDIM inversion followed by DDIM decoding, for each step count.

    Returns a DataFrame with one row per step count and the columns ``steps``, ``mse`` and ``psnr``
    ([0, 1] scale), ``ssim`` and ``l1_255`` (the mean over images of each per-image value).
    """
    from tqdm.auto import tqdm

    model.check_images(images)
    rows = []
    for s in tqdm(list(steps), desc="reconstruction", disable=not progress, leave=False):
        rec = cf.reconstruct(model, images, steps=int(s), max_batch=max_batch, refine=refine, refine_carry=refine_carry).cpu()
        x = images.cpu()
        rows.append({"steps": int(s), "mse": _mean(mse(rec, x)), "psnr": _mean(psnr(rec, x)),
                     "ssim": _mean(ssim(rec, x)), "l1_255": _mean(l1_255(rec, x))})
    return pd.DataFrame(rows, columns=["steps", "mse", "psnr", "ssim", "l1_255"])

