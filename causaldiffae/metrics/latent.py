"""Latent-level check of the learned mechanisms: encoder + SCM only, no diffusion.

The image-level scores mix two things: whether the SCM moves a descendant's latent by the right
amount, and whether the decoder draws what the latent says. This check isolates the first. The
factual image is encoded (``u``, ``z``), the SCM applies ``do`` (intervened blocks set,
descendants recomputed from their mechanisms with their own ``u``), and the model's label readout
of the latents (:meth:`~causaldiffae.model.CausalDiffAE.predict_labels`) is compared with the
intended counterfactual labels (the simulator's or DoWhy's), in normalised units:

* model: ``|readout(z_cf) - intended|``;
* do-nothing: ``|factual label - intended|`` (the child keeps its factual value);
* floor: ``|readout(z) - factual label|``, the readout's own error on the factual image. It is a
  lower bound on what a perfect mechanism leaves, not that error itself: an exact ``f_i`` applied to
  the encoder's latents also errs by the *parents'* reading error times the mechanism's slope
  (measured for a shipped model in docs/results.md, with ``experiments/latent_floor.py``).

The achieved fraction ``(do_nothing - model) / (do_nothing - floor)`` of each descendant is the
share of its true change the mechanisms produce (:mod:`causaldiffae.metrics.baselines`).
Intervened nodes are set exactly by do() (their fraction is 1 by construction and is not a test
of the model); non-descendants get the drift ``model - floor``, 0 by construction for nodes
outside the intervention's reach since their latents are left untouched.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from causaldiffae.errors import DataError
from causaldiffae.metrics.baselines import MIN_GAP, score_against_baselines
from causaldiffae.metrics.interventions import node_groups, scm_counterfactual_labels


def mechanism_check(
    model,
    images: torch.Tensor,
    do: Mapping[str, Any],
    intended: torch.Tensor,
    labels: torch.Tensor,
    min_gap: float = MIN_GAP,
) -> dict[str, Any]:
    """How much of each descendant's true change the learned mechanisms produce, in label units.

    Args:
        model: a trained CausalDiffAE.
        images: factual images ``(B, C, H, W)`` in [-1, 1].
        do: the intervention.
        intended: ``(B, n_nodes)`` intended counterfactual labels (label units, node order).
        labels: ``(B, n_nodes)`` true factual labels (NaN = missing: those entries are left out).

    Returns:
        :func:`~causaldiffae.metrics.baselines.score_against_baselines`'s dict (per node and per
        role group: ``model``, ``do_nothing``, ``floor``, ``achieved_fraction`` or ``drift``) plus
        ``do``, ``n``, ``true_change_abs`` (per node, the mean ``|intended - factual|``, label
        units) and ``change_slope`` (per node, the least-squares slope through 0 of the readout's
        change ``readout(z_cf) - readout(z)`` on the true change: 1 = the mechanism moves the node
        as far as the truth, 0 = not at all; None where the truth does not move it).
    """
    graph = model.graph
    roles = node_groups(graph, do)
    B = images.shape[0]
    target = torch.as_tensor(intended, dtype=torch.float32).cpu()
    facts = torch.as_tensor(labels, dtype=torch.float32).cpu()
    for what, t in (("intended", target), ("factual", facts)):
        if tuple(t.shape) != (B, graph.n_nodes):
            raise DataError(f"{what} labels have shape {tuple(t.shape)}, expected ({B}, {graph.n_nodes})")
    read_f, read_cf = scm_counterfactual_labels(model, images, do)

    def norm(t: torch.Tensor) -> np.ndarray:
        return np.asarray(torch.as_tensor(graph.normalise(t)).numpy(), dtype=np.float64)

    nt, nf, nrf, nrcf = norm(target), norm(facts), norm(read_f), norm(read_cf)
    err_model = np.abs(nrcf - nt)
    err_nothing = np.abs(nf - nt)
    err_floor = np.abs(nrf - nf)
    out = score_against_baselines(graph.nodes, roles, err_model, err_nothing, err_floor, min_gap=min_gap,
                                  floor_source="the label readout's own error on the factual images")

    rc = (read_cf - read_f).numpy().astype(np.float64)
    tc = (target - facts).numpy().astype(np.float64)
    slope, size = {}, {}
    for j, n in enumerate(graph.nodes):
        ok = ~(np.isnan(rc[:, j]) | np.isnan(tc[:, j]))
        ss = float((tc[ok, j] ** 2).sum())
        size[n] = float(np.abs(tc[ok, j]).mean()) if ok.any() else None
        slope[n] = float((rc[ok, j] * tc[ok, j]).sum() / ss) if ss > 0 else None
    out["change_slope"], out["true_change_abs"] = slope, size
    return {"do": list(do), "n": int(B), **out}
