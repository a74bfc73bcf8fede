"""Noise schedules, the L_simple training loss, DDIM decoding/inversion and classifier-free guidance.

Kept apart from the networks (as in diffusers), so that samplers can be swapped. A ``model`` here
is any callable ``model(x_t (B, C, H, W), t (B,), cond (B, D) | None, cond_mask (B,) | None) ->
eps (B, C, H, W)``: a :class:`~causaldiffae.networks.UNet` or its
:class:`~causaldiffae.networks.FastUNet` (``unet.prepare_for_inference()``).

Formulas (method.md §2), with ``a_t = alpha_bar_t``::

    q(x_t | x_0) = N(sqrt(a_t) x_0, (1 - a_t) I)
    x0_hat       = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)
    x_s          = sqrt(a_s) x0_hat + sqrt(1 - a_s) eps          (DDIM, eta = 0)

Parameterisation (``prediction``): the network predicts either ``eps`` or
``v = sqrt(a_t) eps - sqrt(1 - a_t) x_0`` (Salimans & Ho 2022); a v-output is turned into
``eps = sqrt(a_t) v + sqrt(1 - a_t) x_t`` before any sampler step, so DDIM, inversion and guidance
are the same code for both. The training losses differ in how they weight the clean-image error
``||x0_hat - x0||^2``: the eps loss by ``SNR_t = a_t / (1 - a_t)`` (about 0 at high noise, where
the scene's layout is decided), the v loss by ``1 + SNR_t`` (at least 1 at every noise level).
"""

from __future__ import annotations

import math
from typing import Callable, Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from causaldiffae.errors import ConfigError, DataError

__all__ = ["NoiseSchedule", "guided_eps", "PREDICTIONS"]

PREDICTIONS = ("eps", "v")

EpsModel = Callable[..., Tensor]


