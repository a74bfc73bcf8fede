"""Ablations on any graph and data: label fraction and intervention strength, with seeds and error bars.

Two sweeps, the same from Python and from the command line (``causaldiffae ablate``)::

    from causaldiffae import ablation
    df = ablation.label_fraction("my_graph.dot", "my_folder", "runs/frac", fractions=(0.1, 1.0), seeds=3, steps=600)
    df = ablation.label_fraction("my_graph.dot", "my_folder", "runs/frac-10m", seeds=3, time="10m")  # 10 min per run
    df = ablation.strength(["runs/frac/runs/causal-1-seed0"], "my_folder", "runs/strength")

**label_fraction** trains one run per (label fraction, seed), plus each baseline variant (Diff-AE:
no mechanisms) with all labels per seed, all for the same number of steps (given, or fixed once
from a time budget per run by a speed measurement: :func:`plan_time`); every run is one plain
``causaldiffae train`` command (:func:`train_command`, ``--print-commands``) reading the sweep's
``train-config.yaml``. **strength** scores trained runs at several guidance weights ``w``.

Scores: :func:`causaldiffae.metrics.evaluate` on one fixed set of held-out images (the data's test
split where it has one), every node intervened on once (each image takes another image's value).
With a simulator (a generated data set) the intended labels and the pixel ground truth come from the
true counterfactuals, and evaluate() scores two references beside every model: *do-nothing* (the
factual image returned unchanged) and *floor* (the true counterfactual image, scored by the same
predictors); the achieved fraction ``(err_do_nothing - err_model) / (err_do_nothing - err_floor)``
is 0 when nothing moved and 1 when the model is as good as the truth. Without a simulator the
intended labels come from DoWhy's invertible SCM fitted on the data's training label table and are
read off the images by the anti-causal predictors; there is no floor then (the fractions take it as
0 and are lower bounds), and the report says so. Every score reaches the tables through one
adapter, :func:`evaluation_rows`, which flattens evaluate()'s result into (run, metric, value) rows.

Layout of ``out``::

    sweep.json              the sweep's settings (a rerun with another budget is refused)
    time-plan.json          with a time budget: the measured speed and the steps it fixed for every run
    train-config.yaml       the run config every training run reads
    predictors.safetensors  anti-causal predictors (trained once, unless given)
    runs/<name>/            one training run: checkpoint, evaluation/metrics.json, finished.json
    results.csv             one row per run and metric (long format)
    summary.csv, results.md mean and std over seeds per model, label fraction and metric
    label_fraction.png      every headline metric against the label fraction; plots/<metric>.png one each

A run is finished when ``runs/<name>/finished.json`` exists (written atomically after its
evaluation, with the evaluation settings): a rerun skips it, resumes a run that has a checkpoint
short of the budget, and re-evaluates (without retraining) a run scored with other settings. So a
killed sweep is continued by running the same command again.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from causaldiffae.checkpoint import atomic_write_text
from causaldiffae.errors import ConfigError, DataError

FRACTIONS = (0.01, 0.1, 0.5, 1.0)
STRENGTHS = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0)
BASELINES = ("diffae",)
DEFAULT_METRICS = ("reconstruction", "effectiveness", "ground_truth", "latent")
STRENGTH_METRICS = ("effectiveness", "ground_truth")  # reconstruction and the latent check do not depend on w
FINISHED = "finished.json"
MODEL_NAMES = {"causal": "CausalDiffAE", "diffae": "Diff-AE (no mechanisms)"}
REFERENCES = ("do-nothing", "floor")
SCORES_VERSION = 2  # bumped when evaluate()'s scores change: finished runs are then re-scored (not retrained)
DEFAULT_STEPS = 600  # training steps of every run when neither steps nor a time budget is given
TIME_PLAN = "time-plan.json"  # a --time sweep's measured speed and the steps it fixed for every run
CALIBRATION_STEPS = 6  # steps of the speed measurement; the first (allocation, warm-up) is not timed
TIME_SHARE = 0.97  # share of a run's time budget planned for steps (the rest: start-up, checkpoints)

# Top-level keys of evaluate()'s result that describe the evaluation, not a score.
_META_KEYS = {"n", "steps", "strength", "refine", "refine_carry", "seed", "seconds", "nodes", "interventions", "skipped",
              "intended_source", "intended_note", "run", "data", "split", "predictors", "simulator"}
# Nested keys that are settings or bookkeeping, not scores.
_SKIP_KEYS = {"n", "cycles", "steps", "alpha", "n_train", "n_test", "importance", "groups", "do", "units", "method"}


@dataclass(frozen=True)
class Headline:
    """A metric shown in the table and the plots: its key in the long table, a short column name,
    the axis label (with units) and whether lower is better."""

    key: str
    short: str
    axis: str
    lower_is_better: bool = True


def headline_metrics(metrics: Iterable[str]) -> list[Headline]:
    """The headline metrics present among ``metrics`` (keys of :func:`evaluation_rows`), in display order."""
    present = set(metrics)
    out = [
        Headline("effectiveness.mean.intervened", "MAE intervened", "effectiveness MAE, intervened node\n(normalised units)"),
        Headline("effectiveness.mean.descendants", "MAE descendants", "effectiveness MAE, descendants\n(normalised units)"),
        Headline("effectiveness.mean.non_descendants", "MAE non-descendants", "effectiveness MAE, non-descendants\n(normalised units)"),
        Headline("effectiveness.mean_achieved_fraction.intervened", "achieved (intervened)",
                 "achieved fraction, intervened node\n(0 = unchanged, 1 = truth)", False),
        Headline("effectiveness.mean_achieved_fraction.descendants", "achieved (descendants)",
                 "achieved fraction, descendants\n(0 = unchanged, 1 = truth)", False),
        Headline("latent.mean_achieved_fraction.descendants", "latent achieved (descendants)",
                 "encoder + SCM: achieved fraction\nof the descendants' change", False),
        Headline("ground_truth.mean.mae_255", "GT pixel MAE", "pixel MAE to the true\ncounterfactual (0-255)"),
        Headline("ground_truth.changed_region_mean.model_mae_255", "GT changed-region MAE",
                 "pixel MAE to the truth where it\ndiffers from the factual (0-255)"),
        Headline("ground_truth.mean.ssim", "GT SSIM", "SSIM to the true\ncounterfactual (0-1)", False),
    ]
    for key in sorted(k for k in present if k.startswith("reconstruction.steps_") and k.endswith(".ssim")):
        s = key.split(".")[1].removeprefix("steps_")
        out.append(Headline(key, f"recon SSIM ({s} steps)", f"reconstruction SSIM,\n{s} DDIM steps (0-1)", False))
    return [h for h in out if h.key in present]


# ----------------------------------------------------------------------------------------------
# the adapter: evaluate()'s nested result -> long rows
# ----------------------------------------------------------------------------------------------
def _number(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float, np.integer, np.floating)):
        return float(v)
    if isinstance(v, str) and v in ("inf", "-inf"):
        return float(v)
    return None


def evaluation_rows(results: Mapping[str, Any], run: str) -> list[dict[str, Any]]:
    """Flatten :func:`causaldiffae.metrics.evaluate`'s result into rows ``{"run", "metric", "value"}``.

    Every numeric leaf becomes a row named by its dotted path (``effectiveness.mean.intervened``,
    ``effectiveness.by_intervention.do(a).per_node.b``, ``ground_truth.mean.ssim``); the
    reconstruction table becomes ``reconstruction.steps_<S>.<column>`` and other lists are indexed
    from 1 (``reversibility.mean.1``). Settings (image count, steps, seeds...) are left out, so any
    score evaluate() gains appears here without a change.
    """
    rows: list[dict[str, Any]] = []

    def walk(prefix: str, v: Any) -> None:
        num = _number(v)
        if num is not None:
            rows.append({"run": run, "metric": prefix, "value": num})
        elif isinstance(v, Mapping):
            for k, x in v.items():
                if str(k) not in _SKIP_KEYS:
                    walk(f"{prefix}.{k}" if prefix else str(k), x)
        elif isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                if isinstance(x, Mapping) and "steps" in x:
                    walk(f"{prefix}.steps_{x['steps']}", x)
                else:
                    walk(f"{prefix}.{i + 1}", x)

    for key, value in results.items():
        if key not in _META_KEYS:
            walk(key, value)
    return rows


def reference_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The do-nothing and floor rows, read off one run's rows (evaluate() scores both beside every run).

    ``effectiveness.by_intervention.<do>.baselines.<group>.do_nothing`` / ``.floor`` averaged over
    the interventions become ``effectiveness.mean.<group>`` of the references "do-nothing" and
    "floor"; the ground truth's identity scores (the factual image against the truth) become
    do-nothing's ``ground_truth.mean.*`` and changed-region error, and the floor's are the truth's
    own (0 error, SSIM 1). They are the same for every run: the same images, targets and predictors.
    """
    value = {r["metric"]: r["value"] for r in rows}
    out: list[dict[str, Any]] = []
    for ref, key in (("do-nothing", "do_nothing"), ("floor", "floor")):
        for group in ("intervened", "descendants", "non_descendants"):
            vals = [v for m, v in value.items()
                    if m.startswith("effectiveness.by_intervention.") and m.endswith(f".baselines.{group}.{key}")]
            if vals:
                out.append({"run": ref, "metric": f"effectiveness.mean.{group}", "value": float(np.mean(vals))})
    has_floor = any(r["run"] == "floor" for r in out)
    identity = {"ground_truth.mean.mae_255": "ground_truth.identity_mean.mae_255",
                "ground_truth.mean.ssim": "ground_truth.identity_mean.ssim",
                "ground_truth.changed_region_mean.model_mae_255": "ground_truth.changed_region_mean.identity_mae_255"}
    truth = {"ground_truth.mean.mae_255": 0.0, "ground_truth.mean.ssim": 1.0, "ground_truth.changed_region_mean.model_mae_255": 0.0}
    for metric, source in identity.items():
        if source in value:
            out.append({"run": "do-nothing", "metric": metric, "value": value[source]})
            if has_floor:
                out.append({"run": "floor", "metric": metric, "value": truth[metric]})
    return out


