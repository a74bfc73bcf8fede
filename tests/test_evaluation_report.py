"""What `evaluate` tells a reader about its own measuring stick: the predictors' floors with the
0.05 gate, and the scores in the field's units (a simulator's ``field_metrics``) beside do-nothing,
floor and the published best. Tiny world (a -> b) and counterfactual_fn baselines: no diffusion runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from test_baselines import READ_ERROR  # noqa: E402  (Brightness's reading error, normalised)
from test_metrics import Brightness, as_images, tiny_simulator  # noqa: E402
from tiny import tiny_dataset  # noqa: E402

from causaldiffae import metrics as M  # noqa: E402
from causaldiffae.metrics.effectiveness_scores import label_errors  # noqa: E402
from causaldiffae.model import CausalDiffAE  # noqa: E402


@pytest.fixture(scope="module")
def model(tiny_run):
    return CausalDiffAE.load(tiny_run)[0]


@pytest.fixture(scope="module")
def data():
    ds = tiny_dataset(16, seed=4)
    return ds, pd.DataFrame(ds.labels, columns=["a", "b"])


def identity(images, do):
    return images


class Biased(Brightness):
    """Reads b 0.1 label units too high (0.2 normalised): over the gate on every row."""

    def predict(self, images):
        out = super().predict(images)
        out[:, 1] += 0.1
        return out


class FieldSim:
    """A tiny-world simulator that, like Morpho-MNIST's, scores images in 'published' units:
    each half's brightness error in grey levels (0-255), read off the pixels."""

    field_units = {"a_mae_255": {"node": "a", "label": "a MAE (0-255)", "higher_is_better": False, "best": 0.0},
                   "b_mae_255": {"node": "b", "label": "b MAE (0-255)", "higher_is_better": False, "best": 0.0}}
    field_reference = {"model": "a reference model (test)", "do(a)": {"a_mae_255": 1.5}}
    no_true_counterfactual: dict = {}
    name = "tiny-field"

    def __call__(self, table, do, size=None):
        return tiny_simulator(table, do) if size is None else tiny_simulator(table, do, size)

    def field_metrics(self, images, intended, predictors=None, do=None):
        read = Brightness().predict(images).numpy() * 127.5
        out = {"do": sorted(do or {}), "n": int(images.shape[0])}
        for j, node in enumerate(("a", "b")):
            out[f"{node}_mae_255"] = {"pixels": float(np.mean(np.abs(read[:, j] - np.asarray(intended[node]) * 127.5)))}
        return out


def truth_fn(table):
    """The true counterfactuals as a counterfactual_fn (n = the whole data set: rows in table order)."""
    def truth(images, do):
        return as_images(tiny_simulator(table, {k: np.asarray(v) for k, v in do.items()})[0])
    return truth


# ----------------------------------------------------------------------------- predictor floors
def test_the_report_carries_the_predictor_floors_and_the_gate_verdict(model, data):
    ds, table = data
    res = M.evaluate(model, ds, predictors=Brightness(), simulator=tiny_simulator, table=table, n=16,
                     metrics=("effectiveness",), counterfactual_fn=identity, progress=False)
    fl = res["predictor_floors"]
    assert set(fl["errors"]) == {"none", "do(a)", "do(b)"} and fl["metric"] == {"a": "mae", "b": "mae"}
    assert fl["passed"] and fl["failures"] == [] and max(fl["worst"].values()) <= READ_ERROR
    # derived from the effectiveness table's floor column (intended = the simulator's labels: the same quantity)
    assert set(fl["source"].values()) == {"effectiveness floor"}
    for name, d in res["effectiveness"]["by_intervention"].items():
        assert fl["errors"][name] == {n: e["floor"] for n, e in d["baselines"]["per_node"].items()}
    md, lines = M.to_markdown(res), M.summary_lines(res)
    assert "## Predictor floors" in md and "Verdict: gate met" in md and "| **worst** |" in md
    assert lines[0].startswith("predictor floors") and "gate met" in lines[0]

    # the same floors read from the true counterfactuals when the intended labels are not the simulator's
    scm = M.evaluate(model, ds, predictors=Brightness(), simulator=tiny_simulator, table=table, n=16, intended="scm",
                     metrics=("effectiveness",), counterfactual_fn=identity, progress=False)["predictor_floors"]
    assert set(scm["source"].values()) == {"true counterfactuals"}
    for row in fl["errors"]:
        for node in ("a", "b"):
            assert scm["errors"][row][node] == pytest.approx(fl["errors"][row][node], abs=1e-9)


