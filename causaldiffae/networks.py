"""Networks of the image half: the AdaGN UNet noise predictor and the semantic encoder.

Shapes: images are ``(B, C, H, W)`` in ``[-1, 1]``; the condition ``z`` is flat ``(B, D)``;
timesteps ``t`` are ``(B,)`` (int or float, in ``[0, T)``).

The UNet is Diff-AE's: every residual block applies adaptive group normalisation

    h = GroupNorm(h);  h = h * (1 + t_s) + t_b;  h = h * (1 + z_s)

with ``(t_s, t_b) = Linear(time embedding)`` and ``z_s = Linear(z)``. The last conv of each residual
block, the attention output projection and the output conv start at zero, so a fresh network
predicts ``eps = 0``. ``cond=None`` (or ``cond_mask == False`` per example) selects the null
condition used by classifier-free guidance.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from causaldiffae.errors import ConfigError, DataError

__all__ = [
    "UNetConfig",
    "LEGACY_UNET_FIELDS",
    "UNet",
    "EncoderConfig",
    "SemanticEncoder",
    "FastUNet",
    "timestep_embedding",
    "check_images",
]


# ----------------------------------------------------------------------------------------- configs
#: UNetConfig fields added after the first shipped models, with the values those models used.
LEGACY_UNET_FIELDS = {"cond_shift": False, "cond_hidden": 0}


@dataclass
class UNetConfig:
    """Size of the UNet noise predictor. Defaults are sized for 2 CPU cores at 32x32.

    ``attention_resolutions`` lists the feature-map sizes (e.g. ``(8,)``) where self-attention is
    applied; ``channel_mult[i] * base_channels`` is the width at level ``i`` (resolution
    ``image_size / 2**i``). ``time_dim`` 0 means ``4 * base_channels``.

    ``cond_shift``: the condition gives each residual block a scale *and* a shift,
    ``h = (GN(h) (1 + t_s) + t_b) (1 + z_s) + z_b``, instead of the scale alone (Diff-AE's form).
    ``cond_hidden > 0``: ``z`` first goes through a small MLP (``Linear -> SiLU -> Linear``, that
    width) shared by all blocks. Both are off in :data:`LEGACY_UNET_FIELDS`, the values of
    checkpoints saved before they existed.
    """

    image_size: int = 32
    in_channels: int = 3
    base_channels: int = 16
    channel_mult: tuple[int, ...] = (1, 2, 4, 8)
    num_res_blocks: int = 1
    attention_resolutions: tuple[int, ...] = (8,)
    num_heads: int = 4
    dropout: float = 0.0
    num_groups: int = 8
    time_dim: int = 0
    cond_shift: bool = True
    cond_hidden: int = 64

    def __post_init__(self) -> None:
        if self.cond_hidden < 0:
            raise ConfigError(f"UNetConfig.cond_hidden must be >= 0, got {self.cond_hidden}")
        self.cond_shift = bool(self.cond_shift)
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        self.attention_resolutions = tuple(int(r) for r in self.attention_resolutions)
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ConfigError(f"UNetConfig.channel_mult must be non-empty positive ints, got {self.channel_mult}")
        for name in ("image_size", "in_channels", "base_channels", "num_res_blocks", "num_heads", "num_groups"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"UNetConfig.{name} must be >= 1, got {getattr(self, name)}")
        factor = 2 ** (len(self.channel_mult) - 1)
        if self.image_size % factor:
            raise ConfigError(
                f"UNetConfig.image_size={self.image_size} is not divisible by the down-sampling factor "
                f"{factor} (= 2**(len(channel_mult)-1) for channel_mult={self.channel_mult})"
            )
        for c in {self.base_channels * m for m in self.channel_mult}:
            if c % self.num_groups:
                raise ConfigError(f"UNetConfig: width {c} is not divisible by num_groups={self.num_groups}")
            if self.attention_resolutions and c % self.num_heads:
                raise ConfigError(f"UNetConfig: width {c} is not divisible by num_heads={self.num_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"UNetConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.time_dim < 0:
            raise ConfigError(f"UNetConfig.time_dim must be >= 0, got {self.time_dim}")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @classmethod
    def gpu_preset(cls, image_size: int = 32, in_channels: int = 3) -> "UNetConfig":
        """The reference scale: 128 base channels, 3 residual blocks per level (method.md §6)."""
        mult = (1, 2, 2, 2) if image_size <= 64 else (1, 1, 2, 2, 4, 4)
        attn = (16,) if image_size <= 64 else (16, 8)
        return cls(image_size, in_channels, 128, mult, 3, attn, 4, 0.1, 32, 512, cond_shift=True, cond_hidden=256)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "UNetConfig":
        return cls(**d)


@dataclass
class EncoderConfig:
    """Size of the semantic encoder q(u | x): strided convs, then a linear head on the flat map."""

    image_size: int = 32
    in_channels: int = 3
    base_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 4)
    num_groups: int = 8

    def __post_init__(self) -> None:
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ConfigError(f"EncoderConfig.channel_mult must be non-empty positive ints, got {self.channel_mult}")
        for name in ("image_size", "in_channels", "base_channels", "num_groups"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"EncoderConfig.{name} must be >= 1, got {getattr(self, name)}")
        factor = 2 ** len(self.channel_mult)
        if self.image_size % factor:
            raise ConfigError(
                f"EncoderConfig.image_size={self.image_size} is not divisible by 2**len(channel_mult)={factor}"
            )
        for c in {self.base_channels * m for m in self.channel_mult}:
            if c % self.num_groups:
                raise ConfigError(f"EncoderConfig: width {c} is not divisible by num_groups={self.num_groups}")

    @classmethod
    def gpu_preset(cls, image_size: int = 32, in_channels: int = 3) -> "EncoderConfig":
        mult = (1, 2, 4) if image_size <= 32 else (1, 2, 4, 4)
        return cls(image_size, in_channels, 64, mult, 32)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EncoderConfig":
        return cls(**d)


# ----------------------------------------------------------------------------------------- helpers
def check_images(x: Tensor, channels: int, size: int, who: str) -> None:
    """Raise :class:`DataError` unless ``x`` is a float ``(B, channels, size, size)`` tensor."""
    if not isinstance(x, Tensor) or x.ndim != 4:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise DataError(f"{who}: expected images of shape (B, {channels}, {size}, {size}), got {got}")
    if x.shape[1] != channels:
        raise DataError(f"{who}: expected {channels} image channels, got {x.shape[1]} (shape {tuple(x.shape)})")
    if x.shape[2] != size or x.shape[3] != size:
        raise DataError(
            f"{who}: expected images of size {size}x{size}, got {x.shape[2]}x{x.shape[3]} (shape {tuple(x.shape)})"
        )
    if not x.is_floating_point():
        raise DataError(f"{who}: expected floating-point images in [-1, 1], got dtype {x.dtype}")


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of timesteps ``t`` ``(B,)`` -> ``(B, dim)`` (cos half, then sin half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


# ----------------------------------------------------------------------------------------- blocks
class ResBlock(nn.Module):
    """Residual block with Diff-AE adaptive group norm. ``(B, Cin, H, W) -> (B, Cout, H, W)``."""

    def __init__(self, cin: int, cout: int, time_dim: int, cond_dim: int, groups: int, dropout: float,
                 cond_shift: bool = False) -> None:
        super().__init__()
        self.cond_shift = cond_shift
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time = nn.Linear(time_dim, 2 * cout)  # -> (t_s, t_b)
        self.cond = nn.Linear(cond_dim, (2 if cond_shift else 1) * cout)  # -> z_s (, z_b)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.drop = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor, z: Tensor) -> Tensor:
        """x ``(B, Cin, H, W)``, temb ``(B, time_dim)`` (already SiLU'd), z ``(B, cond_dim)``."""
        h = self.conv1(F.silu(self.norm1(x)))
        t_s, t_b = self.time(temb).chunk(2, dim=1)  # (B, Cout) each
        if self.cond_shift:
            z_s, z_b = self.cond(z).chunk(2, dim=1)  # (B, Cout) each
        else:
            z_s, z_b = self.cond(z), None  # (B, Cout)
        # AdaGN, (GN(h) * (1 + t_s) + t_b) * (1 + z_s) [+ z_b], with GN's own affine folded in: the
        # per-(B, C) scale and shift are computed on small tensors and applied to the activation
        # in one pass (about 1.3x faster on a CPU than three elementwise passes).
        scale = (1 + z_s) * (1 + t_s)
        shift = (1 + z_s) * t_b
        if z_b is not None:
            shift = shift + z_b
        if self.norm2.affine:
            shift = shift + scale * self.norm2.bias
            scale = scale * self.norm2.weight
        h = F.group_norm(h, self.norm2.num_groups, eps=self.norm2.eps)
        h = torch.addcmul(shift[:, :, None, None], h, scale[:, :, None, None])
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the H*W positions, residual. ``(B, C, H, W) -> same``."""

    def __init__(self, channels: int, heads: int, groups: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (B, heads, HW, C/heads)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class Downsample(nn.Module):
    """Strided 3x3 conv: ``(B, C, H, W) -> (B, C, H/2, W/2)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest x2 then 3x3 conv: ``(B, C, H, W) -> (B, C, 2H, 2W)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


# ----------------------------------------------------------------------------------------- UNet
class UNet(nn.Module):
    """Noise predictor ``eps_theta(x_t, t, z)``.

    Args:
        config: :class:`UNetConfig`.
        cond_dim: size ``D`` of the flat condition ``z``.
        null_cond: ``"learned"`` (an ``nn.Parameter`` of shape ``(D,)``, initialised at zero) or
            ``"zero"`` (a fixed zero vector) used where the condition is dropped.

    ``forward(x, t, cond=None, cond_mask=None)``: ``x`` ``(B, C, H, W)``, ``t`` ``(B,)`` or a
    scalar, ``cond`` ``(B, D)`` or ``None`` (all null), ``cond_mask`` ``(B,)`` bool, ``True`` where
    the example keeps its condition and ``False`` where the null condition replaces it.
    Returns ``eps`` ``(B, C, H, W)``.
    """

    def __init__(self, config: UNetConfig, cond_dim: int, null_cond: Literal["learned", "zero"] = "learned") -> None:
        super().__init__()
        if int(cond_dim) < 1:
            raise ConfigError(f"UNet: cond_dim must be >= 1, got {cond_dim}")
        if null_cond not in ("learned", "zero"):
            raise ConfigError(f"UNet: null_cond must be 'learned' or 'zero', got {null_cond!r}")
        self.config, self.cond_dim, self.null_cond_kind = config, int(cond_dim), null_cond
        c, g, dp = config.base_channels, config.num_groups, config.dropout
        tdim = config.time_dim or 4 * c
        if null_cond == "learned":
            self.null_cond = nn.Parameter(torch.zeros(self.cond_dim))
        else:
            self.register_buffer("null_cond", torch.zeros(self.cond_dim), persistent=False)

        self.time_mlp = nn.Sequential(nn.Linear(c, tdim), nn.SiLU(), nn.Linear(tdim, tdim))
        self.conv_in = nn.Conv2d(config.in_channels, c, 3, padding=1)
        hid = int(config.cond_hidden)
        # z -> a shared embedding read by every block (absent in legacy models: z is read directly)
        self.cond_mlp = nn.Sequential(nn.Linear(self.cond_dim, hid), nn.SiLU(), nn.Linear(hid, hid)) if hid else None
        block_cond = hid or self.cond_dim

        def block(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, tdim, block_cond, g, dp, cond_shift=config.cond_shift)

        self.down = nn.ModuleList()  # entries: (res, attn|Identity) or Downsample
        skips, ch, res = [c], c, config.image_size
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                attn = Attention(c * mult, config.num_heads, g) if res in config.attention_resolutions else nn.Identity()
                self.down.append(nn.ModuleList([block(ch, c * mult), attn]))
                ch = c * mult
                skips.append(ch)
            if level < len(config.channel_mult) - 1:
                self.down.append(Downsample(ch))
                skips.append(ch)
                res //= 2
        self.mid1, self.mid_attn, self.mid2 = block(ch, ch), Attention(ch, config.num_heads, g), block(ch, ch)
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for _ in range(config.num_res_blocks + 1):
                attn = Attention(c * mult, config.num_heads, g) if res in config.attention_resolutions else nn.Identity()
                self.up.append(nn.ModuleList([block(ch + skips.pop(), c * mult), attn]))
                ch = c * mult
            if level > 0:
                self.up.append(Upsample(ch))
                res *= 2
        self.norm_out = nn.GroupNorm(g, ch)
        self.conv_out = _zero(nn.Conv2d(ch, config.in_channels, 3, padding=1))

    # ---- condition handling (kept outside the pure-tensor core so the core can be traced/compiled)
    def resolve_cond(self, cond: Tensor | None, cond_mask: Tensor | None, batch: int) -> Tensor:
        """The effective condition ``(B, D)``: ``cond`` where ``cond_mask`` is True, else the null vector."""
        null = self.null_cond.to(dtype=torch.float32)[None].expand(batch, -1)
        if cond is None:
            return null
        if cond.ndim != 2 or cond.shape != (batch, self.cond_dim):
            raise DataError(f"UNet: expected cond of shape ({batch}, {self.cond_dim}), got {tuple(cond.shape)}")
        cond = cond.to(null.dtype)
        if cond_mask is None:
            return cond
        if cond_mask.shape != (batch,):
            raise DataError(f"UNet: expected cond_mask of shape ({batch},), got {tuple(cond_mask.shape)}")
        return torch.where(cond_mask.to(torch.bool)[:, None], cond, null)

    @staticmethod
    def resolve_t(t: Tensor | float | int, batch: int, device: torch.device) -> Tensor:
        """Timesteps as a float ``(B,)`` tensor."""
        t = torch.as_tensor(t, device=device)
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise DataError(f"UNet: expected timesteps of shape ({batch},) or a scalar, got {tuple(t.shape)}")
        return t.to(torch.float32)

    def forward(self, x: Tensor, t: Tensor | float | int, cond: Tensor | None = None,
                cond_mask: Tensor | None = None) -> Tensor:
        check_images(x, self.config.in_channels, self.config.image_size, "UNet")
        b = x.shape[0]
        return self.core(x, self.resolve_t(t, b, x.device), self.resolve_cond(cond, cond_mask, b))

    def core(self, x: Tensor, t: Tensor, z: Tensor) -> Tensor:
        """Unchecked forward: ``x`` ``(B, C, H, W)``, ``t`` float ``(B,)``, ``z`` ``(B, D)`` -> ``(B, C, H, W)``."""
        temb = F.silu(self.time_mlp(timestep_embedding(t, self.config.base_channels)))
        if self.cond_mlp is not None:
            z = self.cond_mlp(z)
        h = self.conv_in(x)
        hs = [h]
        for layer in self.down:
            if isinstance(layer, Downsample):
                h = layer(h)
            else:
                res, attn = layer
                h = attn(res(h, temb, z))
            hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, temb, z)), temb, z)
        for layer in self.up:
            if isinstance(layer, Upsample):
                h = layer(h)
            else:
                res, attn = layer
                h = attn(res(torch.cat([h, hs.pop()], dim=1), temb, z))
        return self.conv_out(F.silu(self.norm_out(h)))

    def prepare_for_inference(self, mode: str = "auto", example_batch: int = 2, precision: str = "fp32") -> "FastUNet":
        """A frozen, faster copy for sampling (see :class:`FastUNet`). Call again after more training."""
        return FastUNet(self, mode=mode, example_batch=example_batch, precision=precision)


