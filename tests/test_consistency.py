"""The categorical pseudo-label term (``ModelConfig.consistency_*``): the image shift it trains
on, which rows it uses, that it is exactly zero with every label present, and that it makes the
class read from a shifted image agree with the class read from the image itself."""

from __future__ import annotations

import pytest
import torch

from causaldiffae.errors import ConfigError
from causaldiffae.graph import CausalGraph
from causaldiffae.model import CausalDiffAE, ModelConfig, shift_images
from tests.tiny import tiny_run_config


def graph() -> CausalGraph:
    return CausalGraph.from_dict({"name": "g", "default_dim": 2, "nodes": {
        "digit": {"type": "categorical", "classes": [0, 1, 2]},
        "thickness": {"range": [0, 4], "parents": ["digit"]}}})


def model(**overrides) -> CausalDiffAE:
    torch.manual_seed(0)
    cfg = tiny_run_config().model
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return CausalDiffAE(graph(), cfg)


def test_shift_moves_the_content_by_the_drawn_offset_and_repeats_the_edge():
    x = torch.randn(3, 2, 8, 8)
    s = 2
    # u picks offset floor(u * 5) - 2: rows get (dy, dx) = (+2, 0), (-1, +1), (0, -2)
    u = torch.tensor([[0.99, 0.5], [0.3, 0.7], [0.5, 0.0]])
    y = shift_images(x, u, s)
    assert y.shape == x.shape
    for row, (dy, dx) in enumerate([(2, 0), (-1, 1), (0, -2)]):
        for r in range(8):
            for c in range(8):
                src = (min(max(r - dy, 0), 7), min(max(c - dx, 0), 7))  # content moves by (dy, dx); edges repeat
                torch.testing.assert_close(y[row, :, r, c], x[row, :, src[0], src[1]], rtol=0, atol=0)
    assert torch.equal(shift_images(x, u, 0), x)


def test_every_offset_is_drawn_and_none_beyond_the_limit():
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 4] = 1.0  # one bright pixel in the middle: its new place is the offset
    seen = set()
    for u in torch.rand(400, 2, generator=torch.Generator().manual_seed(0)):
        r, c = divmod(int(shift_images(x, u[None], 3).flatten().argmax()), 9)
        seen.add((r - 4, c - 4))
    assert seen == {(dy, dx) for dy in range(-3, 4) for dx in range(-3, 4)}


def test_the_term_is_zero_with_every_label_present():
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    labels = torch.tensor([[0.0, 1.0], [1.0, 2.0], [2.0, 3.0], [1.0, 0.5]])
    draws = dict(t=torch.full((4,), 50), noise=torch.randn(4, 3, 16, 16), cond_mask=torch.ones(4, dtype=torch.bool))
    terms = {}
    for weight in (1.0, 0.0):
        m = model(consistency_weight=weight)  # the same weights each time
        torch.manual_seed(3)  # and the same guide draws
        terms[weight] = m.loss_terms(images, labels, **draws)
    assert terms[1.0]["consistency"] == 0
    torch.testing.assert_close(terms[1.0]["loss"], terms[0.0]["loss"], rtol=0, atol=0)  # as if the term were off


def test_unlabelled_rows_get_the_class_read_from_the_image_as_their_target():
    """Threshold 0 and no shift: each unlabelled row's term is -log of its own largest class
    probability, averaged over the unlabelled rows; labelled rows add nothing; a threshold above
    every row's confidence leaves nothing."""
    m = model(consistency_threshold=0.0, consistency_shift=0)
    m.eval()
    images = torch.rand(6, 3, 16, 16) * 2 - 1
    nan = float("nan")
    labels = torch.tensor([[0.0, 1.0], [nan, 2.0], [2.0, nan], [nan, 0.5], [nan, nan], [1.0, 1.0]])
    z = m.scm.mechanisms(m.encoder(images)[0])
    logp = torch.log_softmax(z[:, m.graph.block("digit")], dim=-1)
    missing = torch.isnan(labels[:, 0])
    want = -(logp.max(dim=-1).values * missing).sum() / missing.sum()
    got = m.consistency_loss(images, labels, z)
    torch.testing.assert_close(got.mean(), want)
    assert (got[~missing] == 0).all() and (got[missing] > 0).all()
    m.config.consistency_threshold = float(torch.softmax(z[:, m.graph.block("digit")].detach(), -1).max()) + 1e-6
    assert (m.consistency_loss(images, labels, z) == 0).all()


