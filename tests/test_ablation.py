"""Ablation sweeps (causaldiffae.ablation, `causaldiffae ablate`): a user's folder + graph file end to
end, resuming a killed sweep, the plain train commands, the adapter over evaluate()'s result, and a
generated data set with a simulator (references, floor, achieved fraction)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from tiny import SIZE, tiny_labels, tiny_render, tiny_run_config  # noqa: E402

from causaldiffae import ablation  # noqa: E402
from causaldiffae.cli import main  # noqa: E402


def _user_folder(root: Path, n: int = 80) -> tuple[Path, Path, Path]:
    """The tiny world written as a user would: PNGs + labels.csv (with a split column), a DOT graph, a config."""
    folder = root / "data"
    folder.mkdir(parents=True)
    labels = tiny_labels(n, seed=3)
    files = []
    for i, img in enumerate(tiny_render(labels)):
        Image.fromarray(img).save(folder / f"img{i:03d}.png")
        files.append(f"img{i:03d}.png")
    pd.DataFrame({"file": files, "a": labels[:, 0], "b": labels[:, 1],
                  "split": ["test" if i % 4 == 0 else "train" for i in range(n)]}).to_csv(folder / "labels.csv", index=False)
    graph = root / "world.dot"
    graph.write_text("digraph world {\n  a [dim=2, loc=0, scale=0.5];\n  b [dim=2, loc=0, scale=0.5];\n  a -> b;\n}\n")
    config = root / "tiny.yaml"
    d = tiny_run_config(steps=6).to_dict()
    d["train"]["betas"] = list(d["train"]["betas"])
    config.write_text(yaml.safe_dump(d))
    return folder, graph, config


def _args(graph: Path, data: Path, config: Path, out: Path, *extra: str) -> list[str]:
    return ["ablate", "label-fraction", "--graph", str(graph), "--data", str(data), "--config", str(config),
            "--fractions", "0.5", "1", "--seeds", "2", "--steps", "6", "--baselines", "--n", "12", "--eval-steps", "3",
            "--predictor-steps", "20", "--threads", "1", "--no-progress", "--out", str(out), *extra]


def test_sweep_on_a_users_folder_resumes_after_a_kill(tmp_path, monkeypatch, capsys):
    from causaldiffae import pipeline
    from causaldiffae.checkpoint import load_checkpoint

    data, graph, config = _user_folder(tmp_path)
    out = tmp_path / "sweep"
    names = ["causal-0.5-seed0", "causal-0.5-seed1", "causal-1-seed0", "causal-1-seed1"]

    trained: list[str] = []
    real_fit = pipeline.fit

    def counting_fit(graph_, data_, run_dir, *a, **kw):
        trained.append(Path(run_dir).name)
        return real_fit(graph_, data_, run_dir, *a, **kw)

    monkeypatch.setattr(pipeline, "fit", counting_fit)

    # first attempt: killed while the third run is being scored (after its training)
    real_score = ablation.score_run
    scored: list[str] = []

    def dying_score(run_dir, *a, **kw):
        scored.append(Path(run_dir).name)
        if len(scored) == 3:
            raise KeyboardInterrupt
        return real_score(run_dir, *a, **kw)

    monkeypatch.setattr(ablation, "score_run", dying_score)
    assert main(_args(graph, data, config, out)) == 130
    assert trained == names[:3]
    runs = out / "runs"
    assert [(runs / n / ablation.FINISHED).exists() for n in names] == [True, True, False, False]
    assert (runs / names[2] / "checkpoint.safetensors").exists()
    mtimes = {n: (runs / n / "checkpoint.safetensors").stat().st_mtime_ns for n in names[:3]}

    # a run killed before its first checkpoint leaves only a log behind: it is started again from scratch
    (runs / names[3]).mkdir(parents=True)
    (runs / names[3] / "log.jsonl").write_text('{"step": 1, "loss": 1.0}\n')

    # the rerun: nothing finished is retrained or rescored, the killed run is only scored, the last one trained
    monkeypatch.setattr(ablation, "score_run", real_score)
    trained.clear()
    capsys.readouterr()
    assert main(_args(graph, data, config, out)) == 0
    printed = capsys.readouterr().out
    assert trained == [names[3]]
    assert {n: (runs / n / "checkpoint.safetensors").stat().st_mtime_ns for n in names[:3]} == mtimes
    assert all((runs / n / ablation.FINISHED).exists() for n in names)
    assert printed.count("| model |") == 1  # the table is printed once

    # results.csv: one row per run and metric, the four runs and the do-nothing reference
    df = pd.read_csv(out / "results.csv")
    assert set(df["run"]) == set(names) | {"do-nothing"}
    assert not df.duplicated(["run", "metric"]).any()
    for n in names:
        sub = df[df["run"] == n].set_index("metric")["value"]
        for key in ("effectiveness.mean.intervened", "effectiveness.mean.descendants", "reconstruction.steps_3.ssim"):
            assert math.isfinite(sub[key])
    assert not df["metric"].str.startswith("ground_truth").any()  # no simulator: no pixel ground truth
    fractions = df[df["run"].isin(names)].groupby("run")["label_fraction"].first()
    assert fractions.to_dict() == {"causal-0.5-seed0": 0.5, "causal-0.5-seed1": 0.5, "causal-1-seed0": 1.0, "causal-1-seed1": 1.0}

    # the Markdown table: mean ± std over the two seeds, which agree with the CSV
    md = (out / "results.md").read_text()
    assert "DoWhy" in md and "no floor" in md and "held-out test images" in md
    rows = [line for line in md.splitlines() if line.startswith("| CausalDiffAE |")]
    assert len(rows) == 2 and all(" | 2 | " in r and "±" in r for r in rows)
    v = df[(df["metric"] == "effectiveness.mean.intervened") & (df["label_fraction"] == 0.5) & df["run"].isin(names)]["value"]
    mean, std = rows[0].split(" | ")[3].split(" ± ")
    half_ulp = 0.5 * 10.0 ** -len(mean.split(".")[1]) + 1e-12
    assert abs(float(mean) - v.mean()) <= half_ulp and abs(float(std) - v.std()) <= half_ulp
    assert any(line.startswith("| *do-nothing* |") for line in md.splitlines())

    # the plots exist and are images
    for p in [out / "label_fraction.png", out / "plots" / "effectiveness_mean_intervened.png"]:
        with Image.open(p) as im:
            assert im.size[0] > 200 and im.size[1] > 150

    # --jobs 2: two runs side by side in processes give the same scores as one after the other
    args = _args(graph, data, config, tmp_path / "parallel", "--jobs", "2", "--predictors", str(out / "predictors.safetensors"))
    args[args.index("--fractions") + 1: args.index("--seeds")] = ["1"]
    assert main(args) == 0
    par = pd.read_csv(tmp_path / "parallel" / "results.csv").set_index(["run", "metric"])["value"]
    seq = df.set_index(["run", "metric"])["value"]
    assert set(par.index.get_level_values(0)) == {"causal-1-seed0", "causal-1-seed1", "do-nothing"}
    assert np.allclose(par.to_numpy(), seq.loc[par.index].to_numpy(), rtol=0, atol=1e-6)

    # each run is one plain train command: the printed one rebuilds the sweep's checkpoint exactly
    capsys.readouterr()
    assert main(_args(graph, data, config, out, "--print-commands")) == 0
    commands = [line for line in capsys.readouterr().out.splitlines() if "causaldiffae train" in line]
    assert len(commands) == 4 and all(c.startswith("# trained: ") for c in commands)
    argv = commands[0].removeprefix("# trained: ").split()[1:]
    again = tmp_path / "again"
    argv[argv.index("--out") + 1] = str(again)
    assert main(argv + ["--no-progress"]) == 0
    a, _ = load_checkpoint(runs / names[0])
    b, _ = load_checkpoint(again)
    assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_rerun_with_another_budget_is_refused(tmp_path, capsys):
    data, graph, config = _user_folder(tmp_path, n=16)
    out = tmp_path / "sweep"
    assert main(_args(graph, data, config, out, "--print-commands")) == 0
    args = _args(graph, data, config, out, "--print-commands")
    args[args.index("--steps") + 1] = "5"
    assert main(args) == 0  # nothing trained yet: the settings may still change
    (out / "runs" / "causal-1-seed0").mkdir(parents=True)
    (out / "runs" / "causal-1-seed0" / "checkpoint.safetensors").write_bytes(b"")  # now a run has started
    capsys.readouterr()
    assert main(_args(graph, data, config, out, "--print-commands")) == 2  # 6 steps, the sweep's runs have 5
    err = capsys.readouterr().err
    assert str(out) in err and "steps=5" in err and "Traceback" not in err


def _trained_sweep_stored_without(tmp_path, capsys, section: str, key: str):
    """A sweep with one trained run whose stored train-config.yaml lacks ``section.key`` (as if an
    older version had written it); returns ``(graph, data, config, out)``."""
    import json

    import yaml

    data, graph, config = _user_folder(tmp_path, n=16)
    out = tmp_path / "sweep"
    capsys.readouterr()
    assert main(_args(graph, data, config, out, "--print-commands")) == 0
    first = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("causaldiffae train"))
    assert main(first.split()[1:] + ["--no-progress"]) == 0  # a run has trained: the settings now bind
    meta = json.loads((out / "sweep.json").read_text())
    old = yaml.safe_load(meta["identity"]["train_config"])
    del old[section][key]
    meta["identity"]["train_config"] = "# an older version's file\n" + yaml.safe_dump(old, sort_keys=False)
    (out / "sweep.json").write_text(json.dumps(meta))
    capsys.readouterr()
    return graph, data, config, out


def test_a_sweep_written_before_a_config_field_existed_continues(tmp_path, capsys):
    """Upgrading mid-sweep: the stored train-config.yaml lacks a field added since (here
    ``train.compile``); the runs are the same, so the sweep continues; a changed value is refused."""
    import yaml

    graph, data, config, out = _trained_sweep_stored_without(tmp_path, capsys, "train", "compile")
    assert main(_args(graph, data, config, out, "--print-commands")) == 0
    changed = yaml.safe_load(config.read_text()) or {}
    changed.setdefault("train", {})["compile"] = True
    config.write_text(yaml.safe_dump(changed))
    assert main(_args(graph, data, config, out, "--print-commands")) == 2
    err = capsys.readouterr().err
    assert "train.compile: False -> True" in err and "Traceback" not in err  # the refusal names the change


def test_a_sweep_of_runs_trained_before_label_average_names_the_change(tmp_path, capsys):
    """A sweep trained before ``model.label_average`` existed (its runs averaged the label terms
    over the batch) is not continued with the new default: the refusal names the field and both
    values, and a config that sets the old value continues it."""
    import yaml

    graph, data, config, out = _trained_sweep_stored_without(tmp_path, capsys, "model", "label_average")
    assert main(_args(graph, data, config, out, "--print-commands")) == 2
    assert "model.label_average: 'batch' -> 'labelled'" in capsys.readouterr().err
    back = yaml.safe_load(config.read_text()) or {}
    back.setdefault("model", {})["label_average"] = "batch"
    config.write_text(yaml.safe_dump(back))
    assert main(_args(graph, data, config, out, "--print-commands")) == 0


def test_evaluation_rows_flatten_every_score_and_skip_settings():
    results = {
        "n": 64, "steps": 20, "seed": 0, "nodes": ["a", "b"], "interventions": ["do(a)"], "intended_source": "dowhy",
        "reconstruction": [{"steps": 10, "mse": 0.1, "ssim": 0.5}, {"steps": 20, "mse": 0.05, "ssim": 0.7}],
        "effectiveness": {"mean": {"intervened": 0.3, "descendants": None, "non_descendants": 0.1},
                          "by_intervention": {"do(a)": {"do": ["a"], "intended": "dowhy", "intervened": 0.3, "n": 64,
                                                        "per_node": {"a": 0.3, "b": 0.2}, "groups": {"a": "intervened"}}}},
        "composition": {"cycles": [1, 10], "steps": 20, "l1": {"1": 2.0, "10": 9.0}},
        "reversibility": {"mean": [1.0, 2.0]},
        "a_new_score": {"mean": {"x": 1.5}},  # whatever evaluate() gains later comes through
    }
    got = {r["metric"]: r["value"] for r in ablation.evaluation_rows(results, "r")}
    assert got == {
        "reconstruction.steps_10.mse": 0.1, "reconstruction.steps_10.ssim": 0.5,
        "reconstruction.steps_20.mse": 0.05, "reconstruction.steps_20.ssim": 0.7,
        "effectiveness.mean.intervened": 0.3, "effectiveness.mean.non_descendants": 0.1,
        "effectiveness.by_intervention.do(a).intervened": 0.3,
        "effectiveness.by_intervention.do(a).per_node.a": 0.3, "effectiveness.by_intervention.do(a).per_node.b": 0.2,
        "composition.l1.1": 2.0, "composition.l1.10": 9.0, "reversibility.mean.1": 1.0, "reversibility.mean.2": 2.0,
        "a_new_score.mean.x": 1.5,
    }


def test_references_are_read_off_evaluate_baselines():
    rows = [{"metric": m, "value": v} for m, v in {
        "effectiveness.by_intervention.do(a).baselines.intervened.do_nothing": 0.8,
        "effectiveness.by_intervention.do(a).baselines.intervened.floor": 0.2,
        "effectiveness.by_intervention.do(a).baselines.intervened.achieved_fraction": 0.5,
        "effectiveness.by_intervention.do(a).baselines.descendants.do_nothing": 0.12,
        "effectiveness.by_intervention.do(a).baselines.descendants.floor": 0.1,  # gap below MIN_GAP: no fraction
        "effectiveness.by_intervention.do(b).baselines.intervened.do_nothing": 0.6,
        "effectiveness.by_intervention.do(b).baselines.intervened.floor": 0.1,
        "effectiveness.by_intervention.do(b).baselines.intervened.achieved_fraction": 0.1,
        "ground_truth.identity_mean.mae_255": 4.0, "ground_truth.identity_mean.ssim": 0.9,
    }.items()]
    ref = {(r["run"], r["metric"]): r["value"] for r in ablation.reference_rows(rows)}
    assert ref[("do-nothing", "effectiveness.mean.intervened")] == pytest.approx(0.7)
    assert ref[("floor", "effectiveness.mean.intervened")] == pytest.approx(0.15)
    assert ref[("do-nothing", "ground_truth.mean.mae_255")] == 4.0 and ref[("floor", "ground_truth.mean.mae_255")] == 0.0
    assert ablation.undefined_fractions(rows) == ["do(a) descendants"]
    no_floor = [r for r in rows if not r["metric"].endswith(".floor")]
    assert not any(run == "floor" for run, _ in {(r["run"], r["metric"]) for r in ablation.reference_rows(no_floor)})


def test_sweep_with_a_simulator_scores_against_the_true_counterfactuals(tmp_path):
    from causaldiffae.data import generate_dataset

    data = generate_dataset("pendulum", tmp_path / "pendulum", size=SIZE, n=48, progress=False)
    config = tmp_path / "tiny.yaml"
    d = tiny_run_config(steps=4).to_dict()
    d["train"]["betas"] = list(d["train"]["betas"])
    config.write_text(yaml.safe_dump(d))
    out = tmp_path / "sweep"
    df = ablation.label_fraction("pendulum", data, out, fractions=[1.0], seeds=1, steps=4, baselines=(), config=config,
                                 n=8, eval_steps=2, predictor_steps=10, predictor_samples=64, threads=1, progress=False)
    value = df.set_index(["run", "metric"])["value"]
    floor_gt, dn_gt = value[("floor", "ground_truth.mean.mae_255")], value[("do-nothing", "ground_truth.mean.mae_255")]
    assert floor_gt == 0.0 and dn_gt > 0.0  # the truth is the truth; the factual image is not the counterfactual
    run = "causal-1-seed0"
    for key in ("ground_truth.mean.mae_255", "ground_truth.mean.ssim", "ground_truth.changed_region_mean.model_mae_255"):
        assert math.isfinite(value[(run, key)])
    dn = [v for (r, m), v in value.items() if r == run and m.endswith(".baselines.intervened.do_nothing")]
    assert len(dn) == 4 and value[("do-nothing", "effectiveness.mean.intervened")] == pytest.approx(np.mean(dn))
    md = (out / "results.md").read_text()
    assert "true counterfactuals (pendulum)" in md and "| *floor* |" in md and "| *do-nothing* |" in md


def _time_args(graph: Path, data: Path, config: Path, out: Path, budget: str, *extra: str) -> list[str]:
    """A two-run sweep (one fraction x two seeds, tiny scoring) with a time budget per run instead of --steps."""
    args = _args(graph, data, config, out, "--n", "4", "--eval-steps", "2", "--predictor-steps", "5", *extra)
    args[args.index("--fractions") + 1: args.index("--seeds")] = ["1"]
    i = args.index("--steps")
    args[i: i + 2] = ["--time", budget]
    return args


def test_a_time_budget_fixes_one_step_count_for_every_run_and_a_rerun_reuses_it(tmp_path, monkeypatch, capsys):
    import json

    from causaldiffae.checkpoint import load_checkpoint

    data, graph, config = _user_folder(tmp_path, n=16)
    out = tmp_path / "sweep"

    # --print-commands with --time: a few timed steps fix the steps, written to the sweep's folder
    assert main(_time_args(graph, data, config, out, "30s", "--print-commands")) == 0
    printed = capsys.readouterr().out
    plan = json.loads((out / ablation.TIME_PLAN).read_text())
    steps = plan["steps"]
    assert plan["time"] == "30s" and plan["time_s"] == 30.0 and plan["seconds_per_step"] > 0
    assert steps == int(ablation.TIME_SHARE * 30.0 / plan["seconds_per_step"]) >= 1
    assert not (out / ".calibration").exists()  # the measurement leaves nothing behind
    commands = [line for line in printed.splitlines() if "causaldiffae train" in line]
    assert len(commands) == 2 and all(f"--steps {steps} " in c for c in commands)
    assert f"# plan: 2 runs x {steps} training steps each (--time 30s per run" in printed
    assert yaml.safe_load((out / "train-config.yaml").read_text())["train"]["steps"] == steps
    assert all(not line or line.startswith("#") or line.startswith("causaldiffae train") for line in printed.splitlines())

    # a rerun reads the plan back and measures nothing: every run keeps the recorded steps, here
    # set to 3 as if an earlier session on a slower machine had measured them
    plan["steps"] = 3
    (out / ablation.TIME_PLAN).write_text(json.dumps(plan))

    def no_measurement(*a, **kw):
        raise AssertionError("a rerun with a time plan must not measure the speed again")

    monkeypatch.setattr(ablation, "measure_step_seconds", no_measurement)
    assert main(_time_args(graph, data, config, out, "30s")) == 0
    for name in ("causal-1-seed0", "causal-1-seed1"):
        _, meta = load_checkpoint(out / "runs" / name)
        assert meta["step"] == 3
    df = pd.read_csv(out / "results.csv")
    assert set(df.loc[df["run"].str.startswith("causal"), "steps"]) == {3}
    md = (out / "results.md").read_text()
    assert "3 training steps per run, fixed by --time 30s per run" in md
    took = [json.loads((out / "runs" / n / ablation.FINISHED).read_text())["train_seconds"] for n in ("causal-1-seed0", "causal-1-seed1")]
    assert all(t > 0 for t in took) and "the 2 runs trained in one go took" in md  # what the plan bought, for the reader to check

    # the trained runs bind the budget: another --time is refused before anything is measured,
    # the recorded steps given as --steps continue the sweep
    capsys.readouterr()
    assert main(_time_args(graph, data, config, out, "1m", "--print-commands")) == 2
    err = capsys.readouterr().err
    assert "--time 30s" in err and "--steps 3" in err and str(out) in err and "Traceback" not in err
    args = _args(graph, data, config, out, "--n", "4", "--eval-steps", "2", "--predictor-steps", "5", "--print-commands")
    args[args.index("--fractions") + 1: args.index("--seeds")] = ["1"]
    args[args.index("--steps") + 1] = "3"
    assert main(args) == 0
    assert all(c.startswith("# trained: ") for c in capsys.readouterr().out.splitlines() if "causaldiffae train" in c)


def test_a_time_budget_with_jobs_is_measured_with_that_many_runs_side_by_side(tmp_path, capsys):
    """Runs trained side by side share the machine (on one GPU they take turns), so --time with
    --jobs 2 times two of the sweep's runs at once and plans from the slower one."""
    import json

    data, graph, config = _user_folder(tmp_path, n=16)
    out = tmp_path / "sweep"
    assert main(_time_args(graph, data, config, out, "30s", "--jobs", "2", "--print-commands")) == 0
    printed = capsys.readouterr().out
    plan = json.loads((out / ablation.TIME_PLAN).read_text())
    assert plan["side_by_side"] == 2 and plan["seconds_per_step"] > 0 and plan["threads"] == 1
    assert plan["steps"] == int(ablation.TIME_SHARE * 30.0 / plan["seconds_per_step"]) >= 1
    assert f"timing {3 * ablation.CALIBRATION_STEPS} training steps of 2 runs side by side (--jobs 2)" in printed
    assert "of 2 runs side by side (the slowest)" in printed
    assert not (out / ".calibration").exists()
    commands = [line for line in printed.splitlines() if "causaldiffae train" in line]
    assert len(commands) == 2 and all(f"--steps {plan['steps']} " in c for c in commands)