def undefined_fractions(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The interventions and groups whose achieved fraction evaluate() left out (do-nothing - floor
    below :data:`causaldiffae.metrics.MIN_GAP`), e.g. ``["do(<node>) intervened"]``."""
    value = {r["metric"]: r["value"] for r in rows}
    out = []
    for m in value:
        prefix = "effectiveness.by_intervention."
        if m.startswith(prefix) and m.endswith(".do_nothing") and ".baselines." in m and ".per_node." not in m:
            base = m[: -len(".do_nothing")]
            if base + ".achieved_fraction" not in value and not base.endswith("non_descendants"):
                name, group = base[len(prefix):].split(".baselines.")
                out.append(f"{name} {group}")
    return out


# ----------------------------------------------------------------------------------------------
# runs and their settings
# ----------------------------------------------------------------------------------------------
def budget_config(steps: int, batch_size: int | None = None, gpu: bool = False):
    """The run config of one ablation run of ``steps`` optimisation steps (the default model).

    Short budgets need their own optimiser settings: with the library defaults (KL warm-up over
    2,000 steps, EMA decay 0.999) a 400-step run would end before the warm-up and sample from EMA
    weights that are still mostly the initialisation. Here the library's budget rules apply
    (:func:`causaldiffae.training.auto_warmup_steps`, :func:`~causaldiffae.training.auto_ema_decay`:
    warm-up a fifth of the run, EMA horizon about a twentieth), written out explicitly, and the learning rate is the shipped models' (5e-4). ``gpu``: the larger model preset
    (``ModelConfig.gpu_preset()``) with batch 128.
    """
    from causaldiffae.training import RunConfig, TrainConfig, auto_ema_decay, auto_warmup_steps

    if steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {steps}")
    train = TrainConfig(steps=steps, batch_size=batch_size or (128 if gpu else 64), lr=5e-4,
                        warmup_steps=auto_warmup_steps(steps), ema_decay=auto_ema_decay(steps),
                        checkpoint_every=max(10, steps // 4), sample_every=0)
    from causaldiffae.model import ModelConfig

    return RunConfig(model=ModelConfig.gpu_preset() if gpu else ModelConfig(), train=train)


@dataclass(frozen=True)
class RunSpec:
    """One training run of a label-fraction sweep."""

    name: str
    variant: str
    label_fraction: float
    seed: int

    @property
    def model(self) -> str:
        return MODEL_NAMES.get(self.variant, self.variant)


@dataclass
class EvalSettings:
    """How every run is scored (stored in each run's finished marker)."""

    n: int = 64
    steps: int = 20
    strength: float = 1.0
    metrics: tuple[str, ...] = DEFAULT_METRICS
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["metrics"] = list(self.metrics)
        d["scores_version"] = SCORES_VERSION
        return d


@dataclass
class Sweep:
    """A label-fraction sweep: what :func:`label_fraction` trains and scores."""

    graph: str
    data: str
    out: str
    fractions: tuple[float, ...] = FRACTIONS
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = DEFAULT_STEPS
    baselines: tuple[str, ...] = BASELINES
    config: str | None = None
    batch_size: int | None = None
    evaluation: EvalSettings = field(default_factory=EvalSettings)
    predictors: str | None = None
    predictor_steps: int = 2000
    device: str | None = None
    time_plan: dict[str, Any] | None = None  # set when a time budget fixed ``steps`` (see :func:`plan_time`)

    @property
    def train_config_path(self) -> Path:
        return Path(self.out) / "train-config.yaml"

    def run_dir(self, spec: RunSpec) -> Path:
        return Path(self.out) / "runs" / spec.name

    def runs(self) -> list[RunSpec]:
        """Every run: each fraction x seed for CausalDiffAE, then each baseline with all labels x seed."""
        specs = [RunSpec(f"causal-{f:g}-seed{s}", "causal", float(f), int(s)) for f in self.fractions for s in self.seeds]
        specs += [RunSpec(f"{b}-1-seed{s}", b, 1.0, int(s)) for b in self.baselines for s in self.seeds]
        return specs

    def identity(self) -> dict[str, Any]:
        """What makes two sweeps' runs the same runs (a rerun into ``out`` must agree on all of it)."""
        cfg = self.train_config_path.read_text() if self.train_config_path.exists() else None
        return {"graph": self.graph, "data": self.data, "steps": self.steps, "train_config": cfg}


def train_command(sweep: Sweep, spec: RunSpec, resume: bool = False) -> str:
    """The plain ``causaldiffae train`` command of one run (what the sweep itself runs)."""
    run = sweep.run_dir(spec)
    if resume:
        args = ["causaldiffae", "train", "--resume", str(run), "--graph", sweep.graph, "--data", sweep.data,
                "--steps", str(sweep.steps), "--check-images", "0"]
    else:
        args = ["causaldiffae", "train", "--graph", sweep.graph, "--data", sweep.data, "--config", str(sweep.train_config_path),
                "--label-fraction", f"{spec.label_fraction:g}", "--seed", str(spec.seed), "--variant", spec.variant,
                "--steps", str(sweep.steps), "--check-images", "0", "--out", str(run)]
    if sweep.device:
        args += ["--device", sweep.device]
    return " ".join(shlex.quote(a) for a in args)


def _trained_steps(run_dir: Path) -> int | None:
    """The step of ``run_dir``'s checkpoint, or None when it has none."""
    from causaldiffae.checkpoint import CHECKPOINT_NAME, load_checkpoint

    if not (run_dir / CHECKPOINT_NAME).exists():
        return None
    _, meta = load_checkpoint(run_dir)
    return int(meta.get("step", 0))


def _read_finished(path: Path, evaluation: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The rows of a finished marker written with the same evaluation settings, else None."""
    if not path.exists():
        return None
    try:
        marker = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if marker.get("evaluation") != dict(evaluation):
        return None
    return marker.get("rows")


def _write_finished(path: Path, evaluation: Mapping[str, Any], rows: list[dict[str, Any]], **extra: Any) -> None:
    from causaldiffae.metrics import to_jsonable

    atomic_write_text(path, json.dumps(to_jsonable({"evaluation": dict(evaluation), **extra, "rows": rows}), indent=1) + "\n")


# ----------------------------------------------------------------------------------------------
# the evaluation set: one fixed set of images, interventions and references for every run
# ----------------------------------------------------------------------------------------------
@dataclass
class EvalSet:
    """The held-out images every run is scored on, and what scores them.

    ``dataset`` is the chosen subset (``n`` images); ``interventions`` one per node;
    ``simulator``/``simulator_size``/``simulator_name`` the data's true-counterfactual function or
    None; ``dowhy_table`` the training labels ``(N, n_nodes)`` DoWhy's SCM is fitted on;
    ``held_out`` False when the data has no split column (then the images are training images).
    """

    dataset: Any
    interventions: list[dict[str, Any]]
    simulator: Any
    simulator_size: int | None
    simulator_name: str | None
    dowhy_table: np.ndarray
    held_out: bool
    predictors: str
    graph: Any
    image_shape: tuple[int, int, int]

    @property
    def intended(self) -> str:
        return "simulator" if self.simulator is not None else "dowhy"


def build_eval_set(graph, data: str, size: int, n: int, seed: int, predictors: str | os.PathLike,
                   predictor_steps: int = 2000, device: str | None = None, progress: bool = True,
                   predictor_samples: int = 8000) -> EvalSet:
    """Open ``data`` at ``size`` for ``graph`` (label stats filled in from the training split), pick
    ``n`` test images (seeded), one intervention per node, find the simulator, and train the
    anti-causal predictors at ``predictors`` if that file does not exist yet."""
    from causaldiffae import metrics as M
    from causaldiffae.data import open_dataset
    from causaldiffae.pipeline import resolve_graph_and_data
    from causaldiffae.predictors import load_predictors, train_predictors

    from causaldiffae.data.generate import folder_generator_params, resolve_generated
    from causaldiffae.data.simulator import simulator_from_params

    data = resolve_generated(data, size)  # a generated set's name -> its folder (the rendering training reads)
    graph, train_ds, _ = resolve_graph_and_data(graph, data, size)
    test = open_dataset(data, graph.label_columns, size=size, split="test")
    held_out = test.extra is not None and "split" in test.extra.columns
    if len(test) == 0:
        raise DataError(f"{data}: no images to evaluate on")
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(test), size=min(n, len(test)), replace=False))
    subset = test.subset(idx)
    _, labels = subset.batch(np.arange(len(subset)))
    interventions = M.default_interventions(graph, labels, seed=seed)
    if not interventions:
        raise DataError(f"{data}: the evaluation images have no labels, so no node can be intervened on")
    found = M.find_simulator(data, size)
    ppath = Path(predictors)
    if not ppath.exists():
        ppath.parent.mkdir(parents=True, exist_ok=True)
        gen = folder_generator_params(data)
        sim = simulator_from_params(gen) if gen else None  # independent draws: each predictor reads its own factor
        train_predictors(graph, train_ds, ppath, steps=predictor_steps, device=device or "cpu", progress=progress,
                         simulator=sim, size=size, n_samples=predictor_samples)
    pred = load_predictors(ppath)
    if pred.graph.nodes != graph.nodes:
        raise ConfigError(f"{ppath} predicts nodes {pred.graph.nodes}, the graph has {graph.nodes}")
    return EvalSet(dataset=subset, interventions=interventions, simulator=found[0] if found else None,
                   simulator_size=found[1] if found else None, simulator_name=found[2] if found else None,
                   dowhy_table=np.asarray(train_ds.labels), held_out=held_out, predictors=str(ppath), graph=graph,
                   image_shape=(subset.channels, size, size))


def _seed_global(seed: int) -> None:
    """Seed numpy's and torch's global generators: DoWhy's choice of mechanisms (cross-validated
    on random splits) draws from numpy's, so without this two scorings of one run differ."""
    import torch

    np.random.seed(seed)
    torch.manual_seed(seed)


def score_run(run_dir: str | os.PathLike, es: EvalSet, settings: EvalSettings, strength: float | None = None,
              device: str | None = None, out: str | os.PathLike | None = None) -> dict[str, Any]:
    """evaluate() one trained run on the evaluation set; the report is written to ``out`` (default RUN/evaluation)."""
    from causaldiffae import metrics as M
    from causaldiffae.model import CausalDiffAE
    from causaldiffae.predictors import load_predictors

    model, _ = CausalDiffAE.load(run_dir, device=device or "cpu")
    if model.graph.nodes != es.graph.nodes:
        raise ConfigError(f"{run_dir} models nodes {model.graph.nodes}, the evaluation set has {es.graph.nodes}")
    pred = load_predictors(es.predictors, device=device or "cpu")
    w = settings.strength if strength is None else strength
    _seed_global(settings.seed)
    results = M.evaluate(model, es.dataset, predictors=pred, simulator=es.simulator, interventions=es.interventions,
                         n=len(es.dataset), steps=settings.steps, strength=w, recon_steps=(settings.steps,),
                         intended="auto", simulator_size=es.simulator_size, dowhy_table=es.dowhy_table,
                         metrics=tuple(settings.metrics), seed=settings.seed, progress=False)
    results = {"run": str(run_dir), "simulator": es.simulator_name, **results}
    M.write_report(results, Path(out) if out else Path(run_dir) / "evaluation", title=f"Evaluation of {run_dir}")
    return results


# ----------------------------------------------------------------------------------------------
# one run (also the unit of --jobs)
# ----------------------------------------------------------------------------------------------
def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def run_one(sweep: Sweep, spec: RunSpec, es: EvalSet, threads: int | None = None,
            progress: bool = True) -> list[dict[str, Any]]:
    """Train (or resume) one run to the sweep's budget, score it, write its finished marker; its rows.

    A run whose marker holds the same evaluation settings is returned from the marker untouched.
    """
    from causaldiffae import pipeline

    _set_threads(threads)
    run_dir = sweep.run_dir(spec)
    marker = run_dir / FINISHED
    evaluation = sweep.evaluation.to_dict()
    rows = _read_finished(marker, evaluation)
    if rows is not None:
        return rows
    step = _trained_steps(run_dir)
    train_seconds = None
    if step is None or step < sweep.steps:
        resume = step is not None
        if progress:
            print(("resuming " if resume else "training ") + f"{spec.name}: {train_command(sweep, spec, resume=resume)}", flush=True)
        # overwrite: a run killed before its first checkpoint left only its log and config behind;
        # check: the sweep scores every run itself, train's own held-out check would be spent twice
        pipeline.fit(sweep.graph, sweep.data, run_dir, config=None if resume else str(sweep.train_config_path), resume=resume,
                     device=sweep.device, progress=progress, overwrite=not resume, check=False,
                     label_fraction=spec.label_fraction, seed=spec.seed, variant=spec.variant, steps=sweep.steps)
        if not resume:  # trained in one go: its log's clock covers the whole run
            train_seconds = _log_seconds(run_dir)
    else:
        train_seconds = _read_marker(marker).get("train_seconds")  # re-scored: keep what its training took
    results = score_run(run_dir, es, sweep.evaluation, device=sweep.device)
    rows = evaluation_rows(results, spec.name)
    _write_finished(marker, evaluation, rows, intended_source=results.get("intended_source"), steps=sweep.steps,
                    train_seconds=train_seconds)
    return rows


def _log_seconds(run_dir: Path) -> float | None:
    """The training loop's seconds in ``run_dir/log.jsonl`` (its last row's ``elapsed_s``), or None."""
    try:
        last = (Path(run_dir) / "log.jsonl").read_text().splitlines()[-1]
        return float(json.loads(last)["elapsed_s"])
    except (OSError, IndexError, KeyError, TypeError, ValueError):
        return None


def _read_marker(path: Path) -> dict[str, Any]:
    """A finished marker's content, or {} when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _stop_with_parent(parent: int, poll: float = 0.5) -> None:
    """In a worker process of a sweep: interrupt this process once (SIGINT) when its parent
    ``parent`` has died.

    A sweep killed from outside (``kill``, a scheduler's time limit, a closed session) would
    otherwise leave its ``--jobs`` workers training on, orphaned, into the sweep's folder, where a
    rerun would train the same runs a second time beside them. With the interrupt, training does
    what it does on Ctrl-C: it stops after the current step and writes a checkpoint that the rerun
    resumes (and :func:`_in_worker` then ends the process). A daemon thread checks every ``poll``
    seconds whether the process has been handed to another parent.
    """
    import signal
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=watch, name="stop-with-parent", daemon=True).start()


def _in_worker(parent: int, fn, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a sweep's worker process; once the parent ``parent`` has died
    (see :func:`_stop_with_parent`), the worker exits after it instead of waiting for work that
    will not come."""
    try:
        return fn(*args, **kwargs)
    finally:
        if os.getppid() != parent:
            os._exit(1)  # nobody is left to collect a result or to send another run


def _run_all(tasks: list[tuple], fn, jobs: int, threads: int | None, progress: bool, what: str) -> list[list[dict]]:
    """``fn(*task, threads=..., progress=...)`` for every task: in this process (jobs 1) or ``jobs`` processes."""
    from tqdm.auto import tqdm

    if jobs <= 1 or len(tasks) <= 1:
        return [fn(*t, threads=threads, progress=progress) for t in tqdm(tasks, desc=what, disable=not progress, unit="run")]
    import concurrent.futures as fut
    import multiprocessing as mp

    results: list[Any] = [None] * len(tasks)
    with fut.ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"), initializer=_stop_with_parent,
                                 initargs=(os.getpid(),)) as pool:
        futures = {pool.submit(_in_worker, os.getpid(), fn, *t, threads=threads, progress=False): i for i, t in enumerate(tasks)}
        try:
            for f in tqdm(fut.as_completed(futures), total=len(futures), desc=what, disable=not progress, unit="run"):
                results[futures[f]] = f.result()
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return results


def _threads_per_job(jobs: int, threads: int | None) -> int | None:
    if threads:
        return threads
    if jobs <= 1:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // jobs)


# ----------------------------------------------------------------------------------------------
# label fraction
# ----------------------------------------------------------------------------------------------
def _run_config(sweep: Sweep, steps: int):
    """The run config of every run of ``sweep`` at ``steps`` steps: ``sweep.config`` with its steps
    (and batch size) set, or :func:`budget_config`."""
    from causaldiffae.training import RunConfig

    if sweep.config:
        cfg = RunConfig.load(sweep.config)
        cfg.train.steps = steps
        if sweep.batch_size:
            cfg.train.batch_size = sweep.batch_size
        return cfg
    return budget_config(steps, sweep.batch_size)


def _any_trained(out: Path) -> bool:
    """Whether a run of the sweep in ``out`` has been trained (has a checkpoint)."""
    return any((Path(out) / "runs").glob("*/checkpoint.safetensors"))


def _calibration_config(sweep: Sweep, steps: int, folder: Path) -> str:
    """The sweep's run config at ``steps`` steps, logging every step and writing no samples, as a
    file in ``folder``; its path."""
    import yaml

    d = _run_config(sweep, steps).to_dict()
    d["train"].update(log_every=1, checkpoint_every=steps, sample_every=0)
    d["train"]["betas"] = list(d["train"]["betas"])
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return str(path)


def _timed_steps(sweep: Sweep, spec: RunSpec, config: str, run_dir: Path, steps: int, window: tuple[int, int],
                 threads: int | None = None, barrier=None) -> float:
    """Train ``spec`` for ``steps`` steps into ``run_dir`` with ``config``; its mean seconds per step
    over steps ``window[0] + 1 .. window[1]`` (read from the run's ``log.jsonl``). ``barrier``
    (a multiprocessing barrier): wait there after the data and graph are ready, so that runs timed
    side by side start their steps together."""
    import torch

    from causaldiffae.pipeline import prepare_training
    from causaldiffae.training import train

    overrides = {"train.label_fraction": spec.label_fraction, "train.seed": spec.seed, "model.variant": spec.variant,
                 "train.steps": steps}
    graph, dataset, cfg, info = prepare_training(sweep.graph, sweep.data, config_path=config, overrides=overrides)
    previous = torch.get_num_threads()
    try:
        if threads:
            torch.set_num_threads(int(threads))
        if barrier is not None:
            barrier.wait(timeout=900)
        train(graph, dataset, run_dir, cfg, device=sweep.device, progress=False, data_info=info, verbose=False)
    finally:
        torch.set_num_threads(previous)
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    elapsed = {int(r["step"]): float(r["elapsed_s"]) for r in rows}
    lo, hi = window
    return max((elapsed[hi] - elapsed[lo]) / (hi - lo), 1e-9)


def _timed_worker(args: tuple, barrier, results, parent: int) -> None:
    """One run of a side-by-side speed measurement (a spawned process of ``parent``): puts (index,
    seconds per step), (index, the library error it raised) or (index, error text) on ``results``."""
    _stop_with_parent(parent)
    index = args[0]
    try:
        results.put((index, _timed_steps(*args[1:], barrier=barrier)))
    except BaseException as e:  # reported to the parent, which names the run
        try:
            barrier.abort()
        except Exception:
            pass
        from causaldiffae.errors import CausalDiffAEError

        # the library's own errors (a bad data folder, config...) travel as they are
        results.put((index, e if isinstance(e, CausalDiffAEError) else f"{type(e).__name__}: {e}"))


def measure_step_seconds(sweep: Sweep, spec: RunSpec | None = None, steps: int = CALIBRATION_STEPS,
                         threads: int | None = None, side_by_side: int = 1) -> float:
    """Seconds per training step of the sweep's runs, measured here and now.

    ``spec`` (default: the sweep's first run, a CausalDiffAE run) is trained for ``steps`` steps
    exactly as the sweep trains it (its run config, label fraction, seed and variant, on
    ``sweep.device``, with ``threads`` torch threads) in ``OUT/.calibration``, which is removed
    afterwards. The first step (allocation, warm-up) is left out: the figure is the mean of steps
    2..``steps``, read from the run's ``log.jsonl`` (``elapsed_s``).

    ``side_by_side`` > 1 (the sweep's ``--jobs``): that many of the sweep's runs (``spec`` and
    the ones after it) are timed at once in spawned processes, as the sweep will train them, since
    runs side by side share the machine (on one GPU they take turns); each trains ``3 x steps``
    steps after a common start, is timed over its middle third (when all of them are running) and
    the slowest run's figure is returned.
    """
    import shutil

    if steps < 2:
        raise ConfigError(f"the speed measurement needs at least 2 steps, got {steps}")
    runs = sweep.runs()
    spec = spec or runs[0]
    folder = Path(sweep.out) / ".calibration"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    try:
        if side_by_side <= 1:
            config = _calibration_config(sweep, steps, folder)
            return _timed_steps(sweep, spec, config, folder / "run", steps, (1, steps), threads=threads)
        import multiprocessing as mp
        import queue

        start = runs.index(spec) if spec in runs else 0
        specs = [runs[(start + i) % len(runs)] for i in range(min(side_by_side, len(runs)))]
        total = 3 * steps
        config = _calibration_config(sweep, total, folder)
        ctx = mp.get_context("spawn")
        barrier, results = ctx.Barrier(len(specs)), ctx.Queue()
        procs = [ctx.Process(target=_timed_worker, args=((i, sweep, s, config, folder / f"run{i}", total,
                                                          (steps, 2 * steps), threads), barrier, results, os.getpid()))
                 for i, s in enumerate(specs)]
        for p in procs:
            p.start()
        got: dict[int, float | str] = {}
        silent: dict[int, int] = {}  # processes found dead without a report: how many checks ago
        try:
            while len(got) < len(procs):
                try:
                    i, v = results.get(timeout=5)
                    got[i] = v
                except queue.Empty:  # did anybody die without reporting (killed, out of memory)?
                    for i, p in enumerate(procs):
                        if i not in got and not p.is_alive():
                            silent[i] = silent.get(i, 0) + 1
                            if silent[i] >= 2:  # its report would have arrived by now
                                got[i] = f"the process exited with code {p.exitcode} without a report"
        finally:
            for p in procs:
                p.join(timeout=30)
                if p.is_alive():
                    p.terminate()
        errors = {specs[i].name: got[i] for i in sorted(got) if not isinstance(got[i], float)}
        own = [e for e in errors.values() if isinstance(e, Exception)]
        if own:  # a library error (bad data, config...) says what is wrong in its own words, as without --jobs
            raise own[0]
        causes = {k: v for k, v in errors.items() if not v.startswith("BrokenBarrierError")}
        errors = causes or errors  # the runs that only waited for a failed one say nothing new
        if errors:
            raise RuntimeError("the speed measurement failed: " + "; ".join(f"{k}: {v}" for k, v in errors.items()))
        return max(float(v) for v in got.values())
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _plan_key(sweep: Sweep) -> dict[str, Any]:
    """What a measured speed depends on (a time plan made for other settings is measured again)."""
    import hashlib

    config = hashlib.sha256(Path(sweep.config).read_bytes()).hexdigest() if sweep.config else None
    return {"graph": sweep.graph, "data": sweep.data, "config_sha256": config, "batch_size": sweep.batch_size,
            "device": sweep.device}


def _budget(time: float | str) -> tuple[str, float]:
    """A time budget as given (``"10m"``, or seconds) -> (its text, seconds > 0); ConfigError naming a bad one."""
    from causaldiffae.training import parse_duration

    if isinstance(time, str):
        return time, parse_duration(time)
    try:
        seconds = float(time)
    except (TypeError, ValueError):
        raise ConfigError(f"cannot read the time budget {time!r}: use e.g. 90s, 10m, 1h or 1h30m, or seconds") from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"the time budget must be a positive duration, got {time!r}")
    return f"{seconds:g}s", seconds


def plan_time(sweep: Sweep, time: float | str, threads: int | None = None, progress: bool = True,
              comment: bool = False, jobs: int = 1) -> dict[str, Any]:
    """Fix the steps of every run of ``sweep`` from a time budget per run; the plan (also ``sweep.steps``).

    ``time`` (seconds, or ``"10m"`` as :func:`causaldiffae.training.parse_duration` reads it) is the
    training time of EACH run, not of the whole sweep (scoring comes on top). The speed is measured
    once (:func:`measure_step_seconds`) and every run trains ``floor(TIME_SHARE * time / s_per_step)``
    steps, so all runs of the sweep train the same number of steps whatever the load while they
    run. The plan is written to ``OUT/time-plan.json``; a rerun with the same budget and settings
    reads it back instead of measuring again (a resumed sweep keeps its steps). Another budget is
    refused once a run has been trained. ``progress``: say what happens (``comment``: as ``# `` lines,
    for ``--print-commands``, whose output stays a shell script). ``jobs`` > 1: the speed is
    measured with that many runs side by side (at most the sweep's runs), as the sweep trains them
    (:func:`measure_step_seconds`); the plan records how many (``side_by_side``).
    """
    from causaldiffae.training import format_duration

    text, seconds = _budget(time)
    out = Path(sweep.out)
    path = out / TIME_PLAN
    key = _plan_key(sweep)
    trained = _any_trained(out)
    old = None
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: cannot read the sweep's time plan ({e}); remove it to measure again") from e
        if old.get("time_s") == seconds and old.get("key") == key:
            sweep.steps, sweep.time_plan = int(old["steps"]), old
            if progress:
                print(("# " if comment else "") + f"time plan {path}: --time {old['time']} per run = {old['steps']} steps "
                      f"(measured {old['seconds_per_step']:.3g} s/step on {old['measured_at']}); reused", flush=True)
            return old
    if trained:
        if old is not None:
            diff = [k for k in key if old.get("key", {}).get(k) != key[k]]
            what = f"--time {old.get('time')}" if not diff else f"other {', '.join(diff)}"
            raise ConfigError(f"{out} holds a sweep whose runs were planned for {what} ({old.get('steps')} steps per run, "
                              f"{path}); give the same settings, or --steps {old.get('steps')}, to continue it, "
                              f"or use another --out")
        before = json.loads((out / "sweep.json").read_text()).get("identity", {}).get("steps") if (out / "sweep.json").exists() else None
        raise ConfigError(f"{out} holds a sweep trained with --steps {before} (no time plan); give --steps {before} "
                          f"to continue it, or use another --out for a --time sweep")
    spec = sweep.runs()[0]
    side = max(1, min(int(jobs), len(sweep.runs())))
    if progress:
        what = (f"{CALIBRATION_STEPS} training steps of {spec.name}" if side == 1 else
                f"{3 * CALIBRATION_STEPS} training steps of {side} runs side by side (--jobs {jobs})")
        print(("# " if comment else "") + f"--time {text} per run: timing {what} to fix the steps of every run", flush=True)
    per_step = measure_step_seconds(sweep, spec, threads=threads, side_by_side=side)
    steps = int(TIME_SHARE * seconds / per_step)
    if steps < 1:
        raise ConfigError(f"--time {text} buys no training step: a step of {spec.name} took {per_step:.3g} s here; "
                          f"give at least {format_duration(math.ceil(per_step / TIME_SHARE))}")
    import datetime
    import torch

    plan = {"time": text, "time_s": seconds, "steps": steps, "seconds_per_step": per_step,
            "measured_on": spec.name, "measured_steps": CALIBRATION_STEPS - 1 if side == 1 else CALIBRATION_STEPS,
            "side_by_side": side,
            "threads": int(threads) if threads else torch.get_num_threads(), "device": sweep.device or "auto",
            "measured_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "note": f"every run trains {steps} steps = floor({TIME_SHARE} x {seconds:g} s / {per_step:.4g} s per step); "
                    "reused by every rerun of the sweep with the same --time", "key": key}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(plan, indent=1) + "\n")
    sweep.steps, sweep.time_plan = steps, plan
    return plan


