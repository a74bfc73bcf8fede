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


def test_malformed_do_is_refused():
    from causaldiffae.cli import _parse_do
    from causaldiffae.errors import InterventionError

    do = _parse_do(["light=120", "angle=+10", "x-=2", "y=-3"])
    assert do["light"] == 120 and do["y"] == -3
    assert do["angle"](5.0) == 15.0 and do["x"](5.0) == 3.0
    for bad in ["light", "light=", "=3", "light=abc"]:
        with pytest.raises(InterventionError, match="malformed --do"):
            _parse_do([bad])