# ----------------------------------------------------------------------------------------- fast inference
_INFERENCE_MODES = ("auto", "eager", "channels_last", "jit", "compile")


class FastUNet(nn.Module):
    """Inference-only wrapper of a :class:`UNet` with the same call signature.

    Modes:
        ``"eager"``: the plain fp32 module, ``eval()``.
        ``"channels_last"``: eager with NHWC weights and inputs.
        ``"jit"``: ``torch.jit.trace`` + ``torch.jit.freeze`` + ``optimize_for_inference`` (oneDNN
            conv fusion; weights folded, so it is a snapshot of the weights at this call).
        ``"compile"``: ``torch.compile`` (inductor), compiled lazily on first call; falls back to
            eager with a warning if compilation fails.
        ``"auto"``: ``"channels_last"``, the fastest mode measured on a 2-core CPU for the sampling
            batch sizes (1.25-1.4x eager; ``"jit"`` was no faster than eager there and ``"compile"``
            costs about a minute of compilation, see ``docs/benchmarks.md``).

    ``precision`` (see :mod:`causaldiffae.precision`): "fp32" (default) computes in float32;
    "bf16" runs under bf16 autocast and returns float32; "auto" is "bf16" only where the device
    has bf16 units (emulated bf16 is many times slower than fp32, see ``docs/benchmarks.md``).
    Gradients are never tracked.
    """

    def __init__(self, unet: UNet, mode: str = "auto", example_batch: int = 2, tol: float = 1e-3,
                 precision: str = "fp32") -> None:
        super().__init__()
        if mode not in _INFERENCE_MODES:
            raise ConfigError(f"FastUNet: mode must be one of {_INFERENCE_MODES}, got {mode!r}")
        from causaldiffae.precision import resolve_precision

        self.precision = resolve_precision(precision, next(unet.parameters()).device)
        self.unet = unet.eval()
        self.config, self.cond_dim = unet.config, unet.cond_dim
        self.mode, self.tol = mode, tol
        self._fn: Any = unet.core
        self._channels_last = False
        if mode in ("channels_last", "auto"):
            self.mode = "channels_last"
            self.unet = unet.to(memory_format=torch.channels_last)
            self._channels_last = True
        elif mode == "jit":
            self._build_jit(example_batch)
        elif mode == "compile":
            self.unet = unet.to(memory_format=torch.channels_last)
            self._channels_last = True
            self._fn = torch.compile(unet.core, dynamic=False)

    def _example(self, batch: int) -> tuple[Tensor, Tensor, Tensor]:
        p = next(self.unet.parameters())
        cfg = self.config
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=gen).to(p.device)
        t = torch.randint(0, 1000, (batch,), generator=gen).float().to(p.device)
        z = torch.randn(batch, self.cond_dim, generator=gen).to(p.device)
        return x, t, z

    def _build_jit(self, batch: int) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(_Core(self.unet), self._example(batch), check_trace=False)
            fn = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
            ex = self._example(batch + 1)  # a different batch size checks shape generality
            err = (fn(*ex) - self.unet.core(*ex)).abs().max().item()
        if not err < self.tol:
            raise RuntimeError(f"FastUNet: traced model differs from eager by {err:.2e} (tolerance {self.tol:.0e})")
        self._fn = fn

    def forward(self, x: Tensor, t: Tensor | float | int, cond: Tensor | None = None,
                cond_mask: Tensor | None = None) -> Tensor:
        """Same contract as :meth:`UNet.forward`; runs without autograd."""
        check_images(x, self.config.in_channels, self.config.image_size, "FastUNet")
        b = x.shape[0]
        bf16 = torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")
        with torch.inference_mode(), bf16:
            t_, z = UNet.resolve_t(t, b, x.device), self.unet.resolve_cond(cond, cond_mask, b)
            x = x.float()
            if self._channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if self.mode == "compile":
                try:
                    out = self._fn(x, t_, z)
                except Exception as exc:  # noqa: BLE001 - compile errors surface on first call
                    warnings.warn(f"FastUNet: torch.compile failed ({exc}); using eager", RuntimeWarning, stacklevel=2)
                    self._fn, self.mode = self.unet.core, "eager"
                    out = self._fn(x, t_, z)
            else:
                out = self._fn(x, t_, z)
        return out.float().clone(memory_format=torch.contiguous_format)  # a normal (non-inference) float32 tensor


