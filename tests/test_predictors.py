"""Anti-causal predictors: independent simulator draws, categorical heads, conditioning, the floor gate,
the simulators' generic interface, the legible shadow, the demo's held-out scenes, and Morpho-MNIST in
the benchmark's units."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from causaldiffae.checkpoint import PRETRAINED_DIR, load_checkpoint
from causaldiffae.data import ImageLabelDataset, generate_dataset
from causaldiffae.data.generate import generated_folder_name, model_generator_params
from causaldiffae.data.simulator import get_simulator, simulator_from_params
from causaldiffae.errors import CheckpointError, ConfigError, DataError
from causaldiffae.graph import CausalGraph
from causaldiffae.predictors import FLOOR_GATE, Augmentation, floors_frame, load_predictors, predictor_floors, train_predictors


# ----------------------------------------------------------------------------- simulators
def test_independent_draws_decouple_every_factor_from_its_causes():
    pend = get_simulator("pendulum")
    scm = pend.sample_table(4000, seed=0)
    ind = pend.independent_table(4000, np.random.default_rng(0))
    # in the SCM the shadow position is a function of the parents; drawn independently it is not
    assert abs(np.corrcoef(scm["light"], scm["shadow_position"])[0, 1]) > 0.5
    for parent in ("angle", "light"):
        for child in ("shadow_length", "shadow_position"):
            assert abs(np.corrcoef(ind[parent], ind[child])[0, 1]) < 0.1  # 4,000 draws: |r| ~ 0.016
    grid = pend.dataset_table()
    for c in pend.nodes:  # the same marginal range as the data set
        assert grid[c].min() - 1e-9 <= ind[c].min() and ind[c].max() <= grid[c].max() + 1e-9

    morpho = get_simulator("morphomnist")
    scm = morpho.sample_table(3000, seed=0)
    ind = morpho.independent_table(3000, np.random.default_rng(0))
    assert np.corrcoef(scm["thickness"], scm["intensity"])[0, 1] > 0.5
    assert abs(np.corrcoef(ind["thickness"], ind["intensity"])[0, 1]) < 0.1
    # rows stay consistent with the equations, so their counterfactuals are defined
    from causaldiffae.data.morphomnist import intensity_equation

    np.testing.assert_allclose(intensity_equation(ind["thickness"], ind["eps_intensity"]), ind["intensity"], rtol=1e-9)
    # sources are training digits only (the test digits stay held out for the floors)
    table = morpho.dataset_table()
    assert set(ind["source"]) <= set(table.loc[table["split"] == "train", "source"])


def test_simulator_is_the_true_counterfactual_function_and_names_what_it_cannot_answer():
    sim = get_simulator("pendulum", size=16)
    table = sim.sample_table(3, seed=1)
    a, ta = sim(table, {"light": 70.0})
    b, tb = sim.true_counterfactual(table, {"light": 70.0})
    assert a.shape == (3, 16, 16, 3) and np.array_equal(a, b)
    pd.testing.assert_frame_equal(ta, tb)
    assert sim.has_true_counterfactual({"light": 1.0}) and sim.field_metrics(torch.zeros(1, 3, 16, 16), {}) is None
    morpho = get_simulator("morphomnist")
    assert not morpho.has_true_counterfactual({"digit": 3}) and "writer" in morpho.no_true_counterfactual["digit"]
    assert morpho.categorical["digit"] == tuple(range(10))
    with pytest.raises(DataError, match="no simulator for 'nope'"):
        get_simulator("nope")


# ----------------------------------------------------------------------------- the shadow's width
def _shadow_rows(sim, table) -> float:
    """Mean number of image rows (per scene) where the shadow darkens a pixel by more than half the
    white-to-shadow contrast (the shadow found as what changes when it is moved out of the frame)."""
    with_shadow = sim.render(table).astype(float).mean(-1)
    without = sim.render(table.assign(shadow_position=-100.0)).astype(float).mean(-1)
    strong = (without - with_shadow) > 0.5 * (255 - 40)  # (N, H, W)
    return float(strong.any(axis=2).sum(axis=1).mean())


def test_default_shadow_is_legible_and_the_legacy_thin_one_stays_reachable():
    pend_new = get_simulator("pendulum")
    pend_old = get_simulator("pendulum", shadow_width=0.5)
    table = pend_new.dataset_table().iloc[::300].reset_index(drop=True)
    assert _shadow_rows(pend_old, table) <= 1.0  # the legacy shadow: 0.7 pixel, one row at most
    assert _shadow_rows(pend_new, table) >= 2.0  # the default one is several pixels thick
    # so a do() on the shadow changes many more pixels
    cf = {"shadow_length": np.full(len(table), 12.0)}
    diff_new = np.abs(pend_new(table, cf)[0].astype(float) - pend_new.render(table)).mean()
    diff_old = np.abs(pend_old(table, cf)[0].astype(float) - pend_old.render(table)).mean()
    assert diff_new > 2.5 * diff_old
    with pytest.raises(DataError, match="shadow_width"):
        get_simulator("pendulum", shadow_width=-1.0)


def test_generator_json_records_the_width_and_old_folders_keep_the_thin_shadow(tmp_path):
    out = generate_dataset("pendulum", tmp_path / "p", size=16, n=4, seed=0, progress=False, shadow_width=0.5)
    params = json.loads((out / "generator.json").read_text())
    assert params["shadow_width"] == 0.5 and simulator_from_params(params).shadow_width == 0.5
    # a folder written before the parameter existed has no shadow_width: it was the legacy renderer
    assert simulator_from_params({"generator": "pendulum", "version": 1, "size": 32}).shadow_width == 0.5
    assert generated_folder_name("pendulum", 32) == "pendulum-32"
    assert generated_folder_name("pendulum", 32, shadow_width=0.5) == "pendulum-32-shadow_width0.5"


def test_the_shipped_pendulum_model_is_evaluated_on_the_shadow_it_was_trained_on():
    _, meta = load_checkpoint(PRETRAINED_DIR / "pendulum.safetensors")
    params = model_generator_params("pendulum", meta)
    assert params["shadow_width"] == 2.0 and simulator_from_params(params).shadow_width == 2.0
    pred = load_predictors(PRETRAINED_DIR / "pendulum.predictors.safetensors")
    assert pred.meta["source"]["params"]["shadow_width"] == 2.0  # its predictors read the same rendering
    # a shipped model without generator info in its checkpoint falls back on pretrained/generators.json
    assert model_generator_params("pendulum", {})["generator"] == "pendulum"
    # a model trained on a generated folder records the folder's generator (pipeline data info)
    assert model_generator_params("run", {"data": {"generator": {"generator": "pendulum", "shadow_width": 2.0}}})["shadow_width"] == 2.0
    assert model_generator_params("not-shipped-and-no-info", {}) is None


# ----------------------------------------------------------------------------- categorical and conditioned predictors
def _class_world(n: int, seed: int):
    """8x8 grey images: the class (0, 1, 2) lights one of three columns bands; ``b`` is a brightness."""
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, 3, n)
    b = rng.uniform(-1, 1, n)
    img = np.zeros((n, 8, 8, 1), np.float32)
    for k in range(3):
        img[cls == k, :, 2 * k : 2 * k + 2, 0] = 1.0
    img[:, 6:, :, 0] += 0.5 * b[:, None, None]
    images = np.round((np.clip(img, -1, 1) + 1) * 127.5).astype(np.uint8)
    return ImageLabelDataset.from_arrays(images, np.stack([cls, b], 1).astype(np.float32), ["digit", "b"])


def _class_graph():
    return CausalGraph.from_dict({"nodes": {"digit": {"loc": 1.0, "scale": 1.0}, "b": {"loc": 0.0, "scale": 1.0}}})


def test_a_categorical_node_gets_a_classifier_and_an_accuracy(tmp_path):
    path = train_predictors(_class_graph(), _class_world(384, 0), tmp_path / "p.safetensors", steps=150, batch_size=32,
                            categorical=["digit"], progress=False)
    pred = load_predictors(path)
    assert pred.categorical == {"digit": [0.0, 1.0, 2.0]} and pred.is_categorical("digit")
    assert set(pred.meta["val_accuracy"]) == {"digit"} and set(pred.meta["val_mae"]) == {"b"}
    test = _class_world(128, 1)
    x, y = test.batch(range(128))
    out = pred.predict(x)
    assert set(out[:, 0].tolist()) <= {0.0, 1.0, 2.0}  # a class, never a value in between
    assert float((out[:, 0] == y[:, 0]).float().mean()) >= 0.9  # three bars in fixed columns: trivially separable
    proba = pred.predict_proba(x, "digit")
    assert proba.shape == (128, 3) and torch.allclose(proba.sum(1), torch.ones(128), atol=1e-5)
    with pytest.raises(DataError, match="not categorical"):
        pred.predict_proba(x, "b")
    with pytest.raises(ConfigError, match="not in the graph"):
        train_predictors(_class_graph(), test, tmp_path / "q.safetensors", steps=1, categorical=["nope"], progress=False)
    with pytest.raises(DataError, match="none of its classes"):  # a label that is no declared class
        g = CausalGraph.from_dict({"nodes": {"digit": {"loc": 1.0, "scale": 1.0}, "b": {"loc": 0.0, "scale": 1.0}}})
        sim = type("Sim", (), {"categorical": {"digit": (0, 1, 2)}, "nodes": ("digit", "b")})()
        from causaldiffae.predictors import _categorical_classes, _class_index

        classes = _categorical_classes(g, test.labels, None, sim)
        _class_index(torch.tensor([0.5]), classes["digit"], "digit")


def test_a_conditioned_predictor_uses_the_given_value(tmp_path):
    # the image shows only s = a + c; c's predictor conditioned on a can read c = s - a, an unconditioned one cannot
    rng = np.random.default_rng(0)
    n = 512
    a, c = rng.uniform(-0.4, 0.4, n), rng.uniform(-0.4, 0.4, n)
    img = np.repeat(((a + c)[:, None, None, None] + 1) * 127.5, 64, axis=1).reshape(n, 8, 8, 1)
    data = ImageLabelDataset.from_arrays(np.round(img).astype(np.uint8), np.stack([a, c], 1), ["a", "c"])
    g = CausalGraph.from_dict({"nodes": {"a": {"loc": 0.0, "scale": 0.4}, "c": {"loc": 0.0, "scale": 0.4}}})
    path = train_predictors(g, data, tmp_path / "p.safetensors", steps=300, batch_size=64, condition={"c": ["a"]}, progress=False)
    pred = load_predictors(path)
    assert pred.condition == {"c": ["a"]}
    x, y = data.batch(range(256))
    given = torch.full_like(y, float("nan"))
    given[:, 0] = y[:, 0]
    with_a = (pred.predict(x, given=given)[:, 1] - y[:, 1]).abs().mean()
    spread = (y[:, 1] - y[:, 1].mean()).abs().mean()  # what a constant guess would score
    assert with_a < 0.5 * spread
    with pytest.raises(ConfigError, match="cycle"):
        train_predictors(g, data, tmp_path / "q.safetensors", steps=1, condition={"c": ["a"], "a": ["c"]}, progress=False)


def test_old_predictor_files_load_as_regressors(tmp_path):
    from causaldiffae.checkpoint import save_checkpoint

    path = train_predictors(_class_graph(), _class_world(64, 0), tmp_path / "p.safetensors", steps=2, progress=False)
    tensors, meta = load_checkpoint(path)
    for key in ("categorical", "condition", "source", "val_accuracy"):
        meta.pop(key)  # a file written before these fields existed
    save_checkpoint(tmp_path / "old.safetensors", tensors, meta)
    old = load_predictors(tmp_path / "old.safetensors")
    assert old.categorical == {} and old.condition == {}
    x, _ = _class_world(4, 1).batch(range(4))
    assert torch.equal(old.predict(x), load_predictors(path).predict(x))
    meta["categorical"] = {"digit": [0, 1]}  # a head that does not match the weights
    save_checkpoint(tmp_path / "bad.safetensors", tensors, meta)
    with pytest.raises(CheckpointError, match="invalid"):
        load_predictors(tmp_path / "bad.safetensors")


def test_shift_augmentation_keeps_the_morphometry_and_rotation_only_the_thickness():
    """Augmenting a Morpho-MNIST digit must not change the labels a predictor learns: a whole-pixel
    shift leaves the measured thickness and intensity exactly as they were; a +-15 degree rotation
    (bilinear) keeps the thickness within a tenth of a pixel but dims the intensity, which is why
    the shipped predictors rotate only the digit's images."""
    from causaldiffae.data.morphomnist import measure_intensity_batch, measure_thickness_batch

    sim = get_simulator("morphomnist", size=32)
    table = sim.split_rows("test", 16, seed=0)
    x, _ = ImageLabelDataset.from_arrays(sim.render(table), np.zeros((16, 1)), ["u"]).batch(range(16))
    grey = lambda t: ((t[:, 0] + 1) * 127.5).round().clamp(0, 255).numpy()  # noqa: E731
    t0, i0 = measure_thickness_batch(grey(x)), measure_intensity_batch(grey(x))
    shifted = Augmentation(shift=2)(x, torch.Generator().manual_seed(0))
    assert (shifted - x).abs().amax(dim=(1, 2, 3)).gt(0.5).sum() >= 12  # the digits did move (1 in 25 draws stays put)
    np.testing.assert_allclose(measure_thickness_batch(grey(shifted)), t0, atol=1e-6)
    np.testing.assert_allclose(measure_intensity_batch(grey(shifted)), i0, atol=1e-6)
    assert torch.allclose(shifted.sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)), atol=1e-3)  # nothing left the frame
    turned = Augmentation(shift=2, rotate=15)(x, torch.Generator().manual_seed(0))
    assert np.abs(measure_thickness_batch(grey(turned)) - t0).mean() < 0.1
    assert (measure_intensity_batch(grey(turned)) - i0).mean() < -2.0  # blurred edges: not for intensity
    assert torch.equal(Augmentation()(x), x)


