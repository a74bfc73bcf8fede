"""Counterfactual queries on a tiny trained model: identity, locality of do(), determinism, errors."""

from __future__ import annotations

import warnings

import pytest
import torch

from causaldiffae import counterfactual as cf
from causaldiffae.errors import CausalDiffAEWarning, DataError, InterventionError
from causaldiffae.model import CausalDiffAE

from tiny import tiny_dataset


@pytest.fixture(scope="module")
def model(tiny_run):
    m, _ = CausalDiffAE.load(tiny_run)
    return m


@pytest.fixture(scope="module")
def images():
    imgs, _ = tiny_dataset(8, seed=1).batch(torch.arange(8))
    return imgs


def test_null_intervention_reproduces_the_input(model, images):
    # DDIM inversion is exact in the limit of small steps: more steps, better reconstruction
    # (residual=False: the decoder's own reconstruction, not the residual that makes it exact)
    coarse = float(((model.counterfactual(images, do={}, steps=20, residual=False).images - images) ** 2).mean())
    res = model.counterfactual(images, do={}, steps=100, residual=False)  # every step of the tiny T = 100 chain
    mse = float(((res.images - images) ** 2).mean())
    assert mse < 3e-3, f"do() with nothing reconstructs only to MSE {mse:.2e}"
    assert mse < coarse
    # the reference procedure (forward-noised x_T) loses the image's identity
    noisy = model.counterfactual(images, do={}, steps=100, abduction="noise", residual=False)
    assert float(((noisy.images - images) ** 2).mean()) > 5 * mse


def test_intervention_changes_the_node_and_its_descendants_only(model, images):
    g = model.graph
    ab = model.abduct(images, steps=10)
    z_b = model.intervene(ab, {"b": 0.7})
    assert torch.equal(z_b[:, g.block("a")], ab.z[:, g.block("a")]), "a non-descendant changed"
    assert torch.allclose(z_b[:, g.block("b")], torch.full_like(z_b[:, g.block("b")], g.normalise_value("b", 0.7)))
    z_a = model.intervene(ab, {"a": -0.5})
    assert not torch.allclose(z_a[:, g.block("b")], ab.z[:, g.block("b")]), "the child of a was not recomputed"
    res = model.counterfactual(images, do={"a": -0.5}, steps=10)
    assert res.affected == ["a", "b"]
    assert torch.allclose(res.labels_counterfactual[:, 0], torch.full((8,), -0.5), atol=1e-5)


def test_interventions_move_the_image_in_the_right_direction(model, images):
    """Raising a brightens the half of the image that shows a, in every image alike, and a larger
    guidance weight strengthens it.

    The bounds are what must hold, not one machine's figures (CPUs differ in their float rounding,
    which changes the tiny model's training trajectory as much as another seed does): the move is
    positive and consistent across the 8 images (mean / standard error > 2, a one-sided test at about
    5%: a decoder that ignored the latents would pass it by chance once in ~20), and w = 3 moves
    further than w = 1. Over six training seeds (``experiments/tiny_fixture_seeds.py``,
    docs/benchmarks.md) mean / SE was >= 3.1 and w = 3 moved >= 2.3x as far as w = 1.

    Not asserted, on purpose: how do(b) moves the image. In this world b = 0.8 a + 0.2 e, so
    do(b = +-0.8) leaves the joint support for most images, and the 300-step model's answer there
    depends on the seed (b's half moved 0.03 to 0.26, a's half -0.11 to 0.20): the test that did
    assert it failed on one CPU and passed on another. That non-descendants are left unchanged is
    asserted exactly, on the latents, by test_intervention_changes_the_node_and_its_descendants_only.
    """
    left = slice(0, 6)  # a is shown in the left half (columns 0-7); keep away from the edge

    def move(strength: float) -> torch.Tensor:
        lo = model.counterfactual(images, do={"a": -0.8}, steps=20, strength=strength).images
        hi = model.counterfactual(images, do={"a": 0.8}, steps=20, strength=strength).images
        return (hi - lo)[..., left].mean(dim=(1, 2, 3))  # (B,) brightness change of a's half

    plain = move(1.0)
    t = float(plain.mean() / (plain.std() / plain.numel() ** 0.5))
    assert float(plain.mean()) > 0 and t > 2, f"raising a did not brighten a's half consistently: {plain.tolist()}"
    stronger = move(3.0)
    assert float(stronger.mean()) > float(plain.mean()), (
        f"a larger guidance weight did not strengthen the intervention ({plain.mean():.3f} -> {stronger.mean():.3f})")


def test_batched_and_per_image_interventions_agree(model, images):
    values = torch.linspace(-0.6, 0.6, images.shape[0])
    batched = model.counterfactual(images, do={"a": values}, steps=10).images
    singles = torch.cat([model.counterfactual(images[i : i + 1], do={"a": float(values[i])}, steps=10).images
                         for i in range(images.shape[0])])
    assert torch.allclose(batched, singles, atol=1e-4)
    shift = model.counterfactual(images, do={"a": lambda v: v + 0.2}, steps=10)
    assert torch.allclose(shift.labels_counterfactual[:, 0], shift.labels_factual[:, 0] + 0.2, atol=1e-4)


def test_same_seed_same_images(model):
    a = model.sample(4, do={"a": 0.3}, steps=10, seed=7).images
    b = model.sample(4, do={"a": 0.3}, steps=10, seed=7).images
    c = model.sample(4, do={"a": 0.3}, steps=10, seed=8).images
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not a.requires_grad


