"""The decoder's latent-cycle term (``ModelConfig.cycle_weight``): the latent it asks for, that it
trains the decoder alone, which rows it uses, and that training on it makes the decoder's
high-noise estimate show the change the latent asks for."""

from __future__ import annotations

import pytest
import torch

from causaldiffae.diffusion import NoiseSchedule
from causaldiffae.errors import ConfigError
from causaldiffae.model import CausalDiffAE, ModelConfig
from tests.test_consistency import graph
from tests.tiny import SIZE, tiny_dataset, tiny_graph, tiny_run_config


def model(g=None, **overrides) -> CausalDiffAE:
    torch.manual_seed(0)
    cfg = tiny_run_config().model
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return CausalDiffAE(g if g is not None else graph(), cfg)


def test_request_sets_one_node_to_the_next_rows_value_and_recomputes_its_descendants():
    m = model()  # digit (categorical) -> thickness
    z = torch.randn(4, m.graph.latent_dim)
    values = m.predict_labels(z).roll(1, dims=0)
    pick = torch.tensor([0.1, 0.9, 0.4, 0.6])  # nodes 0, 1, 0, 1
    with torch.no_grad():
        got = m.cycle_request(z, pick)
        for row, i in enumerate([0, 1, 0, 1]):
            name = m.graph.nodes[i]
            want = m.scm.intervene(z, {name: values[:, i]})
            torch.testing.assert_close(got[row], want[row])
    # the asked value is the next row's reading; a root's request leaves nothing else, the child's
    # request leaves the parent bit-identical
    read = m.predict_labels(got)
    assert read[0, 0] == values[0, 0] and read[1, 1].item() == pytest.approx(values[1, 1].item(), abs=1e-5)
    d = m.graph.block("digit")
    assert torch.equal(got[1, d], z[1, d])


def test_term_trains_the_decoder_alone():
    m = model(cycle_weight=1.0)
    m.train()
    images = torch.rand(6, 3, SIZE, SIZE) * 2 - 1
    with torch.no_grad():
        z = m.scm.mechanisms(m.encoder(images)[0])
    t = torch.full((6,), m.config.timesteps * 9 // 10)
    m.cycle_loss(images, z, t=t).sum().backward()
    assert all(p.grad is None for p in m.encoder.parameters())
    assert all(p.grad is None for p in m.scm.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.unet.parameters())
    assert all(p.requires_grad for p in (*m.encoder.parameters(), *m.scm.parameters()))  # restored


def test_term_uses_the_first_cycle_rows_and_leaves_the_loss_alone_at_weight_zero():
    images = torch.rand(6, 3, SIZE, SIZE) * 2 - 1
    labels = torch.tensor([[0.0, 1.0], [1.0, 2.0], [2.0, 3.0], [1.0, 0.5], [0.0, 2.5], [2.0, 1.5]])
    draws = dict(t=torch.full((6,), 80), noise=torch.randn(6, 3, SIZE, SIZE), cond_mask=torch.ones(6, dtype=torch.bool),
                 shift=torch.rand(6, 2), pick=torch.rand(6))
    m = model(cycle_weight=1.0, cycle_rows=4)
    with torch.no_grad():
        z = m.scm.mechanisms(m.encoder(images)[0])
        per_row = m.cycle_loss(images, z, draws["t"], draws["noise"], draws["pick"])
    assert per_row.shape == (6,) and bool((per_row[4:] == 0).all()) and bool((per_row[:4] > 0).all())
    terms = {}
    for weight in (1.0, 0.0):
        m = model(cycle_weight=weight, cycle_rows=4)
        with torch.no_grad():
            terms[weight] = m.loss_terms(images, labels, **draws)
    assert terms[0.0]["cycle"] == 0
    assert float(terms[1.0]["cycle"]) == pytest.approx(float(per_row.mean()), rel=1e-4)
    torch.testing.assert_close(terms[1.0]["loss"] - terms[1.0]["cycle"], terms[0.0]["loss"])


@pytest.mark.parametrize("bad", [{"cycle_weight": -1.0}, {"cycle_rows": 1}, {"cycle_rows": 2.5}, {"cycle_hold_weight": -0.5}])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        ModelConfig(**bad)


def test_predict_x0_inverts_q_sample_for_both_parameterisations():
    x0, noise, t = torch.rand(3, 1, 4, 4), torch.randn(3, 1, 4, 4), torch.tensor([0, 500, 999])
    for prediction in ("eps", "v"):
        s = NoiseSchedule(prediction=prediction)
        x_t = s.q_sample(x0, t, noise)
        torch.testing.assert_close(s.predict_x0(s.target(x0, t, noise), x_t, t), x0, rtol=0, atol=2e-4)


def test_hold_weight_scales_only_the_nodes_a_request_leaves_alone():
    # digit -> thickness: a row that sets digit asks thickness to follow (nothing is held, so the
    # hold weight cannot change it); a row that sets thickness holds digit, whose part scales with it
    images = torch.rand(6, 3, SIZE, SIZE) * 2 - 1
    t, noise = torch.full((6,), 70), torch.randn(6, 3, SIZE, SIZE)
    pick = torch.tensor([0.1, 0.9, 0.2, 0.8, 0.3, 0.7])  # digit, thickness, digit, ...
    per_row = {}
    for hold in (0.0, 1.0, 3.0):
        m = model(cycle_weight=1.0, cycle_rows=6, cycle_hold_weight=hold)
        with torch.no_grad():
            z = m.scm.mechanisms(m.encoder(images)[0])
            per_row[hold] = m.cycle_loss(images, z, t, noise, pick)
    sets_root, sets_child = pick < 0.5, pick >= 0.5
    torch.testing.assert_close(per_row[3.0][sets_root], per_row[0.0][sets_root])
    held = per_row[1.0] - per_row[0.0]  # the held digit's part at weight 1
    assert bool((held[sets_child] > 0).all())
    torch.testing.assert_close(per_row[3.0][sets_child], per_row[0.0][sets_child] + 3 * held[sets_child])
