"""Counterfactual queries: abduction -> action -> prediction, interventional sampling, interpolation.

Plain functions over a trained :class:`~causaldiffae.model.CausalDiffAE` (the model also exposes
them as methods)::

    ab  = abduct(model, images, steps=20)            # u = mu(x), z = SCM(u), x_T = DDIM-invert(x, z)
    z_cf = intervene(model, ab, {"light": 120})      # set nodes, recompute descendants, keep the rest
    x_cf = predict(model, ab, z_cf, strength=1.5)    # DDIM-decode(x_T, z_cf) with guidance weight w

``abduct_residual(model, ab, steps)`` adds the detail the decoder does not reproduce,
``r = x - DDIM-decode(x_T, z)``, to the abduction; :func:`predict` then carries it into the
counterfactual wherever that matches the reconstruction (``residual=True`` of :func:`counterfactual`).

or all at once with :func:`counterfactual`. Everything runs without autograd, in chunks of
``max_batch`` images (bounded memory), and is deterministic for a given ``seed``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np
import torch

from causaldiffae.errors import CausalDiffAEWarning, InterventionError

Value = Union[float, int, Sequence[float], np.ndarray, torch.Tensor, Callable[[Any], Any]]
DoSpec = Mapping[str, Value]

ABDUCTIONS = ("ddim", "noise")

#: The default query settings, in one place: DDIM decoding steps, DDIM inversion steps (None: as
#: many as decoding), how many of the decoding steps, the highest-noise ones, apply the guidance
#: weight (None: all), the fixed-point corrections per inversion step (``refine``, exact
#: abduction) and whether each step reuses the previous correction's network call
#: (``refine_carry``). The cost curve of both shipped models (docs/benchmarks.md, "Choosing the
#: default query") put the knee at 10 + 10 steps with one carried correction (21 network
#: evaluations per image at w = 1). With the reconstruction residual below, which keeps the
#: untouched parts of the image whatever the step count, 8 + 8 steps came as close to the true
#: counterfactuals as 10 + 10 with every achieved fraction within 0.02 (docs/results.md, "Carrying
#: the reconstruction residual"): 25 evaluations per image.
DEFAULT_STEPS = 8
DEFAULT_INVERSION_STEPS: int | None = None
DEFAULT_GUIDED_STEPS: int | None = None
DEFAULT_REFINE = 1
DEFAULT_REFINE_CARRY = True
#: Whether a query carries the reconstruction residual (:func:`abduct_residual`), and the change
#: in grey levels (0-255) from the factual reconstruction at which its weight reaches 0
#: (:func:`carry_residual`). On by default since, at 10 + 10 steps, it beat both the query without
#: it (21 evaluations) and 15 + 15 steps at its own cost (31) against the true counterfactuals of
#: both shipped models, no achieved fraction more than 0.013 lower and the worst drift lower
#: (docs/results.md, "Carrying the reconstruction residual"). It costs one decoding more.
DEFAULT_RESIDUAL = True
DEFAULT_RESIDUAL_GATE = 32.0
#: Decoding steps of :func:`sample` (samples from noise have no factual image to invert).
DEFAULT_SAMPLE_STEPS = 20


def resolve_refine(refine: int | None) -> int:
    """``refine``, or :data:`DEFAULT_REFINE` when None."""
    return DEFAULT_REFINE if refine is None else int(refine)


def resolve_refine_carry(refine_carry: bool | None) -> bool:
    """``refine_carry``, or :data:`DEFAULT_REFINE_CARRY` when None."""
    return DEFAULT_REFINE_CARRY if refine_carry is None else bool(refine_carry)


def resolve_residual(residual: bool | None, gate: float | None = None, abduction: str = "ddim") -> tuple[bool, float]:
    """``(residual, gate)`` with None taking :data:`DEFAULT_RESIDUAL` / :data:`DEFAULT_RESIDUAL_GATE`.

    Only DDIM abduction has a residual: with another ``abduction`` None resolves to off and an
    explicit ``True`` is refused.
    """
    gate = DEFAULT_RESIDUAL_GATE if gate is None else float(gate)
    if not gate > 0:
        raise InterventionError(f"residual gate must be a positive number of grey levels (0-255), got {gate}")
    if abduction != "ddim":
        if residual:
            raise InterventionError(f"the reconstruction residual needs DDIM abduction, not {abduction!r} "
                                    "(forward noise does not reproduce the image, so there is no residual to carry)")
        return False, gate
    return (DEFAULT_RESIDUAL if residual is None else bool(residual)), gate


def query_settings(steps: int | None = None, inversion_steps: int | None = None,
                   guided_steps: int | None = None) -> tuple[int, int, int | None]:
    """Resolve ``(decoding steps, inversion steps, guided steps)``; None takes the defaults above.

    An explicit ``steps`` with no ``inversion_steps`` inverts with the same number of steps.
    """
    dec = DEFAULT_STEPS if steps is None else int(steps)
    if inversion_steps is None:
        inv = DEFAULT_INVERSION_STEPS if steps is None and DEFAULT_INVERSION_STEPS is not None else dec
    else:
        inv = int(inversion_steps)
    guided = DEFAULT_GUIDED_STEPS if guided_steps is None and steps is None else guided_steps
    return dec, inv, guided


def forwards_per_image(steps: int | None = None, inversion_steps: int | None = None, guided_steps: int | None = None,
                       strength: float = 1.0, refine: int | None = None, refine_carry: bool | None = None,
                       residual: bool | None = None) -> int:
    """Network evaluations per image of one :func:`counterfactual` query with these settings
    (a guided decoding step evaluates the conditional and the null pass; the residual costs one
    factual decoding; None: the defaults)."""
    dec, inv, guided = query_settings(steps, inversion_steps, guided_steps)
    refine = resolve_refine(refine)
    n_guided = 0 if strength == 1 else (dec if guided is None else min(guided, dec))
    n_inv = 1 + inv * refine if refine and resolve_refine_carry(refine_carry) else inv * (1 + refine)
    return n_inv + dec + n_guided + (dec if resolve_residual(residual)[0] else 0)


@dataclass(frozen=True)
class Shift:
    """A ``do()`` value that moves each image's factual label value by ``delta`` (label units):
    ``do={"angle": Shift(10)}`` is ``angle += 10`` (the CLI's ``--do angle+=10``). A plain
    callable works too; a Shift also says what it is in ``query.json``, captions and warnings."""

    delta: float

    def __call__(self, value):
        return value + self.delta

    def __str__(self) -> str:
        return f"+={self.delta:g}" if self.delta >= 0 else f"-={-self.delta:g}"


def describe_do(do: DoSpec) -> str:
    """A one-line description of an intervention: ``do(light=120, angle+=10)``."""
    parts = []
    for name, v in do.items():
        if isinstance(v, Shift):
            parts.append(f"{name}{v}")
        elif callable(v):
            parts.append(f"{name}=f({name})")
        else:
            t = torch.as_tensor(v, dtype=torch.float32)
            parts.append(f"{name}={float(t):g}" if t.numel() == 1 else f"{name}=[{t.numel()} values]")
    return f"do({', '.join(parts)})" if parts else "do() (no intervention: reconstructions)"


def do_to_json(do: DoSpec) -> dict[str, Any]:
    """An intervention as JSON: ``{"light": {"set": 120.0}, "angle": {"shift": 10.0}}`` (per-image
    values as lists; other callables as ``{"function": name}``)."""
    out: dict[str, Any] = {}
    for name, v in do.items():
        if isinstance(v, Shift):
            out[name] = {"shift": float(v.delta)}
        elif callable(v):
            out[name] = {"function": getattr(v, "__name__", type(v).__name__)}
        else:
            t = torch.as_tensor(v, dtype=torch.float32)
            out[name] = {"set": float(t) if t.numel() == 1 else t.reshape(-1).tolist()}
    return out


@dataclass
class Abduction:
    """What abduction recovers from factual images.

    Attributes:
        images: the factual images ``(B, C, H, W)`` in [-1, 1].
        u: exogenous noise, posterior mean ``(B, D)``.
        z: factual latents ``SCM(u)`` ``(B, D)``.
        x_T: the stochastic code ``(B, C, H, W)`` (DDIM inversion, or forward noise for "noise").
        steps: DDIM steps used for the inversion.
        method: "ddim" (ours) or "noise" (the reference code's forward noising, a baseline).
        residual: ``images - DDIM-decode(x_T, z)`` ``(B, C, H, W)``, the detail the decoder does not
            reproduce (None until :func:`abduct_residual` records it).
        residual_steps: the decoding steps ``residual`` was computed with.
    """

    images: torch.Tensor
    u: torch.Tensor
    z: torch.Tensor
    x_T: torch.Tensor
    steps: int
    method: str = "ddim"
    residual: torch.Tensor | None = None
    residual_steps: int | None = None


@dataclass
class CounterfactualResult:
    """Everything a counterfactual query produces (all tensors on CPU unless stated).

    Attributes:
        images: counterfactual images ``(B, C, H, W)`` in [-1, 1].
        factual_images: the inputs ``(B, C, H, W)`` (None for interventional samples).
        z_factual, z_counterfactual: latents before and after the action ``(B, D)``.
        labels_factual, labels_counterfactual: label values read off the latents, in label units ``(B, n_nodes)``.
        x_T: the stochastic code the images were decoded from ``(B, C, H, W)``.
        do: the intervention as given.
        affected: the intervened nodes and their descendants, in topological order.
        nodes: node names in the column order of the label tensors.
    """

    images: torch.Tensor
    factual_images: torch.Tensor | None
    z_factual: torch.Tensor
    z_counterfactual: torch.Tensor
    labels_factual: torch.Tensor
    labels_counterfactual: torch.Tensor
    x_T: torch.Tensor
    do: dict[str, Any] = field(default_factory=dict)
    affected: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)

    def to_dataframe(self):
        """A pandas table: one row per image, factual and counterfactual label values per node."""
        import pandas as pd

        cols: dict[str, Any] = {"index": np.arange(self.images.shape[0])}
        for j, n in enumerate(self.nodes):
            cols[f"{n}_factual"] = self.labels_factual[:, j].numpy()
            cols[f"{n}_counterfactual"] = self.labels_counterfactual[:, j].numpy()
        cols["intervened"] = ";".join(str(k) for k in self.do)
        cols["affected"] = ";".join(self.affected)
        return pd.DataFrame(cols)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _chunks(n: int, size: int):
    for s in range(0, n, size):
        yield slice(s, min(n, s + size))


def _generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(seed)


# --------------------------------------------------------------------------- the three steps
@torch.no_grad()
def abduct(
    model, images: torch.Tensor, steps: int | None = None, method: str = "ddim", seed: int | None = 0, max_batch: int = 64,
    progress: bool = False, refine: int | None = None, refine_carry: bool | None = None,
) -> Abduction:
    """Abduction: recover ``u``, ``z`` and ``x_T`` from factual images.

    Args:
        model: a trained CausalDiffAE (use its EMA weights, eval mode).
        images: ``(B, C, H, W)`` in [-1, 1] with the model's channels and size.
        steps: DDIM inversion steps (default: the query default, see :func:`query_settings`).
        method: "ddim" inverts the decoder deterministically (identity is preserved); "noise"
            reproduces the reference code: ``x_T = q_sample(x, T - 1)`` with fresh noise.
        seed: seeds the forward noise of ``method="noise"``.
        max_batch: images per network call (bounds memory).
        refine: fixed-point corrections per inversion step (see
            :meth:`~causaldiffae.diffusion.NoiseSchedule.ddim_invert`; None: :data:`DEFAULT_REFINE`,
            one); each costs one more network call per step (fewer when carried, see
            ``refine_carry``) and makes decoding the abducted ``x_T``
            reproduce the image more exactly; on the shipped models one correction at 10 steps
            brings the counterfactual closer to the true one at a small cost in how far some
            interventions move (measured in ``docs/benchmarks.md``, "Choosing the default query",
            and ``docs/results.md``). ``refine=0`` is plain DDIM inversion.
        refine_carry: each inversion step takes its network output from the previous step's last
            correction instead of a call of its own (None: :data:`DEFAULT_REFINE_CARRY`, on), so
            one correction costs ``steps + 1`` calls instead of ``2 * steps``; ``False`` gives the
            exact fixed-point corrections.
    """
    if method not in ABDUCTIONS:
        raise InterventionError(f"abduction must be one of {ABDUCTIONS}, got {method!r}")
    if steps is None:
        steps = query_settings()[1]
    refine, refine_carry = resolve_refine(refine), resolve_refine_carry(refine_carry)
    model.check_images(images)
    dev = _device(model)
    images = images.to(dev, torch.float32)
    u, z = model.encode(images)
    if method == "ddim":
        x_T = torch.cat([
            model.schedule.ddim_invert(model.denoiser(), images[s], z[s], steps=steps, progress=progress, refine=refine,
                                       carry=refine_carry)
            for s in _chunks(images.shape[0], max_batch)
        ])
    else:
        g = _generator(seed, dev)
        noise = torch.randn(images.shape, generator=g, device=dev)
        t = torch.full((images.shape[0],), model.schedule.num_timesteps - 1, device=dev, dtype=torch.long)
        x_T = model.schedule.q_sample(images, t, noise)
    return Abduction(images=images, u=u, z=z, x_T=x_T, steps=steps, method=method)


@torch.no_grad()
def abduct_residual(model, abduction: Abduction, steps: int | None = None, max_batch: int = 64,
                    progress: bool = False) -> Abduction:
    """Complete an abduction with the image detail the decoder does not reproduce.

    DDIM inversion leaves ``x_T`` whose decoding under the factual latents misses the image by a
    small residual ``r = x - DDIM-decode(x_T, z)`` ``(B, C, H, W)`` (background speckle, the exact
    edge of a stroke). ``(x_T, r)`` together reproduce the image exactly, so a null query returns
    the input and chained queries do not drift; :func:`predict` carries ``r`` into a
    counterfactual where it matches the reconstruction (:func:`carry_residual`). Costs one
    decoding of ``steps`` (the query's decoding steps; None: the default) at guidance weight 1.

    Returns a new :class:`Abduction` with ``residual`` and ``residual_steps`` set.
    """
    steps = query_settings(steps)[0]
    rec = predict(model, abduction, abduction.z, strength=1.0, steps=steps, max_batch=max_batch, progress=progress,
                  guided_steps=None)
    return Abduction(images=abduction.images, u=abduction.u, z=abduction.z, x_T=abduction.x_T, steps=abduction.steps,
                     method=abduction.method, residual=abduction.images - rec, residual_steps=steps)


def carry_residual(decoded: torch.Tensor, abduction: Abduction, gate: float | None = None) -> torch.Tensor:
    """Add the abducted residual to a decoding of the same ``x_T``, gated by how far it departs
    from the factual reconstruction: ``x' + m * r`` with ``m = clamp(1 - |x' - (x - r)| / gate, 0, 1)``
    per pixel and channel, ``gate`` in grey levels (0-255; None: :data:`DEFAULT_RESIDUAL_GATE`).

    Where the counterfactual draws what the reconstruction drew, the factual image's own detail
    comes back in full (a null query returns the image exactly); where it draws something new (an
    object moved or redrawn), the factual detail belongs to what is gone and is dropped.
    ``decoded`` ``(B, C, H, W)`` -> ``(B, C, H, W)`` in [-1, 1].
    """
    if abduction.residual is None:
        return decoded
    _, gate = resolve_residual(True, gate)
    r = abduction.residual.to(decoded)
    rec = abduction.images.to(decoded) - r
    m = (1 - (decoded - rec).abs() * (127.5 / gate)).clamp(0, 1)
    return (decoded + m * r).clamp(-1, 1)


def check_do(model, do: DoSpec, batch: int, value_range: Mapping[str, tuple[float, float]] | None = None,
             factual: torch.Tensor | None = None) -> dict[str, Any]:
    """Validate an intervention: known nodes, numeric or callable values of the right length.

    Values outside ``value_range`` (the training labels' range, when known) give a
    :class:`~causaldiffae.errors.CausalDiffAEWarning` naming the range. A shift (any callable) is
    checked too when ``factual`` label values ``(B, n_nodes)`` are given: the values it gives the
    images are then what is compared with the range.
    """
    nodes = model.graph.nodes
    out: dict[str, Any] = {}
    for name, v in do.items():
        if name not in nodes:
            raise InterventionError(f"unknown node {name!r} in do(); known nodes: {', '.join(nodes)}")
        if callable(v):
            out[name] = v
            if value_range and name in value_range and factual is not None:
                values = torch.as_tensor(v(factual[:, nodes.index(name)].detach().float().cpu()), dtype=torch.float32)
                _warn_outside(name, f"{name}{v}" if isinstance(v, Shift) else f"{name}=f({name})", values, value_range[name])
            continue
        try:
            t = torch.as_tensor(v, dtype=torch.float32)
        except (TypeError, ValueError) as e:
            raise InterventionError(f"do({name}={v!r}): the value must be a number, one number per image, or a callable") from e
        if t.ndim > 1 or (t.ndim == 1 and t.shape[0] not in (1, batch)):
            raise InterventionError(f"do({name}=...): got {tuple(t.shape)} values for a batch of {batch} images")
        if not torch.isfinite(t).all():
            raise InterventionError(f"do({name}={v!r}): values must be finite")
        if value_range and name in value_range:
            _warn_outside(name, f"{name}={float(t):g}" if t.numel() == 1 else f"{name}=...", t, value_range[name])
        out[name] = t.reshape(-1) if t.ndim else float(t)
    return out


def _warn_outside(name: str, what: str, values: torch.Tensor, bounds: tuple[float, float]) -> None:
    lo, hi = bounds
    values = values.reshape(-1)
    outside = (values < lo) | (values > hi)
    if not bool(outside.any()):
        return
    got = f"{float(values.min()):.4g}..{float(values.max()):.4g}" if values.numel() > 1 else f"{float(values[0]):.4g}"
    share = f" for {int(outside.sum())} of {values.numel()} images" if values.numel() > 1 else ""
    warnings.warn(f"do({what}) gives {name} = {got}, outside its training range [{lo:.4g}, {hi:.4g}]{share}; "
                  "the model extrapolates there", CausalDiffAEWarning, stacklevel=3)


@torch.no_grad()
def intervene(model, abduction: Abduction, do: DoSpec, value_range: Mapping[str, tuple[float, float]] | None = None) -> torch.Tensor:
    """Action: the counterfactual latents ``(B, D)`` under ``do``.

    Intervened blocks take ``((v - loc) / scale) * 1``, descendants are recomputed from their
    mechanisms with their own abducted ``u``, every other block is left bit-identical.
    """
    factual = model.predict_labels(abduction.z) if value_range and any(callable(v) for v in do.values()) else None
    do = check_do(model, do, abduction.z.shape[0], value_range, factual=factual)
    if not do:
        return abduction.z.clone()
    do = {k: (v.to(abduction.z.device) if isinstance(v, torch.Tensor) else v) for k, v in do.items()}
    return model.scm.intervene(abduction.z, do, u=abduction.u)


@torch.no_grad()
def predict(model, abduction: Abduction, z: torch.Tensor, strength: float = 1.0, steps: int | None = None, max_batch: int = 64,
            progress: bool = False, guidance: str | None = None, guided_steps: int | None = None,
            residual_gate: float | None = None) -> torch.Tensor:
    """Prediction: DDIM-decode ``x_T`` under latents ``z`` with guidance weight ``strength`` -> ``(B, C, H, W)``.

    When the abduction holds a residual (:func:`abduct_residual`) of the same decoding steps, it is
    carried into the result (:func:`carry_residual`, ``residual_gate`` grey levels).

    ``guidance``: what ``strength`` amplifies against, "null" (the null condition) or "factual"
    (the abducted latents ``abduction.z``: only the change ``z -> z'`` is amplified, and a null query
    stays the identity at every strength); None = the model's default (``config.guidance``).
    ``guided_steps``: guide only the first (highest-noise) that many decoding steps (see
    :meth:`~causaldiffae.diffusion.NoiseSchedule.ddim_sample`); with ``steps`` None both take the defaults.
    """
    steps, _, guided_steps = query_settings(steps, None, guided_steps)
    mode = guidance or getattr(model.config, "guidance", "null")
    if mode not in ("null", "factual"):
        raise InterventionError(f"guidance must be 'null' or 'factual', got {mode!r}")
    ref = abduction.z if mode == "factual" else None
    x = torch.cat([
        model.schedule.ddim_sample(model.denoiser(), abduction.x_T[s], z[s], steps=steps, guidance=strength, progress=progress,
                                   reference=None if ref is None else ref[s], guided_steps=guided_steps)
        for s in _chunks(z.shape[0], max_batch)
    ]).clamp(-1, 1)
    if abduction.residual is not None:
        if abduction.residual_steps != steps:
            raise InterventionError(f"the abducted residual was decoded with {abduction.residual_steps} steps, "
                                    f"this prediction uses {steps}; call abduct_residual with steps={steps}")
        x = carry_residual(x, abduction, residual_gate)
    return x


def counterfactual(
    model, images: torch.Tensor, do: DoSpec | None = None, strength: float = 1.0, steps: int | None = None,
    abduction: str = "ddim", seed: int | None = 0, max_batch: int = 64, progress: bool = False,
    value_range: Mapping[str, tuple[float, float]] | None = None, refine: int | None = None, guidance: str | None = None,
    inversion_steps: int | None = None, guided_steps: int | None = None, refine_carry: bool | None = None,
    residual: bool | None = None, residual_gate: float | None = None,
) -> CounterfactualResult:
    """Answer "what would these images look like under ``do``?" (abduction, action, prediction).

    Args:
        model: a trained CausalDiffAE.
        images: ``(B, C, H, W)`` in [-1, 1].
        do: node -> value in label units; a number (whole batch), one number per image, or a
            callable on the factual label value (a shift, e.g. ``lambda v: v + 10``). ``{}`` or
            None reproduces the input (exactly with ``residual``; without it up to the
            decoder's reconstruction error).
        strength: guidance weight w (1: the conditional model; >1 strengthens the intervention).
        steps: DDIM decoding steps, and inversion steps unless ``inversion_steps`` is given
            (None: the defaults of :func:`query_settings`).
        abduction: "ddim" or "noise" (reference baseline).
        seed: makes "noise" abduction deterministic.
        refine: fixed-point corrections per DDIM inversion step (see :func:`abduct`; None: the
            default, :data:`DEFAULT_REFINE`).
        refine_carry: corrections reuse their network call in the next inversion step (see
            :func:`abduct`; None: :data:`DEFAULT_REFINE_CARRY`).
        guidance: "null" or "factual" reference for ``strength`` (see :func:`predict`); None = the model's default.
        inversion_steps: DDIM inversion steps, if different from ``steps``.
        guided_steps: apply the guidance weight at the first (highest-noise) that many decoding
            steps only (None: all, when ``steps`` is given; else the default).
        residual: carry the image detail the decoder does not reproduce into the counterfactual
            (:func:`abduct_residual`, one more decoding; None: :data:`DEFAULT_RESIDUAL`); a null
            query then returns the input exactly. Only with ``abduction="ddim"`` (the default
            leaves it off for the "noise" baseline).
        residual_gate: grey levels (0-255) of change from the factual reconstruction at which the
            residual's weight reaches 0 (:func:`carry_residual`; None: :data:`DEFAULT_RESIDUAL_GATE`).

    The query costs :func:`forwards_per_image` network evaluations per image.
    """
    do = dict(do or {})
    dec, inv, guided = query_settings(steps, inversion_steps, guided_steps)
    residual, residual_gate = resolve_residual(residual, residual_gate, abduction)
    ab = abduct(model, images, steps=inv, method=abduction, seed=seed, max_batch=max_batch, progress=progress,
                refine=refine, refine_carry=refine_carry)
    if residual:
        ab = abduct_residual(model, ab, steps=dec, max_batch=max_batch, progress=progress)
    z_cf = intervene(model, ab, do, value_range)
    x_cf = predict(model, ab, z_cf, strength=strength, steps=dec, max_batch=max_batch, progress=progress,
                   guidance=guidance, guided_steps=guided, residual_gate=residual_gate)
    return CounterfactualResult(
        images=x_cf.cpu(), factual_images=ab.images.cpu(), z_factual=ab.z.cpu(), z_counterfactual=z_cf.cpu(),
        labels_factual=model.predict_labels(ab.z).cpu(), labels_counterfactual=model.predict_labels(z_cf).cpu(),
        x_T=ab.x_T.cpu(), do=do, affected=model.scm.affected(do) if do else [], nodes=list(model.graph.nodes),
    )


@torch.no_grad()
def sample(
    model, n: int, do: DoSpec | None = None, strength: float = 1.0, steps: int | None = None, seed: int | None = 0, max_batch: int = 64,
    progress: bool = False, value_range: Mapping[str, tuple[float, float]] | None = None,
) -> CounterfactualResult:
    """Interventional samples: ``u ~ N(0, I)``, ``z = SCM(u)`` under ``do``, random ``x_T``, DDIM decoding
    (``steps``; None: :data:`DEFAULT_SAMPLE_STEPS`).

    ``value_range`` (the training labels' range) makes values outside it warn, as in :func:`counterfactual`.
    """
    steps = DEFAULT_SAMPLE_STEPS if steps is None else int(steps)
    dev = _device(model)
    g = _generator(seed, dev)
    u = torch.randn((n, model.graph.latent_dim), generator=g, device=dev)
    x_T = torch.randn((n, *model.image_shape), generator=g, device=dev)
    z = model.scm.mechanisms(u)
    ab = Abduction(images=torch.empty(0), u=u, z=z, x_T=x_T, steps=steps, method="prior")
    do = dict(do or {})
    z_do = intervene(model, ab, do, value_range)
    x = predict(model, ab, z_do, strength=strength, steps=steps, max_batch=max_batch, progress=progress)
    return CounterfactualResult(
        images=x.cpu(), factual_images=None, z_factual=z.cpu(), z_counterfactual=z_do.cpu(),
        labels_factual=model.predict_labels(z).cpu(), labels_counterfactual=model.predict_labels(z_do).cpu(),
        x_T=x_T.cpu(), do=do, affected=model.scm.affected(do) if do else [], nodes=list(model.graph.nodes),
    )


@torch.no_grad()
def reconstruct(model, images: torch.Tensor, steps: int | None = None, max_batch: int = 64, refine: int | None = None,
                inversion_steps: int | None = None, refine_carry: bool | None = None) -> torch.Tensor:
    """DDIM-invert then decode with the factual latents: ``(B, C, H, W) -> (B, C, H, W)``."""
    dec, inv, _ = query_settings(steps, inversion_steps)
    ab = abduct(model, images, steps=inv, max_batch=max_batch, refine=refine, refine_carry=refine_carry)
    return predict(model, ab, ab.z, steps=dec, max_batch=max_batch)


def _slerp(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    af, bf = a.flatten(1), b.flatten(1)
    cos = (af * bf).sum(1) / (af.norm(dim=1) * bf.norm(dim=1)).clamp_min(1e-12)
    theta = torch.arccos(cos.clamp(-1, 1)).view(-1, *[1] * (a.ndim - 1))
    s = torch.sin(theta).clamp_min(1e-6)
    return torch.sin((1 - w) * theta) / s * a + torch.sin(w * theta) / s * b


@torch.no_grad()
def interpolate(model, image_a: torch.Tensor, image_b: torch.Tensor, n: int = 8, steps: int | None = None) -> torch.Tensor:
    """Walk between two real images: u and z linearly, x_T spherically. Returns ``(n, C, H, W)``."""
    steps = query_settings(steps)[0]
    pair = torch.stack([image_a.reshape(model.image_shape), image_b.reshape(model.image_shape)])
    ab = abduct(model, pair, steps=steps)
    w = torch.linspace(0, 1, n, device=ab.z.device).view(-1, 1)
    u = (1 - w) * ab.u[0:1] + w * ab.u[1:2]
    z = model.scm.mechanisms(u)
    x_T = _slerp(ab.x_T[0:1].expand(n, *model.image_shape), ab.x_T[1:2].expand(n, *model.image_shape), w.view(-1, 1, 1, 1))
    walk = Abduction(images=pair, u=u, z=z, x_T=x_T, steps=steps)
    return predict(model, walk, z, steps=steps).cpu()


# --------------------------------------------------------------------------- pictures
def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``(B, C, H, W)`` in [-1, 1] -> ``(B, H, W, C)`` uint8 (C = 1 squeezed to grey, 4 kept as RGBA)."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def save_images(images: torch.Tensor, folder: str | Path, prefix: str = "cf") -> list[Path]:
    """Write each image as ``folder/prefix_00000.png``; returns the paths."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, arr in enumerate(to_uint8(images)):
        p = folder / f"{prefix}_{i:05d}.png"
        Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(p)
        paths.append(p)
    return paths


def image_grid(rows: Sequence[torch.Tensor], path: str | Path, row_names: Sequence[str] | None = None, scale: int = 3,
               col_names: Sequence[str] | None = None, caption: str | None = None) -> Path:
    """Save rows of images ``(B_r, C, H, W)`` as one PNG grid with optional row and column names and
    a caption above it (wrapped to the grid's width; the grid widens for a long single word).

    Images are separated by grey lines, so white backgrounds stay visible.
    """
    from PIL import Image, ImageDraw

    arrs = [to_uint8(r) for r in rows]
    h, w = arrs[0].shape[1:3]
    ncol = max(a.shape[0] for a in arrs)
    label_w = 0 if not row_names else 8 + 6 * max(len(s) for s in row_names)
    cell_w = max(w * scale, 6 * max((len(s) for s in col_names), default=0) + 4) if col_names else w * scale
    head = 14 if col_names else 0
    pad = 2
    width = label_w + ncol * (cell_w + pad) + pad
    lines = _wrap(caption, max(width - 8, 6 * 24) // 6) if caption else []
    width = max(width, 8 + 6 * max((len(x) for x in lines), default=0))
    top = 12 * len(lines) + (4 if lines else 0)
    canvas = Image.new("RGB", (width, top + head + len(arrs) * (h * scale + pad) + pad), (170, 170, 170))
    draw = ImageDraw.Draw(canvas)
    if lines:
        draw.rectangle([0, 0, canvas.width, top], fill="white")
        for i, line in enumerate(lines):
            draw.text((4, 2 + 12 * i), line, fill="black")
    if col_names:
        draw.rectangle([0, top, canvas.width, top + head], fill="white")
        for k, name in enumerate(col_names):
            draw.text((label_w + pad + k * (cell_w + pad) + 2, top + 1), name, fill="black")
    if row_names:
        draw.rectangle([0, top, label_w, canvas.height], fill="white")
    for r, a in enumerate(arrs):
        y = top + head + pad + r * (h * scale + pad)
        if row_names:
            draw.text((4, y + h * scale // 2 - 5), row_names[r], fill="black")
        for k, img in enumerate(a):
            im = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img[..., :3]).convert("RGB")
            x = label_w + pad + k * (cell_w + pad) + (cell_w - w * scale) // 2
            canvas.paste(im.resize((w * scale, h * scale), Image.NEAREST), (x, y))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return [line for para in text.splitlines() for line in (textwrap.wrap(para, max(width, 8)) or [""])]


def wrapped_grid(images: torch.Tensor, path: str | Path, ncol: int = 8, scale: int = 3, caption: str | None = None,
                 row_name: str | None = None) -> Path:
    """Images ``(B, C, H, W)`` as a grid of ``ncol`` columns (as many rows as needed), row names
    ``"row_name i-j"`` giving the indices each row holds."""
    idx = [(s, min(s + ncol, images.shape[0])) for s in range(0, images.shape[0], ncol)]
    names = [f"{row_name} {a}-{b - 1}" if b - a > 1 else f"{row_name} {a}" for a, b in idx] if row_name else None
    return image_grid([images[a:b] for a, b in idx], path, row_names=names, scale=scale, caption=caption)


def difference_grid(result: CounterfactualResult, path: str | Path, scale: int = 3, ncol: int = 8,
                    caption: str | None = None) -> Path:
    """factual | counterfactual | |difference| (amplified to the full range) as a PNG grid.

    Images are taken ``ncol`` at a time; each block of three rows is named with the indices of its
    images (the ``index`` column of ``labels.csv``), so any number of images stays readable.
    """
    diff = (result.images - result.factual_images).abs().mean(1, keepdim=True)
    diff = diff / diff.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6) * 2 - 1
    diff = diff.expand_as(result.images[:, :1])
    rows, names = [], []
    for s in range(0, result.images.shape[0], ncol):
        e = min(s + ncol, result.images.shape[0])
        which = f"{s}-{e - 1}" if e - s > 1 else f"{s}"
        rows += [result.factual_images[s:e], result.images[s:e], diff[s:e]]
        names += [f"factual {which}", "counterfactual", "|difference|"]
    return image_grid(rows, path, row_names=names, scale=scale, caption=caption)