def test_interpolation_starts_and_ends_at_the_inputs(model, images):
    walk = model.interpolate(images[0], images[1], n=5, steps=100)
    assert walk.shape == (5, *model.image_shape)
    assert float(((walk[0] - images[0]) ** 2).mean()) < 3e-3
    assert float(((walk[-1] - images[1]) ** 2).mean()) < 3e-3


def test_bad_queries_get_clear_errors(model, images):
    with pytest.raises(InterventionError, match="unknown node 'c'.*known nodes: a, b"):
        model.counterfactual(images, do={"c": 1.0})
    with pytest.raises(InterventionError, match=r"got \(3,\) values for a batch of 8 images"):
        model.counterfactual(images, do={"a": [1.0, 2.0, 3.0]})
    with pytest.raises(DataError, match=r"shape \(2, 3, 8, 8\).*\(B, 3, 16, 16\)"):
        model.counterfactual(torch.zeros(2, 3, 8, 8), do={})
    with pytest.warns(CausalDiffAEWarning, match=r"do\(a=5\) gives a = 5, outside its training range \[-0.9, 0.9\]"):
        cf.check_do(model, {"a": 5.0}, 8, {"a": (-0.9, 0.9)})
    # a shift is checked on the values it gives the images
    factual = torch.tensor([[0.0, 0.0], [0.5, 0.4]])
    with pytest.warns(CausalDiffAEWarning, match=r"do\(a\+=0.6\) gives a = 0.6..1.1, .* for 1 of 2 images"):
        cf.check_do(model, {"a": cf.Shift(0.6)}, 2, {"a": (-0.9, 0.9)}, factual=factual)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cf.check_do(model, {"a": cf.Shift(0.3)}, 2, {"a": (-0.9, 0.9)}, factual=factual)  # stays inside: silent
    with pytest.warns(CausalDiffAEWarning, match=r"do\(a-=2\)"):  # and in a query, from the abducted labels
        model.counterfactual(images[:2], do={"a": cf.Shift(-2)}, steps=2, value_range={"a": (-0.9, 0.9)})


# --------------------------------------------------------------------------- the reconstruction residual
def test_residual_makes_a_null_query_and_its_chains_exact(model, images):
    """With the residual a null query returns the input (to float rounding) and ten chained null
    queries do not drift, where plain DDIM inversion does."""
    from causaldiffae.metrics.soundness import composition

    plain = model.counterfactual(images, do={}, steps=8, refine=0, residual=False).images
    exact = model.counterfactual(images, do={}, steps=8, refine=0, residual=True).images
    assert float((plain - images).abs().max()) > 1e-2  # the decoder alone does not reproduce the image
    torch.testing.assert_close(exact, images, atol=1e-5, rtol=0)
    chained = composition(model, images, cycles=(1, 10), steps=8, residual=True)["l1"]
    unchained = composition(model, images, cycles=(1, 10), steps=8)["l1"]
    assert chained["10"] < 0.01 < unchained["1"] < unchained["10"]


def test_residual_is_gated_by_the_change_from_the_reconstruction():
    """carry_residual adds the whole residual where the decoding equals the reconstruction, none
    where it departs by the gate or more, and a linear share in between."""
    x = torch.zeros(1, 1, 1, 4)
    r = torch.full_like(x, 0.1)
    ab = cf.Abduction(images=x, u=torch.zeros(1, 1), z=torch.zeros(1, 1), x_T=x, steps=1, residual=r, residual_steps=1)
    rec = x - r
    gate = 20.0  # grey levels; 20 / 127.5 in image units
    g = gate / 127.5
    decoded = rec + torch.tensor([0.0, g / 2, g, 2 * g]).view(1, 1, 1, 4)
    out = cf.carry_residual(decoded, ab, gate=gate)
    torch.testing.assert_close(out - decoded, torch.tensor([0.1, 0.05, 0.0, 0.0]).view(1, 1, 1, 4), atol=1e-6, rtol=0)
    with pytest.raises(InterventionError, match="residual gate must be a positive"):
        cf.carry_residual(decoded, ab, gate=0)


def test_residual_leaves_what_an_intervention_changes_to_the_decoder(model, images):
    """Under a real do() the pixels that depart from the reconstruction by the gate or more are the
    plain decoding's; the counterfactual still differs from the input."""
    do = {"a": 0.8}
    plain = model.counterfactual(images, do=do, steps=8, refine=0, residual=False).images
    rec = model.counterfactual(images, do={}, steps=8, refine=0, residual=False).images
    carried = model.counterfactual(images, do=do, steps=8, refine=0, residual=True, residual_gate=8).images
    far = (plain - rec).abs() >= 8 / 127.5
    assert far.float().mean() > 0.01, "the intervention should change some pixels by more than the gate"
    torch.testing.assert_close(carried[far], plain[far], atol=1e-6, rtol=0)
    assert float((carried - images).abs().mean()) > 0.5 * float((plain - images).abs().mean())


def test_residual_of_other_decoding_steps_is_refused(model, images):
    ab = cf.abduct_residual(model, model.abduct(images[:2], steps=4), steps=4)
    with pytest.raises(InterventionError, match="decoded with 4 steps, this prediction uses 6"):
        cf.predict(model, ab, ab.z, steps=6)
    with pytest.raises(InterventionError, match="needs DDIM abduction"):
        model.counterfactual(images[:2], do={}, steps=4, abduction="noise", residual=True)
    assert cf.forwards_per_image(steps=10, refine=0, residual=True) == cf.forwards_per_image(steps=10, refine=0, residual=False) + 10
