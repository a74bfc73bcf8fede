"""Morpho-MNIST: structural equations, rendering fidelity, true counterfactuals, padding."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from causaldiffae.data.morphomnist import (
    MORPHO_COLUMNS,
    abduct_eps_intensity,
    intensity_equation,
    measure_intensity,
    measure_intensity_batch,
    measure_thickness,
    measure_thickness_batch,
    mnist_digits,
    pad_to,
    render_morphomnist,
    sample_morphomnist,
    true_counterfactual,
)
from causaldiffae.errors import CausalDiffAEError, DataError


@pytest.fixture(scope="module")
def factual():
    """40 sampled rows and their renderings (shared: rendering is the slow part)."""
    table = sample_morphomnist(40, seed=3)
    return table, render_morphomnist(table)


def test_mnist_digits_are_cached_and_balanced():
    images, labels = mnist_digits()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10
    assert mnist_digits()[0] is images


def test_structural_equation_statistics():
    table = sample_morphomnist(20_000, seed=0)
    assert list(table.columns[:3]) == MORPHO_COLUMNS
    assert {"source", "eps_intensity"} <= set(table.columns)
    t, i = table["thickness"].to_numpy(), table["intensity"].to_numpy()
    assert t.min() > 0.5 and abs(t.mean() - 2.5) < 0.02 and abs(t.std() - np.sqrt(10) / 5) < 0.02
    assert i.min() >= 64 and i.max() <= 255
    assert np.corrcoef(t, i)[0, 1] > 0.5  # thickness causes intensity
    np.testing.assert_allclose(i, intensity_equation(t, table["eps_intensity"]))
    np.testing.assert_allclose(abduct_eps_intensity(t, i), table["eps_intensity"], atol=1e-6)
    _, labels = mnist_digits()
    assert (table["digit"].to_numpy() == labels[table["source"].to_numpy()]).all()
    # Sources without replacement up to 5,000, with replacement above.
    assert sample_morphomnist(5000, seed=1)["source"].is_unique
    assert len(sample_morphomnist(6000, seed=1)) == 6000


def test_sampling_and_rendering_are_deterministic(factual):
    table, images = factual
    pd.testing.assert_frame_equal(sample_morphomnist(40, seed=3), table)
    assert not sample_morphomnist(40, seed=4)["thickness"].equals(table["thickness"])
    np.testing.assert_array_equal(render_morphomnist(table.iloc[:5]), images[:5])


def test_rendering_fidelity():
    table = sample_morphomnist(100, seed=11)
    images = render_morphomnist(table)
    assert images.shape == (100, 28, 28) and images.dtype == np.uint8
    t = table["thickness"].to_numpy()
    measured = measure_thickness_batch(images)
    assert np.corrcoef(t, measured)[0, 1] > 0.9
    assert np.mean(np.abs(measured - t)) < 0.25
    intensity = measure_intensity_batch(images)
    assert np.corrcoef(table["intensity"], intensity)[0, 1] > 0.999
    assert np.median(np.abs(intensity - table["intensity"])) <= 0.5


def test_measurements_ignore_the_other_factor():
    images, _ = mnist_digits()
    digit = images[7].astype(np.float64)
    dim = np.round(digit * 0.4).astype(np.uint8)
    assert measure_thickness(dim) == pytest.approx(measure_thickness(images[7]), abs=0.1)
    assert measure_intensity(images[7]) > measure_intensity(dim)
    assert np.isnan(measure_thickness(np.zeros((28, 28), np.uint8)))


def test_counterfactual_thickness_changes_intensity_keeps_digit(factual):
    table, images = factual
    cf_images, cf = true_counterfactual(table, {"thickness": lambda t: t + 1.0})
    assert cf_images.shape == (40, 28, 28, 1) and cf_images.dtype == np.uint8
    np.testing.assert_allclose(cf["thickness"], table["thickness"] + 1.0)
    assert (cf["intensity"] > table["intensity"]).all()  # the descendant follows
    np.testing.assert_allclose(cf["intensity"], intensity_equation(cf["thickness"], table["eps_intensity"]))
    assert (cf["source"] == table["source"]).all() and (cf["digit"] == table["digit"]).all()
    np.testing.assert_array_equal(cf["eps_intensity"], table["eps_intensity"])
    gain = measure_thickness_batch(cf_images) - measure_thickness_batch(images)
    assert np.median(gain) == pytest.approx(1.0, abs=0.2)
    assert np.median(measure_intensity_batch(cf_images) - measure_intensity_batch(images)) > 10


def test_counterfactual_intensity_keeps_thickness(factual):
    table, images = factual
    cf_images, cf = true_counterfactual(table.iloc[:10], {"intensity": 100.0})
    np.testing.assert_array_equal(cf["thickness"], table["thickness"].iloc[:10])
    assert np.allclose(measure_intensity_batch(cf_images), 100.0, atol=1.0)
    before = measure_thickness_batch(images[:10])
    after = measure_thickness_batch(cf_images)
    assert np.max(np.abs(after - before)) < 0.15


def test_counterfactual_digit_and_per_row_values(factual):
    table, _ = factual
    rows = table.iloc[:4].reset_index(drop=True)
    new = (rows["digit"].to_numpy() + 1) % 10
    cf_images, cf = true_counterfactual(rows, {"digit": new}, size=32)
    assert cf_images.shape == (4, 32, 32, 1)
    _, labels = mnist_digits()
    assert (cf["digit"].to_numpy() == new).all() and (labels[cf["source"]] == new).all()
    np.testing.assert_array_equal(cf["thickness"], rows["thickness"])
    np.testing.assert_array_equal(cf["intensity"], rows["intensity"])
    again = true_counterfactual(rows, {"digit": new})[1]
    assert (again["source"] == cf["source"]).all()  # the replacement is deterministic
    _, cf2 = true_counterfactual(rows, {"thickness": [1.0, 2.0, 3.0, 4.0]})
    np.testing.assert_array_equal(cf2["thickness"], [1.0, 2.0, 3.0, 4.0])


def test_counterfactual_errors(factual):
    table, _ = factual
    with pytest.raises(DataError, match="'shadow'.*known: digit, thickness, intensity"):
        true_counterfactual(table, {"shadow": 1.0})
    with pytest.raises(CausalDiffAEError, match="3 values for 40"):
        true_counterfactual(table, {"thickness": [1.0, 2.0, 3.0]})
    with pytest.raises(DataError, match="digit"):
        true_counterfactual(table.iloc[:2], {"digit": 12})
    with pytest.raises(DataError, match="source"):
        render_morphomnist(table.drop(columns="source"))


def test_pad_to_shapes(factual):
    _, images = factual
    big = pad_to(images[:3], 32)
    assert big.shape == (3, 32, 32, 1) and big.dtype == np.uint8
    np.testing.assert_array_equal(big[:, 2:30, 2:30, 0], images[:3])
    assert big[:, :2].max() == 0 and big[:, 30:].max() == 0
    small = pad_to(images[:3], 16)
    assert small.shape == (3, 16, 16, 1) and small.dtype == np.uint8
    assert small.max() > 0
    np.testing.assert_array_equal(pad_to(images[:3], 28)[..., 0], images[:3])


def test_dowhy_does_not_falsify_thickness_causes_intensity():
    from causaldiffae.graph import CausalGraph, check

    table = sample_morphomnist(600, seed=11)
    report = check(CausalGraph.load("morphomnist"), table, n_permutations=6, max_rows=600, seed=0)
    assert not report.falsified, str(report)
