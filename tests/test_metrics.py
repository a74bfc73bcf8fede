"""Metrics, anti-causal predictors and `causaldiffae evaluate` on the tiny two-node world (a -> b).

In that world the left half of an image has brightness ``a`` and the right half ``b`` (label
units = pixel values in [-1, 1]), so reading the two halves is an exact "predictor", and the
true counterfactual of ``do(a = v)`` keeps the noise ``b - 0.8 a`` and re-renders.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from causaldiffae import metrics as M
from causaldiffae.cli import main
from causaldiffae.errors import CheckpointError, DataError
from causaldiffae.model import CausalDiffAE
from causaldiffae.predictors import load_predictors, train_predictors

from tiny import SIZE, tiny_dataset, tiny_graph, tiny_labels, tiny_render


def as_images(uint8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(uint8).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


class Brightness:
    """The exact predictor of the tiny world: mean of the red channel on each half."""

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        h = images.shape[-1] // 2
        return torch.stack([images[:, 0, :, :h].mean((1, 2)), images[:, 0, :, h:].mean((1, 2))], dim=1)


def tiny_simulator(table: pd.DataFrame, do, size: int = SIZE):
    """True counterfactuals of the tiny world: keep the noise b - 0.8 a, apply do, re-render."""
    a, b = table["a"].to_numpy(np.float64), table["b"].to_numpy(np.float64)
    noise = b - 0.8 * a

    def value(v, factual):
        v = v(factual) if callable(v) else v
        return np.broadcast_to(np.asarray(v, dtype=np.float64), factual.shape)

    a2 = value(do["a"], a) if "a" in do else a
    b2 = value(do["b"], b) if "b" in do else 0.8 * a2 + noise
    labels = np.stack([a2, b2], axis=1).astype(np.float32)
    return tiny_render(labels, size), pd.DataFrame({"a": a2, "b": b2})


@pytest.fixture(scope="module")
def model(tiny_run):
    return CausalDiffAE.load(tiny_run)[0]


@pytest.fixture(scope="module")
def batch():
    return tiny_dataset(8, seed=5).batch(range(8))


# ------------------------------------------------------------------------------ image distances
def test_identical_images_have_infinite_psnr_and_unit_ssim():
    x = as_images(tiny_render(tiny_labels(4, seed=1)))
    assert np.all(np.isinf(M.psnr(x, x))) and np.allclose(M.ssim(x, x), 1.0)
    assert np.all(M.mse(x, x) == 0) and np.all(M.l1_255(x, x) == 0)
    y = (x + 0.1).clamp(-1, 1)
    assert np.all(np.isfinite(M.psnr(x, y))) and np.all(M.ssim(x, y) < 1)
    np.testing.assert_allclose(M.mse(x, torch.full_like(x, -1.0)), ((x + 1) / 2).pow(2).mean((1, 2, 3)).numpy(), rtol=1e-6)
    with pytest.raises(DataError, match="differ in shape"):
        M.mse(x, x[:2])


def test_reconstruction_error_falls_with_more_steps(model, batch):
    table = M.reconstruction(model, batch[0], steps=(2, 20))
    assert list(table.columns) == ["steps", "mse", "psnr", "ssim", "l1_255"]
    few, many = table.iloc[0], table.iloc[1]
    assert many.mse < few.mse and many.psnr > few.psnr and many.ssim > few.ssim


# -------------------------------------------------------------------------------- effectiveness
def test_a_perfect_predictor_scores_true_counterfactuals_near_zero_and_unchanged_images_high(model, batch):
    x, y = batch
    table = pd.DataFrame(y.numpy(), columns=["a", "b"])
    do = {"a": 0.5}
    truth_uint8, cf_table = tiny_simulator(table, do)
    truth = as_images(truth_uint8)
    intended = torch.tensor(cf_table[["a", "b"]].to_numpy(), dtype=torch.float32)

    good = M.effectiveness(model, Brightness(), x, do, labels=y, intended=intended, counterfactuals=truth)
    assert good["groups"] == {"a": "intervened", "b": "descendant"} and good["non_descendants"] is None
    assert good["intervened"] < 0.02 and good["descendants"] < 0.02  # uint8 rounding only
    same = M.effectiveness(model, Brightness(), x, do, labels=y, simulator=tiny_simulator, table=table, counterfactuals=truth)
    assert same["intended"] == "simulator" and same["intervened"] == pytest.approx(good["intervened"])

    bad = M.effectiveness(model, Brightness(), x, do, labels=y, intended=intended, counterfactuals=x)
    assert bad["intervened"] > 0.5 and bad["descendants"] > 0.3

    # do(b): a is a non-descendant and must stay as it was
    table_b = tiny_simulator(table, {"b": -0.6})
    res = M.effectiveness(model, Brightness(), x, {"b": -0.6}, labels=y, simulator=tiny_simulator, table=table,
                          counterfactuals=as_images(table_b[0]))
    assert res["groups"]["a"] == "non_descendant" and res["non_descendants"] < 0.02 and res["descendants"] is None


def test_effectiveness_with_the_models_own_scm_and_counterfactuals(model, batch):
    x, y = batch
    res = M.effectiveness(model, Brightness(), x, {"a": 0.3}, labels=y, steps=4)
    assert res["intended"] == "scm" and set(res["per_node"]) == {"a", "b"}
    assert all(np.isfinite(v) for v in res["per_node"].values())
    # the SCM's intended value of the intervened node is the do() value itself
    _, scm_cf = M.scm_counterfactual_labels(model, x, {"a": 0.3})
    np.testing.assert_allclose(scm_cf[:, 0].numpy(), 0.3, atol=1e-5)
    with pytest.raises(Exception, match="unknown node 'c'"):
        M.effectiveness(model, Brightness(), x, {"c": 1.0}, counterfactuals=x)


def test_dowhy_intended_recovers_the_tiny_worlds_counterfactuals(batch):
    _, y = batch
    graph = tiny_graph()
    fitted = M.fit_dowhy_scm(graph, tiny_dataset(2000, seed=2).labels, mechanisms="linear")  # slope 0.8 +- ~0.005
    got = M.dowhy_intended(graph, None, y, {"a": 0.5}, scm=fitted)
    want = tiny_simulator(pd.DataFrame(y.numpy(), columns=["a", "b"]), {"a": 0.5})[1]
    np.testing.assert_allclose(got.numpy(), want[["a", "b"]].to_numpy(), atol=0.01)
    values = torch.linspace(-0.5, 0.5, y.shape[0])  # one value per example
    got = M.dowhy_intended(graph, None, y, {"a": values}, scm=fitted)
    np.testing.assert_allclose(got[:, 0].numpy(), values.numpy(), atol=1e-6)
    np.testing.assert_allclose(got[:, 1].numpy(), (y[:, 1] + 0.8 * (values - y[:, 0])).numpy(), atol=0.01)


# ------------------------------------------------------------- composition, reversibility, truth
def test_composition_reversibility_and_ground_truth(model, batch):
    x, y = batch
    comp = M.composition(model, x, cycles=(1, 3), steps=3)
    assert set(comp["l1"]) == {"1", "3"} and all(0 <= v < 255 for v in comp["l1"].values())
    rev = M.reversibility(model, x, {"a": 0.5}, cycles=2, steps=3, original=y)
    assert len(rev["l1"]) == 2 and all(0 <= v < 255 for v in rev["l1"])

    table = pd.DataFrame(y.numpy(), columns=["a", "b"])
    truth = as_images(tiny_simulator(table, {"a": 0.5})[0])
    exact = M.ground_truth_error(model, x, table, {"a": 0.5}, tiny_simulator, counterfactuals=truth)
    assert exact["mae_255"] == 0 and exact["ssim"] == pytest.approx(1.0)
    gen = M.ground_truth_error(model, x, table, {"a": 0.5}, tiny_simulator, steps=3)
    assert 0 < gen["mae_255"] < 255 and -1 <= gen["ssim"] < 1


# ------------------------------------------------------------------------------------------ DCI
def test_dci_of_the_factors_themselves_is_near_one_and_of_a_rotation_lower():
    labels = tiny_labels(600, seed=3)
    rng = np.random.default_rng(0)
    z = np.concatenate([labels, rng.normal(size=(600, 3))], axis=1)  # the factors + 3 nuisance dimensions
    clean = M.dci(z, labels, factor_names=["a", "b"])
    assert clean["disentanglement"] > 0.95 and clean["completeness"] > 0.95 and clean["informativeness"] > 0.99
    rot, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    mixed = M.dci(z @ rot, labels)
    assert mixed["disentanglement"] < clean["disentanglement"] - 0.3 and mixed["completeness"] < clean["completeness"] - 0.3
    assert mixed["informativeness"] > 0.99  # a rotation loses no information
    # blocks: two coordinates per factor count as one unit
    zb = np.concatenate([labels[:, :1], labels[:, :1] + 0.01 * rng.normal(size=(600, 1)), labels[:, 1:], labels[:, 1:]], axis=1)
    blocks = M.dci(zb, labels, blocks=[slice(0, 2), slice(2, 4)])
    assert blocks["units"] == "blocks" and np.array(blocks["importance"]).shape == (2, 2) and blocks["disentanglement"] > 0.95


def test_default_interventions_touch_every_node_once_with_other_images_values():
    labels = torch.tensor(tiny_labels(10, seed=4))
    ivs = M.default_interventions(tiny_graph(), labels)
    assert [list(d) for d in ivs] == [["a"], ["b"]]
    for j, d in enumerate(ivs):
        (v,) = d.values()
        assert sorted(v.tolist()) == sorted(labels[:, j].tolist()) and not torch.any(v == labels[:, j])


# ----------------------------------------------------------------------------------- predictors
def test_predictors_trained_briefly_reach_a_small_mae(tmp_path, tiny_run):
    path = train_predictors(tiny_graph(), tiny_dataset(256, seed=1), tmp_path / "p.safetensors", steps=200, progress=False)
    pred = load_predictors(path)
    assert set(pred.meta["val_mae"]) == {"a", "b"} and max(pred.meta["val_mae"].values()) < 0.1
    x, y = tiny_dataset(64, seed=7).batch(range(64))
    out = pred.predict(x)
    assert out.shape == (64, 2)
    assert (tiny_graph().normalise(out) - tiny_graph().normalise(y)).abs().mean() < 0.1
    with pytest.raises(DataError, match="take images of shape"):
        pred.predict(x[:, :1])
    with pytest.raises(CheckpointError, match="not a predictors file"):
        load_predictors(tiny_run / "checkpoint.safetensors")


# ------------------------------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def data_folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("tinydata")
    labels = tiny_labels(24, seed=11)
    files = []
    for i, img in enumerate(tiny_render(labels)):
        Image.fromarray(img).save(d / f"{i:03d}.png")
        files.append(f"{i:03d}.png")
    pd.DataFrame({"file": files, "a": labels[:, 0], "b": labels[:, 1]}).to_csv(d / "labels.csv", index=False)
    return d


def test_cli_predictors_and_evaluate_write_json_and_markdown(tiny_run, data_folder, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert main(["predictors", "--run", str(run), "--data", str(data_folder), "--steps", "30", "--no-progress"]) == 0
    assert (run / "predictors.safetensors").exists() and "held-out MAE" in capsys.readouterr().out
    out = tmp_path / "eval"
    code = main(["evaluate", "--run", str(run), "--data", str(data_folder), "--n", "6", "--steps", "2", "--recon-steps", "2", "4",
                 "--cycles", "1", "2", "--reversibility-cycles", "1", "--dowhy", "linear", "-o", str(out), "--no-progress"])
    assert code == 0
    res = json.loads((out / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    assert res["n"] == 6 and res["interventions"] == ["do(a)", "do(b)"]
    assert [r["steps"] for r in res["reconstruction"]] == [2, 4]
    assert res["intended_source"] == "dowhy" and set(res["effectiveness"]["by_intervention"]) == {"do(a)", "do(b)"}
    assert set(res["composition"]["l1"]) == {"1", "2"} and len(res["reversibility"]["mean"]) == 1
    assert "ground_truth" in res["skipped"] and 0 <= res["dci"]["disentanglement"] <= 1
    md = (out / "metrics.md").read_text()
    for heading in ("## Reconstruction", "## Effectiveness", "## Composition", "## Reversibility", "## DCI", "| 2 |",
                    "### Effectiveness beside its baselines", "## Latent-level mechanism check"):
        assert heading in md
    b = res["effectiveness"]["by_intervention"]["do(a)"]["baselines"]
    assert b["floor_source"].startswith("none") and b["intervened"]["floor"] is None  # no simulator: no floor
    assert set(res["latent"]["by_intervention"]) == {"do(a)", "do(b)"}
    printed = capsys.readouterr().out
    assert "do(a)" in printed and "nothing" in printed and "achieved" in printed and "latent" in printed
    # no simulator: the predictors' floors are unknown and the field's units are not reported, both said
    assert res["predictor_floors"]["unknown"].startswith("no simulator") and "floors unknown" in md
    assert printed.startswith("predictor floors") and "floors unknown" in printed.splitlines()[0]
    assert res["skipped"]["field"] == "no simulator for this data set" and "field (no simulator" in printed


def test_cli_evaluate_bad_input_exits_2(tmp_path, data_folder, tiny_run, capsys):
    assert main(["evaluate", "--run", str(tmp_path / "nope"), "--data", str(data_folder)]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "Traceback" not in err
    assert main(["evaluate", "--run", str(tiny_run), "--data", str(tmp_path / "nodata"), "-o", str(tmp_path / "o")]) == 2
    assert "nodata" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(tiny_run), "--data", str(data_folder), "--predictors", str(tmp_path / "p.safetensors"),
                 "-o", str(tmp_path / "o")]) == 2
    assert "--predictors: file" in capsys.readouterr().err  # checked before the run is loaded
    assert main(["predictors", "--data", str(data_folder)]) == 2
    assert not (tmp_path / "o").exists()


def test_find_simulator_reads_generator_json(tmp_path):
    assert M.find_simulator(tmp_path) is None
    (tmp_path / "generator.json").write_text(json.dumps({"generator": "pendulum", "size": 24}))
    fn, size, name = M.find_simulator(tmp_path)
    from causaldiffae.data.pendulum import PendulumSimulator

    # the folder's simulator, with its parameters (a folder without shadow_width is the legacy renderer)
    assert isinstance(fn, PendulumSimulator) and fn.shadow_width == 0.5 and size == 24 and name == "pendulum"
    (tmp_path / "generator.json").write_text(json.dumps({"generator": "other"}))
    with pytest.raises(DataError, match="unknown generator"):
        M.find_simulator(tmp_path)


def test_json_and_markdown_outputs_are_strict(tmp_path):
    res = {"n": 2, "steps": 3, "strength": 1.0, "nodes": ["a"], "interventions": [],
           "reconstruction": [{"steps": 3, "mse": 0.0, "psnr": float("inf"), "ssim": 1.0, "l1_255": 0.0}],
           "dci": {"disentanglement": float("nan"), "completeness": 1.0, "informativeness": 0.5, "method": "lasso"}}
    js, md = M.write_report(res, tmp_path)
    data = json.loads(js.read_text())
    assert data["reconstruction"][0]["psnr"] == "inf" and data["dci"]["disentanglement"] is None
    assert "| 3 | 0 | ∞ | 1 | 0 |" in md.read_text()
