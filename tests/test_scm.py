"""LatentSCM: compiled structure, abduction, interventions (tensor and Pyro level), labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyro
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyro import poutine
from pyro.infer.inspect import get_model_relations

from causaldiffae.errors import InterventionError
from causaldiffae.graph import CausalGraph, NodeSpec
from causaldiffae.scm import LatentSCM

SHIPPED = ["pendulum", "morphomnist", "morphomnist_v2", "causal_circuit"]


@pytest.fixture(autouse=True)
def _fresh_param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def _assert_relations_match_graph(g: CausalGraph, scm: LatentSCM) -> None:
    labels = torch.zeros(3, g.n_nodes)
    rel = get_model_relations(scm, model_kwargs={"labels": labels}, include_deterministic=True)["sample_sample"]
    for n in g.nodes:
        # Direct dependencies: z_i reads exactly its declared parents' z and its own u (never a parent's u).
        assert set(rel[f"z_{n}"]) == {f"z_{p}" for p in g.parents(n)} | {f"u_{n}"}, n
        assert rel[f"u_{n}"] == [] and rel[f"y_{n}"] == [f"z_{n}"]
    rel = get_model_relations(scm, model_kwargs={"labels": labels})["sample_sample"]
    for n in g.nodes:  # through the deterministic sites: u of the node and of all its ancestors
        assert set(rel[f"y_{n}"]) == {f"u_{a}" for a in g.ancestors(n) + [n]}, n


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("mechanism", ["mlp", "linear"])
def test_model_relations_recover_shipped_graphs(name, mechanism):
    g = CausalGraph.load(name)
    _assert_relations_match_graph(g, LatentSCM(g, mechanism=mechanism, hidden=8))


@st.composite
def random_dags(draw):
    n = draw(st.integers(1, 6))
    perm = draw(st.permutations(range(n)))  # declaration order differs from the causal order
    edges = [(f"n{perm[i]}", f"n{perm[j]}") for i in range(n) for j in range(i + 1, n) if draw(st.booleans())]
    dims = draw(st.lists(st.integers(1, 3), min_size=n, max_size=n))
    specs = [NodeSpec(f"n{k}", dim=dims[k], loc=0.0, scale=1.0) for k in range(n)]
    return CausalGraph(specs, edges, default_dim=2), set(edges)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(random_dags(), st.sampled_from(["mlp", "linear"]))
def test_model_relations_recover_random_dags(dag, mechanism):
    pyro.clear_param_store()
    g, edges = dag
    assert set(g.edges) == edges
    assert all(g.index(a) < g.index(b) for a, b in edges)
    _assert_relations_match_graph(g, LatentSCM(g, mechanism=mechanism, hidden=4))


def _linear_chain(dim: int = 1, loc: float = 0.0, scale: float = 1.0) -> tuple[CausalGraph, LatentSCM]:
    """a -> b -> c, a -> c with b = 2a + 0.5 + u_b and c = -a + 3b + u_c (per coordinate)."""
    g = CausalGraph([NodeSpec(n, dim=dim, loc=loc, scale=scale) for n in "abc"], [("a", "b"), ("b", "c"), ("a", "c")])
    scm = LatentSCM(g, mechanism="linear").double()
    eye = torch.eye(dim, dtype=torch.float64)
    with torch.no_grad():
        scm.f["a"].bias.zero_()
        scm.f["b"].weight.copy_(2 * eye)
        scm.f["b"].bias.fill_(0.5)
        scm.f["c"].weight.copy_(torch.cat([-eye, 3 * eye], dim=1))
        scm.f["c"].bias.zero_()
    return g, scm


def test_linear_counterfactual_equals_analytic_answer():
    g, scm = _linear_chain(dim=2, loc=1.0, scale=4.0)
    u = torch.randn(5, g.latent_dim, dtype=torch.float64)
    z = scm.mechanisms(u)
    a, b, c = z[:, 0:2], z[:, 2:4], z[:, 4:6]
    torch.testing.assert_close(b, 2 * a + 0.5 + u[:, 2:4])
    torch.testing.assert_close(scm.abduct(z), u, rtol=0, atol=1e-12)
    v = 9.0  # label units -> latent (9 - 1) / 4 = 2
    zc = scm.intervene(z, {"a": v})
    a2 = torch.full_like(a, 2.0)
    b2 = b + 2 * (a2 - a)
    c2 = c - (a2 - a) + 3 * (b2 - b)
    torch.testing.assert_close(zc, torch.cat([a2, b2, c2], dim=1))
    zc = scm.intervene(z, {"b": -3.0})  # (-3 - 1) / 4 = -1; a untouched, c = c - 3b + 3b'
    assert torch.equal(zc[:, 0:2], a)
    torch.testing.assert_close(zc[:, 4:6], c + 3 * (-1.0 - b))


def test_counterfactual_agrees_with_dowhy_gcm():
    """Labels from a linear additive-noise SCM; DoWhy fits an invertible SCM to 3000 samples, ours holds
    the true coefficients. Tolerance 0.1: DoWhy's fitted coefficients carry an O(1/sqrt(n)) error."""
    from dowhy import gcm

    rng = np.random.default_rng(0)
    n = 3000
    a = rng.normal(0, 1, n)
    b = 2 * a + 0.5 + rng.normal(0, 0.5, n)
    c = -a + 3 * b + rng.normal(0, 0.5, n)
    data = pd.DataFrame({"a": a, "b": b, "c": c})
    import networkx as nx

    gscm = gcm.InvertibleStructuralCausalModel(nx.DiGraph([("a", "b"), ("b", "c"), ("a", "c")]))
    gscm.set_causal_mechanism("a", gcm.EmpiricalDistribution())
    for node in ("b", "c"):
        gscm.set_causal_mechanism(node, gcm.AdditiveNoiseModel(gcm.ml.create_linear_regressor()))
    gcm.fit(gscm, data)
    obs = data.iloc[:20]
    g, scm = _linear_chain()
    z = torch.tensor(obs[g.nodes].to_numpy())
    for node, fn in (("a", lambda x: 1.5 + 0 * x), ("b", lambda x: x + 2.0)):
        theirs = gcm.counterfactual_samples(gscm, {node: fn}, observed_data=obs)
        ours = scm.intervene(z, {node: fn}).detach().numpy()
        np.testing.assert_allclose(ours, theirs[g.nodes].to_numpy(), atol=0.1)


