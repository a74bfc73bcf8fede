"""Fast paths of the training step and of sampling give the reference results.

bf16 (where the CPU has it) within a tolerance derived from bf16's 8-bit mantissa; the
multi-tensor EMA and the fused optimiser to float32 rounding; ``auto`` never picks bf16 on a
CPU without bf16 units.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from causaldiffae import precision as prec
from causaldiffae.errors import ConfigError
from causaldiffae.model import CausalDiffAE
from causaldiffae.training import TrainConfig, _Loss, build_model, ema_update, make_optimizer, step_noise

from tiny import tiny_dataset, tiny_graph, tiny_run_config

BF16_EPS = 2.0**-8  # bf16 keeps 8 significant bits: relative rounding of one value <= 2^-8


def _reference_ema(ema, model, decay):
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.copy_(pe + (1 - decay) * (pm - pe))
        for be, bm in zip(ema.buffers(), model.buffers()):
            be.copy_(bm)


def _tiny_model(seed: int = 0) -> CausalDiffAE:
    run = tiny_run_config()
    return build_model(tiny_graph(), run.model, seed=seed)


def test_foreach_ema_matches_the_per_tensor_formula():
    model, ema_a = _tiny_model(0), _tiny_model(1)
    ema_b = _tiny_model(1)
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema_update(ema_a, model, 0.9)
        _reference_ema(ema_b, model, 0.9)
    for (name, a), b in zip(ema_a.state_dict().items(), ema_b.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-6), name


def test_fused_adamw_takes_the_same_steps_as_the_reference():
    tc = TrainConfig(lr=1e-2, weight_decay=0.1)
    fast, ref = _tiny_model(0), _tiny_model(0)
    opt_fast = make_optimizer(fast, tc, torch.device("cpu"))
    assert opt_fast.defaults.get("fused") is True  # the fast path is the one tested
    decay = [p for p in ref.parameters() if p.ndim > 1]
    other = [p for p in ref.parameters() if p.ndim <= 1]
    opt_ref = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                                lr=1e-2, foreach=False)
    for step in range(4):
        g = torch.Generator().manual_seed(step)
        for pf, pr in zip(fast.parameters(), ref.parameters()):
            grad = torch.randn(pf.shape, generator=g)
            pf.grad, pr.grad = grad.clone(), grad.clone()
        opt_fast.step()
        opt_ref.step()
    for (name, a), b in zip(fast.named_parameters(), ref.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name


def test_auto_precision_is_fp32_on_a_cpu_without_bf16_units(monkeypatch):
    monkeypatch.setattr(prec, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert not prec.cpu_has_bf16()
    assert prec.resolve_precision("auto", "cpu") == "fp32"
    assert prec.resolve_precision("bf16", "cpu") == "bf16"  # asked for explicitly
    monkeypatch.setattr(prec, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert prec.resolve_precision("auto", "cpu") == ("bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32")


def test_auto_precision_is_fp32_when_onednn_is_capped_at_avx2():
    """The AVX2-only machine as a process sees it (oneDNN and ATen capped at AVX2, as
    ``docs/benchmarks.md`` measures it): ``auto`` gives fp32 whatever this CPU has."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", ATEN_CPU_CAPABILITY="avx2")
    code = "from causaldiffae.precision import resolve_precision; print(resolve_precision('auto', 'cpu'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "fp32"


def test_unknown_precision_is_a_config_error():
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig(precision="fp8")
    with pytest.raises(ConfigError, match="precision"):
        prec.resolve_precision("half")


def _loss_and_grads(precision: str, compile_backend: str | None = None):
    model = _tiny_model(0)
    if compile_backend:
        from causaldiffae.training import compile_unet

        compile_unet(model.unet, backend=compile_backend)
    model.train()
    ds = tiny_dataset(32)
    # trained-looking weights: the zero-initialised output convs would make the UNet's output 0
    with torch.no_grad():
        g = torch.Generator().manual_seed(3)
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    sn = step_noise(0, 0, len(ds), 16, model.image_shape, model.graph.latent_dim, 100, 0.1)
    images, labels = ds.batch(sn.indices)
    terms = _Loss(model, precision)(images, labels, sn, 1.0)
    terms["loss"].backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return {k: v.detach() for k, v in terms.items()}, grads, model


def test_bf16_training_step_matches_fp32_within_bf16_rounding():
    ref, g_ref, _ = _loss_and_grads("fp32")
    fast, g_fast, model = _loss_and_grads("bf16")
    for k in ("loss", "diffusion", "kl", "label"):
        assert fast[k].dtype == torch.float32, k  # outside the networks everything stays float32
        # a few dozen roundings of 2^-8 along each network path, mostly cancelling: 2% is a bound, not a fit
        assert torch.allclose(fast[k], ref[k], rtol=0.02, atol=1e-3), (k, float(fast[k]), float(ref[k]))
    cos = torch.nn.functional.cosine_similarity(g_fast, g_ref, dim=0)
    assert cos > 0.99, float(cos)
    # the modules are restored: no autocast wrapper is left on them
    assert "forward" not in vars(model.unet) and "forward" not in vars(model.encoder)


def test_networks_in_restores_the_modules_after_an_error():
    model = _tiny_model(0)
    with pytest.raises(RuntimeError, match="boom"):
        with prec.networks_in("bf16", [model.unet], "cpu"):
            assert "forward" in vars(model.unet)
            raise RuntimeError("boom")
    assert "forward" not in vars(model.unet)
    assert not torch.is_autocast_enabled("cpu")


def test_compiled_training_step_gives_the_eager_loss_and_gradients():
    """``TrainConfig.compile``: the UNet traced by torch.compile computes the same step as eager.

    The ``aot_eager`` backend runs the same capture and autograd path as inductor without its C++
    code generation (minutes on 2 cores, cold); inductor's kernels themselves are torch's to test."""
    ref, g_ref, _ = _loss_and_grads("fp32")
    with warnings.catch_warnings(record=True):  # a platform where compiling fails falls back to eager
        warnings.simplefilter("always")
        terms, grads, model = _loss_and_grads("fp32", compile_backend="aot_eager")
    for k in ("loss", "diffusion", "kl", "label"):
        assert torch.allclose(terms[k], ref[k], rtol=1e-4, atol=1e-6), k
    assert torch.allclose(grads, g_ref, rtol=1e-3, atol=1e-5)
    assert "core" in vars(model.unet) and not any(k.startswith("_orig") for k in model.unet.state_dict())


def test_a_failing_compile_warns_and_trains_eagerly(monkeypatch):
    from causaldiffae import training

    def broken(fn, **kw):
        def run(*a, **k):
            raise RuntimeError("no C++ compiler")
        return run

    monkeypatch.setattr(training.torch, "compile", broken)
    model = _tiny_model(0)
    x = torch.randn(2, *model.image_shape)
    t = torch.tensor([3.0, 50.0])
    z = torch.randn(2, model.graph.latent_dim)
    want = model.unet.core(x, t, z)
    training.compile_unet(model.unet)
    with pytest.warns(RuntimeWarning, match="torch.compile of the UNet failed .*no C\\+\\+ compiler"):
        got = model.unet.core(x, t, z)
    assert torch.equal(got, want)
    assert model.unet.core(x, t, z).shape == want.shape  # later calls: eager, no second warning needed
