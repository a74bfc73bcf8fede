"""Training: losses fall, labels are learnt, subsets are fixed, runs resume exactly, errors are clear."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from causaldiffae.checkpoint import load_checkpoint
from causaldiffae.errors import CheckpointError, TrainingError
from causaldiffae.model import CausalDiffAE
from causaldiffae.training import train

from tiny import tiny_dataset, tiny_graph, tiny_run_config

ROOT = Path(__file__).resolve().parents[1]


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_short_training_lowers_every_term_and_blocks_track_labels(tmp_path):
    ds = tiny_dataset(96)
    run = tmp_path / "run"
    cfg = tiny_run_config(steps=160, warmup_steps=0, log_every=4, ema_decay=0.0)
    train(tiny_graph(), ds, run, cfg, progress=False)
    log = _log(run)
    first, last = log[:3], log[-3:]
    for term in ("loss", "diffusion", "label"):
        a = np.mean([r[term] for r in first])
        b = np.mean([r[term] for r in last])
        assert b < 0.7 * a, f"{term} did not fall: {a:.4f} -> {b:.4f}"
    # The KL starts near 0 (an uninformative encoder) and must grow while the blocks learn the
    # labels; it settles where the label and KL weights balance instead of running away.
    kl = [r["kl"] for r in log]
    assert max(kl[-5:]) < 50 and abs(kl[-1] - kl[-5]) < 0.5 * kl[-1]
    model, _ = CausalDiffAE.load(run)
    images, labels = ds.batch(torch.arange(len(ds)))
    _, z = model.encode(images)
    pred = model.predict_labels(z)
    for j, node in enumerate(model.graph.nodes):
        r = np.corrcoef(pred[:, j].numpy(), labels[:, j].numpy())[0, 1]
        assert abs(r) > 0.9, f"block {node} correlates with its label only at r={r:.3f}"


def test_label_fraction_keeps_one_fixed_subset_across_resume(tmp_path):
    ds = tiny_dataset(100)
    sub = ds.with_label_fraction(0.1, seed=3)
    assert sub.labelled_count() == 10
    again = ds.with_label_fraction(0.1, seed=3)
    assert torch.equal(sub.label_mask(), again.label_mask())
    # the same examples are labelled whichever batches they appear in
    imgs, labs = sub.batch(torch.arange(100))
    assert int((~torch.isnan(labs)).all(dim=1).sum()) == 10
    run = tmp_path / "run"
    train(tiny_graph(), ds, run, tiny_run_config(steps=20, label_fraction=0.1, seed=3), progress=False)
    _, meta = load_checkpoint(run)
    assert meta["data"]["labelled"] == 10
    digest = meta["labelled_digest"]
    train(tiny_graph(), ds, run, tiny_run_config(steps=40, label_fraction=0.1, seed=3), resume=True, progress=False)
    _, meta = load_checkpoint(run)
    assert meta["step"] == 40 and meta["labelled_digest"] == digest


def _train_script(run: Path, steps: int) -> str:
    return textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(ROOT / 'tests')!r})
        import torch; torch.set_num_threads(1)
        from tiny import tiny_dataset, tiny_graph, tiny_run_config
        from causaldiffae.training import train
        resume = len(sys.argv) > 1
        train(tiny_graph(), tiny_dataset(64), {str(run)!r}, tiny_run_config(steps={steps}, checkpoint_every=5),
              resume=resume, progress=False)
    """)


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    steps = 30
    ref = tmp_path / "ref"
    train(tiny_graph(), tiny_dataset(64), ref, tiny_run_config(steps=steps, checkpoint_every=5), progress=False)

    run = tmp_path / "killed"
    script = tmp_path / "t.py"
    script.write_text(_train_script(run, steps))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(script)], env=env)
    ckpt = run / "checkpoint.safetensors"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists():
            try:
                if load_checkpoint(ckpt)[1]["step"] >= 10:
                    break
            except CheckpointError:
                pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step_at_kill = load_checkpoint(ckpt)[1]["step"]  # never a half-written file
    assert 10 <= step_at_kill <= steps
    subprocess.run([sys.executable, str(script), "resume"], env=env, check=True)
    a, meta = load_checkpoint(ckpt)
    b, _ = load_checkpoint(ref / "checkpoint.safetensors")
    assert meta["step"] == steps
    for k in b:
        if k.startswith("model."):
            assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    ds = tiny_dataset(32)
    run = tmp_path / "run"
    real = CausalDiffAE.loss_terms
    calls = {"n": 0}

    def diverging(self, *args, **kwargs):  # the loss turns NaN at the 26th step (step index 25)
        terms = real(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] > 25:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(CausalDiffAE, "loss_terms", diverging)
    with pytest.raises(TrainingError, match=r"non-finite loss at step 25 .*last good checkpoint .*step 20"):
        train(tiny_graph(), ds, run, tiny_run_config(steps=40, checkpoint_every=10), progress=False)
    tensors, meta = load_checkpoint(run)
    assert meta["step"] == 20
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if v.is_floating_point())


