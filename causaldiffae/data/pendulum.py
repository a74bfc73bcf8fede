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
  ``shadow_length = max(3, |p1 - p2|)``; drawn as a black segment centred at the position.

The children (shadow length and position) are deterministic functions of the parents, so a true
counterfactual is exact: keep (angle, light), apply do(), recompute the children that were not
intervened on, render.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

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


def render_pendulum(table: pd.DataFrame | Mapping[str, Any], size: int = 32) -> np.ndarray:
    """Render scenes from all four labels: ``(N, size, size, 3)`` uint8.

    The shadow is drawn from ``shadow_length`` and ``shadow_position`` as given (so an intervened
    shadow is drawn as intervened), the pendulum and the sun from ``angle`` and ``light``.
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
    shadow_w = max(1, int(round(0.5 * sy)))
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
        d.line([px(pos - length / 2, -0.5), px(pos + length / 2, -0.5)], fill=SHADOW, width=shadow_w)
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


def true_counterfactual(table: pd.DataFrame, do: Mapping[str, Any | Callable], size: int = 32) -> tuple[np.ndarray, pd.DataFrame]:
    """The exact counterfactual of each scene in ``table`` under ``do``.

    Args:
        table: factual labels (physical units), columns as :data:`PENDULUM_COLUMNS`.
        do: node -> value, per-row values, or a callable of the factual values.
        size: image size.

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
    return render_pendulum(cf_table, size), cf_table
