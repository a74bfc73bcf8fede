"""`causaldiffae counterfactual` and `causaldiffae sample` end to end on a tiny trained checkpoint."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import json

from causaldiffae.cli import main

from test_cli import run_cli
from tiny import tiny_labels, tiny_render


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    imgs = tiny_render(tiny_labels(3, seed=9))
    paths = []
    for i, img in enumerate(imgs):
        Image.fromarray(img).save(d / f"x{i}.png")
        paths.append(str(d / f"x{i}.png"))
    return paths


def test_counterfactual_command_writes_images_grid_csv_and_graph(tiny_run, image_files, tmp_path, capsys):
    out = tmp_path / "cf"
    code = main(["counterfactual", "--run", str(tiny_run), "--images", *image_files, "--do", "a+=0.3",
                 "--strength", "1.5", "--steps", "5", "-o", str(out)])
    assert code == 0
    assert "changes: a, b" in capsys.readouterr().out  # the descendants a do(a) touches
    assert sorted(p.name for p in out.iterdir()) == ["graph.png", "grid.png", "images", "labels.csv", "query.json"]
    assert len(list((out / "images").glob("*.png"))) == 3
    table = pd.read_csv(out / "labels.csv")
    np.testing.assert_allclose(table["a_counterfactual"], table["a_factual"] + 0.3, atol=1e-4)
    assert table["source"].tolist() == image_files  # each row names its input file
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape[0] > 3 * 16 and grid.shape[1] >= 3 * 16  # rows: factual | counterfactual | difference
    query = json.loads((out / "query.json").read_text())
    assert query["do"] == {"a": {"shift": 0.3}} and query["strength"] == 1.5 and query["steps"] == 5
    assert query["sources"] == image_files
    assert query["refine"] == 1 and query["refine_carry"] is True  # the library's default query
    from causaldiffae import counterfactual as cf
    assert query["residual_gate"] == (cf.DEFAULT_RESIDUAL_GATE if cf.DEFAULT_RESIDUAL else None)


def test_no_refine_carry_answers_with_the_exact_corrections(tiny_run, image_files, tmp_path):
    """--no-refine-carry is the exact fixed-point correction: the same images as the library call
    with refine_carry=False, different from the carried default, and recorded in query.json."""
    from causaldiffae import counterfactual as cf
    from causaldiffae.data import load_image_files
    from causaldiffae.model import CausalDiffAE

    outs = {}
    for name, flag in (("exact", ["--no-refine-carry"]), ("carried", [])):
        outs[name] = tmp_path / name
        assert main(["counterfactual", "--run", str(tiny_run), "--images", *image_files, "--do", "a=0.5",
                     "--steps", "4", "--refine", "1", *flag, "-o", str(outs[name])]) == 0
    query = json.loads((outs["exact"] / "query.json").read_text())
    assert query["refine"] == 1 and query["refine_carry"] is False
    read = {k: np.stack([np.asarray(Image.open(f)) for f in sorted((v / "images").glob("*.png"))]) for k, v in outs.items()}
    assert not np.array_equal(read["exact"], read["carried"])
    model, _ = CausalDiffAE.load(tiny_run)
    images = load_image_files(image_files, channels=model.image_shape[0], size=model.image_shape[1])
    ref = cf.to_uint8(cf.counterfactual(model, images, do={"a": 0.5}, steps=4, refine=1, refine_carry=False).images)
    assert np.abs(ref.astype(int) - read["exact"].reshape(ref.shape).astype(int)).max() <= 1


def test_residual_flag_returns_the_input_for_a_null_query(tiny_run, image_files, tmp_path):
    """--residual with no do(): the written images are the input files (to one grey level), the gate
    is recorded in query.json, and with --no-residual the decoder's reconstruction error shows."""
    outs = {}
    for name, flag in (("residual", ["--residual", "--residual-gate", "12"]), ("plain", ["--no-residual"])):
        outs[name] = tmp_path / name
        assert main(["counterfactual", "--run", str(tiny_run), "--images", *image_files, "--steps", "4",
                     *flag, "-o", str(outs[name])]) == 0
    assert json.loads((outs["residual"] / "query.json").read_text())["residual_gate"] == 12
    assert json.loads((outs["plain"] / "query.json").read_text())["residual_gate"] is None
    inputs = np.stack([np.asarray(Image.open(f)) for f in image_files]).astype(int)
    read = {k: np.stack([np.asarray(Image.open(f)) for f in sorted((v / "images").glob("*.png"))]).astype(int)
            for k, v in outs.items()}
    assert np.abs(read["residual"].reshape(inputs.shape) - inputs).max() <= 1
    assert np.abs(read["plain"].reshape(inputs.shape) - inputs).max() > 1


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory):
    """A folder of 10 tiny-world images, 4 of them in the test split."""
    d = tmp_path_factory.mktemp("data")
    labels = tiny_labels(10, seed=4)
    for i, img in enumerate(tiny_render(labels)):
        Image.fromarray(img).save(d / f"img{i}.png")
    pd.DataFrame({"file": [f"img{i}.png" for i in range(10)], "a": labels[:, 0], "b": labels[:, 1],
                  "split": ["train"] * 6 + ["test"] * 4}).to_csv(d / "labels.csv", index=False)
    return d