def test_checkpoint_from_another_graph_is_refused(tmp_path):
    run = tmp_path / "run"
    train(tiny_graph(), tiny_dataset(32), run, tiny_run_config(steps=2), progress=False)
    with pytest.raises(CheckpointError, match="trained on another graph"):
        CausalDiffAE.load(run, graph=tiny_graph(dim=3))
    CausalDiffAE.load(run, graph=tiny_graph())  # the same graph loads


def test_corrupt_and_truncated_checkpoints_are_refused(tmp_path):
    run = tmp_path / "run"
    train(tiny_graph(), tiny_dataset(32), run, tiny_run_config(steps=2), progress=False)
    p = run / "checkpoint.safetensors"
    data = p.read_bytes()
    p.write_bytes(data[:-100])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        CausalDiffAE.load(run)
    p.write_bytes(b"garbage" * 10)
    with pytest.raises(CheckpointError):
        CausalDiffAE.load(run)


DDP_SCRIPT = """
import os, sys
sys.path.insert(0, {tests!r})
import torch; torch.set_num_threads(1)
from tiny import tiny_dataset, tiny_graph, tiny_run_config
from causaldiffae.training import train
train(tiny_graph(), tiny_dataset(64), {run!r}, tiny_run_config(steps=4, batch_size=16, checkpoint_every=4), progress=False, device="cpu")
"""


@pytest.mark.slow
def test_two_process_ddp_matches_single_process(tmp_path):
    single = tmp_path / "single"
    train(tiny_graph(), tiny_dataset(64), single, tiny_run_config(steps=4, batch_size=16, checkpoint_every=4), progress=False)
    run = tmp_path / "ddp"
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(tests=str(ROOT / "tests"), run=str(run)))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517", str(script)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    a, _ = load_checkpoint(run)
    b, _ = load_checkpoint(single)
    for k in b:
        if k.startswith("model."):
            assert torch.allclose(a[k], b[k], atol=1e-5), k


def test_train_command_on_a_folder_of_grey_images(tmp_path):
    """A new graph file plus a folder of images just works: channels and label scales come from the data."""
    import pandas as pd
    import yaml
    from PIL import Image

    from causaldiffae.cli import main
    from tiny import tiny_labels, tiny_render

    folder = tmp_path / "grey"
    folder.mkdir()
    labels = tiny_labels(12, seed=4)
    for i, img in enumerate(tiny_render(labels)):
        Image.fromarray(img[..., 0]).save(folder / f"g{i}.png")  # one channel
    pd.DataFrame({"file": [f"g{i}.png" for i in range(12)], "a": labels[:, 0], "b": labels[:, 1]}).to_csv(folder / "labels.csv", index=False)
    (tmp_path / "g.yaml").write_text("nodes:\n  a: {dim: 2}\n  b: {dim: 2, parents: [a]}\n")  # no declared scales
    cfg = tiny_run_config()
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"model": json.loads(json.dumps(cfg.model.to_dict())),
                                                     "train": {"batch_size": 4, "checkpoint_every": 2}}))
    run = tmp_path / "run"
    assert main(["train", "--graph", str(tmp_path / "g.yaml"), "--data", str(folder), "--config", str(tmp_path / "c.yaml"),
                 "--steps", "2", "--out", str(run), "--no-progress"]) == 0
    model, meta = CausalDiffAE.load(run)
    assert model.image_shape == (1, 16, 16)
    assert all(model.graph.has_normalisation(n) for n in model.graph.nodes)  # estimated from the labels
    assert model.sample(2, steps=2).images.shape == (2, 1, 16, 16)


def test_label_term_counts_only_present_labels():
    """Missing labels add nothing to the label term (not the Gaussian's constant); present ones add 0.5 ||y~ - z||^2 >= 0."""
    import pyro

    model = CausalDiffAE(tiny_graph(), tiny_run_config().model).train()
    ds = tiny_dataset(8)
    images, labels = ds.batch(np.arange(8))
    partial = labels.clone()
    partial[:4] = float("nan")

    def terms(y):
        pyro.set_rng_seed(0)
        torch.manual_seed(0)
        return model.loss_terms(images, y)

    full, half, none = terms(labels), terms(partial), terms(torch.full_like(labels, float("nan")))
    assert none["label"].item() == 0.0
    assert 0.0 < half["label"].item() < full["label"].item()
    assert half["labelled"].item() == pytest.approx(0.5)


def test_sample_grid_is_written(tmp_path):
    """The periodic PNG grid of a run (inputs, reconstructions, samples, interventions) renders."""
    from PIL import Image

    from causaldiffae.training import write_sample_grid

    model = CausalDiffAE(tiny_graph(), tiny_run_config().model).eval()
    ds = tiny_dataset(32)
    path = tmp_path / "samples" / "grid.png"
    write_sample_grid(model, ds, path, steps=2, seed=0)
    assert Image.open(path).size[0] > 0
