"""The exogenous-independence term (``ModelConfig.independence_weight``): what it measures, that it
is off by default, and that it removes a cause that a child's noise carries."""

from __future__ import annotations

import pytest
import torch

from causaldiffae.errors import ConfigError
from causaldiffae.model import CausalDiffAE, ModelConfig
from tests.tiny import SIZE, tiny_graph, tiny_run_config


def model(**overrides) -> CausalDiffAE:
    torch.manual_seed(0)
    cfg = tiny_run_config().model
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return CausalDiffAE(tiny_graph(), cfg)  # a -> b, two dimensions each


def test_term_is_the_squared_correlation_across_nodes_only():
    m = model()
    g = torch.Generator().manual_seed(0)
    s = torch.randn(4096, 1, generator=g)
    # within a block: perfectly correlated dims (left alone); across blocks: b's noise carries a
    u = torch.cat([s, s, 0.6 * s + 0.8 * torch.randn(4096, 1, generator=g), torch.randn(4096, 1, generator=g)], dim=1)
    got = float(m.independence_loss(u))
    assert got == pytest.approx((0.6 ** 2 + 0.0) / 2, abs=0.03)  # corr 0.6 with one of b's dims, 0 with the other
    independent = torch.randn(4096, 4, generator=g)
    assert float(m.independence_loss(independent)) < 0.01
    assert float(m.independence_loss(u[:2])) == 0.0  # too few rows to measure


def test_off_by_default_and_checked():
    assert ModelConfig().independence_weight == 0.0
    with pytest.raises(ConfigError, match="independence_weight"):
        ModelConfig(independence_weight=-1.0)
    m = model()
    m.train()
    terms = m.loss_terms(torch.rand(6, 3, SIZE, SIZE) * 2 - 1, torch.full((6, 2), float("nan")))
    assert float(terms["independence"]) == 0.0


def test_training_on_the_term_makes_the_encoders_noise_independent():
    """Images whose b-noise read is entangled with a: minimising the term (the encoder only) drives
    the cross-node correlation of the posterior means down, well below where it started."""
    m = model(independence_weight=1.0)
    m.train()
    g = torch.Generator().manual_seed(1)
    images = torch.rand(48, 3, SIZE, SIZE, generator=g) * 2 - 1
    opt = torch.optim.Adam(m.encoder.parameters(), lr=3e-3)

    def measured() -> float:
        with torch.no_grad():
            return float(m.independence_loss(m.encoder(images)[0]))

    # entangle first: train the encoder so that u_b copies u_a
    a, b = m.graph.block("a"), m.graph.block("b")
    for _ in range(60):
        mu = m.encoder(images)[0]
        loss = (mu[:, b] - mu[:, a].detach()).pow(2).mean() - mu[:, a].var(dim=0).clamp(max=1).mean()
        opt.zero_grad(); loss.backward(); opt.step()
    before = measured()
    assert before > 0.3
    for _ in range(150):
        loss = m.independence_loss(m.encoder(images)[0])
        opt.zero_grad(); loss.backward(); opt.step()
    assert measured() < before / 3
