"""Ground truth from a simulator: the true counterfactual images and the model's pixel error against them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import torch

from causaldiffae import counterfactual as cf
from causaldiffae.errors import DataError
from causaldiffae.metrics.baselines import achieved_fraction
from causaldiffae.metrics.images import _check_pair, _mean, _ssim_hwc, _unit
from causaldiffae.metrics.interventions import _do_for_numpy, node_groups

#: Grey levels (0-255) by which a pixel of the true counterfactual must differ from the factual
#: image to count as changed. The simulators are deterministic (the null intervention reproduces
#: the factual image exactly), so any difference is drawn by the intervention; the tolerance only
#: absorbs uint8 rounding and the resampling when the simulator's size differs from the model's
#: (1-2 levels), and stays below the smallest drawn change (an anti-aliased edge shifting by a
#: fraction of a pixel, >= 16 levels on Pendulum) so the region holds every visible change.
CHANGE_TOLERANCE = 8.0


def true_counterfactual_images(model, table: pd.DataFrame, do: Mapping[str, Any], simulator: Callable,
                               size: int | None = None) -> tuple[torch.Tensor, pd.DataFrame]:
    """The simulator's counterfactuals as model-ready images ``(B, C, H, W)`` in [-1, 1], and its label table.

    ``size`` is the size the simulator renders at (the data set's native size); the images are
    then resized to the model's size with the data loader's rule
    (:func:`~causaldiffae.data.resize_images`).
    """
    from causaldiffae.data import resize_images

    C, H, _ = model.image_shape
    imgs, cf_table = simulator(table, _do_for_numpy(do), size=size or H)
    imgs = np.asarray(imgs)
    if imgs.ndim == 3:
        imgs = imgs[..., None]
    imgs = resize_images(imgs.astype(np.uint8), H)
    if imgs.shape[-1] != C:
        raise DataError(f"the simulator renders {imgs.shape[-1]}-channel images, the model takes {C}")
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    return x.contiguous(), cf_table


def ground_truth_error(
    model, images: torch.Tensor, table: pd.DataFrame, do: Mapping[str, Any], simulator: Callable,
    steps: int = 20, strength: float = 1.0, size: int | None = None,
    counterfactuals: torch.Tensor | cf.CounterfactualResult | None = None, max_batch: int = 64,
    truth: torch.Tensor | None = None, change_tolerance: float | None = None, refine: int = 0,
    refine_carry: bool | None = None,
) -> dict[str, Any]:
    """Pixel MAE (0-255) and SSIM between the model's counterfactuals and the true ones, on the
    whole image and on the changed region, each beside the identity's (the factual image's) score.

    The **changed region** is where the true counterfactual differs from the factual image by more
    than ``change_tolerance`` grey levels (:func:`changed_region`); there the MAE is the largest
    channel difference per pixel, averaged over the region's pixels of all images. A thin descendant
    (a one-row shadow) is invisible in the whole-image average and dominates the region's.
    ``changed_region.achieved_fraction = (identity - model) / identity`` on the region (the truth
    scores 0 there): 0 for a model that changes nothing, 1 for the true image.

    Args:
        model: a trained CausalDiffAE.
        images: factual images ``(B, C, H, W)`` in [-1, 1], one per row of ``table``.
        table: the factual rows: a column per node plus the simulator's exogenous columns
            (e.g. Morpho-MNIST's ``source`` and ``eps_intensity``).
        do: the intervention.
        simulator: ``true_counterfactual(table, do, size) -> (uint8 images (N, H, W, C), cf table)``,
            e.g. :func:`causaldiffae.data.pendulum.true_counterfactual`.
        size: the size the simulator renders at (default: the model's); resized to the model's size.
        counterfactuals: the model's counterfactual images (tensor or CounterfactualResult) if already computed.
        truth: the true counterfactual images ``(B, C, H, W)`` if already rendered
            (:func:`true_counterfactual_images`); then ``table`` and ``simulator`` are not used.

    Returns:
        ``{"do", "mae_255", "ssim", "n", "identity": {"mae_255", "ssim"}, "changed_region":
        {"tolerance_255", "pixel_fraction", "model_mae_255", "identity_mae_255", "achieved_fraction"}}``
        (means over the images; SSIM on the 0-255 scale).
    """
    change_tolerance = CHANGE_TOLERANCE if change_tolerance is None else float(change_tolerance)
    node_groups(model.graph, do)
    if truth is None:
        if table is None or len(table) != images.shape[0]:
            raise DataError(f"the factual table has {None if table is None else len(table)} rows for {images.shape[0]} images")
        truth, _ = true_counterfactual_images(model, table, do, simulator, size=size)
    if counterfactuals is None:
        counterfactuals = cf.counterfactual(model, images, do=do, strength=strength, steps=steps, max_batch=max_batch,
                                          refine=refine, refine_carry=refine_carry, residual=False)  # the protocol
    x_cf = counterfactuals.images if isinstance(counterfactuals, cf.CounterfactualResult) else counterfactuals
    x_cf = x_cf.cpu()
    _check_pair(x_cf, truth)
    _check_pair(images.cpu(), truth)
    a, b, f = _unit(x_cf) * 255.0, _unit(truth) * 255.0, _unit(images) * 255.0
    region = changed_region(images, truth, tolerance=change_tolerance)  # (B, H, W)
    n_changed = int(region.sum())

    def region_mae(x: np.ndarray) -> float | None:
        return float(np.abs(x - b).max(axis=-1)[region].mean()) if n_changed else None

    model_region, identity_region = region_mae(a), region_mae(f)
    region_fraction, note = achieved_fraction(identity_region, model_region, 0.0, min_gap=change_tolerance)
    out = {
        "do": list(do), "mae_255": float(np.abs(a - b).mean()), "ssim": _mean(_ssim_hwc(a, b, 255.0)), "n": int(images.shape[0]),
        "identity": {"mae_255": float(np.abs(f - b).mean()), "ssim": _mean(_ssim_hwc(f, b, 255.0))},
        "changed_region": {
            "tolerance_255": change_tolerance, "pixel_fraction": float(region.mean()),
            "model_mae_255": model_region, "identity_mae_255": identity_region, "achieved_fraction": region_fraction,
        },
    }
    if note:
        out["changed_region"]["note"] = "no pixel changes" if not n_changed else note
    return out


def changed_region(factual: torch.Tensor, truth: torch.Tensor, tolerance: float = CHANGE_TOLERANCE) -> np.ndarray:
    """Pixels where the true counterfactual differs from the factual image: ``(B, H, W)`` bool.

    A pixel belongs to the region when any channel differs by more than ``tolerance`` grey levels
    (0-255 scale); see :data:`CHANGE_TOLERANCE` for the default.
    """
    _check_pair(factual, truth)
    return (np.abs(_unit(truth) - _unit(factual)) * 255.0).max(axis=-1) > tolerance


def find_simulator(data_spec: Any, size: int | None = None) -> tuple[Callable, int, str] | None:
    """The true-counterfactual function of a generated data set, or None.

    ``data_spec`` is a folder whose ``generator.json`` names the generator (``pendulum`` or
    ``morphomnist``), or the name of a generated set in the data cache. Returns
    ``(true_counterfactual, native_size, generator_name)``.
    """
    from causaldiffae.data.generate import GENERATORS, data_cache_dir, true_counterfactual_function

    s = str(data_spec)
    folder = Path(s)
    if s in GENERATORS and not folder.exists():
        folder = data_cache_dir() / f"{s}-{size or 32}"
    meta = folder / "generator.json"
    if not folder.is_dir() or not meta.exists():
        return None
    try:
        params = json.loads(meta.read_text())
    except (json.JSONDecodeError, OSError) as e:
        raise DataError(f"{meta} is not readable JSON: {e}") from None
    name = params.get("generator") if isinstance(params, dict) else None
    if name not in GENERATORS:
        raise DataError(f"{meta} names an unknown generator {name!r}; known: {', '.join(GENERATORS)}")
    true_counterfactual = true_counterfactual_function(name, params)  # a Simulator with the folder's parameters
    return true_counterfactual, int(params.get("size") or size or 32), name
