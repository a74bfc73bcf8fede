"""Soundness axioms of counterfactuals (Monteiro et al.): composition and reversibility, L1 on the 0-255 scale."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from causaldiffae import counterfactual as cf
from causaldiffae.errors import DataError
from causaldiffae.metrics.images import _mean, l1_255
from causaldiffae.metrics.interventions import node_groups, scm_counterfactual_labels


def composition(model, images: torch.Tensor, cycles: Sequence[int] = (1, 10), steps: int = 20, max_batch: int = 64,
                progress: bool = False, refine: int = 0,
                refine_carry: bool | None = None, residual: bool = False,
                residual_gate: float | None = None) -> dict[str, Any]:
    """Composition: apply the null intervention (abduct, then decode with the unchanged latents)
    repeatedly, each time from the previous output; the mean L1 distance (0-255) to the input
    after each number of cycles in ``cycles``.

    With ``residual`` the null query carries the reconstruction residual
    (:func:`causaldiffae.counterfactual.abduct_residual`) and returns its input up to float
    rounding, so composition holds by construction (as it does for the identity).

    Returns ``{"cycles": [...], "steps": S, "l1": {"1": ..., "10": ...}}``.
    """
    from tqdm.auto import tqdm

    model.check_images(images)
    cycles = sorted({int(c) for c in cycles})
    if not cycles or cycles[0] < 1:
        raise DataError(f"composition cycles must be positive integers, got {cycles}")
    x0 = images.cpu()
    x = images
    out: dict[str, float] = {}
    for k in tqdm(range(1, cycles[-1] + 1), desc="composition", disable=not progress, leave=False):
        if residual:
            x = cf.counterfactual(model, x, do={}, steps=steps, max_batch=max_batch, refine=refine, refine_carry=refine_carry,
                                  residual=True, residual_gate=residual_gate).images
        else:
            x = cf.reconstruct(model, x, steps=steps, max_batch=max_batch, refine=refine, refine_carry=refine_carry)
        if k in cycles:
            out[str(k)] = _mean(l1_255(x.cpu(), x0))
    return {"cycles": cycles, "steps": steps, "l1": out}


def reversibility(model, images: torch.Tensor, do: Mapping[str, Any], cycles: int = 5, steps: int = 20,
                  strength: float = 1.0, original: torch.Tensor | None = None, max_batch: int = 64,
                  progress: bool = False, refine: int = 0,
                  refine_carry: bool | None = None, residual: bool = False,
                  residual_gate: float | None = None) -> dict[str, Any]:
    """Reversibility: intervene with ``do``, then set the same nodes back to their original values;
    repeat ``cycles`` times, each cycle starting from the previous cycle's output; the mean L1
    distance (0-255) to the input after each cycle.

    ``original`` ``(B, n_nodes)`` label units gives the values to go back to (the true factual labels);
    where it is None or NaN, the model's abducted factual label values are used.

    Returns ``{"do": [...], "cycles": C, "steps": S, "l1": [after cycle 1, ..., after cycle C]}``.
    """
    from tqdm.auto import tqdm

    graph = model.graph
    node_groups(graph, do)
    if cycles < 1:
        raise DataError(f"reversibility needs at least one cycle, got {cycles}")
    abducted, _ = scm_counterfactual_labels(model, images, {})
    back_values = abducted.clone()
    if original is not None:
        orig = torch.as_tensor(original, dtype=torch.float32).cpu()
        back_values = torch.where(torch.isnan(orig), abducted, orig)
    back = {n: back_values[:, graph.nodes.index(n)] for n in do}
    x0, x = images.cpu(), images
    l1 = []
    for _ in tqdm(range(cycles), desc="reversibility", disable=not progress, leave=False):
        x = cf.counterfactual(model, x, do=do, strength=strength, steps=steps, max_batch=max_batch, refine=refine,
                           refine_carry=refine_carry, residual=residual, residual_gate=residual_gate).images
        x = cf.counterfactual(model, x, do=back, strength=strength, steps=steps, max_batch=max_batch, refine=refine,
                           refine_carry=refine_carry, residual=residual, residual_gate=residual_gate).images
        l1.append(_mean(l1_255(x.cpu(), x0)))
    return {"do": list(do), "cycles": int(cycles), "steps": steps, "l1": l1}

