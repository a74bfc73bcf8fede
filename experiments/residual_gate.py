"""Where should the reconstruction residual be carried? Gate variants scored against the truth.

The default query carries the abducted residual ``r = x - decode(x_T, z)`` into a counterfactual
``x'`` with the per-pixel weight ``clamp(1 - |x' - rec| / gate, 0, 1)``
(:func:`causaldiffae.counterfactual.carry_residual`). Where a thinned stroke's old edge was drawn
faintly by the reconstruction (``rec`` near the background, ``x`` bright), ``x'`` is near ``rec``
and the residual paints the old edge back: the "ghost dots" of docs/results.md. This script decodes
each of ``evaluate``'s default interventions once at the default query (8 + 8 steps, one carried
correction) and applies these gates to the same decoding:

* ``decoder alone``: no residual;
* ``pixel (default)``: the library's gate;
* ``neighbourhood r``: the change measured as its largest value within ``r`` pixels (a pixel next to
  a redrawn one takes none of its residual);
* ``neighbourhood 1 or small``: as ``neighbourhood 1``, but next to a change the residual is still
  carried where ``x'`` is within the gate of the factual image ``x`` itself (small corrections).

Each is scored on the whole image (MAE, 0-255) and on the changed region (the pixels the truth
changes, :func:`causaldiffae.metrics.ground_truth.changed_region`): its MAE, and the **stale
fraction**, the share of its pixels that stay nearer the factual image than the truth (the identity
scores 1, the truth 0). Rows for the identity and the truth are printed with them.

    python experiments/residual_gate.py morphomnist
    python experiments/residual_gate.py pendulum
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from causaldiffae import counterfactual as cf
from causaldiffae.metrics.ground_truth import changed_region, true_counterfactual_images
from causaldiffae.metrics.images import _unit
from causaldiffae.metrics.interventions import default_interventions, do_label
from residual_figure import evaluation_pick  # the sibling script: evaluate's pick of test images


def gated(decoded: torch.Tensor, ab: cf.Abduction, distance: torch.Tensor, gate: float) -> torch.Tensor:
    """``decoded + clamp(1 - distance / gate, 0, 1) * r``; ``distance`` in [-1, 1] units ``(B, C, H, W)``."""
    m = (1 - distance * (127.5 / gate)).clamp(0, 1)
    return (decoded + m * ab.residual).clamp(-1, 1)


def variants(decoded: torch.Tensor, ab: cf.Abduction, gate: float) -> dict[str, torch.Tensor]:
    rec = ab.images - ab.residual
    change = (decoded - rec).abs()
    near1 = F.max_pool2d(change, 3, stride=1, padding=1)
    from_x = (decoded - ab.images).abs()
    return {
        "decoder alone": decoded,
        "pixel (default)": cf.carry_residual(decoded, ab, gate),
        "neighbourhood 1": gated(decoded, ab, near1, gate),
        "neighbourhood 2": gated(decoded, ab, F.max_pool2d(change, 5, stride=1, padding=2), gate),
        "neighbourhood 1 or small": gated(decoded, ab, torch.maximum(change, torch.minimum(near1, from_x)), gate),
    }


def score(x: torch.Tensor, truth: torch.Tensor, factual: torch.Tensor, region: np.ndarray) -> tuple[float, float, float]:
    """(whole-image MAE, changed-region MAE, stale fraction), 0-255."""
    a, b, f = (_unit(v) * 255.0 for v in (x, truth, factual))
    to_truth, to_factual = np.abs(a - b).max(axis=-1), np.abs(a - f).max(axis=-1)
    return float(np.abs(a - b).mean()), float(to_truth[region].mean()), float((to_factual < to_truth)[region].mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a shipped name (pendulum, morphomnist) or a run folder")
    ap.add_argument("--data", help="the data (default: the run's name)")
    ap.add_argument("--n", type=int, default=64, help="test images (evaluate's seeded pick)")
    ap.add_argument("--gate", type=float, default=None, help="grey levels (default: the library's)")
    args = ap.parse_args()

    torch.set_grad_enabled(False)
    gate = cf.resolve_residual(True, args.gate)[1]
    model, images, labels, table, sim, sim_size = evaluation_pick(args.run, args.data, args.n)
    dec, inv, guided = cf.query_settings(None)
    ab = cf.abduct_residual(model, cf.abduct(model, images, steps=inv), steps=dec)
    plain = cf.Abduction(images=ab.images, u=ab.u, z=ab.z, x_T=ab.x_T, steps=ab.steps, method=ab.method)
    print(f"{args.run}: {len(images)} test images, default query ({dec} + {inv} steps, refine {cf.DEFAULT_REFINE}), gate {gate:g}")
    print("| do() | gate | whole-image MAE | changed-region MAE | stale fraction |")
    print("|---|---|---|---|---|")
    for do in default_interventions(model.graph, labels, seed=0):
        truth, _ = true_counterfactual_images(model, table, do, sim, size=sim_size)
        region = changed_region(images, truth)
        decoded = cf.predict(model, plain, cf.intervene(model, ab, do), steps=dec, guided_steps=guided)
        rows = {"*identity*": images, **variants(decoded, ab, gate), "*truth*": truth}
        for name, x in rows.items():
            whole, reg, stale = score(x, truth, images, region)
            print(f"| {do_label(do)} | {name} | {whole:.2f} | {reg:.1f} | {stale:.3f} |")


if __name__ == "__main__":
    main()
