"""Cheaper queries: guidance at the high-noise steps only, separate inversion and decoding steps,
bf16 sampling; each checked against the reference path it replaces."""

from __future__ import annotations

import pytest
import torch

from causaldiffae import counterfactual as cf
from causaldiffae.errors import ConfigError
from causaldiffae.model import CausalDiffAE

from tiny import tiny_dataset


@pytest.fixture(scope="module")
def model(tiny_run):
    m, _ = CausalDiffAE.load(tiny_run)
    return m.set_inference_mode("eager", "fp32")  # the reference path: network calls visible to hooks


@pytest.fixture(scope="module")
def images():
    imgs, _ = tiny_dataset(8, seed=1).batch(torch.arange(8))
    return imgs


def _count_forwards(model, fn) -> float:
    """Network evaluations per image made by ``fn()`` (sum of batch sizes / images)."""
    seen = []
    handle = model.unet.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    try:
        fn()
    finally:
        handle.remove()
    return sum(seen)


@pytest.mark.parametrize("inv,dec,guided,w,refine,carry,residual", [
    (6, 6, None, 2.0, 0, None, False), (4, 8, 3, 2.0, 0, None, True), (8, 4, 0, 2.0, 1, False, False),
    (8, 4, 0, 2.0, 1, True, True), (3, 3, None, 1.0, 2, True, False), (5, 5, None, 1.0, 0, None, None)])
def test_forwards_per_image_counts_the_network_calls(model, images, inv, dec, guided, w, refine, carry, residual):
    n = _count_forwards(model, lambda: cf.counterfactual(model, images, do={"a": 0.5}, strength=w, steps=dec,
                                                          inversion_steps=inv, guided_steps=guided, refine=refine,
                                                          refine_carry=carry, residual=residual))
    assert n == images.shape[0] * cf.forwards_per_image(dec, inv, guided, w, refine, carry, residual)
    extra = dec if cf.resolve_residual(residual)[0] else 0  # the residual: one factual decoding, unguided
    if refine and carry:  # one call at the clean image, then the corrections' calls only
        assert cf.forwards_per_image(dec, inv, guided, w, refine, carry, residual) == (
            1 + inv * refine + dec + (w != 1) * (dec if guided is None else guided) + extra)


def test_guiding_every_step_is_the_reference_and_guiding_none_is_the_conditional_model(model, images):
    do = {"a": 0.6}
    full = cf.counterfactual(model, images, do=do, strength=2.0, steps=6).images
    every = cf.counterfactual(model, images, do=do, strength=2.0, steps=6, guided_steps=6).images
    none = cf.counterfactual(model, images, do=do, strength=2.0, steps=6, guided_steps=0).images
    plain = cf.counterfactual(model, images, do=do, strength=1.0, steps=6).images
    assert torch.equal(full, every)
    assert torch.equal(none, plain)
    part = cf.counterfactual(model, images, do=do, strength=2.0, steps=6, guided_steps=3).images
    assert not torch.equal(part, full) and not torch.equal(part, plain)


def test_separate_inversion_steps_change_only_the_abduction(model, images):
    ab = cf.abduct(model, images, steps=4)
    ref = cf.predict(model, ab, ab.z, steps=6)
    res = cf.counterfactual(model, images, do={}, steps=6, inversion_steps=4, residual=False)
    assert torch.allclose(res.images, ref, atol=1e-6)


