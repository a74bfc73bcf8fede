"""Reduced precision where the hardware has it: the ``precision`` setting of training and sampling.

``precision`` is one of:

- ``"fp32"``: everything in float32 (the reference).
- ``"bf16"``: the convolutional networks (UNet, semantic encoder) run under bfloat16 autocast;
  everything else (the SCM, the loss terms, the optimiser, the weights themselves) stays float32.
- ``"auto"``: ``"bf16"`` where the device has bf16 arithmetic units (a CPU with AVX512-BF16 or
  AMX-BF16, a CUDA GPU that supports bf16), else ``"fp32"``. On a CPU without those units bf16
  is emulated and runs many times slower than fp32 (measured 30x on an AVX2 EPYC), so ``auto`` never
  picks it there.

The measurements behind these choices are in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from causaldiffae.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")

#: /proc/cpuinfo flags that mean native bf16 arithmetic (dot products) on an x86 CPU.
_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where it cannot be read, e.g. not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_bf16() -> bool:
    """True when this CPU computes bf16 dot products in hardware (AVX512-BF16 or AMX) and
    PyTorch's oneDNN backend can use them."""
    if not any(flag in cpu_flags() for flag in _BF16_CPU_FLAGS):
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def device_has_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` has native bf16 arithmetic (see :func:`cpu_has_bf16`)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has_bf16()
    return False


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """``"fp32"`` or ``"bf16"``: what ``precision`` means on ``device``."""
    check_precision(precision)
    if precision == "auto":
        return "bf16" if device_has_bf16(device) else "fp32"
    return precision


def _to_float32(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, tuple):
        return tuple(_to_float32(v) for v in value)
    if isinstance(value, list):
        return [_to_float32(v) for v in value]
    return value


def autocast_forward(forward, device_type: str, dtype: torch.dtype = torch.bfloat16):
    """``forward`` run under autocast to ``dtype``, its floating-point outputs returned in float32."""

    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type, dtype=dtype):
            out = forward(*args, **kwargs)
        return _to_float32(out)

    return run


@contextlib.contextmanager
def networks_in(precision: str, modules: Sequence[nn.Module], device: torch.device | str) -> Iterator[str]:
    """Within the block, each of ``modules`` computes at ``precision`` (resolved for ``device``)
    and returns float32; the rest of the computation stays float32. Yields the resolved precision.

    The modules' weights are not touched (autocast casts them per operation), so the optimiser
    and checkpoints keep float32 weights.
    """
    resolved = resolve_precision(precision, device)
    if resolved == "fp32":
        yield resolved
        return
    device_type = torch.device(device).type
    patched = []
    try:
        for m in modules:
            m.forward = autocast_forward(type(m).forward.__get__(m), device_type)  # instance attribute shadows the method
            patched.append(m)
        yield resolved
    finally:
        for m in patched:
            del m.forward