def test_the_gate_names_the_predictor_it_misses(model, data):
    ds, table = data
    res = M.evaluate(model, ds, predictors=Biased(), simulator=tiny_simulator, table=table, n=16,
                     metrics=("effectiveness",), counterfactual_fn=identity, progress=False)
    fl = res["predictor_floors"]
    assert not fl["passed"]
    assert {(row, node) for row, node, _ in fl["failures"]} == {("none", "b"), ("do(a)", "b"), ("do(b)", "b")}
    assert fl["worst"]["b"] == pytest.approx(0.2, abs=2 * READ_ERROR)
    # an independent reading of the truth of do(a) gives the same floor
    do_a = res["effectiveness"]["by_intervention"]["do(a)"]
    x = ds.batch(range(16))[0]
    assert do_a["baselines"]["per_node"]["b"]["floor"] == fl["errors"]["do(a)"]["b"]
    assert fl["errors"]["none"]["b"] == pytest.approx(float(np.nanmean(label_errors(model.graph, Biased(), x, ds.labels)[:, 1])))
    md, lines = M.to_markdown(res), M.summary_lines(res)
    assert "gate missed: none b 0.2" in md or "gate missed: none b 0.19" in md
    assert "do(a) b" in md and "do(b) b" in md and "gate missed" in lines[0]


def test_without_a_simulator_the_floors_are_unknown_and_no_field_scores(model, data):
    ds, _ = data
    res = M.evaluate(model, ds, predictors=Brightness(), n=16, intended="scm", metrics=("effectiveness", "field"),
                     counterfactual_fn=identity, progress=False)
    assert res["predictor_floors"]["unknown"].startswith("no simulator")
    assert res["skipped"]["field"] == "no simulator for this data set" and "field" not in res
    md = M.to_markdown(res)
    assert "floors unknown: no simulator" in md and "## Scores in the field's units" in md and "Not reported: no simulator" in md
    assert "floors unknown" in M.summary_lines(res)[0]


