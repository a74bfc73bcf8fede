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
from causaldiffae.metrics.images import _check_pair, _mean, _ssim_hwc, _unit
from causaldiffae.metrics.interventions import _do_for_numpy, node_groups


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
    truth: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Pixel MAE (0-255) and SSIM between the model's counterfactuals and the true ones.

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
        ``{"do", "mae_255", "ssim", "n"}`` (means over the images; SSIM on the 0-255 scale).
    """
    node_groups(model.graph, do)
    if truth is None:
        if table is None or len(table) != images.shape[0]:
            raise DataError(f"the factual table has {None if table is None else len(table)} rows for {images.shape[0]} images")
        truth, _ = true_counterfactual_images(model, table, do, simulator, size=size)
    if counterfactuals is None:
        counterfactuals = cf.counterfactual(model, images, do=do, strength=strength, steps=steps, max_batch=max_batch)
    x_cf = counterfactuals.images if isinstance(counterfactuals, cf.CounterfactualResult) else counterfactuals
    x_cf = x_cf.cpu()
    _check_pair(x_cf, truth)
    a, b = _unit(x_cf) * 255.0, _unit(truth) * 255.0
    return {"do": list(do), "mae_255": float(np.abs(a - b).mean()), "ssim": _mean(_ssim_hwc(a, b, 255.0)), "n": int(images.shape[0])}



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
    true_counterfactual = true_counterfactual_function(name)
    return true_counterfactual, int(params.get("size") or size or 32), name