class _Core(nn.Module):
    """``UNet.core`` as a module's forward, for ``torch.jit.trace``."""

    def __init__(self, unet: UNet) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: Tensor, t: Tensor, z: Tensor) -> Tensor:
        return self.unet.core(x, t, z)


# ----------------------------------------------------------------------------------------- encoder
class SemanticEncoder(nn.Module):
    """q(u | x): ``x`` ``(B, C, H, W)`` -> ``(mu (B, D), logvar (B, D))`` for all exogenous blocks.

    Stride-2 conv stages (conv3x3 -> GroupNorm -> SiLU -> conv3x3 stride 2) down to
    ``H / 2**len(channel_mult)``, then a linear head on the flattened map, so the position of
    objects in the image is kept.
    """

    def __init__(self, config: EncoderConfig, latent_dim: int) -> None:
        super().__init__()
        if int(latent_dim) < 1:
            raise ConfigError(f"SemanticEncoder: latent_dim must be >= 1, got {latent_dim}")
        self.config, self.latent_dim = config, int(latent_dim)
        layers: list[nn.Module] = [nn.Conv2d(config.in_channels, config.base_channels, 3, padding=1)]
        ch = config.base_channels
        for mult in config.channel_mult:
            cout = config.base_channels * mult
            layers += [nn.GroupNorm(config.num_groups, ch), nn.SiLU(), nn.Conv2d(ch, cout, 3, padding=1),
                       nn.GroupNorm(config.num_groups, cout), nn.SiLU(), nn.Conv2d(cout, cout, 3, stride=2, padding=1)]
            ch = cout
        layers += [nn.GroupNorm(config.num_groups, ch), nn.SiLU(), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        side = config.image_size // 2 ** len(config.channel_mult)
        self.head = nn.Linear(ch * side * side, 2 * self.latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        check_images(x, self.config.in_channels, self.config.image_size, "SemanticEncoder")
        mu, logvar = self.head(self.features(x)).chunk(2, dim=-1)
        return mu, logvar
