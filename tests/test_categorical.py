"""Categorical nodes: declaration in every graph format, validation, the class block, its
categorical likelihood in the Pyro model, do(class), and DoWhy's view of it."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from causaldiffae.errors import GraphError, InterventionError
from causaldiffae.graph import CausalGraph, check
from causaldiffae.scm import LatentSCM

DOT = """digraph g {
  default_dim=2;
  digit [type=categorical, classes="0, 1, 2, 3", description="digit class"];
  thickness [range="0, 4"];
  intensity [range="0, 10"];
  digit -> thickness;
  thickness -> intensity;
}
"""


def graph() -> CausalGraph:
    return CausalGraph.from_dict({"name": "g", "default_dim": 2, "nodes": {
        "digit": {"type": "categorical", "classes": [0, 1, 2, 3], "description": "digit class"},
        "thickness": {"range": [0, 4], "parents": ["digit"]},
        "intensity": {"range": [0, 10], "parents": ["thickness"]}}})


@pytest.mark.parametrize("suffix", [".dot", ".gml", ".yaml", ".json"])
def test_categorical_nodes_round_trip_every_format(tmp_path, suffix):
    g = graph()
    assert g.is_categorical("digit") and g.classes("digit") == (0.0, 1.0, 2.0, 3.0)
    assert g.dims == [4, 2, 2]  # one logit per class; others default_dim
    assert g.categorical_nodes == ["digit"]
    back = CausalGraph.load(g.save(tmp_path / f"g{suffix}"))
    assert back == g and back.dims == g.dims
    assert CausalGraph.from_networkx(g.to_networkx()) == g


def test_dot_declaration_reads_like_the_yaml_one(tmp_path):
    p = tmp_path / "g.dot"
    p.write_text(DOT)
    assert CausalGraph.load(p) == graph()


def test_networkx_declaration():
    nxg = nx.DiGraph()
    nxg.add_node("c", type="categorical", classes=[1, 5])
    nxg.add_node("y", loc=0, scale=1)
    nxg.add_edge("c", "y")
    g = CausalGraph.from_networkx(nxg)
    assert g.classes("c") == (1.0, 5.0) and g.dims[g.index("c")] == 2


@pytest.mark.parametrize("attrs, message", [
    ({"type": "categorical"}, "needs classes"),
    ({"type": "categorical", "classes": [1]}, "at least 2 classes"),
    ({"type": "categorical", "classes": [1, 1]}, "repeats a class"),
    ({"type": "categorical", "classes": ["a", "b"]}, "is not a number"),
    ({"type": "categorical", "classes": [0, 1], "range": [0, 1]}, "no loc/scale/range"),
    ({"type": "categorical", "classes": [0, 1], "dim": 3}, "must equal the number of classes"),
    ({"type": "ordinal", "classes": [0, 1]}, "is not one of continuous, categorical"),
    ({"classes": [0, 1]}, "only allowed with type=categorical"),
])
def test_bad_categorical_declarations_are_named(attrs, message):
    with pytest.raises(GraphError, match=message) as err:
        CausalGraph.from_dict({"nodes": {"digit": attrs}}, source="g.yaml")
    assert "node 'digit' in g.yaml" in str(err.value)


def test_labels_normalise_to_class_indices_and_back():
    g = graph()
    y = np.array([[2.0, 1.0, 5.0], [np.nan, 3.0, 0.0]])
    n = g.normalise(y)
    assert n[0, 0] == 2 and np.isnan(n[1, 0]) and n[0, 1] == pytest.approx(-0.5)
    assert np.allclose(g.denormalise(n)[0], y[0])
    t = g.normalise(torch.tensor([[3.0, 2.0, 5.0]]))
    assert t[0, 0] == 3 and g.denormalise(t)[0, 0] == 3
    from causaldiffae.errors import DataError

    with pytest.raises(DataError, match="node 'digit': value 7.0 is not one of its classes 0, 1, 2, 3"):
        g.normalise(np.array([[7.0, 1.0, 1.0]]))


def test_pyro_model_has_a_masked_categorical_label_site():
    g = graph()
    scm = LatentSCM(g)
    labels = torch.tensor([[2.0, 1.0, 5.0], [float("nan"), 3.0, 1.0]])
    tr = poutine.trace(scm).get_trace(labels=labels)
    site = tr.nodes["y_digit"]
    fn = site["fn"].base_dist if hasattr(site["fn"], "base_dist") else site["fn"]
    assert isinstance(fn, dist.Categorical) and site["value"].tolist() == [2, 0]
    assert site["fn"]._mask.tolist() == [True, False]  # missing label: masked
    assert isinstance(tr.nodes["y_thickness"]["fn"].base_dist.base_dist, dist.Normal)
    # the log-likelihood of the present label is the log-softmax of its logit
    z = tr.nodes["z_digit"]["value"]
    lp = site["fn"].log_prob(site["value"])
    assert torch.allclose(lp[0], torch.log_softmax(z[0], -1)[2]) and lp[1] == 0


def test_do_sets_the_class_and_recomputes_descendants():
    torch.manual_seed(0)
    g = graph()
    scm = LatentSCM(g)
    z = scm.mechanisms(torch.randn(5, g.latent_dim))
    z_cf = scm.intervene(z, {"digit": 3})
    blk = g.block("digit")
    assert (z_cf[:, blk].argmax(-1) == 3).all()
    assert torch.allclose(z_cf[:, blk].sort(-1).values, z[:, blk].sort(-1).values)  # the same logits, swapped
    assert not torch.equal(z_cf[:, g.block("thickness")], z[:, g.block("thickness")])
    assert torch.equal(scm.intervene(z, {"digit": torch.tensor([0, 1, 2, 3, 0.0])})[:, blk].argmax(-1),
                       torch.tensor([0, 1, 2, 3, 0]))
    # a callable receives the factual class
    seen = []
    scm.intervene(z, {"digit": lambda v: seen.append(v) or torch.zeros_like(v)})
    assert torch.equal(seen[0], z[:, blk].argmax(-1).float())
    with pytest.raises(InterventionError, match=r"do\(digit = 7.0\).*not one of its classes 0, 1, 2, 3"):
        scm.intervene(z, {"digit": 7})
    # the Pyro handler agrees
    with poutine.trace() as tr:
        with scm.do({"digit": 1}):
            z_do = scm(batch_size=5)
    u = torch.cat([tr.trace.nodes[f"u_{n}"]["value"] for n in g.nodes], -1)
    torch.testing.assert_close(z_do, scm.intervene(scm.mechanisms(u), {"digit": 1}, u=u), rtol=0, atol=1e-6)


def test_model_trains_and_reads_classes_with_a_categorical_node():
    from causaldiffae.model import CausalDiffAE
    from tests.tiny import tiny_run_config

    g = graph()
    model = CausalDiffAE(g, tiny_run_config().model)
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    labels = torch.tensor([[0.0, 1.0, 2.0], [1.0, 2.0, 3.0], [3.0, 3.0, 9.0], [float("nan"), 0.5, 1.0]])
    terms = model.loss_terms(images, labels, t=torch.full((4,), 50), noise=torch.randn(4, 3, 16, 16))
    assert torch.isfinite(terms["loss"]) and terms["label"] > 0 and terms["mechanism"] > 0
    terms["loss"].backward()
    model.eval()
    cls = model.predict_labels(model.encode(images)[1])[:, 0]
    assert set(cls.tolist()) <= {0.0, 1.0, 2.0, 3.0}
    res = model.counterfactual(images, do={"digit": 2}, steps=2)
    assert (res.labels_counterfactual[:, 0] == 2).all()


def test_dowhy_sees_categorical_nodes_as_categories():
    g = graph()
    rng = np.random.default_rng(0)
    d = rng.integers(0, 4, 300).astype(float)
    th = d + rng.normal(0, 0.3, 300)
    table = pd.DataFrame({"digit": d, "thickness": th, "intensity": 2 * th + rng.normal(0, 0.3, 300)})
    frame = g.to_dowhy_frame(table)
    assert frame["digit"].dtype == object and set(frame["digit"]) == {"0", "1", "2", "3"}
    assert frame["thickness"].dtype == np.float64
    report = check(g, table, n_permutations=2, max_rows=200)
    assert report.n_rows == 200 and report.n_tests >= 1
