"""CausalVAE's Pendulum scene, rendered from its structural equations, with exact counterfactuals.

Scene (data coordinates: x in [0, 20], y in [-1, 21]); pendulum angle ``theta = angle * pi / 200``
and light angle ``phi = light * pi / 200`` for integers ``angle`` in [-40, 43] and ``light`` in
[60, 147], ``light != 100``:

* pivot (10, 10.5); ball centre (10 + 8 sin theta, 10.5 - 8 cos theta), radius 1.5, dark red;
  a black rod from the pivot to the ball;
* the sun: an orange circle of radius 3 at (10 + 10 / tan phi, 20.5) (mostly above the frame);
* the shadow: the pivot and the rod's outer end (10 + 9.5 sin theta, 10.5 - 9.5 cos theta) are
  projected onto the ground line y = -0.5 along the light, ``x' = x + (-0.5 - y) / tan phi``;
  with p1, p2 the two projections, ``shadow_position = (p1 + p2) / 2`` and
  ``shadow_length = max(3, |p1 - p2|)``; drawn as a dark band centred at the position,
  ``shadow_width`` data units thick (:func:`shadow_band`; default 2, legacy 0.5, docs/data.md).

The children (shadow length and position) are deterministic functions of the parents, so a true
counterfactual is exact: keep (angle, light), apply do(), recompute the children that were not
intervened on, render.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from causaldiffae.data.simulator import Simulator
from causaldiffae.errors import DataError

PENDULUM_COLUMNS = ["angle", "light", "shadow_length", "shadow_position"]
ANGLES = np.arange(-40, 44)
LIGHTS = np.array([j for j in range(60, 148) if j != 100])

X_RANGE = (0.0, 20.0)
Y_RANGE = (-1.0, 21.0)
PIVOT = (10.0, 10.5)
SUPERSAMPLE = 4

BACKGROUND = (255, 255, 255)
BALL = (139, 0, 0)
ROD = (0, 0, 0)
SUN = (255, 165, 0)
SHADOW = (40, 40, 40)
LEGACY_SHADOW_WIDTH = 0.5  # data units: about 0.7 pixel at 32 x 32 (the renderer before issue 12)
SHADOW_WIDTH = 2.0  # data units (2.9 pixels at 32 x 32); see docs/data.md for the measurement that chose it


def pendulum_structural(angle: Any, light: Any) -> tuple[np.ndarray, np.ndarray]:
    """The structural equations of the children: ``(shadow_length, shadow_position)``, vectorised."""
    theta = np.asarray(angle, dtype=np.float64) * np.pi / 200
    phi = np.asarray(light, dtype=np.float64) * np.pi / 200
    tan_phi = np.tan(phi)
    x_top, y_top = PIVOT
    x_end = 10 + 9.5 * np.sin(theta)
    y_end = 10.5 - 9.5 * np.cos(theta)
    p1 = x_top + (-0.5 - y_top) / tan_phi
    p2 = x_end + (-0.5 - y_end) / tan_phi
    return np.maximum(3.0, np.abs(p1 - p2)), (p1 + p2) / 2


def pendulum_table(angle: Any, light: Any) -> pd.DataFrame:
    """A label table (physical units) for the given parents, children from the equations."""
    angle = np.asarray(angle, dtype=np.float64).reshape(-1)
    light = np.asarray(light, dtype=np.float64).reshape(-1)
    length, position = pendulum_structural(angle, light)
    return pd.DataFrame({"angle": angle, "light": light, "shadow_length": length, "shadow_position": position})


def pendulum_grid() -> pd.DataFrame:
    """All 84 x 87 = 7,308 (angle, light) pairs with their shadows."""
    a, l = np.meshgrid(ANGLES, LIGHTS, indexing="ij")
    return pendulum_table(a.ravel(), l.ravel())


def sample_pendulum(n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` random (angle, light) pairs drawn uniformly from the grid's integer ranges."""
    rng = np.random.default_rng(seed)
    return pendulum_table(rng.choice(ANGLES, n), rng.choice(LIGHTS, n))


