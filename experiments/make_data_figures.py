"""Pictures of the generated data sets for docs/data.md.

    python experiments/make_data_figures.py [--out docs/images]

Writes ``pendulum_samples.png`` (random scenes with their labels) and
``pendulum_true_counterfactuals.png`` (one row per scene: factual, then the simulator's exact
counterfactual under a few interventions); with Morpho-MNIST available also
``morphomnist_samples.png`` and ``morphomnist_true_counterfactuals.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _grid(rows: list[list[np.ndarray]], titles: list[str], path: Path, row_labels: list[str] | None = None) -> None:
    n_r, n_c = len(rows), len(rows[0])
    fig, axes = plt.subplots(n_r, n_c, figsize=(1.4 * n_c, 1.4 * n_r + 0.3), squeeze=False)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            ax = axes[i, j]
            ax.imshow(img.squeeze(), cmap="gray" if img.shape[-1] == 1 else None, vmin=0, vmax=255)
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[j], fontsize=7)
            if j == 0 and row_labels:
                ax.set_ylabel(row_labels[i], fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print("wrote", path)


def pendulum(out: Path) -> None:
    from causaldiffae.data.pendulum import render_pendulum, sample_pendulum, true_counterfactual

    table = sample_pendulum(16, seed=3)
    imgs = render_pendulum(table, 64)
    labels = [f"a={r.angle:.0f} l={r.light:.0f}\nlen={r.shadow_length:.1f} pos={r.shadow_position:.1f}" for r in table.itertuples()]
    _grid([list(imgs[:8]), list(imgs[8:])], labels[:8], out / "pendulum_samples.png", ["", ""])
    scenes = table.iloc[:4].reset_index(drop=True)
    queries = {"factual": None, "do(light=75)": {"light": 75.0}, "do(angle=+25)": {"angle": lambda a: a + 25},
               "do(shadow_length=12)": {"shadow_length": 12.0}, "do(shadow_position=5)": {"shadow_position": 5.0}}
    cols = [render_pendulum(scenes, 64) if q is None else true_counterfactual(scenes, q, 64)[0] for q in queries.values()]
    _grid([[c[i] for c in cols] for i in range(len(scenes))], list(queries), out / "pendulum_true_counterfactuals.png")


def morphomnist(out: Path) -> None:
    from causaldiffae.data.morphomnist import pad_to, render_morphomnist, sample_morphomnist, true_counterfactual

    table = sample_morphomnist(16, seed=3)
    imgs = pad_to(render_morphomnist(table), 32)
    labels = [f"d={r.digit} t={r.thickness:.1f}\ni={r.intensity:.0f}" for r in table.itertuples()]
    _grid([list(imgs[:8]), list(imgs[8:])], labels[:8], out / "morphomnist_samples.png", ["", ""])
    scenes = table.iloc[:4].reset_index(drop=True)
    queries = {"factual": None, "do(thickness=1.5)": {"thickness": 1.5}, "do(thickness=4)": {"thickness": 4.0},
               "do(intensity=100)": {"intensity": 100.0}, "do(intensity=255)": {"intensity": 255.0}}
    cols = [pad_to(render_morphomnist(scenes), 32) if q is None else true_counterfactual(scenes, q, 32)[0] for q in queries.values()]
    _grid([[c[i] for c in cols] for i in range(len(scenes))], list(queries), out / "morphomnist_true_counterfactuals.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/images")
    p.add_argument("--only", choices=["pendulum", "morphomnist"])
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "pendulum"):
        pendulum(out)
    if args.only in (None, "morphomnist"):
        morphomnist(out)


if __name__ == "__main__":
    main()