def test_defaults_come_from_one_place(model, images, monkeypatch):
    monkeypatch.setattr(cf, "DEFAULT_STEPS", 3)
    monkeypatch.setattr(cf, "DEFAULT_INVERSION_STEPS", 2)
    monkeypatch.setattr(cf, "DEFAULT_GUIDED_STEPS", 1)
    monkeypatch.setattr(cf, "DEFAULT_REFINE", 2)
    monkeypatch.setattr(cf, "DEFAULT_REFINE_CARRY", False)
    monkeypatch.setattr(cf, "DEFAULT_RESIDUAL", False)
    assert cf.query_settings() == (3, 2, 1)
    assert cf.query_settings(steps=5) == (5, 5, None)  # explicit steps: the old meaning, guidance everywhere
    n = _count_forwards(model, lambda: model.counterfactual(images, do={"a": 0.1}, strength=2.0))
    assert n == images.shape[0] * (2 * (1 + 2) + 3 + 1)  # inversion x (1 + refine) + decoding + guided
    assert cf.forwards_per_image(strength=2.0) == 2 * (1 + 2) + 3 + 1
    monkeypatch.setattr(cf, "DEFAULT_REFINE_CARRY", True)
    n = _count_forwards(model, lambda: model.counterfactual(images, do={"a": 0.1}, strength=2.0))
    assert n == images.shape[0] * (1 + 2 * 2 + 3 + 1)  # carried: 1 + inversion x refine + decoding + guided
    assert cf.forwards_per_image(strength=2.0) == 1 + 2 * 2 + 3 + 1
    monkeypatch.setattr(cf, "DEFAULT_RESIDUAL", True)
    n = _count_forwards(model, lambda: model.counterfactual(images, do={"a": 0.1}, strength=2.0))
    assert n == images.shape[0] * (1 + 2 * 2 + 3 + 1 + 3)  # and the residual's factual decoding
    assert cf.forwards_per_image(strength=2.0) == 1 + 2 * 2 + 3 + 1 + 3


def test_the_default_query_is_exact_abduction_and_matches_the_explicit_one(model, images):
    """The default query inverts with DEFAULT_REFINE corrections: the same images as asking for them."""
    assert cf.DEFAULT_REFINE >= 1
    do = {"a": 0.4}
    default = model.counterfactual(images, do=do).images
    explicit = cf.counterfactual(model, images, do=do, steps=cf.DEFAULT_STEPS, refine=cf.DEFAULT_REFINE,
                                 refine_carry=cf.DEFAULT_REFINE_CARRY).images
    plain = cf.counterfactual(model, images, do=do, steps=cf.DEFAULT_STEPS, refine=0).images
    assert torch.equal(default, explicit)
    assert not torch.equal(default, plain)
    # and the abduction it uses reproduces the factual image at least as well as plain DDIM inversion
    null_exact = cf.reconstruct(model, images, steps=cf.DEFAULT_STEPS)
    null_plain = cf.reconstruct(model, images, steps=cf.DEFAULT_STEPS, refine=0)
    assert (null_exact - images).abs().mean() <= (null_plain - images).abs().mean()


def test_negative_guided_steps_is_a_config_error(model, images):
    with pytest.raises(ConfigError, match="guided_steps"):
        cf.counterfactual(model, images, do={}, strength=2.0, steps=4, guided_steps=-1)


def test_bf16_sampling_matches_fp32_within_bf16_rounding(tiny_run, images):
    from causaldiffae import precision

    if precision.resolve_precision("auto") != "bf16":
        pytest.skip("this CPU has no bf16 units (bf16 would be emulated; auto keeps fp32, tested in test_precision)")
    ref_model, _ = CausalDiffAE.load(tiny_run)
    fast_model, _ = CausalDiffAE.load(tiny_run)
    ref_model.set_inference_mode("auto", "fp32")
    fast_model.set_inference_mode("auto", "bf16")
    x = torch.randn(8, *ref_model.image_shape, generator=torch.Generator().manual_seed(0))
    t = torch.full((8,), 50)
    z = torch.randn(8, ref_model.graph.latent_dim, generator=torch.Generator().manual_seed(1))
    e_ref, e_fast = ref_model.denoiser()(x, t, z), fast_model.denoiser()(x, t, z)
    assert e_fast.dtype == torch.float32
    rel = float((e_fast - e_ref).norm() / e_ref.norm())
    assert 0 < rel < 0.03, rel  # bf16 rounds (so not 0); a few % bounds dozens of 2^-8 roundings
    # a whole null query: both reproduce the input about equally well
    a = cf.counterfactual(ref_model, images, do={}, steps=10, residual=False).images
    b = cf.counterfactual(fast_model, images, do={}, steps=10, residual=False).images
    mse_a, mse_b = float((a - images).pow(2).mean()), float((b - images).pow(2).mean())
    assert mse_b < 1.5 * mse_a + 1e-4, (mse_a, mse_b)