def test_augmentation_is_opt_in_per_node(tmp_path):
    """Augmenting one node's images leaves every other node's predictor exactly as trained without it."""
    world = _class_world(128, 0)
    kw = dict(steps=20, batch_size=16, categorical=["digit"], progress=False)
    plain = load_predictors(train_predictors(_class_graph(), world, tmp_path / "a.safetensors", **kw))
    aug = load_predictors(train_predictors(_class_graph(), world, tmp_path / "b.safetensors", augment={"digit": "shift=1"}, **kw))
    assert aug.meta["train"]["augment"] == {"digit": {"shift": 1, "rotate": 0.0}} and plain.meta["train"]["augment"] == {}
    b, digit = _class_graph().index("b"), _class_graph().index("digit")
    for p, q in zip(plain.net.nets[b].parameters(), aug.net.nets[b].parameters()):
        assert torch.equal(p, q)
    assert any(not torch.equal(p, q) for p, q in zip(plain.net.nets[digit].parameters(), aug.net.nets[digit].parameters()))
    with pytest.raises(ConfigError, match="unknown node"):
        train_predictors(_class_graph(), world, tmp_path / "c.safetensors", augment={"nope": "shift=1"}, **kw)
    for bad in ("shift=1.5", "turn=3", "rotate=200"):
        with pytest.raises(ConfigError, match="augmentation"):
            Augmentation.parse(bad)


