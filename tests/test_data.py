"""Data: the Pendulum simulator and its true counterfactuals, the users' formats, and bad data."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from causaldiffae.data import (ImageLabelDataset, generate_dataset, load_causal_circuit, load_folder,
                               load_image_files, load_npz, open_dataset)
from causaldiffae.data.pendulum import (PENDULUM_COLUMNS, pendulum_grid, pendulum_structural, render_pendulum,
                                        sample_pendulum, split_pendulum, true_counterfactual)
from causaldiffae.errors import CausalDiffAEWarning, DataError


# ------------------------------------------------------------------ Pendulum
def test_pendulum_grid_and_split():
    grid = pendulum_grid()
    assert len(grid) == 7308 and list(grid.columns) == PENDULUM_COLUMNS
    split = split_pendulum(grid)
    assert (split == "test").sum() == 1827 and (split == "train").sum() == 5481
    assert grid["shadow_length"].min() >= 3.0  # the equations' floor


@pytest.mark.parametrize("size", [32, 64])
def test_pendulum_renders_rgb_at_any_size(size):
    imgs = render_pendulum(sample_pendulum(5, seed=1), size=size)
    assert imgs.shape == (5, size, size, 3) and imgs.dtype == np.uint8
    assert len({imgs[i].tobytes() for i in range(5)}) == 5  # different scenes, different images


def test_do_of_the_factual_value_reproduces_the_factual_image():
    table = sample_pendulum(6, seed=2)
    factual = render_pendulum(table, 32)
    for node in PENDULUM_COLUMNS:
        images, cf = true_counterfactual(table, {node: table[node].to_numpy()}, size=32)
        assert np.array_equal(images, factual), node
        pd.testing.assert_frame_equal(cf, table[PENDULUM_COLUMNS].astype(float))


def test_root_intervention_recomputes_its_children_by_the_equations():
    table = sample_pendulum(6, seed=3)
    images, cf = true_counterfactual(table, {"light": 75.0}, size=32)
    length, position = pendulum_structural(table["angle"], np.full(6, 75.0))
    np.testing.assert_allclose(cf["shadow_length"], length)
    np.testing.assert_allclose(cf["shadow_position"], position)
    np.testing.assert_array_equal(cf["angle"], table["angle"])  # a non-descendant keeps its value
    assert not np.array_equal(images, render_pendulum(table, 32))
    # a shift intervention on the other root
    _, cf = true_counterfactual(table, {"angle": lambda a: a + 10})
    np.testing.assert_allclose(cf["angle"], table["angle"] + 10)


def test_intervening_on_a_child_keeps_the_parents_and_the_other_child():
    table = sample_pendulum(4, seed=4)
    _, cf = true_counterfactual(table, {"shadow_length": 12.0})
    np.testing.assert_allclose(cf["shadow_length"], 12.0)
    for c in ("angle", "light", "shadow_position"):
        np.testing.assert_allclose(cf[c], table[c])


def test_true_counterfactual_rejects_unknown_nodes_and_bad_lengths():
    table = sample_pendulum(3)
    with pytest.raises(DataError, match=r"unknown Pendulum node\(s\) \['colour'\]"):
        true_counterfactual(table, {"colour": 1})
    with pytest.raises(DataError, match="got \\(2,\\) values for 3 scenes"):
        true_counterfactual(table, {"angle": [1.0, 2.0]})


# ------------------------------------------------------------------ generated folders and loaders
def test_generated_folder_loads_back_exactly_and_is_cached(tmp_path):
    out = generate_dataset("pendulum", tmp_path / "pend", size=16, n=12, seed=5, progress=False)
    meta = json.loads((out / "generator.json").read_text())
    assert meta == {"generator": "pendulum", "version": 1, "size": 16, "n": 12, "seed": 5, "shadow_width": 2.0}
    table = pd.read_csv(out / "labels.csv")
    assert list(table.columns[:5]) == ["file", *PENDULUM_COLUMNS] and len(table) == 12
    ds = load_folder(out, PENDULUM_COLUMNS)
    assert np.array_equal(ds.images, render_pendulum(table, 16))
    np.testing.assert_allclose(ds.labels, table[PENDULUM_COLUMNS].to_numpy(np.float32))
    stamp = (out / "labels.csv").stat().st_mtime_ns
    generate_dataset("pendulum", out, size=16, n=12, seed=5, progress=False)
    assert (out / "labels.csv").stat().st_mtime_ns == stamp, "an identical request regenerated the folder"
    test = open_dataset(out, PENDULUM_COLUMNS, split="test")
    assert len(test) == 3


def test_two_processes_generating_the_same_set_at_once_both_succeed(tmp_path, monkeypatch):
    # "another process" (a nested call) generates and places the identical set while this one is
    # half way: neither deletes the other's images, both return the complete folder
    from causaldiffae.data import simulator

    out, real = tmp_path / "pend", simulator.get_simulator
    others, started = [], []

    def get_simulator(name, **kw):
        sim = real(name, **kw)
        render = sim.render

        def render_while_another_finishes(table):
            if not started:
                started.append(True)
                others.append(generate_dataset("pendulum", out, size=16, n=12, seed=5, progress=False, chunk=4))
            return render(table)

        sim.render = render_while_another_finishes
        return sim

    monkeypatch.setattr(simulator, "get_simulator", get_simulator)
    got = generate_dataset("pendulum", out, size=16, n=12, seed=5, progress=False, chunk=4)
    assert got == out and others == [out]
    ds = load_folder(out, PENDULUM_COLUMNS)
    assert len(ds) == 12 and np.array_equal(ds.images, render_pendulum(pd.read_csv(out / "labels.csv"), 16))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pend"], "a partial folder was left behind"
    # a killed process's partial folder goes with the next generation; a running one's stays
    import subprocess
    gone = subprocess.Popen(["true"])
    gone.wait()
    (tmp_path / f".pend.partial-{gone.pid}-0000").mkdir()
    (tmp_path / f".pend.partial-{os.getpid()}-1111").mkdir()
    monkeypatch.setattr(simulator, "get_simulator", real)
    generate_dataset("pendulum", out, size=16, n=10, seed=5, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".pend.partial-{os.getpid()}-1111", "pend"]


def _write_folder(tmp_path, rows, size=8, channels=3):
    folder = tmp_path / "mine"
    folder.mkdir()
    for i in range(len(rows)):
        shape = (size, size, channels) if channels > 1 else (size, size)
        Image.fromarray(np.full(shape, 20 * i, np.uint8)).save(folder / f"im{i}.png")
    pd.DataFrame(rows).to_csv(folder / "labels.csv", index=False)
    return folder


def test_users_folder_with_missing_labels(tmp_path):
    folder = _write_folder(tmp_path, [{"file": f"im{i}.png", "a": i, "b": (None if i % 2 else 2 * i)} for i in range(4)])
    ds = load_folder(folder, ["a", "b"])
    assert len(ds) == 4 and ds.channels == 3 and ds.size == 8
    assert ds.label_mask().tolist() == [[True, True], [True, False], [True, True], [True, False]]
    x, y = ds.batch([0, 3])
    assert x.shape == (2, 3, 8, 8) and float(x.min()) >= -1 and float(x.max()) <= 1
    assert float(x[1].mean()) == pytest.approx(60 / 127.5 - 1, abs=1e-6)
    assert np.isnan(float(y[1, 1]))
    with pytest.warns(CausalDiffAEWarning, match=r"resized 4 of 4 images to 4x4; sizes found: 8x8: 4"):
        resized = load_folder(folder, ["a", "b"], size=4)
    assert resized.size == 4


def test_label_table_with_spaces_reads_as_users_expect(tmp_path):
    folder = _write_folder(tmp_path, [{"file": f"im{i}.png", "a": i, "b": i} for i in range(3)])
    # hand-written CSV: spaces after commas, around headers, around numbers; a cell of spaces is empty
    (folder / "labels.csv").write_text("file , a ,b , split\n im0.png , 1.5 ,  , train\nim1.png,2, 3 ,test \n im2.png ,-4,5e-1, train\n")
    ds = load_folder(folder, ["a", "b"])
    np.testing.assert_allclose(ds.labels[:, 0], [1.5, 2, -4])
    assert np.isnan(ds.labels[0, 1]) and ds.labels[1:, 1].tolist() == [3, 0.5]
    assert len(load_folder(folder, ["a", "b"], split="train")) == 2  # " train" and "train" are one split
    from causaldiffae.graph import load_label_table

    table = load_label_table(folder / "labels.csv")
    assert list(table.columns) == ["file", "a", "b", "split"] and table["a"].dtype.kind == "f"
    (folder / "labels.csv").write_text("file,a,a \nim0.png,1,2\n")
    with pytest.raises(DataError, match=r"column\(s\) \['a'\] appear more than once"):
        load_folder(folder, ["a"])
    (folder / "labels.csv").write_bytes(bytes(range(256)) * 4)  # not text
    with pytest.raises(DataError, match="cannot read .*labels.csv as a CSV label table"):
        load_folder(folder, ["a"])


def test_images_of_mixed_sizes_are_resized_only_with_a_message(tmp_path):
    folder = _write_folder(tmp_path, [{"file": f"im{i}.png", "a": i} for i in range(3)])
    Image.fromarray(np.zeros((6, 10, 3), np.uint8)).save(folder / "im2.png")  # one non-square, smaller image
    with pytest.raises(DataError, match="images of mixed sizes: im0.png is \\(8, 8, 3\\), im2.png is \\(6, 10, 3\\)"):
        load_folder(folder, ["a"])
    with pytest.warns(CausalDiffAEWarning, match=r"resized 1 of 3 images to 8x8 \(non-square ones centre-cropped first\); "
                                                 r"sizes found: 10x6: 1"):
        ds = load_folder(folder, ["a"], size=8)
    assert ds.size == 8 and len(ds) == 3
    (tmp_path / "same").mkdir()
    same = _write_folder(tmp_path / "same", [{"file": "im0.png", "a": 1}])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # images that already have the size: no message
        load_folder(same, ["a"], size=8)


def test_label_fraction_is_a_fixed_seeded_subset():
    ds = ImageLabelDataset.from_arrays(np.zeros((50, 4, 4, 1), np.uint8), np.arange(100.0).reshape(50, 2), ["a", "b"])
    a, b = ds.with_label_fraction(0.1, seed=3), ds.with_label_fraction(0.1, seed=3)
    assert a.labelled_count() == 5 and a.labelled_digest() == b.labelled_digest()
    assert ds.with_label_fraction(0.1, seed=4).labelled_digest() != a.labelled_digest()
    with pytest.raises(DataError, match="label fraction must be in"):
        ds.with_label_fraction(0.0)


def test_npz_and_causal_circuit_layouts(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 255, (5, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=imgs, labels=np.arange(10.0).reshape(5, 2), columns=np.array(["b", "a"]))
    ds = load_npz(tmp_path / "d.npz", ["a", "b"])
    np.testing.assert_allclose(ds.labels[:, 0], [1, 3, 5, 7, 9])  # columns matched by name
    lat = np.random.default_rng(1).normal(size=(5, 2, 4)).astype(np.float32)
    np.savez(tmp_path / "circuit.npz", original_latents=lat, imgs=np.stack([imgs, imgs], axis=1))
    cc = load_causal_circuit(tmp_path / "circuit.npz", size=4)
    assert cc.columns == ["arm", "blue", "green", "red"] and cc.size == 4
    np.testing.assert_allclose(cc.labels, lat[:, 0])
    np.savez(tmp_path / "other.npz", x=imgs)
    with pytest.raises(DataError, match="not in CausalCircuit's layout: no 'original_latents'"):
        load_causal_circuit(tmp_path / "other.npz")


@pytest.mark.parametrize("case, message", [
    ("missing_column", r"label column\(s\) \['b'\] missing for the graph's nodes"),
    ("missing_file", r"im9.png is listed but does not exist"),
    ("unreadable", r"cannot read image .*im0.png"),
    ("mixed_sizes", r"images of mixed sizes: im0.png is \(8, 8, 3\), im1.png is \(6, 6, 3\)"),
    ("mixed_channels", r"images of mixed channel counts"),
    ("non_numeric", r"column 'a' has a non-numeric value 'tall' \(row 3 of the file\)"),
    ("no_csv", r"has no labels.csv"),
])
def test_bad_data_gets_a_named_error(tmp_path, case, message):
    rows = [{"file": f"im{i}.png", "a": i, "b": i} for i in range(3)]
    if case == "missing_column":
        rows = [{"file": r["file"], "a": r["a"]} for r in rows]
    if case == "missing_file":
        rows[2]["file"] = "im9.png"
    if case == "non_numeric":
        rows[1]["a"] = "tall"
    folder = _write_folder(tmp_path, rows)
    if case == "unreadable":
        (folder / "im0.png").write_bytes(b"not a png")
    if case == "mixed_sizes":
        Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(folder / "im1.png")
    if case == "mixed_channels":
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "im1.png")
    if case == "no_csv":
        (folder / "labels.csv").unlink()
    with pytest.raises(DataError, match=message):
        load_folder(folder, ["a", "b"])


def test_image_files_of_the_wrong_size_are_named(tmp_path):
    for name, s in (("big.png", 8), ("small.png", 6)):
        Image.fromarray(np.zeros((s, s, 3), np.uint8)).save(tmp_path / name)
    with pytest.raises(DataError, match=r"big.png is \(8, 8, 3\), .*small.png is \(6, 6, 3\)"):
        load_image_files([tmp_path / "big.png", tmp_path / "small.png"])
    assert load_image_files([tmp_path / "big.png", tmp_path / "small.png"], size=8).shape == (2, 3, 8, 8)


def test_unknown_data_spec_is_named(tmp_path):
    with pytest.raises(DataError, match="'nowhere' is neither a folder"):
        open_dataset("nowhere", ["a"])
