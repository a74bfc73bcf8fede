"""Evaluation metrics for counterfactual image models (``docs/evaluation.md`` defines each one).

Plain functions over a trained :class:`~causaldiffae.model.CausalDiffAE`; images are float tensors
``(B, C, H, W)`` in [-1, 1], labels ``(B, n_nodes)`` in label units (node order, NaN = missing)::

    reconstruction(model, x)                        # MSE / PSNR / SSIM of DDIM invert + decode, per step count
    effectiveness(model, predictors, x, {"a": 0.5}) # MAE (normalised units) of predicted vs intended labels
    composition(model, x)                           # L1 (0-255) after 1 and 10 null interventions
    reversibility(model, x, {"a": 0.5})             # L1 (0-255) after do() and back, per cycle
    effectiveness_baselines(model, predictors, x, do, intended, x_cf, truth)  # model / do-nothing / floor / achieved fraction
    ground_truth_error(model, x, table, do, pendulum.true_counterfactual)      # whole image and changed region, beside the identity
    mechanism_check(model, x, do, intended, labels)  # encoder + SCM only: the share of each descendant's true change
    field_table(sim, graph, do, x_cf, x, truth, intended)  # a simulator's field_metrics beside do-nothing / floor / published
    evaluation_floors(graph, predictors, x, labels, rows)  # the predictors' floors on the true counterfactuals, with the gate
    dci(z, labels)                                  # Eastwood & Williams' disentanglement / completeness / informativeness
    evaluate(model, dataset, predictors)            # everything that applies, as one JSON-safe dict

One file per concept:

========================== =================================================================
``images``                 per-image distances (mse, psnr, ssim, l1_255) and ``reconstruction``
``interventions``          node roles under do(), default interventions, label tables
``intended``               DoWhy's intended counterfactual labels where there is no simulator
``effectiveness_scores``   effectiveness with the anti-causal predictors, beside its baselines
``baselines``              do-nothing, floor, achieved fraction and drift (shared by the checks)
``latent``                 the mechanism check of encoder + SCM, without diffusion
``soundness``              the axioms: composition and reversibility
``ground_truth``           the simulator's true counterfactuals, pixel error on the whole image and the changed region
``floors``                 the predictors' floors (error on the true counterfactuals) and the 0.05 gate
``field``                  a simulator's scores in the field's units, beside do-nothing, floor and the published best
``disentanglement``        DCI
``evaluation``             the ``evaluate`` driver
``report``                 strict JSON and Markdown reports
========================== =================================================================

Conventions: MSE and PSNR are computed on the [0, 1] scale, L1 and pixel MAE on the 0-255 scale
(no rounding to integers), SSIM with scikit-image. Every function averages over the images; the
per-image arrays come from :func:`mse`, :func:`psnr`, :func:`ssim` and :func:`l1_255`.
"""

from causaldiffae.metrics.baselines import MIN_GAP, achieved_fraction, score_against_baselines
from causaldiffae.metrics.disentanglement import dci
from causaldiffae.metrics.effectiveness_scores import effectiveness, effectiveness_baselines, label_errors
from causaldiffae.metrics.evaluation import INTENDED_SOURCES, METRICS, evaluate
from causaldiffae.metrics.field import field_fraction, field_table, has_field_metrics
from causaldiffae.metrics.floors import FLOOR_GATE, evaluation_floors, gate_verdict
from causaldiffae.metrics.ground_truth import (
    CHANGE_TOLERANCE,
    changed_region,
    find_simulator,
    ground_truth_error,
    true_counterfactual_images,
)
from causaldiffae.metrics.images import l1_255, mse, psnr, reconstruction, ssim
from causaldiffae.metrics.intended import dowhy_intended, fit_dowhy_scm
from causaldiffae.metrics.interventions import (
    _table_for,  # noqa: F401  (used by experiments/ablations.py)
    default_interventions,
    do_label,
    node_groups,
    scm_counterfactual_labels,
)
from causaldiffae.metrics.latent import mechanism_check
from causaldiffae.metrics.report import summary_lines, to_jsonable, to_markdown, write_report
from causaldiffae.metrics.soundness import composition, reversibility

__all__ = [
    "CHANGE_TOLERANCE", "FLOOR_GATE", "INTENDED_SOURCES", "evaluation_floors", "field_fraction", "field_table", "gate_verdict",
    "has_field_metrics", "METRICS", "MIN_GAP", "achieved_fraction", "changed_region", "composition", "dci", "default_interventions", "do_label", "dowhy_intended",
    "effectiveness", "effectiveness_baselines", "evaluate", "label_errors", "mechanism_check", "find_simulator", "fit_dowhy_scm", "ground_truth_error", "l1_255", "mse",
    "node_groups", "psnr", "reconstruction", "reversibility", "score_against_baselines", "scm_counterfactual_labels", "ssim",
    "summary_lines", "to_jsonable", "to_markdown", "true_counterfactual_images", "write_report",
]