def test_intervention_touches_only_affected_blocks_bit_identically():
    g = CausalGraph.load("causal_circuit")
    scm = LatentSCM(g, hidden=8)
    z = scm.mechanisms(torch.randn(6, g.latent_dim))
    for do in ({"blue": 0.8}, {"arm": 0.1}, {"green": 0.3, "blue": 0.2}, {}):
        assert scm.affected(do) == sorted(set(do) | {d for n in do for d in g.descendants(n)}, key=g.index)
        zc = scm.intervene(z, do)
        for n in g.nodes:
            blk = g.block(n)
            if n in scm.affected(do):
                assert not torch.allclose(zc[:, blk], z[:, blk]), (do, n)
            else:
                assert torch.equal(zc[:, blk], z[:, blk]), (do, n)
        for n, v in do.items():
            assert torch.allclose(zc[:, g.block(n)], torch.full((6, 4), (v - 0.5) / 0.5))
    assert torch.equal(scm.intervene(z, {}), z)


def test_abduction_inverts_mechanisms():
    g = CausalGraph.load("pendulum")
    scm = LatentSCM(g, hidden=16).double()
    u = torch.randn(7, g.latent_dim, dtype=torch.float64)
    torch.testing.assert_close(scm.abduct(scm.mechanisms(u)), u, rtol=0, atol=1e-12)


def test_descendants_use_their_own_abducted_noise():
    g = CausalGraph.load("morphomnist")
    scm = LatentSCM(g, hidden=8)
    u = torch.randn(4, g.latent_dim)
    z = scm.mechanisms(u)
    zc = scm.intervene(z, {"thickness": 5.0})
    t2 = zc[:, g.block("thickness")]
    expected = scm.f["intensity"](t2) + u[:, g.block("intensity")]
    torch.testing.assert_close(zc[:, g.block("intensity")], expected, atol=1e-5, rtol=0)


def test_shift_per_example_and_descendant_override():
    g = CausalGraph.load("pendulum")
    scm = LatentSCM(g, hidden=8)
    z = scm.mechanisms(torch.randn(3, g.latent_dim))
    factual_angle = g.denormalise_value("angle", z[:, g.block("angle")].mean(1))
    zc = scm.intervene(z, {"angle": lambda v: v + 10})
    torch.testing.assert_close(zc[:, g.block("angle")], ((factual_angle + 10 - 2) / 42)[:, None].expand(3, 4))
    per = np.array([0.0, 44.0, -40.0])
    zc = scm.intervene(z, {"angle": per, "shadow_length": torch.tensor(12.0)})
    torch.testing.assert_close(zc[:, g.block("angle")][:, 0], torch.tensor([-2 / 42, 1.0, -1.0]))
    assert torch.allclose(zc[:, g.block("shadow_length")], torch.tensor(1.0))  # the set value wins
    assert not torch.allclose(zc[:, g.block("shadow_position")], z[:, g.block("shadow_position")])


