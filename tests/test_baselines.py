"""Honest scores on the tiny world (a -> b): do-nothing, floor, achieved fraction, drift, changed
region and the latent-level mechanism check. A model that does nothing, or that moves a parent
and leaves its child, must be scored as a failure."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from test_metrics import Brightness, as_images, tiny_simulator  # noqa: E402
from tiny import SIZE, tiny_dataset, tiny_graph, tiny_labels, tiny_render  # noqa: E402

from causaldiffae import metrics as M  # noqa: E402
from causaldiffae.graph import CausalGraph  # noqa: E402
from causaldiffae.model import CausalDiffAE  # noqa: E402

# The tiny world renders labels in [-1, 1] to uint8, so the exact predictor (Brightness) reads a
# rendered label to within half a grey level: 0.5 / 127.5 label units = 0.008 normalised (scale 0.5).
READ_ERROR = 0.5 / 127.5 / 0.5


@pytest.fixture(scope="module")
def model(tiny_run):
    return CausalDiffAE.load(tiny_run)[0]


@pytest.fixture(scope="module")
def world():
    """16 factual scenes, do(a) moving every a by at least 0.5 label units (1.0 normalised), the truth."""
    y = torch.tensor(tiny_labels(16, seed=9))
    a_new = torch.where(y[:, 0] > 0, y[:, 0] - 0.8, y[:, 0] + 0.8)
    table = pd.DataFrame(y.numpy(), columns=["a", "b"])
    truth_uint8, cf_table = tiny_simulator(table, {"a": a_new.numpy()})
    intended = torch.tensor(cf_table[["a", "b"]].to_numpy(), dtype=torch.float32)
    return {"x": as_images(tiny_render(y.numpy())), "y": y, "do": {"a": a_new}, "table": table,
            "truth": as_images(truth_uint8), "intended": intended}


def test_achieved_fraction_formula_and_its_guard():
    assert M.achieved_fraction(0.8, 0.8, 0.1) == (0.0, None)
    assert M.achieved_fraction(0.8, 0.1, 0.1) == (1.0, None)
    assert M.achieved_fraction(0.8, 0.45, 0.1)[0] == pytest.approx(0.5)
    value, note = M.achieved_fraction(0.12, 0.02, 0.1)  # the truth barely differs from doing nothing
    assert value is None and "0.02" in note and "within the measuring error" in note
    value, note = M.achieved_fraction(0.05, 0.0, 0.2)  # a predictor that reads the truth worse than nothing
    assert value is None and note
    assert M.achieved_fraction(0.8, 0.4, None) == (0.5, None)  # no floor: against a perfect reading


def test_the_identity_scores_zero_and_the_truth_one(model, world):
    w = world
    ident = M.effectiveness_baselines(model, Brightness(), w["x"], w["do"], w["intended"], w["x"], truth=w["truth"])
    assert ident["intervened"]["achieved_fraction"] == 0.0 and ident["descendants"]["achieved_fraction"] == 0.0
    # the gap the fraction divides by is the whole intended change, far above the guard
    assert ident["intervened"]["do_nothing"] - ident["intervened"]["floor"] > 0.9
    assert ident["intervened"]["floor"] <= READ_ERROR
    assert ident["per_node"]["b"]["role"] == "descendant"
    truth = M.effectiveness_baselines(model, Brightness(), w["x"], w["do"], w["intended"], w["truth"], truth=w["truth"])
    assert truth["intervened"]["achieved_fraction"] == 1.0 and truth["descendants"]["achieved_fraction"] == 1.0

    gt_ident = M.ground_truth_error(model, w["x"], w["table"], w["do"], tiny_simulator, counterfactuals=w["x"], truth=w["truth"])
    region = gt_ident["changed_region"]
    assert region["achieved_fraction"] == 0.0 and region["model_mae_255"] == region["identity_mae_255"] > M.CHANGE_TOLERANCE
    assert gt_ident["mae_255"] == gt_ident["identity"]["mae_255"]
    gt_truth = M.ground_truth_error(model, w["x"], w["table"], w["do"], tiny_simulator, counterfactuals=w["truth"], truth=w["truth"])
    assert gt_truth["changed_region"]["achieved_fraction"] == 1.0 and gt_truth["mae_255"] == 0


def test_parent_moved_child_left_fails_on_the_descendant(model, world):
    w = world
    moved = w["y"].clone()
    moved[:, 0] = w["intended"][:, 0]  # a takes its intended value, b keeps the factual one
    half = as_images(tiny_render(moved.numpy()))
    res = M.effectiveness_baselines(model, Brightness(), w["x"], w["do"], w["intended"], half, truth=w["truth"])
    # intervened: model and floor both read a to within the rendering's rounding, the gap is >= 1
    assert res["intervened"]["achieved_fraction"] >= 1 - 2 * READ_ERROR / 1.0
    # descendant: the child's pixels are the factual ones, so the model scores exactly like doing nothing
    assert res["descendants"]["achieved_fraction"] == pytest.approx(0.0, abs=1e-12)
    # the changed region sees the missing child too: about half of the changed pixels are still wrong
    gt = M.ground_truth_error(model, w["x"], w["table"], w["do"], tiny_simulator, counterfactuals=half, truth=w["truth"])
    assert 0.0 < gt["changed_region"]["achieved_fraction"] < 0.9


def test_changed_region_is_where_the_truth_moved():
    y = torch.tensor(tiny_labels(6, seed=3))
    y2 = y.clone()
    y2[:, 1] = torch.where(y[:, 1] > 0, y[:, 1] - 0.5, y[:, 1] + 0.5)  # do(b): only the right half changes
    region = M.changed_region(as_images(tiny_render(y.numpy())), as_images(tiny_render(y2.numpy())))
    assert region.shape == (6, SIZE, SIZE)
    assert not region[:, :, : SIZE // 2].any() and region[:, :, SIZE // 2 :].all()


def test_latent_check_scores_a_mechanism_that_leaves_the_child_as_zero(model, world, monkeypatch):
    w = world
    import causaldiffae.metrics.latent as L

    # a perfect readout: the factual latents read the true labels; the SCM either moves the child
    # as the truth does or leaves it where it was
    for cf_labels, want in ((w["intended"], 1.0), (torch.stack([w["intended"][:, 0], w["y"][:, 1]], 1), 0.0)):
        monkeypatch.setattr(L, "scm_counterfactual_labels", lambda m, x, do, c=cf_labels: (w["y"].clone(), c.clone()))
        res = M.mechanism_check(model, w["x"], w["do"], w["intended"], w["y"])
        assert res["per_node"]["b"]["floor"] == 0.0
        assert res["descendants"]["achieved_fraction"] == pytest.approx(want, abs=1e-6)
        assert res["change_slope"]["b"] == pytest.approx(want, abs=1e-6)


def test_latent_check_on_the_trained_model_reads_the_real_scm(model, world):
    w = world
    res = M.mechanism_check(model, w["x"], w["do"], w["intended"], w["y"])
    a, b = res["per_node"]["a"], res["per_node"]["b"]
    assert a["role"] == "intervened" and a["model"] < 1e-5  # do() sets the block exactly
    assert b["role"] == "descendant" and b["do_nothing"] > 0.7  # |0.8 * delta a| >= 0.4 label units
    assert res["true_change_abs"]["b"] == pytest.approx(float((w["intended"][:, 1] - w["y"][:, 1]).abs().mean()), rel=1e-5)
    assert b["achieved_fraction"] is None or np.isfinite(b["achieved_fraction"])


def test_evaluate_scores_the_identity_as_meeting_nothing(model):
    ds = tiny_dataset(24, seed=4)
    table = pd.DataFrame(ds.labels, columns=["a", "b"])

    def identity(images, do):
        return images

    res = M.evaluate(model, ds, predictors=Brightness(), simulator=tiny_simulator, table=table, n=16, steps=2,
                     metrics=("effectiveness", "ground_truth", "latent", "reconstruction"), counterfactual_fn=identity,
                     progress=False)
    assert res["counterfactuals_from"] == "identity" and "reconstruction" in res["skipped"]
    for name, d in res["effectiveness"]["by_intervention"].items():
        b = d["baselines"]
        assert b["intervened"]["achieved_fraction"] == 0.0, name
        assert b["descendants"] is None or b["descendants"]["achieved_fraction"] in (0.0, None), name
        assert abs(b["non_descendants"]["drift"]) < 4 * READ_ERROR if b["non_descendants"] else True
    assert res["effectiveness"]["mean_achieved_fraction"] == {"intervened": 0.0, "descendants": 0.0}
    assert res["ground_truth"]["changed_region_mean"]["achieved_fraction"] == 0.0
    assert set(res["latent"]["by_intervention"]) == {"do(a)", "do(b)"}  # the latent check reads the model itself
    lines = "\n".join(M.summary_lines(res))
    assert "do(a)" in lines and "achieved" in lines and "changed region" in lines and "set by do()" in lines
    md = M.to_markdown(res)
    assert "beside its baselines" in md and "Latent-level" in md and "region fraction" in md


def test_ground_truth_leaves_out_interventions_the_simulator_cannot_answer_exactly(model):
    """A simulator that declares do(b) inexact (as Morpho-MNIST declares do(digit): another writer)
    gets no pixel ground truth for it; the result and the report name it and why."""
    ds = tiny_dataset(24, seed=4)
    table = pd.DataFrame(ds.labels, columns=["a", "b"])

    class Inexact:
        no_true_counterfactual = {"b": "b's true image would come from another source"}

        def __call__(self, table, do, size=None):
            return tiny_simulator(table, do) if size is None else tiny_simulator(table, do, size)

    res = M.evaluate(model, ds, predictors=Brightness(), simulator=Inexact(), table=table, n=16, steps=2,
                     metrics=("ground_truth",), counterfactual_fn=lambda images, do: images, progress=False)
    gt = res["ground_truth"]
    assert set(gt["by_intervention"]) == {"do(a)"}
    assert gt["excluded"] == {"do(b)": "b's true image would come from another source"}
    assert "Left out (no exact true counterfactual): do(b)" in M.to_markdown(res)
    assert any(line.startswith("do(b): no ground truth") for line in M.summary_lines(res))


def test_a_categorical_node_is_scored_as_an_error_rate():
    """A classifier's reading counts as right or wrong (mean = 1 - accuracy), not as a distance
    between class indices: class 9 read as 8 is as wrong as class 9 read as 0."""
    from causaldiffae.metrics.effectiveness_scores import label_errors

    g = CausalGraph.from_dict({"nodes": {"digit": {"loc": 0.0, "scale": 1.0}, "ink": {"loc": 0.0, "scale": 2.0}}})

    class Reader:
        nodes = g.nodes

        def __init__(self, out):
            self.out = out

        def is_categorical(self, node):
            return node == "digit"

        def predict(self, images):
            return self.out

    intended = torch.tensor([[9.0, 1.0], [9.0, 1.0], [3.0, float("nan")]])
    read = torch.tensor([[8.0, 2.0], [0.0, 1.0], [3.0, 5.0]])
    err = label_errors(g, Reader(read), torch.zeros(3, 1, 4, 4), intended)
    assert err[:, 0].tolist() == [1.0, 1.0, 0.0]          # wrong, wrong, right
    assert err[0, 1] == 0.5 and err[1, 1] == 0.0 and np.isnan(err[2, 1])  # continuous: |diff| / scale, NaN kept
