"""`causaldiffae train` as a user meets it: budgets, refusals, Ctrl-C, resume, the first-hour path.

Every test runs the real command (causaldiffae.cli.main) on a tiny model and a small folder of
synthetic discs (experiments/make_discs.py), for a few steps.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
import yaml

from causaldiffae.checkpoint import load_checkpoint
from causaldiffae.cli import main
from causaldiffae.errors import ConfigError
from causaldiffae.model import CausalDiffAE
from causaldiffae.training import TrainConfig, parse_duration

from tiny import tiny_run_config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

from make_discs import GRAPH_DOT, make_discs  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A user's own graph (DOT) and folder (40 discs of 16x16, 8 of them test) plus a tiny model config."""
    root = tmp_path_factory.mktemp("discs")
    make_discs(root / "discs", n=40, n_test=8, pixels=16, seed=1)
    (root / "discs.dot").write_text(GRAPH_DOT)
    cfg = tiny_run_config()
    (root / "tiny.yaml").write_text(yaml.safe_dump({"model": json.loads(json.dumps(cfg.model.to_dict())),
                                                     "train": {"batch_size": 8, "lr": 2e-3}}))
    return root


def _new(world, out, *extra) -> list[str]:
    return ["train", "--graph", str(world / "discs.dot"), "--data", str(world / "discs"), "--config", str(world / "tiny.yaml"),
            "--out", str(out), "--no-progress", "--check-images", "4", *extra]


def _steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]


def _one_line_error(capsys, *needles) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err


# ------------------------------------------------------------------------------------ schedule
def test_schedule_follows_the_run_length_and_explicit_values_win():
    short = TrainConfig(steps=400).resolved()
    assert (short.warmup_steps, short.sample_every, short.checkpoint_every, short.log_every) == (80, 100, 40, 8)
    assert short.ema_decay == pytest.approx(0.95)  # EMA horizon 1 / (1 - decay) = 20 steps = a twentieth
    assert 0 < short.gamma(40) < 1 == short.gamma(80)  # the warm-up ends inside the run
    long = TrainConfig(steps=20000).resolved()  # a long run keeps the long-run values
    assert (long.warmup_steps, long.ema_decay, long.sample_every, long.checkpoint_every, long.log_every) == (2000, 0.999, 2000, 500, 50)
    mine = TrainConfig(steps=400, warmup_steps=7, ema_decay=0.5, sample_every=0).resolved()
    assert (mine.warmup_steps, mine.ema_decay, mine.sample_every) == (7, 0.5, 0)
    # a config saved before the rule (explicit numbers) keeps them
    from causaldiffae.training import RunConfig

    old = RunConfig.from_dict({"train": {"steps": 400, "warmup_steps": 2000, "ema_decay": 0.999, "sample_every": 2000,
                                         "checkpoint_every": 500, "log_every": 50}}).train.resolved()
    assert (old.warmup_steps, old.ema_decay, old.sample_every) == (2000, 0.999, 2000)


def test_time_budgets_are_read_or_refused():
    assert parse_duration("90s") == 90 and parse_duration("10m") == 600 and parse_duration("1h") == 3600
    assert parse_duration("1h30m") == 5400 and parse_duration("1.5h") == 5400 and parse_duration("45") == 45
    for bad in ("", "10x", "m", "-5m", "0s", "ten minutes"):
        with pytest.raises(ConfigError):
            parse_duration(bad)


# ------------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize("extra, needle", [
    (["--steps", "0"], "--steps"), (["--steps", "-3"], "--steps"), (["--label-fraction", "0"], "--label-fraction"),
    (["--label-fraction", "1.5"], "--label-fraction"), (["--time", "10 minutes"], "time budget"),
    (["--batch-size", "0"], "--batch-size"), (["--check-images", "-1"], "--check-images"),
])
def test_bad_arguments_exit_2_with_one_line_and_write_nothing(world, tmp_path, capsys, extra, needle):
    out = tmp_path / "run"
    assert main(_new(world, out, *extra)) == 2
    _one_line_error(capsys, needle)
    assert not out.exists()