def test_a_side_by_side_speed_measurement_on_bad_data_gives_the_named_error(tmp_path, capsys):
    """A run that cannot train in its process stops the measurement with the library's own error,
    as without --jobs: exit 2 and one line naming the data, no hang, nothing left behind."""
    from causaldiffae.errors import DataError

    data, graph, config = _user_folder(tmp_path, n=16)
    sweep = ablation.Sweep(graph=str(graph), data=str(tmp_path / "no-such-folder"), out=str(tmp_path / "sweep"),
                           fractions=(1.0,), seeds=(0, 1), steps=3, baselines=(), config=str(config), device="cpu")
    with pytest.raises(DataError, match="no-such-folder"):
        ablation.measure_step_seconds(sweep, threads=1, side_by_side=2)
    assert not (tmp_path / "sweep" / ".calibration").exists()
    out = tmp_path / "cli"
    args = _time_args(graph, tmp_path / "no-such-folder", config, out, "30s", "--jobs", "2", "--print-commands")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "no-such-folder" in err and "Traceback" not in err


def _sweep_workers(parent: int) -> list[int]:
    """The pids of ``parent``'s multiprocessing workers (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmd = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and b"multiprocessing-fork" in cmd:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the workers through Linux's /proc")
def test_a_killed_sweep_stops_its_workers_each_with_a_checkpoint_to_resume(tmp_path):
    """kill -9 of `ablate --jobs 2` (a scheduler's time limit, a closed session) must not leave
    its workers training on, orphaned, into the sweep's folder: each stops after its current step,
    writes a checkpoint and exits, so that a rerun resumes instead of training beside them."""
    import os
    import signal
    import subprocess
    import time

    from causaldiffae.checkpoint import load_checkpoint

    data, graph, config = _user_folder(tmp_path, n=16)
    out = tmp_path / "sweep"
    args = _args(graph, data, config, out, "--jobs", "2")
    args[args.index("--steps") + 1] = "1000000"  # far more than the test waits for
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "causaldiffae", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    workers: list[int] = []
    try:
        deadline = time.time() + 180
        while time.time() < deadline:  # until both workers train (their logs have rows)
            logs = [p for p in (out / "runs").glob("*/log.jsonl") if p.stat().st_size > 0]
            workers = workers if len(workers) == 2 else _sweep_workers(proc.pid)
            if len(logs) == 2 and len(workers) == 2:
                break
            assert proc.poll() is None, "the sweep exited before its runs trained"
            time.sleep(0.2)
        assert len(workers) == 2, "the two runs did not start training in time"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.time() + 120
        while time.time() < deadline and any(Path(f"/proc/{w}").exists() for w in workers):
            time.sleep(0.2)
        alive = [w for w in workers if Path(f"/proc/{w}").exists()]
        assert not alive, "the workers of a killed sweep kept training"
    finally:
        if proc.poll() is None:
            proc.kill()
        for w in workers:
            try:
                os.kill(w, signal.SIGKILL)
            except ProcessLookupError:
                pass
    trained = sorted(p.parent for p in (out / "runs").glob("*/log.jsonl"))
    assert len(trained) == 2
    for run in trained:
        _, meta = load_checkpoint(run)  # written on the way out, resumable
        assert 1 <= meta["step"] < 1000000
        assert not (run / ablation.FINISHED).exists()


@pytest.mark.parametrize("budget", ["ten minutes", "10x", "0s", "-5m", "1h30"])
def test_a_bad_time_budget_exits_2_naming_it_before_anything_is_written(tmp_path, capsys, budget):
    out = tmp_path / "sweep"
    args = ["ablate", "label-fraction", "--graph", "world.dot", "--data", "data", f"--time={budget}", "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--time" in err and repr(budget) in err and "Traceback" not in err
    assert not out.exists()


def test_steps_and_time_together_are_refused(tmp_path, capsys):
    from causaldiffae.errors import ConfigError

    assert main(["ablate", "label-fraction", "--graph", "g.dot", "--data", "d", "--steps", "5", "--time", "1m",
                 "--out", str(tmp_path / "a")]) == 2
    assert "not allowed with" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="'1m'"):
        ablation.label_fraction("g.dot", "d", tmp_path / "b", steps=5, time="1m")
    with pytest.raises(ConfigError, match="'soon'"):
        ablation.label_fraction("g.dot", "d", tmp_path / "c", time="soon")
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_plots_label_both_axes_with_units_and_error_bars():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.container import ErrorbarContainer

    key = "effectiveness.mean.intervened"
    rows = [{"run": f"c{f}{s}", "model": "CausalDiffAE", "label_fraction": f, "strength": w, "metric": key, "value": v}
            for f, w in ((0.1, 1.0), (1.0, 2.0)) for s, v in ((0, 0.3), (1, 0.5))]
    rows += [{"run": "do-nothing", "model": "do-nothing", "label_fraction": np.nan, "strength": np.nan, "metric": key, "value": 0.9}]
    df = pd.DataFrame(rows)
    (head,) = ablation.headline_metrics([key])
    for by, xlabel in (("label_fraction", "label fraction"), ("strength", "guidance weight w")):
        fig, ax = plt.subplots()
        ablation.plot_metric(ax, ablation.summarise(df, by), head, by)
        assert xlabel in ax.get_xlabel()
        assert "normalised units" in ax.get_ylabel() and "better" in ax.get_ylabel()
        assert ax.get_xscale() == ("log" if by == "label_fraction" else "linear")
        (bars,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert bars.has_yerr
        assert any(line.get_label() == "do-nothing" for line in ax.get_lines())
        plt.close(fig)
