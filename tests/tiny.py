"""A tiny two-node world for model, training and counterfactual tests.

Graph ``a -> b``. An image is 16x16 RGB: the left half has brightness ``a``, the right half
brightness ``b`` (both in [-1, 1] label units), with ``b = 0.8 a + 0.2 e``. Everything about the
image is determined by the labels, so a model can learn it in a few hundred CPU steps.
"""

from __future__ import annotations

import numpy as np

from causaldiffae.graph import CausalGraph

SIZE = 16


def tiny_graph(dim: int = 2) -> CausalGraph:
    import networkx as nx

    g = nx.DiGraph()
    g.add_node("a", dim=dim, loc=0.0, scale=0.5)
    g.add_node("b", dim=dim, loc=0.0, scale=0.5)
    g.add_edge("a", "b")
    return CausalGraph.from_networkx(g)


def tiny_labels(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.uniform(-0.9, 0.9, n)
    b = np.clip(0.8 * a + 0.2 * rng.uniform(-1, 1, n), -1, 1)
    return np.stack([a, b], axis=1).astype(np.float32)


def tiny_render(labels: np.ndarray, size: int = SIZE) -> np.ndarray:
    """``(N, 2)`` labels -> ``(N, size, size, 3)`` uint8 images."""
    n = labels.shape[0]
    img = np.zeros((n, size, size, 3), np.float32)
    img[:, :, : size // 2, :] = labels[:, 0, None, None, None]
    img[:, :, size // 2 :, :] = labels[:, 1, None, None, None]
    img[:, :, :, 2] = -0.5  # a constant blue channel
    return np.round((img + 1) * 127.5).clip(0, 255).astype(np.uint8)


def tiny_dataset(n: int = 64, seed: int = 0):
    from causaldiffae.data import ImageLabelDataset

    labels = tiny_labels(n, seed)
    return ImageLabelDataset.from_arrays(tiny_render(labels), labels, ["a", "b"])


def legacy_model_fields() -> tuple[dict, dict]:
    """The model and UNet settings of models trained before the causal-fidelity fields existed."""
    from causaldiffae.model import LEGACY_MODEL_FIELDS
    from causaldiffae.networks import LEGACY_UNET_FIELDS

    return dict(LEGACY_MODEL_FIELDS), dict(LEGACY_UNET_FIELDS)


def tiny_run_config(steps: int = 60, legacy: bool = False, **train):
    """The tiny world's run config: the library's model defaults at a tiny size, or with
    ``legacy=True`` the settings of the first shipped models (see :func:`legacy_model_fields`)."""
    from causaldiffae.model import ModelConfig
    from causaldiffae.networks import EncoderConfig, UNetConfig
    from causaldiffae.training import RunConfig, TrainConfig

    model_fields, unet_fields = legacy_model_fields() if legacy else ({}, {})
    model = ModelConfig(
        unet=UNetConfig(image_size=SIZE, in_channels=3, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                        attention_resolutions=(), num_groups=4, **unet_fields),
        encoder=EncoderConfig(image_size=SIZE, in_channels=3, base_channels=8, channel_mult=(1, 2), num_groups=4),
        timesteps=100,
        mechanism_hidden=16,
        **model_fields,
    )
    defaults = dict(steps=steps, batch_size=16, lr=2e-3, warmup_steps=10, checkpoint_every=20, log_every=5,
                    sample_every=0, ema_decay=0.9, precision="fp32")  # fp32: exact comparisons hold on any CPU
    defaults.update(train)
    return RunConfig(model=model, train=TrainConfig(**defaults))