def split_pendulum(table: pd.DataFrame) -> np.ndarray:
    """The reference split: every 4th row is test. Returns an array of "train"/"test"."""
    split = np.full(len(table), "train", dtype=object)
    split[3::4] = "test"
    return split


def shadow_band(shadow_width: float) -> tuple[float, float]:
    """The vertical extent ``(y_low, y_high)`` (data units) of the drawn shadow of a given width.

    The band is centred on the ground line y = -0.5 while it fits in the frame (width <= 1, the
    legacy 0.5 included); a wider band rests on the frame's bottom edge y = -1, so none of it is cut off.
    """
    w = float(shadow_width)
    centre = max(-0.5, Y_RANGE[0] + w / 2)
    return centre - w / 2, centre + w / 2


def render_pendulum(table: pd.DataFrame | Mapping[str, Any], size: int = 32, shadow_width: float | None = None) -> np.ndarray:
    """Render scenes from all four labels: ``(N, size, size, 3)`` uint8.

    The shadow is drawn from ``shadow_length`` and ``shadow_position`` as given (so an intervened
    shadow is drawn as intervened), the pendulum and the sun from ``angle`` and ``light``.
    ``shadow_width`` is the shadow's thickness in data units (the frame is 22 units high, so it is
    ``shadow_width * size / 22`` pixels); default :data:`SHADOW_WIDTH`, the images before it
    existed used :data:`LEGACY_SHADOW_WIDTH`.
    """
    from PIL import Image, ImageDraw

    cols = {c: np.asarray(table[c], dtype=np.float64).reshape(-1) for c in PENDULUM_COLUMNS}
    n = cols["angle"].shape[0]
    big = size * SUPERSAMPLE
    sx = big / (X_RANGE[1] - X_RANGE[0])
    sy = big / (Y_RANGE[1] - Y_RANGE[0])

    def px(x: float, y: float) -> tuple[float, float]:
        return (x - X_RANGE[0]) * sx, (Y_RANGE[1] - y) * sy

    rod_w = max(1, int(round(0.35 * sx)))
    shadow_width = SHADOW_WIDTH if shadow_width is None else float(shadow_width)
    if not np.isfinite(shadow_width) or shadow_width <= 0 or shadow_width > Y_RANGE[1] - Y_RANGE[0]:
        raise DataError(f"shadow_width must be a positive number of data units (at most 22), got {shadow_width!r}")
    shadow_w = max(1, int(round(shadow_width * sy)))
    shadow_y = sum(shadow_band(shadow_width)) / 2
    out = np.empty((n, size, size, 3), np.uint8)
    for k in range(n):
        theta = cols["angle"][k] * np.pi / 200
        phi = cols["light"][k] * np.pi / 200
        img = Image.new("RGB", (big, big), BACKGROUND)
        d = ImageDraw.Draw(img)
        sun_x = 10 + 10 / np.tan(phi)
        cx, cy = px(sun_x, 20.5)
        d.ellipse([cx - 3 * sx, cy - 3 * sy, cx + 3 * sx, cy + 3 * sy], fill=SUN)
        length, pos = cols["shadow_length"][k], cols["shadow_position"][k]
        d.line([px(pos - length / 2, shadow_y), px(pos + length / 2, shadow_y)], fill=SHADOW, width=shadow_w)
        bx, by = 10 + 8 * np.sin(theta), 10.5 - 8 * np.cos(theta)
        d.line([px(*PIVOT), px(bx, by)], fill=ROD, width=rod_w)
        cx, cy = px(bx, by)
        d.ellipse([cx - 1.5 * sx, cy - 1.5 * sy, cx + 1.5 * sx, cy + 1.5 * sy], fill=BALL)
        out[k] = np.asarray(img.reduce(SUPERSAMPLE))
    return out


def _apply(value: Any, factual: np.ndarray, name: str) -> np.ndarray:
    if callable(value):
        new = np.asarray(value(factual.copy()), dtype=np.float64)
    else:
        new = np.asarray(value, dtype=np.float64)
    try:
        return np.broadcast_to(new, factual.shape).astype(np.float64)
    except ValueError:
        raise DataError(f"do({name}=...): got {new.shape} values for {factual.shape[0]} scenes") from None


