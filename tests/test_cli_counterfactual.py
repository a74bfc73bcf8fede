"""`causaldiffae counterfactual` and `causaldiffae sample` end to end on a tiny trained checkpoint."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

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
    code = main(["counterfactual", "--run", str(tiny_run), "--images", *image_files, "--do", "a=+0.3",
                 "--strength", "1.5", "--steps", "5", "-o", str(out)])
    assert code == 0
    assert "changes: a, b" in capsys.readouterr().out  # the descendants a do(a) touches
    assert sorted(p.name for p in out.iterdir()) == ["graph.png", "grid.png", "images", "labels.csv", "query.json"]
    assert len(list((out / "images").glob("*.png"))) == 3
    table = pd.read_csv(out / "labels.csv")
    np.testing.assert_allclose(table["a_counterfactual"], table["a_factual"] + 0.3, atol=1e-4)
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape[0] > 16 and grid.shape[1] >= 3 * 16  # factual | counterfactual | difference


def test_sample_command(tiny_run, tmp_path):
    out = tmp_path / "s"
    assert main(["sample", "--run", str(tiny_run), "--n", "4", "--do", "b=0.5", "--steps", "5", "-o", str(out)]) == 0
    table = pd.read_csv(out / "labels.csv")
    assert len(table) == 4 and len(list((out / "images").glob("*.png"))) == 4


@pytest.mark.parametrize("extra, message", [
    (["--do", "c=1"], "unknown node 'c'"),
    (["--do", "a=big"], "malformed --do 'a=big'"),
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
