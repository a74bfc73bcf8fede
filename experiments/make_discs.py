"""A small folder of synthetic discs in the users' format, for the first-hour walk-through.

One disc per image on a dark background. Three factors, one causal edge:

    size -> brightness      (bigger discs are brighter, plus noise)
    x                       (horizontal position, independent of both)

    python experiments/make_discs.py --out data/discs            # 1,200 images, 32x32, 200 of them test
    python experiments/make_discs.py --out data/discs --graph graphs/discs.dot

Writes ``OUT/disc_NNNN.png`` and ``OUT/labels.csv`` (``file, size, brightness, x, split``); with
``--graph`` also the DOT file of the graph above. Label units: ``size`` is the radius in pixels of a
32x32 image (scaled with ``--size``), ``brightness`` the grey level 0-255, ``x`` the centre's column
as a fraction of the width.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

GRAPH_DOT = """// The discs of experiments/make_discs.py: size causes brightness; x is independent.
digraph discs {
  default_dim=2;
  size [description="disc radius (pixels of a 32x32 image)"];
  brightness [description="grey level of the disc, 0-255"];
  x [description="horizontal centre, fraction of the width"];
  size -> brightness;
}
"""


def disc_labels(n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` draws of (size, brightness, x) from the discs' causal model."""
    rng = np.random.default_rng(seed)
    size = rng.uniform(3.0, 9.0, n)
    brightness = np.clip(60.0 + 20.0 * (size - 3.0) + rng.normal(0.0, 8.0, n), 40.0, 255.0)
    x = rng.uniform(0.3, 0.7, n)
    return pd.DataFrame({"size": size.round(3), "brightness": brightness.round(1), "x": x.round(4)})


def render_disc(size: float, brightness: float, x: float, pixels: int = 32, supersample: int = 4) -> np.ndarray:
    """One ``(pixels, pixels)`` uint8 image: an anti-aliased disc of radius ``size * pixels / 32``."""
    s = pixels * supersample
    yy, xx = np.mgrid[0:s, 0:s] + 0.5
    r = size * pixels / 32 * supersample
    inside = ((xx - x * s) ** 2 + (yy - s / 2) ** 2 <= r * r).astype(np.float32)
    cover = inside.reshape(pixels, supersample, pixels, supersample).mean(axis=(1, 3))
    return np.round(20.0 + cover * (brightness - 20.0)).clip(0, 255).astype(np.uint8)


def make_discs(out: str | Path, n: int = 1200, n_test: int = 200, pixels: int = 32, seed: int = 0) -> Path:
    """Write the folder; the last ``n_test`` rows form the ``test`` split."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = disc_labels(n, seed)
    files = []
    for i, row in enumerate(table.itertuples(index=False)):
        name = f"disc_{i:04d}.png"
        Image.fromarray(render_disc(row.size, row.brightness, row.x, pixels)).save(out / name)
        files.append(name)
    table.insert(0, "file", files)
    table["split"] = ["train"] * (n - n_test) + ["test"] * n_test
    table.to_csv(out / "labels.csv", index=False)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--n", type=int, default=1200, help="images in all")
    ap.add_argument("--test", type=int, default=200, help="of which in the test split")
    ap.add_argument("--size", type=int, default=32, help="image size in pixels")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--graph", help="also write the graph as a DOT file here")
    a = ap.parse_args()
    if not 0 <= a.test < a.n:
        ap.error(f"--test must be in [0, --n), got {a.test}")
    make_discs(a.out, a.n, a.test, a.size, a.seed)
    if a.graph:
        Path(a.graph).parent.mkdir(parents=True, exist_ok=True)
        Path(a.graph).write_text(GRAPH_DOT)
    print(f"wrote {a.n} images and labels.csv to {a.out}" + (f", the graph to {a.graph}" if a.graph else ""))


if __name__ == "__main__":
    main()
