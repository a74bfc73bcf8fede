"""Benchmark the data generators: time to render the full Pendulum grid and Morpho-MNIST digits.

    python experiments/bench_data.py [--size 64] [--morpho 500]

Prints one line per generator with images, seconds and images per second (single process).
"""

from __future__ import annotations

import argparse
import os
import platform
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=64, help="Pendulum image size")
    p.add_argument("--morpho", type=int, default=500, help="Morpho-MNIST digits to render (0: skip)")
    args = p.parse_args()
    from causaldiffae.data.pendulum import pendulum_grid, render_pendulum

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    grid = pendulum_grid()
    t0 = time.perf_counter()
    render_pendulum(grid, args.size)
    dt = time.perf_counter() - t0
    print(f"pendulum  {len(grid)} images at {args.size}x{args.size}: {dt:.2f} s ({len(grid) / dt:.0f} images/s)")
    if args.morpho:
        from causaldiffae.data.morphomnist import render_morphomnist, sample_morphomnist

        table = sample_morphomnist(args.morpho, seed=0)
        render_morphomnist(table.iloc[:2])  # loads the digits once
        t0 = time.perf_counter()
        render_morphomnist(table)
        dt = time.perf_counter() - t0
        print(f"morphomnist {len(table)} digits at 28x28: {dt:.2f} s ({len(table) / dt:.0f} images/s, "
              f"{1000 * dt / len(table):.1f} ms per digit)")


if __name__ == "__main__":
    main()
