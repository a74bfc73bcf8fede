"""CausalGraph: declaration, file formats, validation errors, labels, render, DoWhy check."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np
import pandas as pd
import pytest
import torch

from causaldiffae.errors import DataError, GraphError
from causaldiffae.graph import CausalGraph, NodeSpec, check, load_label_table, render, shipped_graph

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ["pendulum", "morphomnist", "morphomnist_v2", "causal_circuit"]


def test_shipped_graphs_structure_and_normalisation():
    p = CausalGraph.load("pendulum")
    assert p.nodes == ["angle", "light", "shadow_length", "shadow_position"]
    assert p.parents("shadow_length") == ["angle", "light"] and p.roots == ["angle", "light"]
    assert [(p.specs[n].loc, p.specs[n].scale) for n in p.nodes] == [(2, 42), (104, 44), (7.5, 4.5), (11, 8)]
    assert p.dims == [4, 4, 4, 4] and p.latent_dim == 16 and p.block("light") == slice(4, 8)
    m = CausalGraph.load("morphomnist")
    assert m.edges == [("thickness", "intensity")] and m.parents("digit") == [] and m.children("digit") == []
    assert (m.specs["intensity"].loc, m.specs["intensity"].scale) == (159.5, 95.5)  # from range [64, 255]
    m2 = CausalGraph.load("morphomnist_v2")  # the same graph with the digit categorical
    assert m2.edges == m.edges and m2.classes("digit") == tuple(range(10)) and m2.dims == [4, 4, 10]
    c = CausalGraph.load("causal_circuit")
    assert set(c.edges) == {("arm", "blue"), ("arm", "green"), ("arm", "red"), ("blue", "red"), ("green", "red")}
    assert c.descendants("arm") == ["blue", "green", "red"] and c.ancestors("red") == ["arm", "blue", "green"]
    a = c.adjacency()
    assert a.shape == (4, 4) and a.sum() == 5 and a[c.index("blue"), c.index("red")] == 1 and a[3].sum() == 0
    for name in SHIPPED:  # the bare name and the packaged file are the same graph
        assert shipped_graph(name).parent == REPO / "causaldiffae" / "graphs"
        assert CausalGraph.load(shipped_graph(name)) == CausalGraph.load(name)


def test_shipped_graphs_have_one_source():
    # causaldiffae/graphs/ is the only copy (it ships in the wheel); the top-level graphs/ folder
    # only points there, so no second copy can drift from it.
    top = REPO / "graphs"
    assert sorted(p.name for p in top.iterdir()) == ["README.md"]
    readme = (top / "README.md").read_text()
    assert all(f"{name}.dot" in readme for name in SHIPPED) and "causaldiffae/graphs/" in readme


def test_topological_order_breaks_ties_by_declaration():
    g = nx.DiGraph()
    g.add_nodes_from(["z", "y", "x", "w"])
    g.add_edge("x", "y")  # y must follow x; z and w keep declaration order around them
    cg = CausalGraph.from_networkx(g, default_dim=2)
    assert cg.nodes == ["z", "x", "y", "w"]
    assert cg.block("w") == slice(6, 8) and cg.label_columns == cg.nodes


def _rich_graph() -> CausalGraph:
    specs = [
        NodeSpec("a", dim=3, loc=-2.5e-3, scale=0.125, description="a (deg/4.5), 'q'", column="A col"),
        NodeSpec("b"),
        NodeSpec("c", dim=1, loc=10.0, scale=2.0),
    ]
    return CausalGraph(specs, [("a", "b"), ("b", "c"), ("a", "c")], default_dim=5, name="rich")


@pytest.mark.parametrize("suffix", [".dot", ".gv", ".gml", ".yaml", ".yml", ".json"])
@pytest.mark.parametrize("name", SHIPPED + ["rich"])
def test_every_format_round_trips(tmp_path, suffix, name):
    g = _rich_graph() if name == "rich" else CausalGraph.load(name)
    back = CausalGraph.load(g.save(tmp_path / f"g{suffix}"))
    assert back == g and back.nodes == g.nodes and back.dims == g.dims and back.specs == g.specs
    assert CausalGraph.from_dict(g.to_dict()) == g and CausalGraph.from_networkx(g.to_networkx()) == g
    assert back != CausalGraph(list(g.specs.values()), g.edges[1:], default_dim=g.default_dim, name=g.name)


def test_yaml_parent_lists_edge_pairs_and_ranges(tmp_path):
    p = tmp_path / "g.yaml"
    p.write_text("name: t\ndefault_dim: 2\nnodes:\n  - name: a\n    range: [0, 10]\n"
                 "  - {name: b, parents: [a], dim: 3}\n  - c\nedges: [[b, c]]\n")
    g = CausalGraph.load(p)
    assert g.edges == [("a", "b"), ("b", "c")] and g.dims == [2, 3, 2]
    assert (g.specs["a"].loc, g.specs["a"].scale) == (5.0, 5.0)


BAD = [
    ("cyc.dot", "digraph G {\n a -> b;\n b -> c;\n c -> a;\n}", ["cycle", "a -> b -> c -> a"]),
    ("self.dot", "digraph G { a -> b; b -> b; }", ["self-loop", "b -> b"]),
    ("empty.dot", "digraph G { }", ["empty graph"]),
    ("empty.yaml", "nodes: []\n", ["empty graph"]),
    ("unk.dot", "digraph G { a [colour=red]; }", ["unknown attribute", "'colour'", "node 'a'", "allowed: dim"]),
    ("unk.yaml", "nodes:\n  a: {dimension: 3}\n", ["unknown attribute", "'dimension'", "node 'a'"]),
    ("type.dot", 'digraph G { a [dim="abc"]; }', ["node 'a'", "dim='abc'", "not an integer"]),
    ("type.json", '{"nodes": {"a": {"loc": "north"}}}', ["node 'a'", "loc='north'", "not a number"]),
    ("zero.yaml", "nodes:\n  a: {dim: 0}\n", ["node 'a'", "dim=0", "positive"]),
    ("scale.dot", "digraph G { a [scale=-1]; }", ["node 'a'", "scale=-1.0", "positive"]),
    ("parse.dot", "digraph G {\n a -> b;\n c [dim=;\n}", ["parse.dot, line 3", "DOT parse error"]),
    ("parse.yaml", "nodes:\n  a: {dim: 2\n  b: [\n", ["parse.yaml, line", "YAML error"]),
    ("parse.json", '{"nodes":\n {"a": {,}}}', ["parse.json, line 2", "JSON error"]),
    ("parse.gml", "graph [ directed 1 node [ id 0 label \"a\" ]", ["parse.gml", "GML parse error"]),
    ("dup.yaml", "nodes:\n  - name: a\n  - name: b\n  - name: a\n", ["duplicated node 'a'"]),
    ("dupmap.yaml", "nodes:\n  a: {dim: 1}\n  a: {dim: 2}\n", ["line 3", "duplicated key 'a'"]),
    ("dup.json", '{"nodes": {"a": {}, "a": {"dim": 2}}}', ["duplicated key", "'a'"]),
    ("dup.dot", "digraph G { a [dim=1]; a [dim=2]; }", ["node 'a'", "declared twice", "conflicting dim"]),
    ("undecl.yaml", "nodes:\n  a: {}\n  b: {parents: [a, q]}\n", ["edge q -> b", "undeclared node 'q'", "declared nodes: a, b"]),
    ("undir.dot", "graph G { a -- b; }", ["digraph"]),
    ("badname.yaml", "nodes:\n  'my node': {}\n", ["invalid node name 'my node'"]),
]


@pytest.mark.parametrize("fname,text,needles", BAD, ids=[b[0] for b in BAD])
def test_bad_graph_files_name_the_problem(tmp_path, fname, text, needles):
    p = tmp_path / fname
    p.write_text(text)
    with pytest.raises(GraphError) as err:
        CausalGraph.load(p)
    for needle in needles:
        assert needle in str(err.value), (needle, str(err.value))


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(GraphError, match="not found; shipped graphs: causal_circuit, morphomnist, morphomnist_v2, pendulum"):
        CausalGraph.load(tmp_path / "nope.dot")
    with pytest.raises(GraphError, match="no shipped graph named 'nope'"):
        shipped_graph("nope")
    (tmp_path / "g.txt").write_text("x")
    with pytest.raises(GraphError, match="unknown graph file type '.txt'"):
        CausalGraph.load(tmp_path / "g.txt")


def test_networkx_cycle_and_duplicate_specs():
    g = nx.DiGraph([("a", "b"), ("b", "a")])
    with pytest.raises(GraphError, match=r"cycle: (a -> b -> a|b -> a -> b)"):
        CausalGraph.from_networkx(g)
    with pytest.raises(GraphError, match="duplicated node 'a'"):
        CausalGraph([NodeSpec("a"), NodeSpec("a")], [])


def test_label_normalisation_numpy_torch_nan_and_stats():
    g = CausalGraph.load("pendulum")
    y = np.array([[2.0, 104.0, 12.0, np.nan], [44.0, 60.0, 3.0, 19.0]])
    n = g.normalise(y)
    np.testing.assert_allclose(n[1], [1.0, -1.0, -1.0, 1.0])
    assert np.isnan(n[0, 3]) and n[0, 0] == 0.0
    np.testing.assert_allclose(g.denormalise(n), y)
    t = g.normalise(torch.tensor(y, dtype=torch.float32))
    assert t.dtype == torch.float32 and torch.allclose(t[1], torch.tensor([1.0, -1.0, -1.0, 1.0]))
    assert g.normalise_value("light", 148.0) == 1.0
    bare = CausalGraph([NodeSpec("p", loc=1.0, scale=2.0), NodeSpec("q")], [("p", "q")])
    assert not bare.has_normalisation("q")
    with pytest.raises(GraphError, match="q have no label normalisation"):
        bare.normalise(np.zeros((1, 2)))
    fitted = bare.with_label_stats([0.0, 5.0], [1.0, 3.0])
    assert (fitted.specs["p"].loc, fitted.specs["q"].loc, fitted.specs["q"].scale) == (1.0, 5.0, 3.0)
    table = pd.DataFrame({"p": [0.0, 2.0, np.nan], "q": [1.0, 3.0, 100.0]})
    est = bare.with_label_stats(table)
    assert est.specs["p"].scale == 2.0 and est.specs["q"].loc == pytest.approx(104 / 3)


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_render_writes_nonempty_image_with_do_colours(tmp_path, suffix):
    g = CausalGraph.load("causal_circuit")
    out = render(g, tmp_path / f"g{suffix}", intervened=["blue"], highlight=["arm"])
    data = out.read_bytes()
    assert len(data) > 1000
    if suffix == ".png":
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        text = data.decode()
        assert "blue light intensity" in text and "(dim 4)" in text and "recomputed descendant" in text
    with pytest.raises(GraphError, match="unknown node 'nope'"):
        render(g, tmp_path / "x.png", intervened=["nope"])
    with pytest.raises(GraphError, match="cannot render to '.jpg'"):
        render(g, tmp_path / "x.jpg")


def _pendulum_table(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Labels from the Pendulum scene's equations (method.md section 4), with a little label noise."""
    i = rng.integers(-40, 44, n)
    j = rng.integers(60, 148, n)
    th, ph = i * np.pi / 200, j * np.pi / 200
    p1 = 10 + (-0.5 - 10.5) / np.tan(ph)
    x2, y2 = 10 + 9.5 * np.sin(th), 10.5 - 9.5 * np.cos(th)
    p2 = x2 + (-0.5 - y2) / np.tan(ph)
    length = np.maximum(3, np.abs(p1 - p2)) + 0.05 * rng.standard_normal(n)
    position = (p1 + p2) / 2 + 0.05 * rng.standard_normal(n)
    return pd.DataFrame({"angle": i, "light": j, "shadow_length": length, "shadow_position": position})