# ----------------------------------------------------------------------------- the floor gate
def _shipped_floors(name: str, n: int):
    pred = load_predictors(PRETRAINED_DIR / f"{name}.predictors.safetensors")
    _, meta = load_checkpoint(PRETRAINED_DIR / f"{name}.safetensors")
    sim = simulator_from_params(model_generator_params(name, meta))
    floors = predictor_floors(pred, sim, n=n, seed=3)
    table = floors_frame(floors)
    assert list(table.index)[0] == "none" and set(table.columns) == set(pred.nodes)
    expected = {n for n in pred.nodes if n not in sim.no_true_counterfactual}
    assert set(table.index[1:]) == expected  # every intervention with an exact counterfactual
    assert set(floors["excluded"]) == set(pred.nodes) - expected
    return floors


def test_shipped_pendulum_predictors_pass_the_floor_gate():
    """The gate: on the true counterfactuals of every default intervention, each shipped Pendulum
    predictor errs <= 0.05 normalised. Measured at 256 scenes the worst floor is 0.034
    (docs/results.md), so 48 scenes keep the bound on any CPU."""
    floors = _shipped_floors("pendulum", 48)
    assert floors["passed"], floors["failures"]
    assert max(floors["worst"].values()) <= FLOOR_GATE


def test_shipped_morphomnist_predictors_read_their_own_factor():
    """Morpho-MNIST's predictors miss the 0.05 gate narrowly (docs/results.md, 256 scenes: thickness
    0.051, intensity 0.044, digit error rate 0.066 on held-out writers), so this checks that they
    read their own factor: no floor rises on any intervention far above the factual row, and all
    stay within bounds of the measured figures plus > 3 standard errors at 96 scenes."""
    floors = _shipped_floors("morphomnist", 96)
    err = floors["errors"]
    assert floors["metric"]["digit"] == "error_rate"
    for do, row in err.items():
        assert row["thickness"] <= 0.08 and row["intensity"] <= 0.08 and row["digit"] <= 0.15, (do, row)
        # the first (SCM-trained) thickness regressor went 0.049 -> 0.118 on do(intensity)
        assert row["thickness"] <= err["none"]["thickness"] + 0.02, (do, row)