def test_rows_all_trains_labelled_rows_shifted_copies_towards_their_labels():
    """``consistency_rows="all"``, no shift: a labelled row's term is the cross-entropy of its own
    label (the categorical label term), averaged over the labelled rows, added to the unlabelled
    rows' pseudo-label mean; with every label present it is exactly the label cross-entropy."""
    m = model(consistency_threshold=0.0, consistency_shift=0, consistency_rows="all")
    m.eval()
    images = torch.rand(6, 3, 16, 16) * 2 - 1
    nan = float("nan")
    labels = torch.tensor([[0.0, 1.0], [nan, 2.0], [2.0, nan], [nan, 0.5], [nan, nan], [1.0, 1.0]])
    z = m.scm.mechanisms(m.encoder(images)[0])
    block = z[:, m.graph.block("digit")]
    labelled = ~torch.isnan(labels[:, 0])
    ce = torch.nn.functional.cross_entropy(block, torch.nan_to_num(labels[:, 0]).long(), reduction="none")
    pseudo = -torch.log_softmax(block, -1).max(-1).values
    want = (ce * labelled).sum() / labelled.sum() + (pseudo * ~labelled).sum() / (~labelled).sum()
    torch.testing.assert_close(m.consistency_loss(images, labels, z).mean(), want)
    full = labels.clone()
    full[:, 0] = torch.tensor([0.0, 1.0, 2.0, 2.0, 0.0, 1.0])
    torch.testing.assert_close(m.consistency_loss(images, full, z).mean(),
                               m.scm.label_nll("digit", block, full[:, 0]).mean())


def test_the_term_trains_the_encoder_and_not_the_decoder():
    m = model(consistency_threshold=0.0)
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    labels = torch.tensor([[float("nan"), 1.0]] * 4)
    z = m.scm.mechanisms(m.encoder(images)[0])
    m.consistency_loss(images, labels, z, shift=torch.rand(4, 2)).mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.encoder.parameters())
    assert all(p.grad is None for p in m.unet.parameters())


def test_training_on_the_term_makes_shifted_images_read_as_the_same_class():
    """From a random encoder, a few optimiser steps on the term alone (no labels at all) make the
    class read from shifted copies agree with the class read from the images themselves."""
    m = model(consistency_threshold=0.0, consistency_shift=2)
    g = torch.Generator().manual_seed(1)
    images = torch.rand(32, 3, 16, 16, generator=g) * 2 - 1
    labels = torch.full((32, 2), float("nan"))
    check = torch.rand(32, 2, generator=g)  # shifts never trained on
    block = m.graph.block("digit")

    def agreement() -> float:
        with torch.no_grad():
            z = m.scm.mechanisms(m.encoder(images)[0])
            zs = m.scm.mechanisms(m.encoder(shift_images(images, check, 2))[0])
        return float((z[:, block].argmax(-1) == zs[:, block].argmax(-1)).float().mean())

    before = agreement()
    opt = torch.optim.Adam(m.encoder.parameters(), lr=3e-3)
    for step in range(60):
        z = m.scm.mechanisms(m.encoder(images)[0])
        loss = m.consistency_loss(images, labels, z, shift=torch.rand(32, 2, generator=g)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = agreement()
    assert after >= max(0.9, before)


@pytest.mark.parametrize("field,value,match", [
    ("consistency_threshold", 1.5, "consistency_threshold must be in"),
    ("consistency_shift", 8, r"consistency_shift must be a whole number of pixels in \[0, 8\)"),
    ("consistency_shift", 1.5, "consistency_shift must be a whole number"),
    ("consistency_weight", -1.0, "consistency_weight must be >= 0"),
    ("consistency_rows", "some", "consistency_rows must be one of"),
])
def test_bad_settings_name_the_field(field, value, match):
    d = tiny_run_config().model.to_dict()
    d[field] = value
    with pytest.raises(ConfigError, match=match):
        ModelConfig.from_dict(d)


def test_models_saved_before_the_term_load_without_it():
    d = tiny_run_config().model.to_dict()
    for k in ("consistency_weight", "consistency_threshold", "consistency_shift"):
        del d[k]
    assert ModelConfig.from_dict(d, saved=True).consistency_weight == 0.0
    assert ModelConfig.from_dict(d).consistency_weight == 1.0
