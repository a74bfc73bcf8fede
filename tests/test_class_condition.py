"""What the decoder reads of a categorical node's block (``ModelConfig.class_condition``): the
logits as they are, or their softmax, so that only the class distribution reaches the UNet."""

from __future__ import annotations

import pytest
import torch

from causaldiffae.errors import ConfigError
from causaldiffae.graph import CausalGraph
from causaldiffae.model import CausalDiffAE, ModelConfig
from causaldiffae.networks import UNet
from tests.tiny import tiny_graph, tiny_run_config


def graph() -> CausalGraph:
    return CausalGraph.from_dict({"name": "g", "default_dim": 2, "nodes": {
        "digit": {"type": "categorical", "classes": [0, 1, 2]},
        "thickness": {"range": [0, 4], "parents": ["digit"]}}})


def model(g: CausalGraph | None = None, **overrides) -> CausalDiffAE:
    torch.manual_seed(0)
    cfg = tiny_run_config().model
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return CausalDiffAE(g or graph(), cfg)


def wake(m: CausalDiffAE) -> None:
    """Give the zero-initialised layers (which make a fresh UNet ignore z) random weights."""
    with torch.no_grad():
        for p in m.unet.parameters():
            if not p.any():
                p.normal_(0, 0.1)


def test_probs_hands_the_unet_the_softmax_of_each_class_block_and_the_rest_unchanged():
    m = model(class_condition="probs")
    g = m.graph
    b = g.block("digit")
    assert m.unet.class_blocks == (b,)
    z = torch.randn(5, g.latent_dim) * 3
    mask = torch.tensor([True, True, False, True, True])
    cond = m.unet.resolve_cond(z, mask, 5)
    kept = mask.nonzero().flatten()
    torch.testing.assert_close(cond[kept][:, b], torch.softmax(z[kept][:, b], dim=-1))
    rest = [i for i in range(g.latent_dim) if not b.start <= i < b.stop]
    torch.testing.assert_close(cond[kept][:, rest], z[kept][:, rest])
    torch.testing.assert_close(cond[2], m.unet.null_cond.detach())  # the null condition is used as it is


def test_with_probs_the_decoder_ignores_a_common_offset_of_the_logits_but_follows_the_class():
    m = model(class_condition="probs").eval()
    g = m.graph
    b = g.block("digit")
    wake(m)
    x, t = torch.randn(3, 3, 16, 16), torch.full((3,), 500)
    z = torch.randn(3, g.latent_dim)
    offset = z.clone()
    offset[:, b] += 7.0
    with torch.no_grad():
        eps, eps_offset = m.unet(x, t, z), m.unet(x, t, offset)
        other = z.clone()
        other[:, b] = other[:, b].flip(-1) * 4  # another class distribution
        eps_other = m.unet(x, t, other)
    torch.testing.assert_close(eps_offset, eps, rtol=1e-5, atol=1e-5)
    assert (eps_other - eps).abs().max() > 1e-3

    logits = model(class_condition="logits").eval()  # the raw block: the offset is read too
    wake(logits)
    with torch.no_grad():
        assert (logits.unet(x, t, offset) - logits.unet(x, t, z)).abs().max() > 1e-3


def test_do_on_the_class_makes_it_the_decoders_most_probable_class():
    m = model(class_condition="probs").eval()
    g = m.graph
    b = g.block("digit")
    u = torch.randn(4, g.latent_dim)
    z2 = m.scm.intervene(m.scm.mechanisms(u), {"digit": 2}, u=u)
    cond = m.unet.resolve_cond(z2, None, 4)
    assert torch.equal(cond[:, b].argmax(-1), torch.full((4,), 2))
    torch.testing.assert_close(cond[:, b].sum(-1), torch.ones(4))


def test_graphs_without_categorical_nodes_and_the_logits_setting_pass_the_block_as_it_is():
    assert model(tiny_graph(), class_condition="probs").unet.class_blocks == ()
    assert model(class_condition="logits").unet.class_blocks == ()
    m = model(class_condition="logits")
    z = torch.randn(2, m.graph.latent_dim)
    torch.testing.assert_close(m.unet.resolve_cond(z, None, 2), z)


def test_configs_name_a_bad_value_and_saved_configs_without_the_field_read_logits():
    with pytest.raises(ConfigError, match="class_condition"):
        ModelConfig(class_condition="onehot")
    d = ModelConfig(class_condition="probs").to_dict()
    assert ModelConfig.from_dict(d, saved=True).class_condition == "probs"
    d.pop("class_condition")
    assert ModelConfig.from_dict(d, saved=True).class_condition == "logits"


def test_a_class_block_outside_the_condition_is_refused():
    cfg = tiny_run_config().model.unet
    with pytest.raises(ConfigError, match="class block"):
        UNet(cfg, cond_dim=4, class_blocks=[slice(3, 6)])