def test_inexact_interventions_are_left_out_of_the_gate(model, data, tmp_path):
    ds, table = data
    sim = FieldSim()
    sim.no_true_counterfactual = {"b": "b's true image would come from another source"}
    res = M.evaluate(model, ds, predictors=Brightness(), simulator=sim, table=table, n=16, metrics=("effectiveness", "field"),
                     counterfactual_fn=identity, progress=False)
    fl = res["predictor_floors"]
    assert set(fl["errors"]) == {"none", "do(a)"} and fl["excluded"] == {"do(b)": "b's true image would come from another source"}
    assert "Left out of the gate (no exact true counterfactual): do(b)" in M.to_markdown(res)
    # the field table has no floor for do(b) and says why; the intervened fraction is against a perfect reading
    fb = res["field"]["by_intervention"]["do(b)"]
    assert fb["floor_note"] == "no true counterfactual (b's true image would come from another source)"
    b = next(e for e in fb["scores"] if e["node"] == "b")
    assert b["floor"] is None and b["achieved_fraction"] == 0.0
    # both land in the strict JSON that evaluate writes
    js, _ = M.write_report(res, tmp_path)
    back = json.loads(js.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    assert back["predictor_floors"]["excluded"] == fl["excluded"] and back["predictor_floors"]["passed"] is True
    assert back["field"]["by_intervention"]["do(b)"]["floor_note"] == fb["floor_note"]


# ----------------------------------------------------------------------------- the field's units
@pytest.mark.parametrize("fn, want", [(identity, 0.0), ("truth", 1.0)])
def test_field_scores_sit_beside_do_nothing_floor_and_published(model, data, fn, want):
    ds, table = data
    fn = truth_fn(table) if fn == "truth" else fn
    res = M.evaluate(model, ds, predictors=Brightness(), simulator=FieldSim(), table=table, n=16, metrics=("field",),
                     counterfactual_fn=fn, progress=False)
    assert "field" not in res["skipped"] and res["field"]["simulator"] == "tiny-field"
    by = res["field"]["by_intervention"]
    assert set(by) == {"do(a)", "do(b)"}
    rows = {(name, e["metric"]): e for name, d in by.items() for e in d["scores"]}
    a = rows[("do(a)", "a_mae_255")]
    assert a["role"] == "intervened" and a["published"] == 1.5 and a["reader"] == "pixels"
    # the truth is read to within half a grey level; each a takes another image's value (labels uniform
    # on [-0.9, 0.9]: a mean change of about 0.6 label units, 76 grey levels, on this seeded pick)
    assert a["floor"] <= 0.5 and a["do_nothing"] > 20
    assert a["achieved_fraction"] == pytest.approx(want, abs=1e-9)
    # b is a's child: the identity leaves it, the truth moves it
    b = rows[("do(a)", "b_mae_255")]
    assert b["role"] == "descendant" and b["achieved_fraction"] == pytest.approx(want, abs=1e-9)
    # do(b) leaves its parent a: the drift above the truth is nil either way
    assert rows[("do(b)", "a_mae_255")]["role"] == "non_descendant"
    assert rows[("do(b)", "a_mae_255")]["drift"] == pytest.approx(0.0, abs=1e-9)
    assert rows[("do(b)", "b_mae_255")]["published"] is None
    md, text = M.to_markdown(res), "\n".join(M.summary_lines(res))
    assert "## Scores in the field's units (tiny-field)" in md and "a reference model (test)" in md
    assert "| do(a) | a MAE (0-255) | pixels | intervened |" in md
    assert "field units (published: a reference model (test))" in text and "a MAE (0-255)" in text


def test_field_scores_of_the_models_own_counterfactuals(model, data):
    ds, table = data
    res = M.evaluate(model, ds, predictors=Brightness(), simulator=FieldSim(), table=table, n=8, steps=2,
                     metrics=("field",), progress=False)
    for name, d in res["field"]["by_intervention"].items():
        assert d["n"] == 8 and len(d["scores"]) == 2, name
        for e in d["scores"]:
            assert np.isfinite(e["model"]) and np.isfinite(e["do_nothing"]) and np.isfinite(e["floor"]), (name, e)
            assert ("drift" in e) == (e["role"] == "non_descendant"), (name, e)


def test_a_simulator_without_field_metrics_gets_a_clear_note(model, data):
    ds, table = data
    res = M.evaluate(model, ds, simulator=tiny_simulator, table=table, n=16, metrics=("ground_truth", "field"),
                     counterfactual_fn=identity, progress=False)
    assert "field" not in res and "defines no scores in the field's units" in res["skipped"]["field"]
    assert "Not reported: the given simulator defines no scores in the field's units" in M.to_markdown(res)
    assert "field" in M.METRICS


def test_morphomnist_identity_in_the_benchmarks_units():
    """The shipped Morpho-MNIST simulator through evaluate: thickness (px), intensity (0-255) and
    digit accuracy per intervention beside the published best; the identity achieves nothing."""
    from causaldiffae.data import ImageLabelDataset
    from causaldiffae.data.generate import model_generator_params
    from causaldiffae.data.morpho_benchmark import PUBLISHED_BEST
    from causaldiffae.data.simulator import simulator_from_params

    model, meta = CausalDiffAE.load("morphomnist")
    sim = simulator_from_params(model_generator_params("morphomnist", meta))
    g, H = model.graph, model.image_shape[1]
    table = sim.split_rows("test", 12, seed=1)
    ds = ImageLabelDataset.from_arrays(sim.render(table, H), table[g.label_columns].to_numpy(np.float32), g.nodes)
    res = M.evaluate(model, ds, simulator=sim, table=table, n=12, metrics=("field",), counterfactual_fn=identity, progress=False)
    by = res["field"]["by_intervention"]
    assert set(by) == {"do(thickness)", "do(intensity)", "do(digit)"}
    for name, d in by.items():
        assert {e["reader"] for e in d["scores"]} == {"morphometry"}  # no predictors given: only morphometry scores
        for e in d["scores"]:
            if e["role"] in ("intervened", "descendant") and e.get("achieved_fraction") is not None:
                assert e["achieved_fraction"] == 0.0, (name, e)
    th = next(e for e in by["do(thickness)"]["scores"] if e["metric"] == "thickness_mae_px" and e["reader"] == "morphometry")
    assert th["published"] == PUBLISHED_BEST["do(thickness)"]["thickness_mae_px"] and th["achieved_fraction"] == 0.0
    assert th["floor"] < th["do_nothing"]
    assert "no true counterfactual" in by["do(digit)"]["floor_note"]