def test_a_new_run_needs_graph_and_data_and_resume_needs_a_run(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "r"), "--steps", "2"]) == 2
    _one_line_error(capsys, "--graph and --data")
    assert not (tmp_path / "r").exists()
    assert main(["train", "--resume", str(tmp_path / "nothing"), "--steps", "2"]) == 2
    _one_line_error(capsys, "nothing", "checkpoint")


def test_existing_run_is_refused_unless_resume_or_overwrite(world, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_new(world, run, "--steps", "2")) == 0
    before = (run / "checkpoint.safetensors").read_bytes()
    capsys.readouterr()
    assert main(_new(world, run, "--steps", "3")) == 2
    _one_line_error(capsys, str(run), "--resume", "--overwrite")
    assert (run / "checkpoint.safetensors").read_bytes() == before  # untouched
    assert main(_new(world, run, "--steps", "3", "--overwrite")) == 0
    assert load_checkpoint(run)[1]["step"] == 3
    assert _steps(run) == [1, 2, 3]  # the old run's log went with it


# ----------------------------------------------------------------------- resume and interrupts
def test_resume_needs_neither_graph_nor_data_and_refuses_another_label_fraction(world, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_new(world, run, "--steps", "2", "--label-fraction", "0.5")) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--steps", "4", "--label-fraction", "0.25", "--no-progress"]) == 2
    _one_line_error(capsys, "--label-fraction", "0.25", "0.5")
    assert load_checkpoint(run)[1]["step"] == 2
    assert main(["train", "--resume", str(run), "--steps", "4", "--label-fraction", "0.5", "--no-progress",
                 "--check-images", "0"]) == 0  # the same value is fine
    assert main(["train", "--resume", str(run), "--steps", "5", "--no-progress", "--check-images", "0"]) == 0
    _, meta = load_checkpoint(run)
    assert meta["step"] == 5 and meta["data"]["label_fraction"] == 0.5
    assert _steps(run) == [1, 2, 3, 4, 5]
    assert main(["train", "--resume", str(run), "--steps", "3", "--no-progress"]) == 2  # cannot shrink below the step reached
    _one_line_error(capsys, "step 5")


def _interrupt_at_call(monkeypatch, call: int, how: str) -> None:
    """Make the model's loss raise KeyboardInterrupt (or send SIGINT to this process, as Ctrl-C
    does) on its ``call``-th evaluation, i.e. inside training step ``call - 1``."""
    real = CausalDiffAE.loss_terms
    count = {"n": 0}

    def loss_terms(self, *a, **kw):
        count["n"] += 1
        if count["n"] == call:
            if how == "raise":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, *a, **kw)

    monkeypatch.setattr(CausalDiffAE, "loss_terms", loss_terms)


@pytest.mark.parametrize("how, saved_step", [("raise", 6), ("sigint", 7)])
def test_interrupt_saves_and_resume_continues_without_duplicate_log_steps(world, tmp_path, capsys, monkeypatch, how, saved_step):
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        _interrupt_at_call(m, 7, how)
        # a raised KeyboardInterrupt stops before step 7 (6 whole steps); Ctrl-C lets step 7 finish
        assert main(_new(world, run, "--steps", "12", "--config", str(world / "tiny.yaml"))) == 130
    out = capsys.readouterr().out
    assert load_checkpoint(run)[1]["step"] == saved_step
    assert f"continues from step {saved_step}" in out
    assert _steps(run)[-1] == saved_step
    assert main(["train", "--resume", str(run), "--no-progress", "--check-images", "0"]) == 0
    assert load_checkpoint(run)[1]["step"] == 12
    assert _steps(run) == list(range(1, 13))  # every step once, across the interrupt