def test_check_accepts_true_graph_and_reports_violations_of_a_wrong_one():
    rng = np.random.default_rng(0)
    table = _pendulum_table(200, rng)
    table.loc[[3, 7], "light"] = np.nan
    true = CausalGraph.load("pendulum")
    rep = check(true, table, n_permutations=10)
    assert rep.falsified is False and rep.rejected is False and rep.n_dropped == 2 and rep.n_rows == 198
    assert rep.summary.startswith("Not rejected: the data contradicts none of the")
    assert "no local Markov violations" in str(rep)
    # Wrong: makes angle and light (independent in the data) common effects of the shadow's length and
    # position, so it claims angle _||_ light | shadows, which the collider in the data breaks.
    wrong = CausalGraph.from_networkx(nx.DiGraph([("shadow_length", "angle"), ("shadow_length", "light"),
                                                  ("shadow_position", "angle"), ("shadow_position", "light")]))
    bad = check(wrong, table, n_permutations=10)
    pairs = {frozenset((v.node, v.other)) for v in bad.violations}
    assert frozenset(("angle", "light")) in pairs
    assert any(v.given == ["shadow_length", "shadow_position"] for v in bad.violations)
    assert "local Markov violations" in str(bad) and "is not independent of" in str(bad)
    # the headline says so whatever DoWhy's coarser permutation verdict is, and so does `rejected`
    assert bad.rejected is True
    assert bad.summary.startswith(f"REJECTED: violations found: the data contradicts {len(bad.violations)} of the "
                                  f"{bad.n_tests} local Markov conditions")


def test_check_data_errors(tmp_path):
    g = CausalGraph.load("pendulum")
    table = _pendulum_table(20, np.random.default_rng(1))
    with pytest.raises(DataError, match="lacks column.*light.*present: angle, shadow_length, shadow_position"):
        check(g, table.drop(columns=["light"]))
    bad = table.astype({"light": object})
    bad.loc[5, "light"] = "bright"
    with pytest.raises(DataError, match="label column 'light' has non-numeric value 'bright'"):
        check(g, bad)
    csv = tmp_path / "labels.csv"
    table.to_csv(csv, index=False)
    pd.testing.assert_frame_equal(load_label_table(csv), table)
    with pytest.raises(DataError, match="not found"):
        load_label_table(tmp_path / "missing.csv")


def test_a_folder_named_like_a_shipped_graph_does_not_shadow_it(tmp_path, monkeypatch):
    (tmp_path / "pendulum").mkdir()  # e.g. a run folder called pendulum
    monkeypatch.chdir(tmp_path)
    assert CausalGraph.load("pendulum").nodes[0] == "angle"
