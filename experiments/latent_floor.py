"""How much of Morpho-MNIST's latent-level miss is the mechanism's, and how much the encoder's?

The latent check (``causaldiffae.metrics.latent``) scores ``do(thickness)``'s effect on intensity
against a floor that counts only the child's own reading error. But an exact mechanism applied to
the encoder's readings still errs wherever the *parent* is misread: it computes the child's
counterfactual from ``t_hat``, not ``t``, and Morpho-MNIST's intensity moves about 2.75 normalised
units per normalised unit of thickness at the centre of the sigmoid. This script reads ``n``
test digits with a model's encoder, applies ``do(thickness = another digit's thickness)`` through
the model's SCM, and scores the child against

* the latent check's floor: ``|readout(intensity) - intensity|``;
* the perfect-mechanism floor: the true structural equation applied to the encoder's readings,
  ``64 + 191 sigmoid(0.5 eps_hat + 2 t' - 5)`` with ``eps_hat`` abducted from ``(t_hat, i_hat)``;

and, for reference, the same equation on the true thickness and the read intensity (only the
child misread); all in normalised units (``/ scale``), beside do-nothing, with the achieved
fraction each floor gives.
It first prints the share of the change the best additive-noise mechanism in label units can give
at all (exact readings, 200,000 draws of the SCM).

    python experiments/latent_floor.py --run morphomnist --n 512
    python experiments/latent_floor.py --run runs/morphomnist_v2 runs/other --n 512
    python experiments/latent_floor.py --run morphomnist --n 512 --average-shifts 0 1   # also shift-averaged readings
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from causaldiffae import pipeline
from causaldiffae.data.morphomnist import abduct_eps_intensity, intensity_equation
from causaldiffae.metrics.interventions import scm_counterfactual_labels
from causaldiffae.model import CausalDiffAE


class ShiftAveragedEncoder(torch.nn.Module):
    """An encoder read on ``(2 k + 1)^2`` copies of each image rolled by up to ``k`` pixels in each
    direction, its posterior means and log-variances averaged: ``(B, C, H, W) -> ((B, D), (B, D))``."""

    def __init__(self, encoder: torch.nn.Module, k: int):
        super().__init__()
        self.encoder, self.k = encoder, int(k)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        reads = [self.encoder(torch.roll(images, (dy, dx), dims=(-2, -1)))
                 for dy in range(-self.k, self.k + 1) for dx in range(-self.k, self.k + 1)]
        return torch.stack([m for m, _ in reads]).mean(0), torch.stack([v for _, v in reads]).mean(0)


def latent_floors(run: str, n: int = 512, shift: int = 7, average_shifts: int = 0) -> dict[str, float]:
    """Scores of one model (normalised units; fractions against do-nothing). ``average_shifts`` k > 0:
    the encoder's readings averaged over the image rolled by up to k pixels (:class:`ShiftAveragedEncoder`)."""
    model, _ = CausalDiffAE.load(run)
    model.eval()
    if average_shifts:
        model.encoder = ShiftAveragedEncoder(model.encoder, average_shifts)
    g = model.graph
    ds, _ = pipeline.open_heldout("morphomnist", g, model.image_shape[-1])
    n = min(n, len(ds))
    x, y = ds.batch(np.arange(n))
    y = y.double().numpy()
    jt, ji = g.index("thickness"), g.index("intensity")
    t, i = y[:, jt], y[:, ji]
    t_new = np.roll(t, shift)  # each digit takes another digit's thickness
    truth = intensity_equation(t_new, abduct_eps_intensity(t, i))
    with torch.no_grad():
        read, read_cf = scm_counterfactual_labels(model, x, {"thickness": torch.tensor(t_new, dtype=torch.float32)})
    read, read_cf = read.double().numpy(), read_cf.double().numpy()
    lo, hi = 64.0, 255.0
    i_hat = np.clip(read[:, ji], lo + 1e-2, hi - 1e-2)
    exact_on_readings = intensity_equation(t_new, abduct_eps_intensity(read[:, jt], i_hat))
    exact_true_parent = intensity_equation(t_new, abduct_eps_intensity(t, i_hat))  # only the child misread
    s_i, s_t = g.specs["intensity"].scale, g.specs["thickness"].scale
    out = {
        "n": n,
        "model": float(np.abs(read_cf[:, ji] - truth).mean() / s_i),
        "do_nothing": float(np.abs(i - truth).mean() / s_i),
        "child_floor": float(np.abs(read[:, ji] - i).mean() / s_i),
        "perfect_mechanism_floor": float(np.abs(exact_on_readings - truth).mean() / s_i),
        "exact_with_true_parent": float(np.abs(exact_true_parent - truth).mean() / s_i),
        "thickness_reading_error": float(np.abs(read[:, jt] - t).mean() / s_t),
    }
    gap = out["do_nothing"] - out["model"]
    out["fraction_child_floor"] = gap / (out["do_nothing"] - out["child_floor"])
    out["fraction_perfect_floor"] = gap / (out["do_nothing"] - out["perfect_mechanism_floor"])
    return out


def additive_cap(draws: int = 200_000, degree: int = 9, seed: int = 0) -> float:
    """The share of do(thickness)'s true change in intensity that the best additive-noise mechanism
    in label units (``E[i | t]``, a degree-``degree`` polynomial fit) gives on exact readings."""
    rng = np.random.default_rng(seed)
    t = 0.5 + rng.gamma(10.0, 1 / 5.0, draws)
    eps = rng.standard_normal(draws)
    i = intensity_equation(t, eps)
    coef = np.polynomial.polynomial.polyfit(t, i, degree)
    f = lambda v: np.polynomial.polynomial.polyval(v, coef)  # noqa: E731
    t_new = t[rng.permutation(draws)]
    truth = intensity_equation(t_new, eps)
    return float(1 - np.abs(f(t_new) + i - f(t) - truth).mean() / np.abs(i - truth).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", nargs="+", default=["morphomnist"], help="run folders or shipped names")
    ap.add_argument("--n", type=int, default=512, help="test digits (default 512)")
    ap.add_argument("--average-shifts", type=int, nargs="+", default=[0], metavar="K",
                    help="also score with the encoder averaged over the image rolled by up to K pixels (0: plain)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"the best additive-noise mechanism in label units (E[i | t]) on exact readings: {additive_cap():.3f} of the true change")
    print("| run | n | model | do nothing | child floor | fraction | perfect-mechanism floor | fraction | "
          "exact, true thickness | thickness reading error |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for run, k in ((run, k) for run in args.run for k in args.average_shifts):
        r = latent_floors(run, args.n, average_shifts=k)
        name = run if k == 0 else f"{run}, readings averaged over shifts up to {k} px"
        print(f"| {name} | {r['n']} | {r['model']:.3f} | {r['do_nothing']:.3f} | {r['child_floor']:.3f} | "
              f"{r['fraction_child_floor']:.3f} | {r['perfect_mechanism_floor']:.3f} | {r['fraction_perfect_floor']:.3f} | "
              f"{r['exact_with_true_parent']:.3f} | {r['thickness_reading_error']:.3f} |")


if __name__ == "__main__":
    main()
