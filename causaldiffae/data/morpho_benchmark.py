"""Morpho-MNIST scored in the field's units (the counterfactual benchmark of Melistas et al. 2024).

The benchmark ("Benchmarking Counterfactual Image Generation", NeurIPS 2024 Datasets and
Benchmarks; code at github.com/gulnazaki/counterfactual-benchmark) reports, for do(thickness),
do(intensity) and do(digit): the thickness MAE in pixels, the intensity MAE in grey levels (0-255)
and the digit accuracy of the counterfactual images against the intended values; composition as
the L1 distance (0-255) to the input after 1 and 10 null interventions; reversibility. Its
thickness predictor is conditioned on the (intended) intensity.

:func:`field_metrics` scores one set of images per intervention, two ways: with the anti-causal
predictors (thickness given the intended intensity, intensity, digit class) and, for thickness and
intensity, with morphometry of the image itself (:func:`~causaldiffae.data.morphomnist.measure_thickness`
and :func:`~causaldiffae.data.morphomnist.measure_intensity` on the 28 x 28 digit), which needs no
trained network. Call it on the model's counterfactuals, on the factual images (the do-nothing
baseline) and on the simulator's true counterfactuals (the floor) to get the three rows of an
honest table. Composition and reversibility are the generic metrics (:mod:`causaldiffae.metrics`),
already in 0-255 L1 units.

Published figures of the benchmark's best Morpho-MNIST model (the hierarchical VAE, its Table 2):
:data:`PUBLISHED_BEST`.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from causaldiffae.errors import DataError

#: The benchmark's best Morpho-MNIST model (HVAE), Melistas et al. 2024, Table 2.
PUBLISHED_BEST = {
    "model": "HVAE (Melistas et al. 2024, Benchmarking Counterfactual Image Generation, Table 2)",
    "do(thickness)": {"thickness_mae_px": 0.086, "intensity_mae": 1.99},
    "do(intensity)": {"thickness_mae_px": 0.224, "intensity_mae": 3.52},
    "do(digit)": {"digit_accuracy": 0.972},
    "composition_l1": {"1": 0.438, "10": 1.550},
}

#: The units of :func:`field_metrics`' scores (what :mod:`causaldiffae.metrics.field` needs to put
#: them beside do-nothing and floor): the node each reads, its label, and which way is better.
FIELD_UNITS = {
    "thickness_mae_px": {"node": "thickness", "label": "thickness MAE (px)", "higher_is_better": False, "best": 0.0},
    "intensity_mae": {"node": "intensity", "label": "intensity MAE (0-255)", "higher_is_better": False, "best": 0.0},
    "digit_accuracy": {"node": "digit", "label": "digit accuracy", "higher_is_better": True, "best": 1.0},
}


def to_uint8_digits(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Model-ready images ``(B, 1, H, W)`` in [-1, 1] (or uint8 ``(B, H, W[, 1])``) -> ``(B, 28, 28)``
    uint8 digits: the centre 28 x 28 of a zero-padded image (:func:`~causaldiffae.data.morphomnist.pad_to`'s
    inverse); smaller images are resized up to 28 x 28."""
    if isinstance(images, torch.Tensor):
        x = images.detach().cpu().float()
        if x.ndim != 4 or x.shape[1] != 1:
            raise DataError(f"Morpho-MNIST images must be (B, 1, H, W); got {tuple(x.shape)}")
        arr = np.clip(np.round((x[:, 0].numpy() + 1.0) * 127.5), 0, 255).astype(np.uint8)
    else:
        arr = np.asarray(images)
        if arr.ndim == 4 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim != 3:
            raise DataError(f"Morpho-MNIST images must be (B, H, W[, 1]); got {arr.shape}")
        arr = arr.astype(np.uint8)
    n, h, w = arr.shape
    if h >= 28 and w >= 28:
        top, left = (h - 28) // 2, (w - 28) // 2
        return arr[:, top : top + 28, left : left + 28]
    from skimage.transform import resize

    big = resize(arr.astype(np.float64), (n, 28, 28), order=1, preserve_range=True, mode="constant")
    return np.clip(np.round(big), 0, 255).astype(np.uint8)


def _intended(intended: Mapping[str, Any], name: str, n: int) -> np.ndarray | None:
    if name not in intended:
        return None
    v = np.array(intended[name].detach().cpu() if isinstance(intended[name], torch.Tensor) else intended[name], dtype=np.float64).reshape(-1)
    if v.size != n:
        raise DataError(f"intended {name!r}: {v.size} values for {n} images")
    return v


def field_metrics(
    images: torch.Tensor,
    intended: Mapping[str, Any],
    predictors=None,
    do: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Score Morpho-MNIST images against intended factor values, in the benchmark's units.

    Args:
        images: ``(B, 1, H, W)`` in [-1, 1] (the model's counterfactuals, the factual images for the
            do-nothing row, or the true counterfactuals for the floor).
        intended: node -> ``(B,)`` intended values in label units (``thickness`` in pixels,
            ``intensity`` 0-255, ``digit`` the class), e.g. the simulator's counterfactual labels.
        predictors: optional :class:`~causaldiffae.predictors.Predictors` on these nodes (thickness
            read given the intended intensity where its predictor is conditioned, as the benchmark does).
        do: the intervention (only recorded).

    Returns:
        ``{"do": [...], "n": B, "thickness_mae_px": {"predictor": .., "morphometry": ..},
        "intensity_mae": {"predictor": .., "morphometry": ..}, "digit_accuracy": {"predictor": ..},
        "unmeasurable": images whose morphometry failed (blank)}``; entries that cannot be computed are None.
    """
    from causaldiffae.data.morphomnist import measure_intensity_batch, measure_thickness_batch

    B = int(images.shape[0])
    t_int, i_int, d_int = (_intended(intended, k, B) for k in ("thickness", "intensity", "digit"))
    digits = to_uint8_digits(images)
    t_meas = measure_thickness_batch(digits)
    i_meas = measure_intensity_batch(digits)
    bad = ~(np.isfinite(t_meas) & np.isfinite(i_meas))

    def mae(a, b):
        if a is None or b is None:
            return None
        ok = np.isfinite(a) & np.isfinite(b)
        return float(np.mean(np.abs(a[ok] - b[ok]))) if ok.any() else None

    out: dict[str, Any] = {
        "do": sorted(do) if do else [], "n": B,
        "thickness_mae_px": {"predictor": None, "morphometry": mae(t_meas, t_int)},
        "intensity_mae": {"predictor": None, "morphometry": mae(i_meas, i_int)},
        "digit_accuracy": {"predictor": None},
        "unmeasurable": int(bad.sum()),
    }
    if predictors is not None:
        g = predictors.graph
        given = torch.full((B, g.n_nodes), float("nan"))
        for name, v in (("thickness", t_int), ("intensity", i_int), ("digit", d_int)):
            if v is not None and name in g.nodes:
                given[:, g.index(name)] = torch.as_tensor(v, dtype=torch.float32)
        pred = predictors.predict(images.float(), given=given).numpy().astype(np.float64)
        if "thickness" in g.nodes:
            out["thickness_mae_px"]["predictor"] = mae(pred[:, g.index("thickness")], t_int)
        if "intensity" in g.nodes:
            out["intensity_mae"]["predictor"] = mae(pred[:, g.index("intensity")], i_int)
        if "digit" in g.nodes and d_int is not None:
            d = pred[:, g.index("digit")]
            if not predictors.is_categorical("digit"):
                d = np.round(d)  # an old regressor: the nearest class
            out["digit_accuracy"]["predictor"] = float(np.mean(d == d_int))
    return out