class NoiseSchedule:
    """A discrete forward process with ``num_timesteps`` steps.

    ``kind="linear"``: betas linear from ``beta_start`` to ``beta_end`` (DDPM), both given for
    T = 1000 and scaled by ``1000 / num_timesteps`` (as in improved DDPM), so a short chain still
    ends in (nearly) pure noise: without the scaling, T = 100 would end at ``alpha_bar_T = 0.36``
    and a decoder could denoise without ever reading its condition. ``kind="cosine"``:
    Nichol & Dhariwal's ``alpha_bar(t) = cos^2((t/T + s) / (1 + s) * pi/2)``, betas clipped at 0.999.
    Computed in float64; ``betas`` and ``alphas_cumprod`` are float32 tensors ``(T,)``, moved to the
    data's device on use (``.to(device)`` also works).
    """

    def __init__(self, kind: Literal["linear", "cosine"] = "linear", num_timesteps: int = 1000,
                 beta_start: float = 1e-4, beta_end: float = 0.02, prediction: Literal["eps", "v"] = "eps") -> None:
        if prediction not in PREDICTIONS:
            raise ConfigError(f"NoiseSchedule: prediction must be one of {PREDICTIONS}, got {prediction!r}")
        self.prediction = prediction
        if num_timesteps < 2:
            raise ConfigError(f"NoiseSchedule: num_timesteps must be >= 2, got {num_timesteps}")
        if kind == "linear":
            if not 0.0 < beta_start <= beta_end < 1.0:
                raise ConfigError(f"NoiseSchedule: need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
            scale = 1000.0 / num_timesteps
            betas = torch.linspace(beta_start * scale, min(beta_end * scale, 0.999), num_timesteps, dtype=torch.float64)
        elif kind == "cosine":
            s = 0.008
            steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
            f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
            betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
        else:
            raise ConfigError(f"NoiseSchedule: kind must be 'linear' or 'cosine', got {kind!r}")
        self.kind, self.num_timesteps = kind, int(num_timesteps)
        self.beta_start, self.beta_end = beta_start, beta_end
        self._alphas_cumprod64 = torch.cumprod(1 - betas, dim=0)
        self.betas = betas.float()
        self.alphas_cumprod = self._alphas_cumprod64.float()

    def to(self, device: torch.device | str) -> "NoiseSchedule":
        self.betas, self.alphas_cumprod = self.betas.to(device), self.alphas_cumprod.to(device)
        return self

    def alpha_bar(self, t: Tensor | int, like: Tensor) -> Tensor:
        """``alpha_bar_t`` for int ``t`` (scalar or ``(B,)``), shaped ``(B, 1, 1, 1)`` like ``like``."""
        t = torch.as_tensor(t, dtype=torch.long)
        a = self._alphas_cumprod64[t.cpu()].to(device=like.device, dtype=like.dtype)
        return a.reshape(-1, *([1] * (like.ndim - 1)))

    def _check_t(self, t: Tensor) -> None:
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_timesteps):
            raise DataError(f"NoiseSchedule: timesteps must lie in [0, {self.num_timesteps}), "
                            f"got range [{int(t.min())}, {int(t.max())}]")

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        """Sample ``x_t ~ q(x_t | x_0)``: ``x0`` ``(B, C, H, W)``, ``t`` int ``(B,)`` -> ``(B, C, H, W)``."""
        t = torch.as_tensor(t, dtype=torch.long).reshape(-1)
        self._check_t(t)
        noise = torch.randn_like(x0) if noise is None else noise
        a = self.alpha_bar(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def sample_t(self, batch: int, device: torch.device | str = "cpu",
                 generator: torch.Generator | None = None) -> Tensor:
        """Uniform timesteps ``(B,)`` int64 in ``[0, T)``."""
        return torch.randint(0, self.num_timesteps, (batch,), generator=generator).to(device)

    def training_loss(self, model: EpsModel, x0: Tensor, cond: Tensor | None, cond_mask: Tensor | None = None,
                      t: Tensor | None = None, noise: Tensor | None = None,
                      generator: torch.Generator | None = None) -> Tensor:
        """Per-example L_simple ``||eps_theta(x_t, t, z) - eps||^2`` averaged over pixels: ``(B,)``.

        ``t`` defaults to uniform in ``[0, T)``; ``cond_mask`` ``(B,)`` bool (False = null condition)
        implements the p_uncond dropout of classifier-free guidance training.
        """
        b = x0.shape[0]
        t = self.sample_t(b, x0.device, generator) if t is None else torch.as_tensor(t, device=x0.device).long()
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        out = model(self.q_sample(x0, t, noise), t, cond, cond_mask)
        return (out.float() - self.target(x0, t, noise).float()).pow(2).flatten(1).mean(1)

    def target(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """The network's regression target at ``x_t = q_sample(x0, t, noise)``: ``noise`` ("eps") or
        ``v = sqrt(a_t) noise - sqrt(1 - a_t) x0`` ("v"); ``(B, C, H, W)``."""
        if self.prediction == "eps":
            return noise
        a = self.alpha_bar(torch.as_tensor(t).reshape(-1), x0)
        return a.sqrt() * noise - (1 - a).sqrt() * x0

    def predict_x0(self, out: Tensor, x_t: Tensor, t: Tensor | int) -> Tensor:
        """The clean-image estimate ``x0_hat`` ``(B, C, H, W)`` from the network's output ``out`` at
        ``x_t`` (timestep ``t`` scalar or ``(B,)``): ``(x_t - sqrt(1 - a) eps) / sqrt(a)`` for "eps",
        ``sqrt(a) x_t - sqrt(1 - a) v`` for "v" (bounded at every noise level). Differentiable."""
        a = self.alpha_bar(torch.as_tensor(t, dtype=torch.long).reshape(-1), x_t)
        if self.prediction == "eps":
            return (x_t - (1 - a).sqrt() * out) / a.sqrt()
        return a.sqrt() * x_t - (1 - a).sqrt() * out

    def x0_weight(self, t: Tensor | int) -> Tensor:
        """How the training loss weights the clean-image error at ``t``: the loss equals
        ``x0_weight(t) * ||x0_hat - x0||^2`` (per pixel), ``SNR_t`` for "eps", ``1 + SNR_t`` for "v".
        ``t`` int scalar or ``(B,)`` -> float64 ``(B,)``."""
        a = self._alphas_cumprod64[torch.as_tensor(t, dtype=torch.long).reshape(-1).cpu()]
        snr = a / (1 - a)
        return snr if self.prediction == "eps" else 1 + snr

    def to_eps(self, out: Tensor, x_t: Tensor, t: Tensor | int) -> Tensor:
        """The network's output at ``x_t`` (``(B, C, H, W)``, timestep ``t`` scalar or ``(B,)``) as
        the noise estimate ``eps``; identity for "eps" models."""
        if self.prediction == "eps":
            return out
        t = torch.as_tensor(t, dtype=torch.long).reshape(-1)
        a = self.alpha_bar(t, x_t)
        return a.sqrt() * out.float() + (1 - a).sqrt() * x_t.float()

    def ddim_timesteps(self, num_steps: int) -> Tensor:
        """``num_steps`` int timesteps evenly spaced over ``[0, T)``, ascending, from 0 to ``T - 1``."""
        if not 1 <= int(num_steps) <= self.num_timesteps:
            raise ConfigError(f"DDIM: steps must be in [1, {self.num_timesteps}], got {num_steps}")
        if num_steps == 1:
            return torch.tensor([self.num_timesteps - 1])
        return torch.linspace(0, self.num_timesteps - 1, int(num_steps), dtype=torch.float64).round().long()

    def _steps(self, steps: int, progress: bool, desc: str) -> tuple[list[int], Callable]:
        ts = self.ddim_timesteps(steps).tolist()
        return ts, (lambda it: tqdm(it, desc=desc, total=len(ts), leave=False) if progress else it)

    @staticmethod
    def _clip(x: Tensor, x0: Tensor, eps: Tensor, a: Tensor, clip: bool) -> tuple[Tensor, Tensor]:
        """Clip the predicted clean image to the data range [-1, 1] and re-derive the noise that
        is consistent with it, ``eps = (x_t - sqrt(a) x0) / sqrt(1 - a)`` (skipped where a = 1)."""
        if not clip or bool((a >= 1).all()):
            return x0, eps
        x0 = x0.clamp(-1.0, 1.0)
        return x0, (x - a.sqrt() * x0) / (1 - a).sqrt()

    def ddim_sample(self, model: EpsModel, x_T: Tensor, cond: Tensor | None, steps: int = 50,
                    eta: float = 0.0, guidance: float = 1.0, generator: torch.Generator | None = None,
                    progress: bool = False, clip: bool = True, reference: Tensor | None = None,
                    guided_steps: int | None = None) -> Tensor:
        """DDIM decoding ``x_T`` ``(B, C, H, W)`` -> ``x_0`` ``(B, C, H, W)`` in ``steps`` model calls.

        Visits the timesteps of :meth:`NoiseSchedule.ddim_timesteps` from ``T - 1`` down to 0, then to
        the clean image (``alpha_bar = 1``). ``eta > 0`` adds DDIM's stochastic term
        ``sigma = eta * sqrt((1 - a_s) / (1 - a_t)) * sqrt(1 - a_t / a_s)``. ``clip`` keeps each
        predicted clean image in [-1, 1] (and the noise consistent with it): at high noise levels
        ``x0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)`` multiplies the network's error by
        ``1 / sqrt(a_t)`` (~150 at the end of the chain), and unclipped estimates far outside the
        data range drive the trajectory off the data manifold. ``reference`` ``(B, D)`` (the factual
        latents of a counterfactual) makes guidance run against it (see :func:`guided_eps`).

        ``guided_steps = k`` applies the guidance weight only at the first ``k`` (highest-noise)
        steps and decodes the rest with the plain conditional model (w = 1): a guided step costs
        two network passes, an unguided one a single pass. ``None`` guides every step.
        """
        if eta < 0:
            raise ConfigError(f"DDIM: eta must be >= 0, got {eta}")
        if guided_steps is not None and guided_steps < 0:
            raise ConfigError(f"DDIM: guided_steps must be >= 0 or None, got {guided_steps}")
        ts, wrap = self._steps( steps, progress, "DDIM decode")
        with torch.no_grad():
            x = x_T.float()
            for k, i in enumerate(wrap(range(len(ts) - 1, -1, -1))):
                a_t = self.alpha_bar(ts[i], x)
                a_s = self.alpha_bar(ts[i - 1], x) if i > 0 else torch.ones_like(a_t)
                w = guidance if guided_steps is None or k < guided_steps else 1.0
                x0, eps = self._predict(model, x, ts[i], a_t, cond, w, clip, reference)
                if eta > 0 and i > 0:
                    sigma = eta * ((1 - a_s) / (1 - a_t)).sqrt() * (1 - a_t / a_s).sqrt()
                    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
                    x = a_s.sqrt() * x0 + (1 - a_s - sigma**2).clamp(min=0).sqrt() * eps + sigma * noise
                else:
                    x = a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps
        return x.clone()

    def ddim_invert(self, model: EpsModel, x0: Tensor, cond: Tensor | None, steps: int = 50,
                    progress: bool = False, clip: bool = True, refine: int = 0, carry: bool = False) -> Tensor:
        """Diff-AE's stochastic encoder: deterministic DDIM run forward in time, ``x_0`` -> ``x_T``.

        ``x0`` ``(B, C, H, W)``, ``cond`` ``(B, D)`` or ``None`` -> ``x_T`` ``(B, C, H, W)`` in ``steps``
        model calls; the exact mirror of :func:`ddim_sample` with ``eta = 0``: from the state at ``s``
        (the clean image, then each DDIM timestep) with ``eps = eps_theta(x_s, s, z)``,
        ``x_t = sqrt(a_t) x0_hat + sqrt(1 - a_t) eps`` (with the same ``clip`` as decoding).

        That step evaluates the network at ``s`` where decoding will evaluate it at ``t``, so
        decode(invert(x)) misses x by a small error that repeated cycles compound. ``refine = k``
        corrects each step ``k`` times towards the exact inverse of the decoding step ``D``:
        ``x_t <- x_t + sqrt(a_t / a_s) (x_s - D(x_t))`` (a fixed-point iteration; ``sqrt(a_s / a_t)``
        is D's slope in ``x_t`` when the network's output is held fixed). Each costs one more network
        call per step: ``steps * (1 + refine)`` calls.

        ``carry`` (with ``refine >= 1``): the last correction's network output, evaluated at the
        uncorrected ``x_t``, is taken as the output at the corrected ``x_t`` by the next step instead
        of a new call there (the correction moves ``x_t`` little). It costs ``1 + steps * refine``
        calls, ``steps + 1`` for one correction, and recovers most of the exact corrections'
        gain in reconstruction (measured in ``docs/benchmarks.md``, "Choosing the default query").
        """
        if refine < 0:
            raise ConfigError(f"DDIM: refine must be >= 0, got {refine}")
        ts, wrap = self._steps(steps, progress, "DDIM invert")
        carry = carry and refine > 0
        with torch.no_grad():
            x = x0.float()
            out = None  # the network's output carried from the previous step's last correction
            for i in wrap(range(len(ts))):
                s = ts[i - 1] if i > 0 else 0  # the clean image is evaluated at t = 0
                a_s = self.alpha_bar(ts[i - 1], x) if i > 0 else torch.ones_like(x[:, :1, :1, :1])
                a_t = self.alpha_bar(ts[i], x)
                if out is None:
                    out = guided_eps(model, x, s, cond, 1.0)
                eps = self.to_eps(out, x, s).float()
                x_hat = (x - (1 - a_s).sqrt() * eps) / a_s.sqrt()
                x_hat, eps = self._clip(x, x_hat, eps, a_s, clip)
                x_s, x = x, a_t.sqrt() * x_hat + (1 - a_t).sqrt() * eps
                out = None
                for _ in range(refine):
                    out = guided_eps(model, x, ts[i], cond, 1.0)  # decoding's view of x_t
                    eps_t = self.to_eps(out, x, ts[i]).float()
                    x0_t, eps_t = self._clip(x, (x - (1 - a_t).sqrt() * eps_t) / a_t.sqrt(), eps_t, a_t, clip)
                    x = x + (a_t / a_s).sqrt() * (x_s - (a_s.sqrt() * x0_t + (1 - a_s).sqrt() * eps_t))
                if not carry:
                    out = None
        return x.clone()

    def _predict(self, model: EpsModel, x: Tensor, t: int, a_t: Tensor, cond: Tensor | None, guidance: float,
                 clip: bool, reference: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The (clipped) clean-image estimate and its noise at ``x_t``: ``(x0_hat, eps)``, each like ``x``."""
        eps = self.to_eps(guided_eps(model, x, t, cond, guidance, reference), x, t).float()
        return self._clip(x, (x - (1 - a_t).sqrt() * eps) / a_t.sqrt(), eps, a_t, clip)

    def __repr__(self) -> str:
        return f"NoiseSchedule(kind={self.kind!r}, num_timesteps={self.num_timesteps})"


def guided_eps(model: EpsModel, x_t: Tensor, t: Tensor | int, cond: Tensor | None, guidance: float = 1.0,
               reference: Tensor | None = None) -> Tensor:
    """Classifier-free guidance ``eps~ = eps(x, t, null) + w * (eps(x, t, z) - eps(x, t, null))``.

    ``x_t`` ``(B, C, H, W)``, ``t`` scalar or ``(B,)``, ``cond`` ``(B, D)`` or ``None`` -> ``(B, C, H, W)``.
    ``w = 1`` runs only the conditional pass, ``w = 0`` (or ``cond=None``) only the null pass; other
    weights run both in one forward of batch ``2B``.

    With ``reference`` ``(B, D)`` (a counterfactual's factual latents ``z``), guidance runs against
    it instead of the null condition: ``eps~ = eps(x, t, z') + (w - 1) (eps(x, t, z') - eps(x, t, z))``,
    which strengthens only the *change* ``z -> z'``; where ``z' == z`` (a null query) it is the
    conditional model at every ``w``. (For a v-model the same formula applies to its output, which
    is affine in eps at fixed ``x_t``.)
    """
    b = x_t.shape[0]
    t = torch.as_tensor(t, device=x_t.device)
    t = t.expand(b) if t.ndim == 0 else t
    if reference is not None and cond is not None:
        if guidance == 1:
            return model(x_t, t, cond, None)
        if reference.shape != cond.shape:
            raise DataError(f"guidance reference has shape {tuple(reference.shape)}, the condition {tuple(cond.shape)}")
        eps = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, reference.to(cond)]), None)
        e_cf, e_ref = eps[:b], eps[b:]
        same = (cond == reference.to(cond)).all(dim=-1).reshape(-1, *([1] * (x_t.ndim - 1)))
        return torch.where(same, e_cf, e_cf + (guidance - 1) * (e_cf - e_ref))
    if cond is None or guidance == 0:
        return model(x_t, t, None, None)
    if guidance == 1:
        return model(x_t, t, cond, None)
    mask = torch.cat([torch.ones(b, dtype=torch.bool), torch.zeros(b, dtype=torch.bool)]).to(x_t.device)
    eps = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, cond]), mask)
    e_cond, e_null = eps[:b], eps[b:]
    return e_null + guidance * (e_cond - e_null)