def true_counterfactual(table: pd.DataFrame, do: Mapping[str, Any | Callable], size: int = 32,
                        shadow_width: float | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """The exact counterfactual of each scene in ``table`` under ``do``.

    Args:
        table: factual labels (physical units), columns as :data:`PENDULUM_COLUMNS`.
        do: node -> value, per-row values, or a callable of the factual values.
        size: image size.
        shadow_width: the shadow's thickness in data units (see :func:`render_pendulum`).

    Returns:
        ``(images (N, size, size, 3) uint8, counterfactual label table)``: the parents keep their
        values unless intervened; children not intervened on are recomputed from the equations.
    """
    unknown = set(do) - set(PENDULUM_COLUMNS)
    if unknown:
        raise DataError(f"unknown Pendulum node(s) {sorted(unknown)}; known: {', '.join(PENDULUM_COLUMNS)}")
    cf = {c: np.asarray(table[c], dtype=np.float64).copy() for c in PENDULUM_COLUMNS}
    for parent in ("angle", "light"):
        if parent in do:
            cf[parent] = _apply(do[parent], cf[parent], parent)
    length, position = pendulum_structural(cf["angle"], cf["light"])
    cf["shadow_length"] = _apply(do["shadow_length"], cf["shadow_length"], "shadow_length") if "shadow_length" in do else length
    cf["shadow_position"] = _apply(do["shadow_position"], cf["shadow_position"], "shadow_position") if "shadow_position" in do else position
    cf_table = pd.DataFrame(cf)
    return render_pendulum(cf_table, size, shadow_width), cf_table


@lru_cache(maxsize=1)
def _marginal_ranges() -> dict[str, tuple[float, float]]:
    grid = pendulum_grid()
    return {c: (float(grid[c].min()), float(grid[c].max())) for c in PENDULUM_COLUMNS}


class PendulumSimulator(Simulator):
    """The Pendulum scene as a :class:`~causaldiffae.data.simulator.Simulator`.

    Args:
        size: render size.
        shadow_width: the shadow's thickness in data units (default :data:`SHADOW_WIDTH`; folders
            generated before the parameter existed used :data:`LEGACY_SHADOW_WIDTH`).
    """

    name = "pendulum"
    nodes = tuple(PENDULUM_COLUMNS)
    exogenous = ()

    def __init__(self, size: int = 32, shadow_width: float = SHADOW_WIDTH) -> None:
        super().__init__(size)
        self.shadow_width = float(shadow_width)
        render_pendulum(pendulum_table([0], [60]), 4, self.shadow_width)  # validates the width

    def params(self) -> dict[str, Any]:
        return {"shadow_width": self.shadow_width}

    def render(self, table: pd.DataFrame, size: int | None = None) -> np.ndarray:
        return render_pendulum(table, size or self.size, self.shadow_width)

    def sample_table(self, n: int, seed: int = 0) -> pd.DataFrame:
        return sample_pendulum(n, seed)

    def dataset_table(self, n: int | None = None, seed: int = 0) -> pd.DataFrame:
        table = pendulum_grid() if n is None else sample_pendulum(n, seed)
        table["split"] = split_pendulum(table)
        return table

    def independent_table(self, n: int, rng: np.random.Generator, split: str | None = "train") -> pd.DataFrame:
        """Angle, light, shadow length and shadow position each uniform over the grid's range, independently.

        (There is no finite pool of sources, so ``split`` does not matter.)
        """
        ranges = _marginal_ranges()
        return pd.DataFrame({c: rng.uniform(*ranges[c], size=n) for c in PENDULUM_COLUMNS})

    def true_counterfactual(self, table: pd.DataFrame, do: Mapping[str, Any | Callable], size: int | None = None) -> tuple[np.ndarray, pd.DataFrame]:
        return true_counterfactual(table, do, size or self.size, self.shadow_width)