def test_bad_interventions_raise_intervention_error():
    g = CausalGraph.load("pendulum")
    scm = LatentSCM(g, hidden=8)
    z = torch.zeros(2, g.latent_dim)
    with pytest.raises(InterventionError, match="unknown node.*'sun'.*known nodes: angle, light, shadow_length, shadow_position"):
        scm.intervene(z, {"sun": 1.0})
    with pytest.raises(InterventionError, match=r"do\(angle\): value of shape \(3,\)"):
        scm.intervene(z, {"angle": [1.0, 2.0, 3.0]})
    with pytest.raises(InterventionError, match="not finite"):
        scm.intervene(z, {"angle": float("nan")})
    with pytest.raises(InterventionError, match="known nodes"):
        scm.do({"sun": 1.0})


@pytest.mark.parametrize("do", [
    {"arm": 0.2},
    {"blue": torch.tensor([0.1, 0.9, 0.5, 0.0]), "green": lambda v: v * 0.5},
    {"arm": lambda v: v + 0.25, "red": 1.0},
])
def test_pyro_do_agrees_with_tensor_intervention(do):
    g = CausalGraph.load("causal_circuit")
    scm = LatentSCM(g, hidden=8)
    with poutine.trace() as tr:
        with scm.do(do):
            z_do = scm(batch_size=4)
    u = torch.cat([tr.trace.nodes[f"u_{n}"]["value"] for n in g.nodes], dim=1)
    z = scm.mechanisms(u)
    torch.testing.assert_close(z_do, scm.intervene(z, do, u=u), rtol=0, atol=1e-6)
    for n in g.nodes:
        if n not in scm.affected(do):
            assert torch.equal(z_do[:, g.block(n)], z[:, g.block(n)])
    # poutine.do composes with replay: re-running under the same u gives the same counterfactual.
    with scm.do(do):
        again = poutine.replay(scm, trace=tr.trace)(batch_size=4)
    torch.testing.assert_close(again, z_do)


def test_label_sites_are_masked_where_missing():
    g = CausalGraph.load("morphomnist")
    scm = LatentSCM(g, hidden=8)
    labels = torch.tensor([[3.25, 159.5, float("nan")], [6.0, 255.0, 9.0]])
    keep = torch.tensor([[True, False, True], [True, True, True]])
    tr = poutine.trace(scm).get_trace(labels=labels, label_mask=keep)
    tr.compute_log_prob()
    for i, n in enumerate(g.nodes):
        site = tr.nodes[f"y_{n}"]
        assert site["is_observed"] and site["value"].shape == (2, 4)
        z = tr.nodes[f"z_{n}"]["value"]
        target = g.normalise(labels)[:, i : i + 1].nan_to_num(0.0)
        full = torch.distributions.Normal(z, 1.0).log_prob(target.expand(2, 4)).sum(-1)
        expected = torch.where(keep[:, i] & ~labels[:, i].isnan(), full, torch.zeros(2))
        torch.testing.assert_close(site["log_prob"], expected)
    assert tr.nodes["z_digit"]["value"].shape == (2, 4)
    assert "y_digit" not in poutine.trace(scm).get_trace(batch_size=2).nodes  # no labels, no y sites


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda():
    g = CausalGraph.load("pendulum")
    scm = LatentSCM(g, hidden=8).cuda()
    labels = torch.tensor([[1.0, 100.0, float("nan"), 10.0]], device="cuda")
    z = scm(labels=labels)
    assert z.device.type == "cuda"
    zc = scm.intervene(z, {"angle": lambda v: v + 1})
    assert zc.device.type == "cuda" and torch.equal(zc[:, g.block("light")], z[:, g.block("light")])
    with scm.do({"light": 90.0}):
        assert scm(batch_size=3).device.type == "cuda"


def test_node_names_that_shadow_module_attributes():
    g = CausalGraph([NodeSpec(n, dim=2, loc=0.0, scale=1.0) for n in ("type", "train", "keys")],
                    [("type", "train"), ("train", "keys")])
    scm = LatentSCM(g, hidden=4)
    assert [k for k, _ in scm.named_parameters()][:2] == ["f.type.bias", "f.train.0.weight"]
    _assert_relations_match_graph(g, scm)
    z = scm.mechanisms(torch.randn(2, 6))
    assert torch.equal(scm.intervene(z, {"keys": 1.0})[:, :4], z[:, :4])