def test_the_gate_catches_a_predictor_that_reads_the_causes():
    """A 'shadow position' read off the pendulum and the sun (what an SCM-trained regressor learns)
    scores perfectly on factual scenes and fails the gate on do(shadow_position)."""
    sim = get_simulator("pendulum", size=16)
    g = CausalGraph.from_dict({"nodes": {n: {"loc": 0.0, "scale": 1.0} for n in sim.nodes}})

    class CauseReader:
        graph, nodes, categorical, image_shape = g, g.nodes, {}, (3, 16, 16)

        def is_categorical(self, node):
            return False

        def predict(self, images):  # the parents' values, recovered from the image by table lookup
            keys = [img.numpy().tobytes() for img in images]
            return torch.tensor(np.stack([self.lookup[k] for k in keys]), dtype=torch.float32)

    reader = CauseReader()
    table = sim.split_rows("test", 32, seed=0)
    from causaldiffae.data.pendulum import pendulum_structural

    def implied(t):
        length, position = pendulum_structural(t["angle"], t["light"])
        return np.stack([t["angle"], t["light"], length, position], 1)

    reader.lookup = {}
    for do in [{}, {"shadow_position": np.roll(table["shadow_position"].to_numpy(), 1)}]:
        raw, cf = sim(table, do) if do else (sim.render(table), table)
        x, _ = ImageLabelDataset.from_arrays(raw, np.zeros((len(table), 4)), g.nodes).batch(range(len(table)))
        reader.lookup.update({img.numpy().tobytes(): row for img, row in zip(x, implied(cf))})
    floors = predictor_floors(reader, sim, n=32, seed=0, interventions=[{"shadow_position": np.roll(table["shadow_position"].to_numpy(), 1)}])
    assert floors["errors"]["none"]["shadow_position"] < 1e-6
    assert not floors["passed"] and floors["failures"][0][:2] == ["shadow_position", "shadow_position"]


