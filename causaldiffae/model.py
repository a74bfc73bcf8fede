"""CausalDiffAE: the latent SCM, the semantic encoder and the diffusion decoder as one Pyro model.

Generative model (one image ``x`` with labels ``y`` that may be missing), inside ``plate("data")``::

    u_i ~ N(0, I)                            sample site   "u_<node>"     (the SCM's exogenous noise)
    z_i = f_i(z_pa(i)) + u_i                 deterministic "z_<node>"
    y~_i * 1 ~ N(z_i, I)                     observed      "y_<node>"     (masked where y_i is missing)
    x ~ p_theta(x | z)                       factor        "x"            (log-density ~ -L_simple)

Guide (amortised): ``u ~ q_phi(u | x) = N(mu_phi(x), diag sigma_phi(x)^2)``, one site per node.

Training loss (per example; :meth:`CausalDiffAE.loss_terms`)::

    L = L_simple + gamma(step) * (kl_weight * KL(q(u|x) || N(0, I)) + label_weight * 0.5 ||z_i - y~_i||^2)

With labels missing, each node's label term (and the mechanism-fitting term) is averaged over the
rows that carry its label (``ModelConfig.label_average``), and a categorical node's class is also
learnt from the rows without it: the class the encoder reads with confidence is the target for a
shifted copy of the image (``ModelConfig.consistency_weight``, :meth:`CausalDiffAE.consistency_loss`). The terms are read off a guide trace and
a model trace replayed on it, so the loss uses exactly the model and guide above; see
``docs/training.md`` for why we do not call ``SVI.step`` directly.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.kl import kl_divergence
from pyro.distributions.torch_distribution import MaskedDistribution
from torch import nn

from causaldiffae.checkpoint import load_checkpoint
from causaldiffae.diffusion import NoiseSchedule
from causaldiffae.errors import CheckpointError, ConfigError, DataError
from causaldiffae.graph import CausalGraph
from causaldiffae.networks import LEGACY_UNET_FIELDS, EncoderConfig, SemanticEncoder, UNet, UNetConfig
from causaldiffae.scm import LatentSCM

VARIANTS = ("causal", "diffae")
PREDICTIONS = ("eps", "v")
DECODER_LATENTS = ("sample", "mean")
GUIDANCE_REFERENCES = ("null", "factual")
LABEL_AVERAGES = ("labelled", "batch")
CONSISTENCY_ROWS = ("unlabelled", "all")
#: The values of fields added after the first shipped models, for configs saved without them.
LEGACY_MODEL_FIELDS: dict[str, Any] = {"mechanism_weight": 0.0, "prediction": "eps", "decoder_latent": "sample",
                                       "guidance": "null", "label_average": "batch", "consistency_weight": 0.0}

#: The UNet's precision when sampling (see :mod:`causaldiffae.precision` and ``docs/benchmarks.md``).
INFERENCE_PRECISION = "auto"


@dataclass
class ModelConfig:
    """Everything that shapes a CausalDiffAE besides the graph.

    Attributes:
        unet: the noise predictor's architecture (image size and channels live here).
        encoder: the semantic encoder's architecture.
        schedule: "linear" or "cosine" noise schedule.
        timesteps: T, the number of diffusion steps.
        mechanism: "mlp" or "linear" structural mechanisms.
        mechanism_hidden: hidden width of the "mlp" mechanisms.
        variant: "causal" (CausalDiffAE) or "diffae" (baseline: independent latent blocks, no mechanisms).
        kl_weight: weight of KL(q(u|x) || p(u)) at the end of the warm-up.
        label_weight: lambda, weight of the label term at the end of the warm-up.
        p_uncond: probability that a training example is decoded from the null condition (for guidance).
        null_cond: "learned" or "zero" null condition.
        mechanism_weight: weight of the mechanism-fitting term (labelled rows: each non-root node's
            label explained by ``f_i(z_pa)`` alone, see :meth:`LatentSCM.mechanism_loss`); 0 = off.
        prediction: what the UNet predicts, "eps" (the noise) or "v" (``sqrt(a) eps - sqrt(1-a) x0``,
            whose loss weights the clean-image error by ``1 + SNR`` instead of ``SNR`` and so does
            not starve the high-noise steps where the scene's layout is decided).
        decoder_latent: the latent the decoder is trained on, "sample" (``SCM(u)`` with ``u`` drawn
            from the guide) or "mean" (``SCM(mu)``, the posterior mean: what queries use).
        guidance: default classifier-free guidance reference at query time: "null" (``eps(null) +
            w (eps(z') - eps(null))``, the default) or "factual" (``eps(z') + (w - 1)(eps(z') - eps(z))``:
            a null query is the identity at every w; at w = 2 it moved the intervened nodes further but
            the descendants less, docs/results.md).
        label_average: how the label and mechanism-fitting terms average over a batch when only
            part of it is labelled. "labelled" (default): each node's term is the mean over the rows
            that carry its label, so the labels pull as hard at 10 % as with all of them (stratified
            batches hold fewer labelled rows, each weighing more). "batch": the mean over every row,
            missing labels counting 0, so the term shrinks with the labelled share. With all labels
            present both are the same.
        consistency_weight: weight of the pseudo-label term of categorical nodes (0 = off). On rows
            that lack a categorical node's label, the class the encoder reads from the image, where
            its probability is at least ``consistency_threshold``, becomes the target for a copy of
            the image shifted by up to ``consistency_shift`` pixels (:func:`shift_images`): the
            class is learnt from unlabelled images as well, and must not depend on where the object
            sits. Rows carrying the label are left to the label term, so with every label present
            the term is zero. See :meth:`CausalDiffAE.consistency_loss`.
        consistency_threshold: the least class probability that makes a pseudo-label, in [0, 1].
        consistency_shift: the largest shift of the augmented copy, in pixels, each axis (>= 0).
        consistency_rows: "unlabelled" (default): only rows lacking the label; "all": rows carrying
            it also train their shifted copy, towards their label (so the term acts with every
            label present too).
        cycle_weight: weight of the decoder's latent-cycle term (0 = off, the default): the decoder,
            given a training image's noisy ``x_t`` and a latent where one random node was set to
            another row's value (its descendants recomputed), must predict a clean image in which
            the frozen encoder reads the change it was asked for. It uses no labels, so it acts on
            every row at any label fraction. See :meth:`CausalDiffAE.cycle_loss`.
        cycle_rows: how many rows of each batch (the first ones; batches are shuffled) the cycle
            term uses (>= 2; capped at the batch): each costs one extra UNet pass with its
            backward and two encoder passes.
        cycle_hold_weight: weight, inside the cycle term, of the nodes a request leaves alone (the
            set node's non-descendants, which must not move) against 1 for the set node and its
            descendants (which must move as asked); >= 0, default 1. Raising it penalises drift
            into the causes more.

    A field missing from a *saved* config (a checkpoint written before it existed) takes its value
    in :data:`LEGACY_MODEL_FIELDS` (the behaviour the checkpoint was trained with), see
    :meth:`from_dict`; a new config takes the defaults below.
    """

    unet: UNetConfig = field(default_factory=UNetConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    schedule: str = "linear"
    timesteps: int = 1000
    mechanism: str = "mlp"
    mechanism_hidden: int = 64
    variant: str = "causal"
    kl_weight: float = 1e-2
    label_weight: float = 1.0
    p_uncond: float = 0.1
    null_cond: str = "learned"
    mechanism_weight: float = 1.0
    prediction: str = "v"
    decoder_latent: str = "mean"
    guidance: str = "null"
    label_average: str = "labelled"
    consistency_weight: float = 1.0
    consistency_threshold: float = 0.8
    consistency_shift: int = 2
    consistency_rows: str = "unlabelled"
    cycle_weight: float = 0.0
    cycle_rows: int = 32
    cycle_hold_weight: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.unet, Mapping):
            self.unet = UNetConfig(**self.unet)
        if isinstance(self.encoder, Mapping):
            self.encoder = EncoderConfig(**self.encoder)
        self.sync_encoder()
        if self.variant not in VARIANTS:
            raise ConfigError(f"model variant must be one of {VARIANTS}, got {self.variant!r}")
        if not 0.0 <= self.p_uncond < 1.0:
            raise ConfigError(f"p_uncond must be in [0, 1), got {self.p_uncond}")
        if not 0.0 <= self.consistency_threshold <= 1.0:
            raise ConfigError(f"consistency_threshold must be in [0, 1], got {self.consistency_threshold}")
        if int(self.consistency_shift) != self.consistency_shift or not 0 <= self.consistency_shift < self.unet.image_size // 2:
            raise ConfigError(f"consistency_shift must be a whole number of pixels in [0, {self.unet.image_size // 2}), "
                              f"got {self.consistency_shift}")
        self.consistency_shift = int(self.consistency_shift)
        if int(self.cycle_rows) != self.cycle_rows or self.cycle_rows < 2:
            raise ConfigError(f"cycle_rows must be a whole number >= 2, got {self.cycle_rows}")
        self.cycle_rows = int(self.cycle_rows)
        for name in ("kl_weight", "label_weight", "mechanism_weight", "consistency_weight", "cycle_weight",
                     "cycle_hold_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name, allowed in (("prediction", PREDICTIONS), ("decoder_latent", DECODER_LATENTS), ("guidance", GUIDANCE_REFERENCES),
                              ("label_average", LABEL_AVERAGES), ("consistency_rows", CONSISTENCY_ROWS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"model {name} must be one of {allowed}, got {getattr(self, name)!r}")

    def sync_encoder(self) -> None:
        """The encoder reads the same images as the decoder: copy the UNet's size and channels."""
        if (self.encoder.image_size, self.encoder.in_channels) != (self.unet.image_size, self.unet.in_channels):
            self.encoder = dataclasses.replace(self.encoder, image_size=self.unet.image_size, in_channels=self.unet.in_channels)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], saved: bool = False) -> "ModelConfig":
        """Build from a mapping. ``saved=True`` reads a checkpoint's config: fields it lacks take
        their legacy values (:data:`LEGACY_MODEL_FIELDS`, :data:`~causaldiffae.networks.LEGACY_UNET_FIELDS`),
        so a model trained before a field existed is rebuilt exactly as it was trained."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown model config keys {sorted(unknown)}; known: {sorted(known)}")
        d = dict(d)
        if saved:
            d = {**LEGACY_MODEL_FIELDS, **d}
            unet = d.get("unet")
            if isinstance(unet, Mapping):
                d["unet"] = {**LEGACY_UNET_FIELDS, **unet}
        return cls(**d)

    @classmethod
    def gpu_preset(cls, **overrides: Any) -> "ModelConfig":
        """A larger configuration for a GPU (the reference's 128-channel UNet)."""
        return cls(unet=UNetConfig.gpu_preset(), encoder=EncoderConfig.gpu_preset(), **overrides)


class CausalDiffAE(nn.Module):
    """A causal diffusion autoencoder over a user's causal graph.

    Args:
        graph: the causal DAG; its nodes, block sizes and label normalisation shape the model.
        config: architecture and objective settings.

    Shapes: images ``(B, C, H, W)`` in [-1, 1]; labels ``(B, n_nodes)`` in label units (NaN =
    missing); latents ``(B, D)`` with ``D = graph.latent_dim``.
    """

    def __init__(self, graph: CausalGraph, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.graph = graph
        self.config = config = config or ModelConfig()
        config.sync_encoder()  # the UNet's size/channels may have been set after construction
        scm_graph = graph if config.variant == "causal" else graph.without_edges()
        self.scm = LatentSCM(scm_graph, mechanism=config.mechanism, hidden=config.mechanism_hidden)
        self.encoder = SemanticEncoder(config.encoder, graph.latent_dim)
        self.unet = UNet(config.unet, cond_dim=graph.latent_dim, null_cond=config.null_cond)
        self.schedule = NoiseSchedule(kind=config.schedule, num_timesteps=config.timesteps, prediction=config.prediction)
        self.inference_mode = "auto"
        self.inference_precision = INFERENCE_PRECISION
        self._fast: Any = None

    # ------------------------------------------------------------------ fast inference
    def set_inference_mode(self, mode: str = "auto", precision: str | None = None) -> "CausalDiffAE":
        """Choose how the UNet runs when sampling: "auto" (the fastest mode that matches fp32 eager
        within tolerance), "eager", "channels_last", "jit" or "compile" (see ``docs/decoder.md``);
        ``precision`` "fp32", "bf16" or "auto" (see :mod:`causaldiffae.precision`; None keeps it)."""
        from causaldiffae.precision import check_precision

        self.inference_mode = mode
        if precision is not None:
            self.inference_precision = check_precision(precision)
        self._fast = None
        return self

    def denoiser(self) -> nn.Module:
        """The noise predictor to sample with: the UNet itself while training, else a cached fast copy.

        The copy is rebuilt after :meth:`train` or :meth:`load_state_dict`, so it never serves stale weights.
        """
        if self.training or (self.inference_mode == "eager" and self.inference_precision == "fp32"):
            return self.unet
        if self._fast is None:
            self._fast = self.unet.prepare_for_inference(self.inference_mode, precision=self.inference_precision)
        return self._fast

    def train(self, mode: bool = True) -> "CausalDiffAE":
        self._fast = None
        return super().train(mode)

    def load_state_dict(self, *args: Any, **kwargs: Any):
        self._fast = None
        return super().load_state_dict(*args, **kwargs)

    def __getstate__(self):  # deepcopy (EMA) and pickling skip the compiled copy
        state = self.__dict__.copy()
        state["_fast"] = None
        return state

    # ------------------------------------------------------------------ input checks
    @property
    def image_shape(self) -> tuple[int, int, int]:
        c = self.config.unet
        return (c.in_channels, c.image_size, c.image_size)

    def check_images(self, images: torch.Tensor, what: str = "images") -> None:
        """Raise a DataError unless ``images`` is ``(B, C, H, W)`` with this model's C, H, W."""
        if images.ndim != 4 or tuple(images.shape[1:]) != self.image_shape:
            raise DataError(
                f"{what} have shape {tuple(images.shape)}, but this model takes (B, {', '.join(map(str, self.image_shape))})"
            )

    def check_labels(self, labels: torch.Tensor | None, batch: int) -> None:
        n = len(self.graph.nodes)
        if labels is not None and tuple(labels.shape) != (batch, n):
            raise DataError(f"labels have shape {tuple(labels.shape)}, expected ({batch}, {n}) for nodes {self.graph.nodes}")

    # ------------------------------------------------------------------ Pyro model and guide
    def model(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        cond_mask: torch.Tensor | None = None,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        decoder_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The generative model; returns z ``(B, D)``.

        ``cond_mask`` (B,) bool, False = decode that example from the null condition; ``t`` (B,) and
        ``noise`` (B, C, H, W) fix the diffusion draws of the image term (random when None).
        ``decoder_cond`` ``(B, D)``, if given, conditions the image term instead of the sampled z
        (``decoder_latent="mean"``: the posterior mean's latents).
        The parameters are plain ``nn.Module`` parameters (no ``pyro.module`` call): training
        uses a torch optimiser on the loss read off the traces (see :meth:`loss_terms`).
        """
        with pyro.plate("data", images.shape[0]):
            z = self.scm.sample_latents(labels=labels)
            cond = z if decoder_cond is None else decoder_cond
            loss = self.schedule.training_loss(self.unet, images, cond, cond_mask=cond_mask, t=t, noise=noise)
            pyro.factor("x", -loss)
        return z

    def guide(self, images: torch.Tensor, labels: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The amortised guide q(u | x); returns the sampled u ``(B, D)``."""
        mu, logvar = self.encoder(images)
        std = torch.exp(0.5 * logvar)
        with pyro.plate("data", images.shape[0]):
            us = []
            for name in self.graph.nodes:
                b = self.graph.block(name)
                us.append(pyro.sample(f"u_{name}", dist.Normal(mu[:, b], std[:, b]).to_event(1)))
        return torch.cat(us, dim=-1)

    def loss_terms(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        gamma: float = 1.0,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        cond_mask: torch.Tensor | None = None,
        shift: torch.Tensor | None = None,
        pick: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The training objective and its parts, each a scalar (batch mean).

        Returns a dict with ``loss`` (to minimise), ``diffusion`` (L_simple), ``kl`` (sum over
        latent dimensions), ``label`` (0.5 * squared error over labelled blocks; cross-entropy for
        categorical nodes), ``mechanism`` (the mechanism-fitting term), ``consistency`` (the
        categorical pseudo-label term, :meth:`consistency_loss`), ``cycle`` (the decoder's
        latent-cycle term, :meth:`cycle_loss`), ``labelled`` (the fraction of labels present) and
        the weights in force. ``t``, ``noise``, ``cond_mask``, ``shift`` (``(B, 2)`` uniform in
        [0, 1)) and ``pick`` (``(B,)`` uniform in [0, 1), the cycle term's node) fix the random draws (see :func:`causaldiffae.training.step_noise`); when
        ``cond_mask`` is None, each example uses the null condition with probability ``p_uncond``
        while training.
        """
        self.check_images(images)
        B = images.shape[0]
        self.check_labels(labels, B)
        if cond_mask is None and self.training and self.config.p_uncond > 0:
            cond_mask = torch.rand(B, device=images.device) >= self.config.p_uncond
        cfg = self.config
        guide_tr = poutine.trace(self.guide).get_trace(images)
        use_consistency = cfg.consistency_weight > 0 and labels is not None
        z_mean = None  # the latents a query abducts from these images, where a term needs them
        use_cycle = cfg.cycle_weight > 0
        if cfg.decoder_latent == "mean" or use_consistency or use_cycle:
            mu = torch.cat([guide_tr.nodes[f"u_{n}"]["fn"].base_dist.loc for n in self.graph.nodes], dim=-1)
            z_mean = self.scm.mechanisms(mu)
        # the decoder learns from the latents queries will give it ("mean") or from sampled ones
        decoder_cond = z_mean if cfg.decoder_latent == "mean" else None
        model_tr = poutine.trace(poutine.replay(self.model, trace=guide_tr)).get_trace(
            images, labels, cond_mask, t, noise, decoder_cond)

        kl = images.new_zeros(B)
        label = images.new_zeros(B)
        diffusion = -model_tr.nodes["x"]["fn"].log_factor
        for name, site in model_tr.nodes.items():
            if site["type"] != "sample":
                continue
            if name.startswith("u_"):
                kl = kl + kl_divergence(guide_tr.nodes[name]["fn"], site["fn"])
            elif name.startswith("y_") and site["is_observed"] and not site["infer"].get("_deterministic"):
                fn, mask = site["fn"], site["mask"]
                if isinstance(fn, MaskedDistribution):  # missing labels: the mask lives in the distribution
                    fn, mask = fn.base_dist, fn._mask if mask is None else mask & fn._mask
                if isinstance(fn, dist.Categorical):  # a categorical node: cross-entropy of its class
                    nll = -fn.log_prob(site["value"])
                else:
                    d = site["value"].shape[-1]
                    nll = -fn.log_prob(site["value"]) - 0.5 * d * math.log(2 * math.pi)  # = 0.5 ||y~ - z||^2
                if isinstance(mask, torch.Tensor):
                    nll = nll * self._row_weights(mask, B)
                label = label + nll
        mechanism = images.new_zeros(B)
        if cfg.mechanism_weight > 0 and labels is not None and cfg.variant == "causal":
            z = torch.cat([model_tr.nodes[f"z_{n}"]["value"] for n in self.graph.nodes], dim=-1)
            mechanism = self.scm.mechanism_loss(z, labels, per_labelled_row=cfg.label_average == "labelled")
        consistency = images.new_zeros(B)
        if use_consistency:
            consistency = self.consistency_loss(images, labels, z_mean, shift)
        cycle = images.new_zeros(B)
        if use_cycle:
            cycle = self.cycle_loss(images, z_mean, t, noise, pick)
        loss = diffusion + gamma * (cfg.kl_weight * kl + cfg.label_weight * label + cfg.mechanism_weight * mechanism
                                    + cfg.consistency_weight * consistency + cfg.cycle_weight * cycle)
        present = torch.zeros((), device=images.device) if labels is None else (~torch.isnan(labels)).float().mean()
        return {
            "loss": loss.mean(),
            "diffusion": diffusion.mean(),
            "kl": kl.mean(),
            "label": label.mean(),
            "mechanism": mechanism.mean(),
            "consistency": consistency.mean(),
            "cycle": cycle.mean(),
            "labelled": present,
            "gamma": torch.tensor(gamma),
        }

    def consistency_loss(self, images: torch.Tensor, labels: torch.Tensor, z: torch.Tensor,
                         shift: torch.Tensor | None = None) -> torch.Tensor:
        """The pseudo-label term of the categorical nodes, per row ``(B,)`` (0 without categorical nodes).

        For each categorical node and each row *without* its label: if the class read from the
        image (``z``, the latents of the unshifted images ``(B, D)``, held fixed) has probability at
        least ``consistency_threshold``, the cross-entropy of that class under the logits the
        encoder and SCM give a copy of the image shifted by up to ``consistency_shift`` pixels
        (:func:`shift_images`; ``shift`` ``(B, 2)`` uniform in [0, 1) picks the offsets, random when
        None). Each node's term is the mean over the rows lacking its label (rows below the
        threshold count 0), so labelled and unlabelled rows pull as hard at any label fraction;
        with every label present it is 0. With ``consistency_rows="all"`` the rows carrying the
        label add the cross-entropy of their label under the shifted copy's logits, averaged over
        those rows. ``images`` ``(B, C, H, W)``, ``labels`` ``(B, n_nodes)``.
        """
        g, cfg, B = self.graph, self.config, images.shape[0]
        every = cfg.consistency_rows == "all"
        todo = [(i, n) for i, n in enumerate(g.nodes)
                if g.is_categorical(n) and (every or torch.isnan(labels[:, i]).any())]
        out = images.new_zeros(B)
        if not todo:
            return out
        if shift is None:
            shift = torch.rand(B, 2, device=images.device)
        z_shifted = self.scm.mechanisms(self.encoder(shift_images(images, shift, cfg.consistency_shift))[0])
        for i, name in todo:
            b = g.block(name)
            prob, target = torch.softmax(z[:, b].detach(), dim=-1).max(dim=-1)
            missing = torch.isnan(labels[:, i])
            use = missing & (prob >= cfg.consistency_threshold)
            if every:  # rows carrying the label: their label is the shifted copy's target
                target = torch.where(missing, target, torch.nan_to_num(g.class_index(name, labels[:, i]), nan=0.0).long())
            nll = torch.nn.functional.cross_entropy(z_shifted[:, b], target, reduction="none")
            out = out + torch.where(use, nll, torch.zeros_like(nll)) * (B / missing.sum().clamp(min=1))
            if every:
                out = out + torch.where(missing, torch.zeros_like(nll), nll) * (B / (~missing).sum().clamp(min=1))
        return out

    def cycle_nodes(self, pick: torch.Tensor) -> torch.Tensor:
        """The node index each row of the cycle term sets, ``(B,)`` long: ``floor(pick * n_nodes)``
        for ``pick`` ``(B,)`` in [0, 1)."""
        n_nodes = len(self.graph.nodes)
        return (pick * n_nodes).long().clamp(0, n_nodes - 1)

    def cycle_request(self, z: torch.Tensor, pick: torch.Tensor) -> torch.Tensor:
        """The latent the cycle term asks the decoder to draw, ``(B, D)``: in each row one node,
        :meth:`cycle_nodes` of ``pick`` ``(B,)``, set to the value read in the next row (the batch
        rolled by one), its descendants recomputed from the row's abducted noise, every other block
        copied (:meth:`LatentSCM.intervene`). ``z`` ``(B, D)`` factual latents."""
        g = self.graph
        k = self.cycle_nodes(pick)
        values = self.predict_labels(z).roll(1, dims=0)
        u = self.scm.abduct(z)
        out = z.clone()
        for i, name in enumerate(g.nodes):
            rows = k == i
            if bool(rows.any()):
                out = torch.where(rows[:, None], self.scm.intervene(z, {name: values[:, i]}, u=u), out)
        return out

    def cycle_loss(self, images: torch.Tensor, z: torch.Tensor, t: torch.Tensor | None = None,
                   noise: torch.Tensor | None = None, pick: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's latent-cycle term, per row ``(B,)`` (rows beyond ``cycle_rows`` count 0).

        For the first ``n = cycle_rows`` rows: ``x_t = q_sample(x0, t, noise)`` of the training
        image, ``z'`` = :meth:`cycle_request` (one node set to another row's value, descendants
        recomputed), and the clean-image estimates ``x0_hat(x_t, t, z')`` and, without gradient,
        ``x0_hat(x_t, t, z)``. The encoder and the SCM, frozen (the term trains only the decoder),
        read both; per node, a continuous node's term is ``0.5 (dread - dasked)^2``, the change in
        its reading (block mean, latent units) against the change asked (0 for the blocks the
        request leaves alone: they must not drift), and a categorical node's is the cross-entropy
        of the asked class under the counterfactual estimate's logits; the nodes left alone (the
        set node's non-descendants) weigh ``cycle_hold_weight``, the others 1. Comparing changes rather
        than readings cancels the bias of reading a blurred high-noise estimate. Each row is
        weighted by ``1 - alpha_bar_t``, the share of ``x_t`` that is noise (how far the decoder
        can follow the latent there; about 0 at low noise, so reconstruction is left to the
        diffusion term), and by ``B / n`` so the batch mean is the mean over the used rows.
        ``images`` ``(B, C, H, W)``, ``z`` ``(B, D)`` the posterior-mean latents (held fixed), ``t``
        ``(B,)``, ``noise`` like ``images``, ``pick`` ``(B,)`` (random when None).
        """
        g, B = self.graph, images.shape[0]
        n = min(self.config.cycle_rows, B)
        out = images.new_zeros(B)
        if n < 2:
            return out
        x0, z = images[:n], z[:n].detach()
        t = self.schedule.sample_t(n, images.device) if t is None else torch.as_tensor(t, device=images.device).long()[:n]
        noise = torch.randn_like(x0) if noise is None else noise[:n]
        pick = torch.rand(n, device=images.device) if pick is None else pick[:n]
        with torch.no_grad():
            z_cf = self.cycle_request(z, pick)
            asked, have = self.scm.label_values(z_cf), self.scm.label_values(z)
        x_t = self.schedule.q_sample(x0, t, noise)
        with torch.no_grad():
            x0_f = self.schedule.predict_x0(self.unet(x_t, t, z), x_t, t).float().clamp(-1, 1)
        x0_cf = self.schedule.predict_x0(self.unet(x_t, t, z_cf), x_t, t).float().clamp(-1, 1)
        with frozen(self.encoder, self.scm):
            read_cf = self.scm.mechanisms(self.encoder(x0_cf)[0])
            with torch.no_grad():
                read_f = self.scm.mechanisms(self.encoder(x0_f)[0])
        # (n, N): whether row r's request moves node i (LatentSCM.affected: the set node and its
        # descendants); the rest are held
        names = list(g.nodes)
        moves = torch.tensor([[b in self.scm.affected({a: 0.0}) for b in names] for a in names], device=x0.device)
        weight = torch.where(moves[self.cycle_nodes(pick)], 1.0, self.config.cycle_hold_weight)
        term = x0.new_zeros(n)
        for i, name in enumerate(g.nodes):
            b = g.block(name)
            if g.is_categorical(name):
                node_term = torch.nn.functional.cross_entropy(read_cf[:, b].float(), asked[:, i].long(), reduction="none")
            else:
                moved = read_cf[:, b].float().mean(-1) - read_f[:, b].float().mean(-1)
                node_term = 0.5 * (moved - (asked[:, i] - have[:, i])).pow(2)
            term = term + node_term * weight[:, i]
        noise_share = 1 - self.schedule.alpha_bar(t, x0).reshape(-1)
        out[:n] = term * noise_share * (B / n)
        return out

    def _row_weights(self, mask: torch.Tensor, batch: int) -> torch.Tensor:
        """Per-row weights ``(B,)`` of one node's label term: the mask itself (``label_average="batch"``)
        or the mask scaled by ``B / n_labelled`` so that the batch mean is the labelled rows' mean."""
        m = mask.to(torch.float32).expand(batch)
        if self.config.label_average == "labelled":
            m = m * (batch / m.sum().clamp(min=1.0))
        return m

    # ------------------------------------------------------------------ deterministic pieces
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean abduction: returns ``(u, z)``, each ``(B, D)``, with ``z = SCM(u)``."""
        self.check_images(images)
        mu, _ = self.encoder(images)
        return mu, self.scm.mechanisms(mu)

    def predict_labels(self, z: torch.Tensor) -> torch.Tensor:
        """Read labels off latents: the mean of each block (a categorical node: the class of its
        largest logit), back in label units (:meth:`CausalGraph.from_latent`). ``(B, D) -> (B, n_nodes)``."""
        return self.graph.from_latent(self.scm.label_values(z))

    def ema_copy(self) -> "CausalDiffAE":
        """A frozen deep copy (used for EMA weights)."""
        m = copy.deepcopy(self)
        m.requires_grad_(False)
        return m

    # ------------------------------------------------------------------ the query API as methods
    @classmethod
    def load(cls, run_or_checkpoint, device: str | torch.device = "cpu", graph: CausalGraph | None = None, ema: bool = True):
        """Load a trained model from a run folder or checkpoint file.

        Returns ``(model, meta)``: the model in eval mode on ``device`` (EMA weights by default)
        and the checkpoint's metadata (step, config, data description and label ranges).
        Raises CheckpointError for a missing/corrupt file or, when ``graph`` is given, a checkpoint
        trained on another graph.
        """
        return load_model(run_or_checkpoint, graph=graph, device=device, ema=ema)

    def abduct(self, images: torch.Tensor, steps: int | None = None, method: str = "ddim", **kw: Any):
        """See :func:`causaldiffae.counterfactual.abduct`."""
        from causaldiffae import counterfactual as cf

        return cf.abduct(self, images, steps=steps, method=method, **kw)

    def intervene(self, abduction, do):
        """See :func:`causaldiffae.counterfactual.intervene`."""
        from causaldiffae import counterfactual as cf

        return cf.intervene(self, abduction, do)

    def predict(self, abduction, z: torch.Tensor, strength: float = 1.0, steps: int | None = None, **kw: Any) -> torch.Tensor:
        """See :func:`causaldiffae.counterfactual.predict`."""
        from causaldiffae import counterfactual as cf

        return cf.predict(self, abduction, z, strength=strength, steps=steps, **kw)

    def counterfactual(self, images: torch.Tensor, do=None, strength: float = 1.0, steps: int | None = None, **kw: Any):
        """See :func:`causaldiffae.counterfactual.counterfactual`."""
        from causaldiffae import counterfactual as cf

        return cf.counterfactual(self, images, do=do, strength=strength, steps=steps, **kw)

    def sample(self, n: int, do=None, strength: float = 1.0, steps: int | None = None, **kw: Any):
        """See :func:`causaldiffae.counterfactual.sample`."""
        from causaldiffae import counterfactual as cf

        return cf.sample(self, n, do=do, strength=strength, steps=steps, **kw)

    def reconstruct(self, images: torch.Tensor, steps: int | None = None, **kw: Any) -> torch.Tensor:
        """See :func:`causaldiffae.counterfactual.reconstruct`."""
        from causaldiffae import counterfactual as cf

        return cf.reconstruct(self, images, steps=steps, **kw)

    def decode(self, x_T: torch.Tensor, z: torch.Tensor, strength: float = 1.0, steps: int = 20,
               reference: torch.Tensor | None = None) -> torch.Tensor:
        """DDIM-decode ``x_T`` ``(B, C, H, W)`` under latents ``z`` ``(B, D)``; ``reference`` ``(B, D)``
        (the factual latents) makes guidance run against it instead of the null condition."""
        with torch.no_grad():
            return self.schedule.ddim_sample(self.denoiser(), x_T, z, steps=steps, guidance=strength,
                                             reference=reference).clamp(-1, 1)

    def interpolate(self, image_a: torch.Tensor, image_b: torch.Tensor, n: int = 8, steps: int | None = None) -> torch.Tensor:
        """See :func:`causaldiffae.counterfactual.interpolate`."""
        from causaldiffae import counterfactual as cf

        return cf.interpolate(self, image_a, image_b, n=n, steps=steps)


# ---------------------------------------------------------------------------- building and loading
def _prefixed(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    n = len(prefix)
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix)}


def build_model(graph: CausalGraph, config: ModelConfig, seed: int = 0) -> CausalDiffAE:
    """A freshly initialised model (initialisation seeded)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CausalDiffAE(graph, config)


def checkpoint_meta(graph: CausalGraph, run: Any, step: int, data: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON metadata of a checkpoint: step, graph, the run's config (``run.to_dict()``, a
    :class:`~causaldiffae.training.RunConfig`), the data description and ``extra`` keys."""
    return {
        "step": step,
        "graph": graph.to_dict(),
        "config": run.to_dict(),
        "data": dict(data),
        **(dict(extra) if extra else {}),
    }


@contextlib.contextmanager
def frozen(*modules: nn.Module):
    """Within the block the modules' parameters record no gradient (gradients still flow through
    them to their inputs); their ``requires_grad`` flags are restored after."""
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


def shift_images(images: torch.Tensor, shift: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Shift each image by whole pixels, filling the uncovered border with its edge pixels.

    ``images`` ``(B, C, H, W)``; ``shift`` ``(B, 2)`` uniform in [0, 1) gives each row's offsets
    ``(dy, dx) = floor(shift * (2 * max_shift + 1)) - max_shift``, so each lies in
    ``[-max_shift, max_shift]``; a positive offset moves the content down / right. Returns the
    shifted images, same shape. ``max_shift=0`` returns the images unchanged.
    """
    if max_shift == 0:
        return images
    s = int(max_shift)
    off = (shift * (2 * s + 1)).floor().long().clamp(0, 2 * s)  # index of the crop's corner in the padded image
    padded = torch.nn.functional.pad(images, (s, s, s, s), mode="replicate")
    H, W = images.shape[-2:]
    rows = torch.arange(H, device=images.device)[None, :] + (2 * s - off[:, :1])  # (B, H)
    cols = torch.arange(W, device=images.device)[None, :] + (2 * s - off[:, 1:])  # (B, W)
    b = torch.arange(images.shape[0], device=images.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def load_model(
    path: str | os.PathLike, graph: CausalGraph | None = None, device: str | torch.device = "cpu", ema: bool = True
) -> tuple[CausalDiffAE, dict[str, Any]]:
    """Load a trained model (EMA weights by default) from a run folder or checkpoint file.

    Args:
        path: run folder or ``.safetensors`` checkpoint.
        graph: if given, the checkpoint's graph must match it (else CheckpointError).
        device: where to put the model.
        ema: load the EMA weights (used for sampling) rather than the raw ones.

    Returns:
        ``(model in eval mode, checkpoint metadata)``.
    """
    tensors, meta = load_checkpoint(path)
    try:
        saved_graph = CausalGraph.from_dict(meta["graph"])
        model_config = ModelConfig.from_dict(meta["config"]["model"], saved=True)  # the train section is not needed to load
    except (KeyError, TypeError, ValueError, ConfigError) as e:
        raise CheckpointError(f"{path}: checkpoint metadata is incomplete or invalid: {e}") from e
    if graph is not None:
        assert_same_graph(saved_graph, graph, path)
    model = CausalDiffAE(saved_graph, model_config)
    prefix = "ema." if ema and any(k.startswith("ema.") for k in tensors) else "model."
    try:
        model.load_state_dict(_prefixed(tensors, prefix))
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model described in the checkpoint: {e}") from e
    model.eval().requires_grad_(False)
    return model.to(device), meta


def assert_same_graph(saved: CausalGraph, given: CausalGraph, where: Any) -> None:
    """Raise CheckpointError unless two graphs have the same nodes, edges and block sizes."""
    a = (saved.nodes, sorted(saved.edges), saved.dims)
    b = (given.nodes, sorted(given.edges), given.dims)
    if a != b:
        raise CheckpointError(
            f"{where}: the checkpoint was trained on another graph "
            f"(checkpoint: nodes {saved.nodes}, edges {sorted(saved.edges)}, dims {saved.dims}; "
            f"given: nodes {given.nodes}, edges {sorted(given.edges)}, dims {given.dims})"
        )
