"""Per-intervention achieved fractions of label-fraction sweeps, mean ± sd over seeds.

    python experiments/fraction_cells.py runs/ablation/SWEEP [runs/ablation/OTHER ...]

Reads each sweep's ``results.csv`` (written by ``causaldiffae ablate label-fraction``) and prints
one row per sweep and label fraction: the image-level achieved fraction of every intervened node
and of every descendant, each do() separately (docs/results.md, "Label fraction", quotes these
rows), then the gap of each fraction below all labels in points.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pandas as pd

CELL = re.compile(r"effectiveness\.by_intervention\.do\((?P<do>[^)]+)\)\.baselines\.per_node\.(?P<node>[^.]+)\.achieved_fraction")


def cells(sweep: str | Path) -> pd.DataFrame:
    """label_fraction x 'do(a): b' -> mean and sd of the achieved fraction over the sweep's seeds."""
    df = pd.read_csv(Path(sweep) / "results.csv")
    df = df[df["model"] == "CausalDiffAE"]
    rows = []
    for metric, g in df.groupby("metric"):
        m = CELL.fullmatch(metric)
        if m:
            for _, r in g.iterrows():
                rows.append({"label_fraction": r["label_fraction"], "seed": r["seed"],
                             "cell": f"do({m['do']}): {m['node']}", "value": r["value"]})
    long = pd.DataFrame(rows)
    return long.groupby(["label_fraction", "cell"])["value"].agg(["mean", "std", "count"]).reset_index()


def main(paths: list[str]) -> None:
    for path in paths:
        c = cells(path)
        def place(cell: str) -> tuple[str, bool]:  # by do(), the set node before its descendants
            do, node = cell.split(": ")
            return do, do != f"do({node})"

        order = sorted(c["cell"].unique(), key=place)
        print(f"{path}\n| labels | " + " | ".join(order) + " |")
        means = {}
        for frac, g in c.groupby("label_fraction"):
            g = g.set_index("cell")
            means[frac] = g["mean"]
            print(f"| {frac:g} | " + " | ".join(f"{g.loc[k, 'mean']:.2f} ± {g.loc[k, 'std']:.2f}" for k in order) + " |")
        if 1.0 in means:
            for frac, m in means.items():
                if frac != 1.0:
                    print(f"| gap of {frac:g} (points) | " + " | ".join(f"{100 * (means[1.0][k] - m[k]):.1f}" for k in order) + " |")
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
