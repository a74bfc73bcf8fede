"""Evaluation metrics for counterfactual image models (``docs/evaluation.md`` defines each one).

Plain functions over a trained :class:`~causaldiffae.model.CausalDiffAE`; images are float tensors
``(B, C, H, W)`` in [-1, 1], labels ``(B, n_nodes)`` in label units (node order, NaN = missing)::

    reconstruction(model, x)                        # MSE / PSNR / SSIM of DDIM invert + decode, per step count
    effectiveness(model, predictors, x, {"a": 0.5}) # MAE (normalised units) of predicted vs intended labels
    composition(model, x)                           # L1 (0-255) after 1 and 10 null interventions
    reversibility(model, x, {"a": 0.5})             # L1 (0-255) after do() and back, per cycle
    ground_truth_error(model, x, table, do, pendulum.true_counterfactual)
    dci(z, labels)                                  # Eastwood & Williams' disentanglement / completeness / informativeness
    evaluate(model, dataset, predictors)            # everything that applies, as one JSON-safe dict

One file per concept:

========================== =================================================================
``images``                 per-image distances (mse, psnr, ssim, l1_255) and ``reconstruction``
``interventions``          node roles under do(), default interventions, label tables
``intended``               DoWhy's intended counterfactual labels where there is no simulator
``effectiveness_scores``   effectiveness with the anti-causal predictors
``soundness``              the axioms: composition and reversibility
``ground_truth``           the simulator's true counterfactuals and the pixel error against them
``disentanglement``        DCI
``evaluation``             the ``evaluate`` driver
``report``                 strict JSON and Markdown reports
========================== =================================================================

Conventions: MSE and PSNR are computed on the [0, 1] scale, L1 and pixel MAE on the 0-255 scale
(no rounding to integers), SSIM with scikit-image. Every function averages over the images; the
per-image arrays come from :func:`mse`, :func:`psnr`, :func:`ssim` and :func:`l1_255`.
"""

from causaldiffae.metrics.disentanglement import dci
from causaldiffae.metrics.effectiveness_scores import effectiveness
from causaldiffae.metrics.evaluation import INTENDED_SOURCES, METRICS, evaluate
from causaldiffae.metrics.ground_truth import find_simulator, ground_truth_error, true_counterfactual_images
from causaldiffae.metrics.images import l1_255, mse, psnr, reconstruction, ssim
from causaldiffae.metrics.intended import dowhy_intended, fit_dowhy_scm
from causaldiffae.metrics.interventions import (
    _table_for,  # noqa: F401  (used by experiments/ablations.py)
    default_interventions,
    do_label,
    node_groups,
    scm_counterfactual_labels,
)
from causaldiffae.metrics.report import to_jsonable, to_markdown, write_report
from causaldiffae.metrics.soundness import composition, reversibility

__all__ = [
    "INTENDED_SOURCES", "METRICS", "composition", "dci", "default_interventions", "do_label", "dowhy_intended",
    "effectiveness", "evaluate", "find_simulator", "fit_dowhy_scm", "ground_truth_error", "l1_255", "mse",
    "node_groups", "psnr", "reconstruction", "reversibility", "scm_counterfactual_labels", "ssim",
    "to_jsonable", "to_markdown", "true_counterfactual_images", "write_report",
]
