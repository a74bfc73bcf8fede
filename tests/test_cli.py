"""The command line end to end: exit codes, messages without tracebacks, files written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from causaldiffae.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "causaldiffae.cli", *args], capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin:/usr/local/bin"}, timeout=600)


def test_graph_render_highlights_a_do(tmp_path):
    out = tmp_path / "g.svg"
    assert main(["graph", "render", "pendulum", "--do", "light", "-o", str(out)]) == 0
    svg = out.read_text()
    assert "shadow_length" in svg and "light" in svg


def test_cyclic_graph_fails_with_the_cycle_and_no_traceback(tmp_path):
    bad = tmp_path / "cyc.dot"
    bad.write_text("digraph g { a -> b; b -> c; c -> a; }")
    r = run_cli("graph", "render", str(bad), "-o", str(tmp_path / "x.png"))
    assert r.returncode == 2
    assert "cycle" in r.stderr and "a -> b -> c -> a" in r.stderr
    assert "Traceback" not in r.stderr


def _chain_table(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    b = np.tanh(a) + 0.3 * rng.normal(size=n)
    c = b ** 2 + 0.3 * rng.normal(size=n)
    return pd.DataFrame({"a": a, "b": b, "c": c})


def test_graph_check_passes_the_true_graph_and_names_missing_columns(tmp_path, capsys):
    g = tmp_path / "chain.yaml"
    g.write_text("nodes: [a, b, c]\nedges: [[a, b], [b, c]]\n")
    table = tmp_path / "labels.csv"
    _chain_table().to_csv(table, index=False)
    assert main(["graph", "check", str(g), "--labels", str(table), "--permutations", "10"]) == 0
    assert "rows used" in capsys.readouterr().out
    _chain_table().drop(columns=["c"]).to_csv(table, index=False)
    r = run_cli("graph", "check", str(g), "--labels", str(table))
    assert r.returncode == 2 and "c" in r.stderr and "Traceback" not in r.stderr


def test_graph_check_headline_and_exit_status_follow_the_violations(tmp_path, capsys):
    # a -> b <- c claims a _||_ c, which the chain a -> b -> c in the data contradicts
    wrong = tmp_path / "collider.yaml"
    wrong.write_text("nodes: [a, b, c]\nedges: [[a, b], [c, b]]\n")
    table = tmp_path / "labels.csv"
    _chain_table().to_csv(table, index=False)
    assert main(["graph", "check", str(wrong), "--labels", str(table), "--permutations", "10"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("REJECTED: violations found: the data contradicts 2 of the 2 local Markov") and "a is not independent of c" in out


def test_do_sets_with_equals_and_shifts_only_with_plus_or_minus_equals():
    from causaldiffae.cli import _parse_do
    from causaldiffae.counterfactual import Shift
    from causaldiffae.errors import InterventionError

    do = _parse_do(["light=120", "angle+=10", "x-=2", "y=-3", "z = 4"])
    assert do == {"light": 120.0, "angle": Shift(10.0), "x": Shift(-2.0), "y": -3.0, "z": 4.0}
    assert do["angle"](5.0) == 15.0 and do["x"](5.0) == 3.0
    with pytest.raises(InterventionError, match=r"'angle=\+10' is ambiguous: write angle\+=10 to shift angle by 10, "
                                                r"or angle=10 to set it to 10"):
        _parse_do(["angle=+10"])
    for bad in ["light", "light=", "=3", "light=abc", "light+=", "light=inf"]:
        with pytest.raises(InterventionError, match="malformed --do|finite"):
            _parse_do([bad])
    with pytest.raises(InterventionError, match="names 'a' twice"):
        _parse_do(["a=1", "a+=2"])


def _subparsers(parser, prefix=()):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _subparsers(sub, (*prefix, name))


def test_every_option_has_a_line_of_help_and_help_shows_defaults():
    import argparse

    from causaldiffae.cli import build_parser

    commands = dict(_subparsers(build_parser()))
    assert {("counterfactual",), ("sample",), ("graph", "check"), ("evaluate",), ("demo",)} <= set(commands)
    for path, sub in commands.items():
        for action in sub._actions:
            if action.dest != "help" and not isinstance(action, argparse._SubParsersAction):
                assert action.help, f"causaldiffae {' '.join(path)}: {action.dest} has no help"
    text = " ".join(commands[("counterfactual",)].format_help().split())
    from causaldiffae import counterfactual as cf

    for shown in (f"(default: {cf.DEFAULT_STEPS})", f"(default: {cf.DEFAULT_REFINE})", "(default: 1.0)", "(default: ddim)",
                  "angle+=10", "angle=-10 sets -10"):
        assert shown in text
    sample = " ".join(commands[("sample",)].format_help().split())
    assert f"(default: {cf.DEFAULT_SAMPLE_STEPS})" in sample
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "(default: 10 20 50 100)" in " ".join(commands[("evaluate",)].format_help().split())


@pytest.mark.parametrize("argv, message", [
    (["counterfactual", "--run", "pendulum", "--data", "pendulum", "--strength", "-1"], "argument --strength: must be >= 0, got -1"),
    (["counterfactual", "--run", "pendulum", "--data", "pendulum", "--steps", "0"], "argument --steps: must be a whole number >= 1, got 0"),
    (["counterfactual", "--run", "pendulum", "--data", "pendulum", "--n", "2.5"], "argument --n: '2.5' is not a whole number"),
    (["counterfactual", "--run", "pendulum", "--data", "pendulum", "--seed", "-1"], "argument --seed: must be a whole number >= 0, got -1"),
    (["counterfactual", "--run", "pendulum", "--data", "pendulum", "--refine", "-1"], "argument --refine: must be a whole number >= 0"),
    (["counterfactual", "--run", "pendulum", "--images", "NOPE.png"], "--images: file 'NOPE.png' does not exist"),
    (["counterfactual", "--run", "pendulum", "--data", "pendulum", "--do", "angle=+10"], "'angle=+10' is ambiguous"),
    (["sample", "--run", "pendulum", "--n", "abc"], "argument --n: 'abc' is not a whole number"),
    (["sample", "--run", "pendulum", "--strength", "nan"], "argument --strength: must be a finite number, got nan"),
    (["data", "pendulum", "--size", "3"], "argument --size: must be a whole number between 8 and 1024, got 3"),
    (["data", "pendulum", "--n", "0"], "argument --n: must be a whole number >= 1, got 0"),
    (["graph", "check", "pendulum", "--labels", "NOPE.csv"], "--labels: file 'NOPE.csv' does not exist"),
    (["graph", "check", "pendulum", "--labels", "README.md", "--permutations", "0"], "argument --permutations: must be a whole number >= 1"),
    (["graph", "check", "pendulum", "--labels", "README.md", "--significance", "1.5"], "argument --significance: must be > 0 and < 1, got 1.5"),
    (["evaluate", "--run", "pendulum", "--data", "pendulum", "--n", "0"], "argument --n: must be a whole number >= 1, got 0"),
    (["evaluate", "--run", "pendulum", "--data", "pendulum", "--cycles", "1", "0"], "argument --cycles: must be a whole number >= 1, got 0"),
    (["evaluate", "--run", "pendulum", "--data", "pendulum", "--predictors", "NOPE"], "--predictors: file 'NOPE' does not exist"),
    (["evaluate", "--run", "pendulum", "--data", "pendulum", "--metrics", "speed"], "unknown metric(s) ['speed']"),
    (["demo", "--n", "0"], "argument --n: must be a whole number >= 1, got 0"),
    (["demo", "--strength", "-2"], "argument --strength: must be >= 0, got -2"),
    (["predictors", "--run", "pendulum", "--data", "pendulum", "--steps", "0"], "argument --steps: must be a whole number >= 1, got 0"),
    (["predictors", "--graph", "pendulum", "--data", "pendulum", "--out", "p.bin"], "the predictors file must end in .safetensors"),
    (["predictors", "--run", "pendulum", "--data", "pendulum", "--augment", "angle"], "argument --augment: 'angle': expected NODE:shift="),
    (["predictors", "--run", "pendulum", "--data", "pendulum", "--augment", "angle:turn=3"], "argument --augment: augmentation 'turn=3': expected shift=PIXELS,rotate=DEGREES"),
    (["export", "--run", "pendulum", "-o", "model.bin"], "the exported file must end in .safetensors"),
    (["demo", "-o", "README.md"], "-o 'README.md' is a file; give a folder"),
    (["evaluate", "--run", "pendulum", "--data", "pendulum", "-o", "README.md"], "-o 'README.md' is a file; give a folder"),
])
def test_user_mistakes_exit_2_with_one_line_before_any_work(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # README.md is a text file that exists, for the options checked after --labels
    out = tmp_path / "out"
    needs_out = (argv[0] in ("counterfactual", "sample", "evaluate", "demo") or argv[:1] == ["data"]) and "-o" not in argv
    flag = "--out" if argv[0] == "data" else "-o"
    full = [*argv, flag, str(out)] if needs_out else argv
    assert main(full) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, err
    assert not out.exists() and not list(tmp_path.glob(".*partial"))


@pytest.mark.parametrize("argv, message", [
    (["graph", "check", "pendulum", "--labels", "{binary}"], "cannot read {binary} as a CSV label table"),
    (["graph", "render", "{binary_dot}", "-o", "{out}.png"], "{binary_dot}"),
    (["counterfactual", "--run", "pendulum", "--images", "{text}", "-o", "{out}"], "cannot read image {text}"),
    (["counterfactual", "--run", "{text}", "--data", "pendulum", "-o", "{out}"], "{text}"),
    (["evaluate", "--run", "pendulum", "--data", "{text}", "-o", "{out}"], "{text}"),
])
def test_files_that_are_not_images_or_not_text_exit_2(argv, message, tmp_path, capsys):
    paths = {"binary": tmp_path / "labels.csv", "binary_dot": tmp_path / "g.dot", "text": tmp_path / "notes.txt",
             "out": tmp_path / "out"}
    paths["binary"].write_bytes(bytes(range(256)) * 8)
    paths["binary_dot"].write_bytes(bytes(range(256)) * 8)
    paths["text"].write_text("not an image\n")
    fill = {k: str(v) for k, v in paths.items()}
    assert main([a.format(**fill) for a in argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message.format(**fill) in err and "Traceback" not in err, err
    assert not paths["out"].exists() and not Path(str(paths["out"]) + ".png").exists()


def test_data_never_replaces_a_folder_it_did_not_generate(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "labels.csv").write_text("file,a\nx.png,1\n")  # the user's own data set
    assert main(["data", "pendulum", "--n", "4", "--size", "16", "--out", str(mine)]) == 2
    assert "is not a generated data set (no generator.json)" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["labels.csv"]
    out = tmp_path / "gen"
    assert main(["data", "pendulum", "--n", "4", "--size", "16", "--out", str(out)]) == 0
    assert main(["data", "pendulum", "--n", "5", "--size", "16", "--out", str(out)]) == 0  # its own: replaced
    assert len(pd.read_csv(out / "labels.csv")) == 5 and not list(tmp_path.glob(".*partial"))


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="the machine has a CUDA device")
def test_device_cuda_without_one_is_a_one_line_error(tmp_path, capsys):
    assert main(["sample", "--run", "pendulum", "--device", "cuda", "-o", str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err.strip() == ("causaldiffae sample: error: --device cuda: no CUDA device is available "
                                               "here; use --device cpu")
    assert not (tmp_path / "s").exists()


def test_help_and_version_exit_0(capsys):
    assert main(["counterfactual", "--help"]) == 0
    assert "--strength" in capsys.readouterr().out
    assert main(["--version"]) == 0


@pytest.mark.parametrize("bad", [["--threads", "-1"], ["--jobs", "0"], ["--n", "0"], ["--predictor-samples", "0"]])
def test_ablate_refuses_bad_counts_before_any_work(tmp_path, capsys, bad):
    out = tmp_path / "sweep"
    assert main(["ablate", "label-fraction", "--graph", "pendulum", "--data", "pendulum", *bad, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and bad[0] in err[0] and "Traceback" not in err[0]
    assert not out.exists()
