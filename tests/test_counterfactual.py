"""Counterfactual queries on a tiny trained model: identity, locality of do(), determinism, errors."""

from __future__ import annotations

import warnings

import pytest
import torch

from causaldiffae import counterfactual as cf
from causaldiffae.errors import DataError, InterventionError
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
    coarse = float(((model.counterfactual(images, do={}, steps=20).images - images) ** 2).mean())
    res = model.counterfactual(images, do={}, steps=100)  # every step of the tiny T = 100 chain
    mse = float(((res.images - images) ** 2).mean())
    assert mse < 3e-3, f"do() with nothing reconstructs only to MSE {mse:.2e}"
    assert mse < coarse
    # the reference procedure (forward-noised x_T) loses the image's identity
    noisy = model.counterfactual(images, do={}, steps=100, abduction="noise")
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
    right, left = slice(10, 16), slice(0, 6)  # the right half shows b, the left half a

    def shift(strength):
        lo = model.counterfactual(images, do={"b": -0.8}, steps=20, strength=strength).images
        hi = model.counterfactual(images, do={"b": 0.8}, steps=20, strength=strength).images
        return float(hi[..., right].mean() - lo[..., right].mean()), float((hi[..., left] - lo[..., left]).mean().abs())

    b_region, a_region = shift(1.0)
    assert b_region > 0.1, "raising b did not brighten the region that shows b"
    # the tiny 300-step model leaks part of the change into a's half (measured b 0.27, a 0.18 with this
    # fixture; 0.29 / 0.19 when trained channels_last); a's region must still move clearly less
    assert b_region > 1.3 * a_region, "do(b) moved the region of a (not a descendant) as much as b's own"
    stronger, _ = shift(3.0)
    assert stronger > b_region + 0.1, "a larger guidance weight did not strengthen the intervention"


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
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        cf.check_do(model, {"a": 5.0}, 8, {"a": (-0.9, 0.9)})
    assert any("outside the training range of a" in str(x.message) for x in w)