def test_n_larger_than_the_data_is_refused_and_labels_name_the_source_files(tiny_run, data_folder, tmp_path, capsys):
    out = tmp_path / "cf"
    base = ["counterfactual", "--run", str(tiny_run), "--data", str(data_folder), "--do", "b=0.2", "--steps", "2", "-o", str(out)]
    assert main([*base, "--n", "5000"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"causaldiffae: error: --n 5000: {data_folder} has only 4 test images; ask for at most 4"
    assert not out.exists() and not list(tmp_path.glob(".*partial"))
    assert main([*base, "--n", "4"]) == 0
    table = pd.read_csv(out / "labels.csv")
    assert sorted(table["source"]) == [str(data_folder / f"img{i}.png") for i in range(6, 10)]


def test_grid_wraps_into_rows_and_carries_the_query(tiny_run, image_files, tmp_path):
    out = tmp_path / "cf"
    many = image_files * 7  # 21 images
    assert main(["counterfactual", "--run", str(tiny_run), "--images", *many, "--do", "a=0.5", "--do", "b-=0.1",
                 "--strength", "1.5", "--steps", "2", "-o", str(out)]) == 0
    grid = Image.open(out / "grid.png")
    cell = 3 * 16 + 2  # scale 3, 2-pixel separators
    assert grid.width < 9 * cell + 150, "21 images must wrap (8 per row), not make one wide row"
    assert grid.height > 9 * cell, "three blocks of factual / counterfactual / difference rows"
    # the caption: a white band on top with dark text in it (the grid itself starts with grey separators)
    top = np.asarray(grid.convert("L"))[:12]
    assert top.max() == 255 and top.min() < 100
    from causaldiffae.counterfactual import describe_do, Shift

    assert describe_do({"a": 0.5, "b": Shift(-0.1)}) == "do(a=0.5, b-=0.1)"
    query = json.loads((out / "query.json").read_text())
    assert query["do"] == {"a": {"set": 0.5}, "b": {"shift": -0.1}}


def test_out_of_range_sets_and_shifts_warn_once_on_one_line(tiny_run, image_files, tmp_path, capsys):
    for i, do in enumerate(["a=5", "a+=5"]):
        assert main(["counterfactual", "--run", str(tiny_run), "--images", *image_files, "--do", do, "--steps", "2",
                     "-o", str(tmp_path / f"cf{i}")]) == 0
        err = capsys.readouterr().err
        warned = [line for line in err.splitlines() if "training range" in line]
        assert len(warned) == 1, err
        assert warned[0].startswith(f"causaldiffae: warning: do({do}) gives a = ")
        assert "outside its training range [-0.9, 0.9]" in warned[0]
        assert "UserWarning" not in err and "warnings.warn" not in err
    assert main(["counterfactual", "--run", str(tiny_run), "--images", *image_files, "--do", "a+=0.01", "--steps", "2",
                 "-o", str(tmp_path / "cf3")]) == 0
    assert "training range" not in capsys.readouterr().err  # a small shift of in-range images stays inside


def test_an_output_folder_that_is_not_ours_is_left_alone(tiny_run, image_files, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    assert main(["counterfactual", "--run", str(tiny_run), "--images", *image_files, "-o", str(mine)]) == 2
    assert "exists and is not the output of an earlier causaldiffae counterfactual" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]
    out = tmp_path / "cf"
    args = ["counterfactual", "--run", str(tiny_run), "--images", *image_files, "--steps", "2", "-o", str(out)]
    assert main(args) == 0 and main(args) == 0  # an earlier output of the command is replaced


def test_sample_command(tiny_run, tmp_path):
    out = tmp_path / "s"
    assert main(["sample", "--run", str(tiny_run), "--n", "20", "--do", "b=0.5", "--steps", "2", "-o", str(out)]) == 0
    table = pd.read_csv(out / "labels.csv")
    assert len(table) == 20 and len(list((out / "images").glob("*.png"))) == 20
    grid = Image.open(out / "grid.png")
    assert grid.height > 3 * 48 and grid.width < 9 * 50 + 150  # 8 per row: three rows
    assert json.loads((out / "query.json").read_text())["do"] == {"b": {"set": 0.5}}


@pytest.mark.parametrize("extra, message", [
    (["--do", "c=1"], "unknown node 'c'"),
    (["--do", "a=big"], "malformed --do 'a=big'"),
    (["--do", "a=+1"], "'a=+1' is ambiguous"),
    (["--strength", "-1"], "argument --strength: must be >= 0, got -1"),
])
def test_bad_queries_exit_2_and_leave_no_output(tiny_run, image_files, tmp_path, capsys, extra, message):
    out = tmp_path / "cf"
    assert main(["counterfactual", "--run", str(tiny_run), "--images", *image_files, *extra, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".cf.partial"))


def test_images_of_another_size_are_refused_unless_resized(tiny_run, tmp_path, capsys):
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(big)  # grey and larger than the model's 3x16x16
    args = ["counterfactual", "--run", str(tiny_run), "--images", str(big), "--steps", "3", "-o", str(tmp_path / "o")]
    assert main(args) == 2
    assert "big.png is 40x40 with 1 channel(s), but the model takes 16x16 with 3; pass --resize" in capsys.readouterr().err
    assert main([*args, "--resize"]) == 0
    assert np.asarray(Image.open(tmp_path / "o" / "images" / "counterfactual_00000.png")).shape == (16, 16, 3)


def test_missing_and_corrupt_checkpoints(tiny_run, image_files, tmp_path):
    r = run_cli("counterfactual", "--run", str(tmp_path / "nope"), "--images", image_files[0], "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and "nope" in r.stderr and "Traceback" not in r.stderr
    broken = tmp_path / "broken"
    shutil.copytree(tiny_run, broken)
    ckpt = broken / "checkpoint.safetensors"
    data = bytearray(ckpt.read_bytes())
    data[-100:] = b"\0" * 100
    ckpt.write_bytes(bytes(data))
    r = run_cli("sample", "--run", str(broken), "--n", "2", "-o", str(tmp_path / "o2"))
    assert r.returncode == 2 and "checkpoint.safetensors" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o2").exists()