def plan_line(sweep: Sweep, specs: Sequence[RunSpec], jobs: int = 1) -> str:
    """One line: runs x steps, how many are left to train and, with a time plan, the estimated training time."""
    from causaldiffae.training import format_duration

    left = sum(not (sweep.run_dir(s) / FINISHED).exists() for s in specs)
    line = f"plan: {len(specs)} runs x {sweep.steps} training steps each"
    plan = sweep.time_plan
    if plan:
        side = int(plan.get("side_by_side", 1))
        of = plan["measured_on"] if side == 1 else f"{side} runs side by side (the slowest)"
        line += (f" (--time {plan['time']} per run at {plan['seconds_per_step']:.3g} s/step, measured over "
                 f"{plan['measured_steps']} steps of {of} with {plan['threads']} thread(s); "
                 f"{Path(sweep.out) / TIME_PLAN})")
    line += f"; {left} not finished"
    if left:
        side = max(1, min(jobs, left))
        line += f", {side} side by side (--jobs {jobs})" if jobs > 1 else ""
        if plan:
            rounds = math.ceil(left / side)
            how = "one after another" if side == 1 else f"{rounds} round{'s' if rounds != 1 else ''} of {side} side by side"
            line += (f": about {format_duration(rounds * sweep.steps * plan['seconds_per_step'])} of training at the "
                     f"measured speed ({how}), plus scoring every run on {sweep.evaluation.n} images")
    return line