def test_log_after_a_kill_between_checkpoints_holds_no_step_twice(world, tmp_path):
    """A run killed after log lines that its last checkpoint does not cover: resume rewrites them once."""
    run = tmp_path / "run"
    assert main(_new(world, run, "--steps", "4", "--check-images", "0")) == 0
    with (run / "log.jsonl").open("a") as f:  # what a SIGKILL at step 6 leaves behind (checkpoint at 4)
        f.write(json.dumps({"step": 5, "loss": 1.0}) + "\n" + json.dumps({"step": 6, "loss": 1.0}) + "\n" + '{"step": 7, "lo')
    assert main(["train", "--resume", str(run), "--steps", "7", "--no-progress", "--check-images", "0"]) == 0
    assert _steps(run) == [1, 2, 3, 4, 5, 6, 7]


# ------------------------------------------------------------------------------ time budgets
def test_a_short_time_budget_plans_stops_and_checkpoints(world, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_new(world, run, "--time", "4s")) == 0
    out = capsys.readouterr().out
    assert "plan for 4 s:" in out
    _, meta = load_checkpoint(run)
    planned = meta["config"]["train"]["steps"]
    assert 1 <= meta["step"] <= planned < 10**6  # the budget fixed the length; never the open bound
    assert _steps(run)[-1] == meta["step"]
    assert (run / "preview.png").exists()
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["steps"] == planned
    # --resume --time extends the run by that much time, keeping its warm-up and EMA
    warmup = TrainConfig(**{k: v for k, v in meta["config"]["train"].items() if k != "betas"}).resolved().warmup_steps
    assert main(["train", "--resume", str(run), "--time", "3s", "--no-progress", "--check-images", "0"]) == 0
    _, meta2 = load_checkpoint(run)
    assert meta2["step"] > meta["step"] and meta2["config"]["train"]["warmup_steps"] == warmup
    assert _steps(run) == sorted(set(_steps(run)))


def test_fit_resumes_with_the_runs_own_graph_and_data(world, tmp_path):
    from causaldiffae.pipeline import fit

    run = tmp_path / "run"
    assert main(_new(world, run, "--steps", "2", "--check-images", "0")) == 0
    fit(None, None, run, resume=True, steps=3, progress=False, check=False)
    assert load_checkpoint(run)[1]["step"] == 3
    with pytest.raises(ConfigError, match="label-fraction"):
        fit(None, None, run, resume=True, steps=4, label_fraction=0.5, progress=False, check=False)


# ------------------------------------------------------------------------------ fine-tuning
def _config_file(world, path: Path, **train) -> Path:
    cfg = yaml.safe_load((world / "tiny.yaml").read_text())
    cfg["train"].update(train)
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_init_from_starts_from_the_models_weights_and_keeps_its_label_scales(world, tmp_path, capsys):
    import torch

    from causaldiffae.training import export_model

    run = tmp_path / "run"
    assert main(_new(world, run, "--steps", "4", "--check-images", "0")) == 0
    exported = export_model(run, tmp_path / "mine.safetensors")  # float16 EMA weights, as shipped models are
    source, source_meta = load_checkpoint(exported)
    # lr 0: the weights cannot move, so the fine-tune's checkpoint must hold exactly the weights it started from
    still = _config_file(world, tmp_path / "still.yaml", lr=0.0)
    ft = tmp_path / "ft"
    assert main(["train", "--init-from", str(exported), "--config", str(still), "--out", str(ft), "--steps", "2",
                 "--no-progress", "--check-images", "0"]) == 0  # no --graph, no --data: the model's own
    tensors, meta = load_checkpoint(ft)
    for name, value in source.items():
        assert torch.equal(tensors["model." + name[len("ema."):]], value.float()), name
        assert torch.equal(tensors[name], value.float()), name
    assert meta["graph"] == source_meta["graph"]  # label scales included
    assert meta["init_from"] == {"model": str(exported), "step": 4}
    assert meta["data"]["source"] == source_meta["data"]["source"]
    # without --config it takes the model's settings; resuming keeps the record
    ft2 = tmp_path / "ft2"
    assert main(["train", "--init-from", str(run), "--out", str(ft2), "--steps", "2", "--no-progress", "--check-images", "0"]) == 0
    assert load_checkpoint(ft2)[1]["config"]["model"] == load_checkpoint(run)[1]["config"]["model"]
    assert main(["train", "--resume", str(ft2), "--steps", "3", "--no-progress", "--check-images", "0"]) == 0
    assert load_checkpoint(ft2)[1]["init_from"]["model"] == str(run)


