"""Shared pytest settings: small, deterministic, single-process runs."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

# Test models are tiny: one thread is as fast as two and never oversubscribes the cores when
# tests start subprocesses (torchrun, the CLI) or share the machine.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_everything():
    import numpy as np
    import torch

    torch.manual_seed(0)
    np.random.seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A tiny CausalDiffAE trained once per session on the two-node world of tests/tiny.py.

    It keeps the legacy model settings (eps-prediction, scale-only AdaGN, no mechanism term, null
    guidance): the bounds of the tests that share it were measured on that model. The
    causal-fidelity settings have their own tiny runs in tests/test_fidelity.py."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from tiny import tiny_dataset, tiny_graph, tiny_run_config

    from causaldiffae.training import train

    run = tmp_path_factory.mktemp("tiny") / "run"
    train(tiny_graph(), tiny_dataset(128), run, tiny_run_config(steps=300, legacy=True, warmup_steps=50, ema_decay=0.95),
          progress=False, data_info={"label_range": {"a": [-0.9, 0.9], "b": [-1.0, 1.0]}})
    return run