def _run_config_changes(a: str | None, b: str | None) -> list[str] | None:
    """How the new ``train-config.yaml`` text ``b`` configures runs differently from the stored
    ``a``: ``["model.label_average: 'batch' -> 'labelled'", ...]`` (empty: the same runs), or None
    when either cannot be read. The texts are compared once read, a field that ``a`` lacks (written
    by a version before the field existed) taking the value runs had before it (its legacy value,
    as for a saved checkpoint's config)."""
    import yaml

    from causaldiffae.training import RunConfig

    if a is None or b is None:
        return [] if a == b else None
    try:
        old = RunConfig.from_dict(yaml.safe_load(a), saved=True).to_dict()
        new = RunConfig.from_dict(yaml.safe_load(b)).to_dict()
    except Exception:  # noqa: BLE001 - an unreadable stored config is simply not the same one
        return None

    def flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, Mapping) else {f"{prefix}{k}": v})
        return out

    fo, fn = flat(old), flat(new)
    return [f"{k}: {fo.get(k)!r} -> {fn.get(k)!r}" for k in sorted(set(fo) | set(fn)) if fo.get(k) != fn.get(k)]


def _prepare_sweep(sweep: Sweep) -> None:
    """Write ``train-config.yaml`` and ``sweep.json``; refuse an ``out`` whose trained runs had another budget."""
    import yaml

    out = Path(sweep.out)
    out.mkdir(parents=True, exist_ok=True)
    d = _run_config(sweep, sweep.steps).to_dict()
    d["train"]["betas"] = list(d["train"]["betas"])
    text = "# written by causaldiffae ablate: the run config of every run of this sweep\n" + yaml.safe_dump(d, sort_keys=False)
    meta_path = out / "sweep.json"
    trained = _any_trained(out)
    if meta_path.exists() and trained:  # settings only bind once a run has been trained with them
        old = json.loads(meta_path.read_text())
        new_identity = {"graph": sweep.graph, "data": sweep.data, "steps": sweep.steps, "train_config": text}
        before = old.get("identity", {})
        changes = _run_config_changes(before.get("train_config"), text)
        diff = [k for k in new_identity if before.get(k) != new_identity[k] and not (k == "train_config" and changes == [])]
        if diff:
            has = [f"{k}={before.get(k)!r}" for k in diff if k != "train_config"]
            if "train_config" in diff:
                has.append("run config changes " + "; ".join(changes) if changes else "another train config")
            raise ConfigError(f"{out} holds a sweep with other {', '.join(diff)} ({', '.join(has)}); "
                              "use another --out, or the same settings to continue it (a --config file can "
                              "set a field back to the value the sweep's runs were trained with)")
    if not sweep.train_config_path.exists() or sweep.train_config_path.read_text() != text:
        atomic_write_text(sweep.train_config_path, text)
    info = {"identity": sweep.identity(), "fractions": list(sweep.fractions), "seeds": list(sweep.seeds),
            "baselines": list(sweep.baselines), "evaluation": sweep.evaluation.to_dict()}
    atomic_write_text(meta_path, json.dumps(info, indent=1) + "\n")