def test_init_from_refuses_another_network_a_resume_and_a_missing_model(world, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_new(world, run, "--steps", "2", "--check-images", "0")) == 0
    capsys.readouterr()
    cfg = yaml.safe_load((world / "tiny.yaml").read_text())
    cfg["model"]["unet"]["base_channels"] = 8
    wider = tmp_path / "other.yaml"
    wider.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "ft"
    assert main(["train", "--init-from", str(run), "--config", str(wider), "--out", str(out), "--steps", "2", "--no-progress"]) == 2
    _one_line_error(capsys, str(run), "network differs", "other shape")
    assert not (out / "checkpoint.safetensors").exists()
    assert main(["train", "--init-from", str(run), "--resume", str(run), "--steps", "3"]) == 2
    _one_line_error(capsys, "--init-from", "new run")
    assert main(["train", "--init-from", str(tmp_path / "nope"), "--out", str(out), "--steps", "2"]) == 2
    _one_line_error(capsys, "nope")
    unlinked = tmp_path / "unlinked.dot"  # the same nodes without the edge size -> brightness
    unlinked.write_text((world / "discs.dot").read_text().replace("size -> brightness;", ""))
    assert main(["train", "--init-from", str(run), "--graph", str(unlinked), "--data", str(world / "discs"), "--out", str(out),
                 "--steps", "2", "--no-progress"]) == 2
    _one_line_error(capsys, str(run), "another graph")


# ------------------------------------------------------------------------------ what it says
def test_plan_progress_lines_and_final_check(world, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_new(world, run, "--steps", "6")) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("plan: steps 0 -> 6") and str(run / "checkpoint.safetensors") in lines[0]
    assert sum(line.startswith("step ") for line in lines) == len(_steps(run)) == 6  # --no-progress: a line per log row
    assert lines[-1].startswith("held-out (test split) check (4 images")
    assert all(node in lines[-1] for node in ("size", "brightness", "x"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["n"] == 4 and set(summary["interventions"]) == {"size", "brightness", "x"}
    assert (run / "preview.png").exists() and len(list((run / "samples").glob("*.png"))) >= 1


def test_train_help_documents_every_option(capsys):
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--graph", "--data", "--config", "--label-fraction", "--steps", "--time", "--batch-size", "--size",
                 "--variant", "--seed", "--out", "--resume", "--overwrite", "--init-from", "--check-images", "--device", "--no-progress"):
        assert flag in text
    assert "default" in text and "2-core machine" in text  # how long things take


# ------------------------------------------------------------------------------ first hour
def test_first_hour_path_end_to_end(world, tmp_path, capsys):
    """docs/getting-started.md's first hour, tiny: own DOT + own folder -> --time -> counterfactual."""
    run = tmp_path / "runs" / "discs"
    assert main(_new(world, run, "--time", "3s")) == 0
    assert (run / "summary.json").exists()
    out = tmp_path / "cf"
    assert main(["counterfactual", "--run", str(run), "--data", str(world / "discs"), "--n", "4", "--do", "size=8",
                 "--steps", "2", "-o", str(out)]) == 0
    assert (out / "grid.png").exists() and (out / "labels.csv").exists()
