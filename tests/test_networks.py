"""Behaviour of the UNet noise predictor, the semantic encoder and the fast inference wrapper."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from causaldiffae.errors import ConfigError, DataError
from causaldiffae.networks import EncoderConfig, FastUNet, SemanticEncoder, UNet, UNetConfig


def tiny(size: int = 16, channels: int = 3, **kw) -> UNetConfig:
    base = dict(image_size=size, in_channels=channels, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                attention_resolutions=(8,), num_heads=2, num_groups=4)
    return UNetConfig(**{**base, **kw})


def randomise_zero_init(unet: UNet) -> UNet:
    """Re-initialise the zero-initialised convs so that eps is non-trivial."""
    for name, m in unet.named_modules():
        if isinstance(m, torch.nn.Conv2d) and name.endswith(("conv2", "proj", "conv_out")):
            m.reset_parameters()
    return unet


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("size", [16, 32])
def test_unet_and_encoder_shapes(channels: int, size: int) -> None:
    unet = randomise_zero_init(UNet(tiny(size, channels), cond_dim=5))
    x = torch.rand(3, channels, size, size) * 2 - 1
    eps = unet(x, torch.tensor([0, 10, 999]), torch.randn(3, 5))
    assert eps.shape == x.shape and eps.dtype == torch.float32 and torch.isfinite(eps).all()
    assert unet(x, 500, None).shape == x.shape  # scalar t, null condition
    enc = SemanticEncoder(EncoderConfig(size, channels, base_channels=8, channel_mult=(1, 2), num_groups=4), 7)
    mu, logvar = enc(x)
    assert mu.shape == logvar.shape == (3, 7) and mu.dtype == torch.float32


def test_wrong_input_gives_clear_error() -> None:
    unet, enc = UNet(tiny(16, 3), cond_dim=4), SemanticEncoder(EncoderConfig(16, 3, 8, (1, 2), 4), 4)
    with pytest.raises(DataError, match=r"expected images of size 16x16, got 32x32"):
        unet(torch.zeros(2, 3, 32, 32), 0, None)
    with pytest.raises(DataError, match=r"expected 3 image channels, got 1"):
        unet(torch.zeros(2, 1, 16, 16), 0, None)
    with pytest.raises(DataError, match=r"expected 3 image channels, got 4"):
        enc(torch.zeros(2, 4, 16, 16))
    with pytest.raises(DataError, match=r"expected images of shape"):
        unet(torch.zeros(3, 16, 16), 0, None)
    with pytest.raises(DataError, match=r"cond of shape \(2, 4\), got \(2, 3\)"):
        unet(torch.zeros(2, 3, 16, 16), 0, torch.zeros(2, 3))
    with pytest.raises(ConfigError, match="not divisible"):
        UNetConfig(image_size=36, channel_mult=(1, 2, 4, 8))
    with pytest.raises(ConfigError):
        UNet(tiny(), cond_dim=4, null_cond="mean")


def test_configs_round_trip_through_dicts() -> None:
    for cfg in (UNetConfig(), UNetConfig.gpu_preset(), EncoderConfig(), EncoderConfig.gpu_preset()):
        d = dataclasses.asdict(cfg)
        assert type(cfg)(**d) == cfg == type(cfg).from_dict(cfg.to_dict())
    assert UNetConfig.gpu_preset().base_channels == 128


def test_default_config_is_a_few_million_parameters() -> None:
    n = sum(p.numel() for p in UNet(UNetConfig(), cond_dim=16).parameters())
    assert 2e6 < n < 6e6


def test_fresh_unet_predicts_zero() -> None:
    """Zero-initialised output conv: an untrained network predicts eps = 0."""
    unet = UNet(tiny(), cond_dim=4)
    assert unet(torch.randn(2, 3, 16, 16), 3, torch.randn(2, 4)).abs().max() == 0


@pytest.mark.parametrize("null_cond", ["learned", "zero"])
def test_null_condition_and_per_example_mask(null_cond: str) -> None:
    unet = randomise_zero_init(UNet(tiny(), cond_dim=4, null_cond=null_cond))
    if null_cond == "learned":
        assert isinstance(unet.null_cond, torch.nn.Parameter) and unet.null_cond.abs().sum() == 0
        with torch.no_grad():
            unet.null_cond.normal_()
    else:
        assert not any(p is unet.null_cond for p in unet.parameters())
    x, t, z = torch.randn(4, 3, 16, 16), torch.tensor([1, 200, 500, 900]), torch.randn(4, 4)
    mask = torch.tensor([True, False, True, False])
    mixed, cond, null = unet(x, t, z, mask), unet(x, t, z), unet(x, t, None)
    torch.testing.assert_close(mixed[mask], cond[mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(mixed[~mask], null[~mask], atol=1e-5, rtol=0)
    assert (cond - null).abs().max() > 1e-3  # the condition matters
    null_vec = unet.null_cond.detach()[None].expand(4, -1)
    torch.testing.assert_close(null, unet(x, t, null_vec), atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["auto", "jit", "channels_last"])
def test_fast_inference_matches_eager(mode: str) -> None:
    unet = randomise_zero_init(UNet(tiny(), cond_dim=4)).eval()
    x, t, z = torch.randn(5, 3, 16, 16), torch.randint(0, 1000, (5,)), torch.randn(5, 4)
    ref = unet(x, t, z).detach()
    fast = FastUNet(unet, mode=mode)
    assert fast.mode == ("channels_last" if mode == "auto" else mode)
    for cond, mask in ((z, None), (None, None), (z, torch.tensor([1, 0, 1, 0, 1], dtype=torch.bool))):
        out = fast(x, t, cond, mask)
        expected = unet(x, t, cond, mask).detach()
        assert (out - expected).abs().max() < 1e-4
        assert not out.requires_grad and not out.is_inference()
    assert (fast(x, t, z) - ref).abs().max() < 1e-4
    with pytest.raises(DataError):
        fast(torch.zeros(2, 3, 8, 8), 0, None)