# ----------------------------------------------------------------------------- the demo's scenes
@pytest.mark.parametrize("name", ["pendulum", "morphomnist"])
def test_demo_scenes_come_from_the_test_split_only(name):
    from causaldiffae.demo import demo_scenes

    sim = get_simulator(name)
    full = sim.dataset_table()
    train = full[full["split"] == "train"]
    for seed in (0, 1):
        scenes = demo_scenes(sim, 12, seed=seed)
        assert len(scenes) == 12 and (scenes["split"] == "test").all()
        assert (full.loc[scenes["row"], "split"] == "test").all()
        if name == "pendulum":  # no training scene has the same parents
            pairs = set(zip(train["angle"], train["light"]))
            assert not any(p in pairs for p in zip(scenes["angle"], scenes["light"]))
        else:  # no training image shows the same handwritten digit
            assert not set(scenes["source"]) & set(train["source"])


# ----------------------------------------------------------------------------- Morpho-MNIST in the benchmark's units
def test_field_metrics_score_the_truth_near_zero_and_the_unchanged_image_high():
    sim = get_simulator("morphomnist")
    table = sim.split_rows("test", 24, seed=0)
    x, _ = ImageLabelDataset.from_arrays(sim.render(table), np.zeros((24, 1)), ["u"]).batch(range(24))
    do = {"thickness": np.roll(table["thickness"].to_numpy(), 7)}
    raw, cf = sim(table, do)
    truth, _ = ImageLabelDataset.from_arrays(raw, np.zeros((24, 1)), ["u"]).batch(range(24))
    intended = {c: cf[c].to_numpy() for c in ("thickness", "intensity", "digit")}
    floor = sim.field_metrics(truth, intended, do=do)
    nothing = sim.field_metrics(x, intended, do=do)
    # the renderer hits the requested thickness within its 0.1-pixel tolerance and the intensity within a grey level
    assert floor["thickness_mae_px"]["morphometry"] <= 0.12 and floor["intensity_mae"]["morphometry"] <= 1.0
    assert nothing["thickness_mae_px"]["morphometry"] > 3 * floor["thickness_mae_px"]["morphometry"]
    assert nothing["intensity_mae"]["morphometry"] > 5.0
    pred = load_predictors(PRETRAINED_DIR / "morphomnist.predictors.safetensors")
    scored = sim.field_metrics(truth, intended, predictors=pred, do=do)
    assert scored["digit_accuracy"]["predictor"] >= 0.8 and scored["thickness_mae_px"]["predictor"] is not None
    assert set(sim.field_reference) >= {"do(thickness)", "do(intensity)", "do(digit)", "composition_l1"}
