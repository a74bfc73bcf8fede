"""Checkpoints: round trip, atomic replacement, and clear errors on damaged files."""

from __future__ import annotations

import pytest
import torch

from causaldiffae.checkpoint import load_checkpoint, save_checkpoint
from causaldiffae.errors import CheckpointError


def _tensors():
    return {"w": torch.randn(4, 3), "b": torch.arange(5), "step": torch.tensor(7)}


def test_round_trip_with_metadata(tmp_path):
    path = save_checkpoint(tmp_path / "checkpoint.safetensors", _tensors(), {"step": 7, "graph": {"nodes": ["a"]}})
    tensors, meta = load_checkpoint(tmp_path)  # a run folder resolves to its checkpoint
    assert meta == {"step": 7, "graph": {"nodes": ["a"]}}
    for k, v in _tensors().items():
        if k != "w":
            assert torch.equal(tensors[k], v)
    assert tensors["w"].shape == (4, 3)
    assert not list(tmp_path.glob("*.tmp")), "no temporary file is left behind"
    assert path.exists()


def test_overwrite_replaces_whole_file(tmp_path):
    p = tmp_path / "c.safetensors"
    save_checkpoint(p, {"x": torch.zeros(1000)}, {"step": 1})
    save_checkpoint(p, {"x": torch.ones(3)}, {"step": 2})
    t, meta = load_checkpoint(p)
    assert meta["step"] == 2 and torch.equal(t["x"], torch.ones(3))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at .*nope"):
        load_checkpoint(tmp_path / "nope" / "checkpoint.safetensors")


def test_truncated_file_is_refused(tmp_path):
    p = save_checkpoint(tmp_path / "c.safetensors", _tensors(), {"step": 1})
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(p)


def test_flipped_weight_byte_is_detected(tmp_path):
    p = save_checkpoint(tmp_path / "c.safetensors", {"w": torch.zeros(64)}, {"step": 1})
    data = bytearray(p.read_bytes())
    data[-3] ^= 0xFF  # inside the tensor data, header untouched
    p.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(p)


def test_foreign_safetensors_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(p))
    with pytest.raises(CheckpointError, match="not a causaldiffae checkpoint"):
        load_checkpoint(p)


def test_exported_model_is_small_loads_and_gives_the_same_images(tiny_run, tmp_path):
    from causaldiffae.cli import main
    from causaldiffae.errors import CheckpointError
    from causaldiffae.model import CausalDiffAE
    from causaldiffae.training import train
    from tiny import tiny_dataset, tiny_graph

    out = tmp_path / "tiny.safetensors"
    assert main(["export", "--run", str(tiny_run), "-o", str(out)]) == 0
    assert out.stat().st_size < 0.3 * (tiny_run / "checkpoint.safetensors").stat().st_size
    full, _ = CausalDiffAE.load(tiny_run)
    small, meta = CausalDiffAE.load(out)
    assert meta["exported"]["dtype"] == "float16"
    images, _ = tiny_dataset(4, seed=2).batch(torch.arange(4))
    a = full.counterfactual(images, do={"a": 0.3}, steps=10).images
    b = small.counterfactual(images, do={"a": 0.3}, steps=10).images
    assert float((a - b).abs().mean()) < 0.01  # float16 storage, float32 compute
    run = tmp_path / "run"
    run.mkdir()
    out.rename(run / "checkpoint.safetensors")
    with pytest.raises(CheckpointError, match="exported .inference-only. model"):
        train(tiny_graph(), tiny_dataset(8), run, resume=True, progress=False)


def test_loading_a_model_does_not_import_training(tiny_run):
    # model.py owns building and loading; the training loop (and its DDP imports) is not needed to load.
    import subprocess
    import sys

    code = ("import sys\nfrom causaldiffae.model import CausalDiffAE\n"
            f"m, meta = CausalDiffAE.load({str(tiny_run)!r})\n"
            "assert 'causaldiffae.training' not in sys.modules, sorted(sys.modules)\nprint(meta['step'])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) > 0