def _seeds(seeds: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(seeds, int):
        if seeds < 1:
            raise ConfigError(f"--seeds must be at least 1, got {seeds}")
        return tuple(range(seeds))
    return tuple(int(s) for s in seeds)


def _fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    out = tuple(float(f) for f in fractions)
    bad = [f for f in out if not 0.0 < f <= 1.0]
    if not out or bad:
        raise ConfigError(f"label fractions must be in (0, 1], got {list(fractions)}")
    return tuple(sorted(set(out)))


def label_fraction(
    graph: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    fractions: Sequence[float] = FRACTIONS,
    seeds: int | Sequence[int] = 3,
    steps: int | None = None,
    baselines: Sequence[str] = BASELINES,
    config: str | os.PathLike | None = None,
    batch_size: int | None = None,
    n: int = 64,
    eval_steps: int = 20,
    strength: float = 1.0,
    metrics: Sequence[str] = DEFAULT_METRICS,
    eval_seed: int = 0,
    predictors: str | os.PathLike | None = None,
    predictor_steps: int = 2000,
    predictor_samples: int = 8000,
    jobs: int = 1,
    threads: int | None = None,
    device: str | None = None,
    progress: bool = True,
    print_commands: bool = False,
    time: float | str | None = None,
) -> pd.DataFrame:
    """Train and score CausalDiffAE at each label fraction and seed (and the baselines); write the report.

    Args:
        graph, data: a graph file or shipped name, and a data folder / ``.npz`` / generated name
            (as ``causaldiffae train`` takes them).
        out: the sweep's folder (see the module docstring); rerunning into it continues the sweep.
        fractions: label fractions in (0, 1]; seeds: a count (0..k-1) or the seeds themselves.
        steps: the training steps of every run (default 600); ``config``: a run config file to use
            instead of :func:`budget_config` (its ``train.steps`` is set to ``steps``).
        time: instead of ``steps``, the training time of EACH run (seconds, or ``"90s"``, ``"10m"``,
            ``"1h30m"`` as ``causaldiffae train --time`` reads it; scoring comes on top): the speed is
            measured once and fixes one step count for every run (:func:`plan_time`), written to
            ``OUT/time-plan.json`` and reused when the sweep is rerun, so the runs stay comparable.
        baselines: model variants trained with all labels beside CausalDiffAE ("diffae", or none).
        n, eval_steps, strength, metrics, eval_seed: the evaluation (see :func:`causaldiffae.metrics.evaluate`).
        predictors: an anti-causal predictors file (default: trained once into ``out``, for ``predictor_steps``
            steps; on a generated data set on ``predictor_samples`` independent simulator draws).
        jobs: runs trained side by side in processes, each with ``threads`` torch threads
            (default: the cores / jobs).
        print_commands: print every run's ``causaldiffae train`` command and return without training.

    Returns:
        The long table of ``results.csv``: columns ``run, model, variant, label_fraction, seed,
        steps, metric, value`` (references have model "do-nothing" / "floor").
    """
    from causaldiffae.graph import CausalGraph
    from causaldiffae.training import RunConfig

    unknown = [b for b in baselines if b not in MODEL_NAMES or b == "causal"]
    if unknown:
        raise ConfigError(f"unknown baseline(s) {unknown}; known: diffae")
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")
    if steps is not None and time is not None:
        raise ConfigError(f"give either steps ({steps}) or a time budget ({time!r}), not both")
    if steps is not None and int(steps) < 1:
        raise ConfigError(f"--steps must be at least 1, got {steps}")
    if time is not None:
        _budget(time)  # a bad duration is refused before anything is written
    out = Path(out)
    if isinstance(graph, CausalGraph):
        out.mkdir(parents=True, exist_ok=True)
        graph = str(graph.save(out / "graph.json"))
    sweep = Sweep(graph=str(graph), data=str(data), out=str(out), fractions=_fractions(fractions), seeds=_seeds(seeds),
                  steps=int(steps) if steps is not None else DEFAULT_STEPS, baselines=tuple(baselines), config=str(config) if config else None, batch_size=batch_size,
                  evaluation=EvalSettings(n=n, steps=eval_steps, strength=strength, metrics=tuple(metrics), seed=eval_seed),
                  predictors=str(predictors) if predictors else None, predictor_steps=predictor_steps, device=device)
    jobs_threads = _threads_per_job(jobs, threads)
    if time is not None:
        plan_time(sweep, time, threads=jobs_threads, progress=progress or print_commands, comment=print_commands, jobs=jobs)
    _prepare_sweep(sweep)
    specs = sweep.runs()
    if progress or print_commands:
        print(("# " if print_commands else "") + plan_line(sweep, specs, jobs), flush=True)
    if print_commands:
        for spec in specs:
            step = _trained_steps(sweep.run_dir(spec))
            done = step is not None and step >= sweep.steps
            print(("# trained: " if done else "") + train_command(sweep, spec, resume=step is not None and not done))
        print("# then rerun this ablate command without --print-commands: it scores the trained runs and writes the report")
        return pd.DataFrame(columns=["run", "model", "variant", "label_fraction", "seed", "steps", "metric", "value"])
    size = RunConfig.load(sweep.train_config_path).model.unet.image_size
    es = build_eval_set(sweep.graph, sweep.data, size, n, eval_seed, sweep.predictors or out / "predictors.safetensors",
                        predictor_steps=predictor_steps, device=device, progress=progress, predictor_samples=predictor_samples)
    per_run = _run_all([(sweep, s, es) for s in specs], run_one, jobs, jobs_threads, progress, "ablation runs")
    rows = []
    for spec, run_rows in zip(specs, per_run):
        for r in run_rows:
            rows.append({"run": spec.name, "model": spec.model, "variant": spec.variant, "label_fraction": spec.label_fraction,
                         "seed": spec.seed, "steps": sweep.steps, "metric": r["metric"], "value": r["value"]})
    for r in reference_rows(per_run[0]):
        rows.append({"run": r["run"], "model": r["run"], "variant": None, "label_fraction": np.nan, "seed": np.nan,
                     "steps": np.nan, "metric": r["metric"], "value": r["value"]})
    df = pd.DataFrame(rows, columns=["run", "model", "variant", "label_fraction", "seed", "steps", "metric", "value"])
    df = df.astype({"seed": "Int64", "steps": "Int64"})
    title = f"Label fraction: {Path(sweep.graph).name} on {sweep.data}"
    plan = sweep.time_plan
    fixed = (f", fixed by --time {plan['time']} per run at the measured {plan['seconds_per_step']:.3g} s/step ({TIME_PLAN})"
             if plan else "")
    took = [t for t in (_read_marker(sweep.run_dir(sp) / FINISHED).get("train_seconds") for sp in specs) if t is not None]
    if took:
        from causaldiffae.training import format_duration

        fixed += (f"; the {len(took)} run{'s' if len(took) != 1 else ''} trained in one go took "
                  f"{format_duration(min(took))} to {format_duration(max(took))} of training each")
    notes = _notes(es, per_run[0], sweep.evaluation, f"{sweep.steps} training steps per run{fixed} "
                   f"({'config ' + sweep.config if sweep.config else 'budget_config'}), seeds {', '.join(map(str, sweep.seeds))}")
    write_report(df, out, title, by="label_fraction", notes=notes)
    return df


def _notes(es: EvalSet, rows: Sequence[Mapping[str, Any]], ev: EvalSettings, budget: str, guidance: str | None = None) -> list[str]:
    """The report's header lines: budget, images, where the intended values come from, what the references are."""
    from causaldiffae.metrics import MIN_GAP

    src = ("the simulator's true counterfactuals (" + str(es.simulator_name) + ")" if es.simulator is not None else
           "DoWhy's invertible SCM fitted on the training label table, read off the images by the anti-causal "
           "predictors (no simulator: no true image, so no floor and no pixel ground truth; the achieved fractions "
           "take the floor as 0 and are lower bounds)")
    where = "held-out test images" if es.held_out else "images of the data (it has no split column, so these are training images)"
    notes = [f"Budget: {budget}.",
             f"Scored on {len(es.dataset)} {where}, every node intervened on once (each image takes another image's value), "
             f"{ev.steps} DDIM steps, guidance {guidance or f'w = {ev.strength:g}'}.",
             f"Intended values: {src}.",
             "Effectiveness MAE in normalised label units (lower is better); do-nothing returns the factual image unchanged"
             + ("; floor is the true counterfactual image scored by the same predictors" if es.simulator is not None else "")
             + "; achieved fraction = (do-nothing - model) / (do-nothing - floor), 0 = nothing moved, 1 = as good as the truth."]
    left_out = undefined_fractions(rows)
    if left_out:
        notes.append(f"No achieved fraction (do-nothing - floor below {MIN_GAP:g}: the predictors cannot tell the intended "
                     f"change from doing nothing) for: {', '.join(left_out)}.")
    return notes


# ----------------------------------------------------------------------------------------------
# intervention strength
# ----------------------------------------------------------------------------------------------
def _strength_one(run: str, label: str, w: float, es: EvalSet, settings: EvalSettings,
                  out: str, threads: int | None = None, progress: bool = True) -> list[dict[str, Any]]:
    _set_threads(threads)
    folder = Path(out) / "evaluations" / f"{label}-w{w:g}"
    evaluation = {**settings.to_dict(), "strength": w, "run": str(Path(run).resolve())}
    rows = _read_finished(folder / FINISHED, evaluation)
    if rows is not None:
        return rows
    results = score_run(run, es, settings, strength=w, out=folder)
    rows = evaluation_rows(results, label)
    _write_finished(folder / FINISHED, evaluation, rows, intended_source=results.get("intended_source"))
    return rows


def strength(
    runs: Sequence[str | os.PathLike],
    data: str | os.PathLike,
    out: str | os.PathLike,
    strengths: Sequence[float] = STRENGTHS,
    n: int = 64,
    eval_steps: int = 20,
    metrics: Sequence[str] = STRENGTH_METRICS,
    eval_seed: int = 0,
    predictors: str | os.PathLike | None = None,
    predictor_steps: int = 2000,
    predictor_samples: int = 8000,
    jobs: int = 1,
    threads: int | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Score trained runs at each guidance weight ``w``; mean and std over runs of the same kind.

    Runs with the same variant and label fraction (e.g. the seeds of a label-fraction sweep) are
    one model in the table and the plots, their spread the error bars. Each (run, w) evaluation is
    resumable like a sweep's run (``out/evaluations/<run>-w<w>/finished.json``).

    Returns the long table of ``results.csv``: ``run, model, variant, label_fraction, seed, strength, metric, value``.
    """
    from causaldiffae.checkpoint import load_checkpoint
    from causaldiffae.graph import CausalGraph

    if not runs:
        raise ConfigError("give at least one --run")
    ws = tuple(float(w) for w in strengths)
    if not ws or any(w < 0 for w in ws):
        raise ConfigError(f"guidance weights must be >= 0, got {list(strengths)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    infos, labels = [], []
    for run in runs:
        _, meta = load_checkpoint(run)
        try:
            graph = CausalGraph.from_dict(meta["graph"])
            cfg = meta["config"]
            info = {"variant": cfg["model"].get("variant", "causal"), "label_fraction": float(cfg["train"]["label_fraction"]),
                    "seed": int(cfg["train"]["seed"]), "size": int(cfg["model"]["unet"]["image_size"]), "graph": graph,
                    "step": int(meta.get("step", 0))}
        except (KeyError, TypeError, ValueError) as e:
            from causaldiffae.errors import CheckpointError

            raise CheckpointError(f"{run}: checkpoint metadata is incomplete: {e}") from e
        name = Path(run).name if Path(run).is_dir() else Path(run).parent.name
        while name in labels:
            name += "'"
        infos.append(info)
        labels.append(name)
    first = infos[0]
    for run, info in zip(runs, infos):
        if info["graph"].nodes != first["graph"].nodes or info["size"] != first["size"]:
            raise ConfigError(f"{run} has nodes {info['graph'].nodes} at {info['size']} px, {runs[0]} has "
                              f"{first['graph'].nodes} at {first['size']} px: one strength sweep needs one graph and size")
    settings = EvalSettings(n=n, steps=eval_steps, strength=1.0, metrics=tuple(metrics), seed=eval_seed)
    es = build_eval_set(first["graph"], str(data), first["size"], n, eval_seed, predictors or out / "predictors.safetensors",
                        predictor_steps=predictor_steps, progress=progress, predictor_samples=predictor_samples)
    tasks = [(str(run), label, w, es, settings, str(out)) for run, label in zip(runs, labels) for w in ws]
    per = _run_all(tasks, _strength_one, jobs, _threads_per_job(jobs, threads), progress, "strength evaluations")
    rows = []
    for (run, label, w, *_), task_rows in zip(tasks, per):
        info = infos[labels.index(label)]
        model = f"{MODEL_NAMES.get(info['variant'], info['variant'])}, {info['label_fraction']:.0%} labels"
        for r in task_rows:
            rows.append({"run": label, "model": model, "variant": info["variant"], "label_fraction": info["label_fraction"],
                         "seed": info["seed"], "strength": w, "metric": r["metric"], "value": r["value"]})
    for r in reference_rows(per[0]):
        rows.append({"run": r["run"], "model": r["run"], "variant": None, "label_fraction": np.nan, "seed": np.nan,
                     "strength": np.nan, "metric": r["metric"], "value": r["value"]})
    df = pd.DataFrame(rows, columns=["run", "model", "variant", "label_fraction", "seed", "strength", "metric", "value"])
    df = df.astype({"seed": "Int64"})
    steps = sorted({i["step"] for i in infos})
    notes = _notes(es, per[0], settings, f"runs {', '.join(labels)} ({'/'.join(map(str, steps))} training steps)",
                   guidance="w as in the table")
    write_report(df, out, f"Intervention strength on {data}", by="strength", notes=notes)
    return df


# ----------------------------------------------------------------------------------------------
# the report: summary, Markdown, plots
# ----------------------------------------------------------------------------------------------
def summarise(df: pd.DataFrame, by: str) -> pd.DataFrame:
    """Mean, std (over seeds, ddof 1; NaN for one seed) and count per model, ``by`` value and metric."""
    models = df[~df["model"].isin(REFERENCES)]
    g = models.groupby(["model", by, "metric"], sort=False)["value"]
    summ = g.agg(mean="mean", std="std", seeds="count").reset_index()
    refs = df[df["model"].isin(REFERENCES)].groupby(["model", "metric"], sort=False)["value"].agg(mean="mean").reset_index()
    refs[by], refs["std"], refs["seeds"] = np.nan, np.nan, 0
    return pd.concat([summ, refs[summ.columns]], ignore_index=True)


def _cell(mean: float, std: float) -> str:
    """``mean ± std`` with both at the precision the mean's size calls for (3 significant digits, at least 3 decimals below 1)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    size = abs(mean)
    decimals = 3 if size < 1 else 2 if size < 10 else 1 if size < 100 else 0
    if std is None or math.isnan(std):
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def markdown_table(summary: pd.DataFrame, by: str) -> str:
    """The headline metrics as a Markdown table: one row per model and ``by`` value, "mean ± std" cells."""
    heads = headline_metrics(summary["metric"].unique())
    col = {"label_fraction": "labels", "strength": "w"}.get(by, by)
    lines = ["| model | " + col + " | seeds | " + " | ".join(h.short for h in heads) + " |",
             "|---|---:|---:|" + "---:|" * len(heads)]
    models = summary[~summary["model"].isin(REFERENCES)]
    order = list(dict.fromkeys(models["model"]))
    for m in order:
        sub = models[models["model"] == m]
        for value in sorted(sub[by].unique()):
            part = sub[sub[by] == value].set_index("metric")
            seeds = int(part["seeds"].max())
            label = f"{value:.0%}" if by == "label_fraction" and value * 100 == round(value * 100) else f"{value:g}"
            cells = [_cell(part.at[h.key, "mean"], part.at[h.key, "std"]) if h.key in part.index else "-" for h in heads]
            lines.append(f"| {m} | {label} | {seeds} | " + " | ".join(cells) + " |")
    for ref in REFERENCES:
        part = summary[summary["model"] == ref].set_index("metric")
        if len(part):
            cells = [_cell(part.at[h.key, "mean"], float("nan")) if h.key in part.index else "-" for h in heads]
            lines.append(f"| *{ref}* | - | - | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _slug(key: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in key).strip("_")


def plot_metric(ax, summary: pd.DataFrame, head: Headline, by: str) -> None:
    """One panel: ``head`` against ``by``, mean ± std per model; a one-point baseline and the references as lines."""
    part = summary[summary["metric"] == head.key]
    models = part[~part["model"].isin(REFERENCES)]
    colours = iter(["C0", "C1", "C2", "C3", "C4", "C5"])
    for m in dict.fromkeys(models["model"]):
        g = models[models["model"] == m].sort_values(by)
        c = next(colours)
        seeds = int(g["seeds"].max())
        label = f"{m} (mean ± std, {seeds} seed{'s' if seeds != 1 else ''})"
        if len(g) == 1 and by == "label_fraction":
            mean, std = float(g["mean"].iloc[0]), float(g["std"].iloc[0])
            ax.axhline(mean, color=c, ls="--", lw=1.2, label=f"{label}, {g[by].iloc[0]:.0%} labels")
            if not math.isnan(std):
                ax.axhspan(mean - std, mean + std, color=c, alpha=0.15, lw=0)
        else:
            ax.errorbar(g[by], g["mean"], yerr=g["std"].fillna(0.0), marker="o", ms=4, capsize=3, color=c, label=label)
    for ref, style in zip(REFERENCES, (":", "-.")):
        r = part[part["model"] == ref]
        if len(r):
            ax.axhline(float(r["mean"].iloc[0]), color="0.4", ls=style, lw=1.0, label=ref)
    if by == "label_fraction":
        ax.set_xscale("log")
        xs = sorted(models[by].unique())
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{x:.0%}" if x >= 0.01 else f"{x:.1%}" for x in xs])
        ax.minorticks_off()
        ax.set_xlabel("label fraction (share of training images\nwith labels, log scale)")
    else:
        ax.set_xlabel("guidance weight w")
    ax.set_ylabel(head.axis + ("  ↓ better" if head.lower_is_better else "  ↑ better"), fontsize=8)
    ax.set_title(head.short, fontsize=9)
    ax.grid(alpha=0.3)


def write_plots(summary: pd.DataFrame, out: Path, by: str, name: str) -> list[Path]:
    """``out/<name>.png`` (every headline metric) and ``out/plots/<metric>.png`` (one each); the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads = headline_metrics(summary["metric"].unique())
    if not heads:
        return []
    paths = []
    (out / "plots").mkdir(parents=True, exist_ok=True)
    for h in heads:
        fig, ax = plt.subplots(figsize=(4.6, 3.4))
        plot_metric(ax, summary, h, by)
        ax.legend(fontsize=6)
        fig.tight_layout()
        p = out / "plots" / f"{_slug(h.key)}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    cols = min(4, len(heads))
    rows = math.ceil(len(heads) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 3.3 * rows + 0.6), squeeze=False)
    for ax, h in zip(axes.flat, heads):
        plot_metric(ax, summary, h, by)
    for ax in list(axes.flat)[len(heads):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=7)
    fig.tight_layout(rect=(0, 0.08 if rows == 1 else 0.05, 1, 1))
    p = out / f"{name}.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return [p, *paths]


def write_report(df: pd.DataFrame, out: str | os.PathLike, title: str, by: str, notes: Sequence[str] = ()) -> pd.DataFrame:
    """``results.csv`` (``df``), ``summary.csv``, ``results.md`` and the plots into ``out``; prints the table once."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "results.csv.partial"
    df.to_csv(tmp, index=False)
    os.replace(tmp, out / "results.csv")
    summary = summarise(df, by)
    summary.to_csv(out / "summary.csv.partial", index=False)
    os.replace(out / "summary.csv.partial", out / "summary.csv")
    table = markdown_table(summary, by)
    name = "label_fraction" if by == "label_fraction" else by
    plots = write_plots(summary, out, by, name)
    md = [f"## {title}", "", *notes, "", table, ""]
    if plots:
        md += [f"![{name}]({plots[0].name})", ""]
    atomic_write_text(out / "results.md", "\n".join(md))
    print(f"\n{title}\n" + table + f"\n\nwrote {out / 'results.csv'}, {out / 'results.md'}"
          + (f", {plots[0]} and {len(plots) - 1} plots in {out / 'plots'}" if plots else ""), file=sys.stdout)
    return summary
