"""The ``causaldiffae`` command line.

Every sub-command is a thin layer over the Python API. Errors a user can cause (a bad graph file, an
unknown node, a corrupt checkpoint...) are :class:`~causaldiffae.errors.CausalDiffAEError`s: the
CLI prints their message on one line and exits with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from causaldiffae.errors import CausalDiffAEError

EXIT_USER_ERROR = 2
EXIT_FALSIFIED = 1

_COMMANDS: dict[str, Callable[[argparse.ArgumentParser], None]] = {}


def command(name: str):
    """Register ``fn(subparsers)`` as the builder of sub-command ``name``."""

    def wrap(fn):
        _COMMANDS[name] = fn
        return fn

    return wrap


# ---------------------------------------------------------------------------------------- graph
@command("graph")
def _graph_parser(sub) -> None:
    p = sub.add_parser("graph", help="render or check a causal graph file")
    gsub = p.add_subparsers(dest="graph_command", required=True)

    r = gsub.add_parser("render", help="draw a graph with graphviz (png, svg or pdf)")
    r.add_argument("graph", help="graph file (.dot/.gv/.gml/.yaml/.json) or a shipped name (pendulum, ...)")
    r.add_argument("-o", "--out", required=True, help="output file; the suffix picks the format")
    r.add_argument("--do", action="append", default=[], metavar="NODE", help="highlight NODE as intervened and its descendants as affected (repeatable)")
    r.set_defaults(func=_graph_render)

    c = gsub.add_parser("check", help="test the graph's conditional independences on a label table with DoWhy")
    c.add_argument("graph")
    c.add_argument("--labels", required=True, help="CSV with one column per node (the node's label column)")
    c.add_argument("--permutations", type=int, default=20, help="DoWhy permutations (more: slower, surer)")
    c.add_argument("--max-rows", type=int, default=2000, help="subsample the table to this many rows")
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=_graph_check)


def _graph_render(args) -> int:
    from causaldiffae.graph import CausalGraph, render

    graph = CausalGraph.load(args.graph)
    out = render(graph, args.out, intervened=args.do)
    print(f"wrote {out}")
    return 0


def _graph_check(args) -> int:
    from causaldiffae.graph import CausalGraph, check, load_label_table

    graph = CausalGraph.load(args.graph)
    table = load_label_table(args.labels)
    report = check(graph, table, n_permutations=args.permutations, max_rows=args.max_rows, seed=args.seed)
    print(report)
    return EXIT_FALSIFIED if report.falsified else 0


# ----------------------------------------------------------------------------------------- data
@command("data")
def _data_parser(sub) -> None:
    p = sub.add_parser("data", help="generate a data set with ground-truth counterfactuals")
    p.add_argument("name", choices=["pendulum", "morphomnist"])
    p.add_argument("--size", type=int, default=32, help="image size in pixels (square)")
    p.add_argument("--out", required=True, help="output folder (images + labels.csv + generator.json)")
    p.add_argument("--n", type=int, default=None, help="number of images (default: the data set's standard size)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_data)


def _data(args) -> int:
    from causaldiffae.data import generate_dataset

    out = generate_dataset(args.name, args.out, size=args.size, n=args.n, seed=args.seed)
    print(f"wrote {out}")
    return 0


# ---------------------------------------------------------------------------------------- train
TRAIN_EPILOG = """\
how long (measured, docs/training.md#how-long-training-takes): on an idle 2-core machine a step
of the default model (64 images of 32x32) takes about 0.74 s, so --time 10m buys about 800
steps; on a busy machine (load 18) it took 24 s (train measures and plans with the speed it gets).
Usable counterfactuals took 1,600-2,400 steps on 3,750-5,481 images (the shipped models, about
an hour on one core); 400 steps moved interventions only part of the way; tens of steps show
nothing yet. The last line of every run says whether interventions move.

examples:
  causaldiffae train --graph my.dot --data my_images/ --time 30m --out runs/mine
  causaldiffae train --graph pendulum --data pendulum --steps 2400 --out runs/pendulum
  causaldiffae train --resume runs/mine --time 30m          # graph, data and config come from the run
"""


@command("train")
def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a CausalDiffAE on a graph and a data set",
                       description="Train a CausalDiffAE. The warm-up, EMA horizon, preview and checkpoint intervals follow "
                                   "the run's length (--steps, or the steps a --time budget allows) unless a --config sets "
                                   "them. The plan is printed first, a preview grid lands in RUN/preview.png four times per "
                                   "run, and the last line scores the model on held-out images.",
                       epilog=TRAIN_EPILOG)
    p.add_argument("--graph", help="graph file (.dot/.gml/.yaml/.json) or shipped name; a new run needs it, --resume takes the run's")
    p.add_argument("--data", help="data folder (images + labels.csv), .npz, or a generated name (pendulum, morphomnist); "
                                  "a new run needs it, --resume takes the run's")
    p.add_argument("--config", help="YAML/JSON file with sections 'model' and 'train' (default: the built-in defaults, docs/training.md)")
    p.add_argument("--label-fraction", type=float, metavar="F",
                   help="fraction in (0, 1] of training images that keep their labels (default: 1; fixed for the run's life)")
    p.add_argument("--steps", type=int, metavar="N", help="total optimisation steps, >= 1 (default: 20000, or what --time allows)")
    p.add_argument("--time", metavar="DURATION",
                   help="time budget for training, e.g. 90s, 10m, 1h, 1h30m: the first steps' speed fixes the steps "
                        "(at most --steps) and the schedule; stops with a checkpoint when the time is up")
    p.add_argument("--batch-size", type=int, metavar="B", help="global batch size, >= 1 (default: 64)")
    p.add_argument("--size", type=int, metavar="PX", help="image size in pixels, images are resized to it (default: 32)")
    p.add_argument("--variant", choices=["causal", "diffae"], help="model variant (default: causal; diffae: no mechanisms, a baseline)")
    p.add_argument("--seed", type=int, help="seeds the labelled subset, the initialisation and every draw (default: 0)")
    p.add_argument("--out", metavar="RUN", help="run folder for a new run; refused if it holds a run, unless --overwrite")
    p.add_argument("--resume", metavar="RUN", help="continue the run in this folder from its last checkpoint (--steps/--time extend it)")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out (its checkpoint, log, previews)")
    p.add_argument("--check-images", type=int, default=64, metavar="N",
                   help="held-out images of the final check (reconstruction, interventions); 0: skip it (default: 64)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available, else cpu")
    p.add_argument("--no-progress", action="store_true", help="no progress bar: print one line per log interval instead")
    p.set_defaults(func=_train)


def _check_train_args(args):
    """Every train argument, checked before anything is read or written; returns the time budget (s) or None."""
    from causaldiffae.errors import ConfigError
    from causaldiffae.training import existing_run_files, parse_duration

    if args.out and args.resume:
        raise ConfigError("give either --out RUN (a new run) or --resume RUN (continue one), not both")
    if not args.out and not args.resume:
        raise ConfigError("give --out RUN for a new run or --resume RUN to continue one")
    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {args.steps}")
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.label_fraction is not None and not 0.0 < args.label_fraction <= 1.0:
        raise ConfigError(f"--label-fraction must be in (0, 1], got {args.label_fraction}")
    if args.size is not None and not 4 <= args.size <= 1024:
        raise ConfigError(f"--size must be between 4 and 1024 pixels, got {args.size}")
    if args.check_images < 0:
        raise ConfigError(f"--check-images must be >= 0, got {args.check_images}")
    budget = parse_duration(args.time) if args.time is not None else None
    if args.resume:
        if args.overwrite:
            raise ConfigError("--overwrite replaces a run; it cannot go with --resume")
        if not (Path(args.resume) / "checkpoint.safetensors").exists():
            raise ConfigError(f"--resume {args.resume}: not a run folder with a checkpoint.safetensors to continue from")
    else:
        if not args.graph or not args.data:
            raise ConfigError("a new run needs --graph and --data")
        found = existing_run_files(args.out)
        if found and not args.overwrite:
            raise ConfigError(f"{args.out} already holds a run ({', '.join(found)}); pass --resume {args.out} to continue it "
                              f"or --overwrite to replace it")
        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise ConfigError(f"--out {args.out} is a file, not a folder")
    return budget


def _train(args) -> int:
    from causaldiffae.pipeline import open_heldout, prepare_training
    from causaldiffae.training import train

    budget = _check_train_args(args)
    run_dir = args.resume or args.out
    graph, dataset, config, data_info = prepare_training(
        args.graph, args.data, config_path=args.config, resume=args.resume, time_budget=budget,
        overrides={"train.label_fraction": args.label_fraction, "train.steps": args.steps, "train.batch_size": args.batch_size,
                   "train.seed": args.seed, "model.unet.image_size": args.size, "model.variant": args.variant},
    )
    heldout, what = (open_heldout(data_info["source"], graph, config.model.unet.image_size) if args.check_images
                     else (None, ""))
    train(graph, dataset, run_dir, config, resume=bool(args.resume), device=args.device, progress=not args.no_progress,
          data_info=data_info, time_budget=budget, overwrite=args.overwrite, heldout=heldout,
          heldout_n=args.check_images or 64, heldout_what=what)
    return 0


# ------------------------------------------------------------------------------- counterfactual
def _shift(delta: float):
    return lambda v: v + delta


def _parse_do(exprs: Sequence[str]) -> dict:
    """Parse ``--do`` expressions into an intervention.

    ``NODE=V`` sets NODE to V (label units, negative values allowed); ``NODE=+D`` or ``NODE+=D``
    shifts it by +D; ``NODE-=D`` shifts it by -D.
    """
    from causaldiffae.errors import InterventionError

    out: dict = {}
    for e in exprs:
        name, sep, value = e.partition("=")
        op = ""
        if name.endswith(("+", "-")):
            name, op = name[:-1], name[-1]
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise InterventionError(f"malformed --do {e!r}: expected NODE=VALUE (set), NODE=+DELTA or NODE+=DELTA / NODE-=DELTA (shift)")
        if not op and value.startswith("+"):
            op, value = "+", value[1:]
        try:
            number = float(value)
        except ValueError:
            raise InterventionError(f"malformed --do {e!r}: {value!r} is not a number") from None
        if name in out:
            raise InterventionError(f"--do names {name!r} twice")
        out[name] = _shift(number) if op == "+" else _shift(-number) if op == "-" else number
    return out


@command("counterfactual")
def _cf_parser(sub) -> None:
    p = sub.add_parser("counterfactual", help="what would these images look like under do(...)?")
    p.add_argument("--run", required=True, help="run folder or checkpoint")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", nargs="+", help="image files")
    src.add_argument("--data", help="data folder / .npz / generated name to draw images from")
    p.add_argument("--n", type=int, default=16, help="images to take from --data (a random pick of its test split, set by --seed)")
    p.add_argument("--resize", action="store_true", help="convert and resize --images to the model's size and channels")
    p.add_argument("--do", action="append", default=[], metavar="NODE=VALUE", help="set (light=120) or shift (angle=+10); repeatable")
    p.add_argument("--strength", type=float, default=1.0, help="guidance weight w (1: plain conditional; >1 stronger)")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps for inversion and decoding")
    p.add_argument("--abduction", choices=["ddim", "noise"], default="ddim")
    p.add_argument("--refine", type=int, default=0, help="fixed-point corrections per DDIM inversion step (exacter abduction, slower)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.set_defaults(func=_counterfactual)


def _counterfactual(args) -> int:
    from causaldiffae.pipeline import run_counterfactual_command

    return run_counterfactual_command(args, _parse_do(args.do))


@command("sample")
def _sample_parser(sub) -> None:
    p = sub.add_parser("sample", help="interventional samples: u from the prior, do(...), random x_T")
    p.add_argument("--run", required=True)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--do", action="append", default=[], metavar="NODE=VALUE")
    p.add_argument("--strength", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", required=True)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.set_defaults(func=_sample)


def _sample(args) -> int:
    from causaldiffae.pipeline import run_sample_command

    return run_sample_command(args, _parse_do(args.do))


@command("export")
def _export_parser(sub) -> None:
    p = sub.add_parser("export", help="write a run's EMA weights as a small inference-only checkpoint")
    p.add_argument("--run", required=True, help="run folder or checkpoint")
    p.add_argument("-o", "--out", required=True, help="output .safetensors file")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="storage precision of the weights")
    p.set_defaults(func=_export)


def _export(args) -> int:
    from causaldiffae.training import export_model

    path = export_model(args.run, args.out, dtype=args.dtype)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


# ----------------------------------------------------------------------------------- evaluation
@command("predictors")
def _predictors_parser(sub) -> None:
    p = sub.add_parser("predictors", help="train anti-causal predictors (one CNN regressor per node) for the effectiveness metric")
    p.add_argument("--graph", help="graph file or shipped name (default: the graph of --run)")
    p.add_argument("--data", required=True, help="data folder / .npz / generated name with labelled images")
    p.add_argument("--run", help="run folder: use its graph, normalisation and image size; write RUN/predictors.safetensors")
    p.add_argument("--out", help="output .safetensors file (default: beside the run)")
    p.add_argument("--steps", type=int, default=2000, help="optimisation steps")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--size", type=int, help="image size (default: the run's, else 32)")
    p.add_argument("--split", default="train", help="rows of the data's split column to train on (ignored without one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--labelled-images", action="store_true",
                   help="train on the data's labelled images even where it has a simulator (default there: independent draws)")
    p.add_argument("--n-samples", type=int, default=8000, help="scenes drawn from the simulator")
    p.add_argument("--categorical", nargs="+", default=None, help="nodes to classify (besides those typed categorical)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_predictors)


def _predictors(args) -> int:
    from causaldiffae.checkpoint import load_checkpoint
    from causaldiffae.data import open_dataset
    from causaldiffae.errors import CheckpointError, ConfigError
    from causaldiffae.graph import CausalGraph
    from causaldiffae.predictors import default_predictors_path, load_predictors, train_predictors

    if not args.run and not args.graph:
        raise ConfigError("give --graph G (and --out FILE), or --run RUN to use the run's graph")
    if not args.run and not args.out:
        raise ConfigError("give --out FILE for the predictors, or --run RUN to put them beside the run")
    size = args.size
    if args.run:
        from causaldiffae.training import assert_same_graph

        _, meta = load_checkpoint(args.run)
        try:
            graph = CausalGraph.from_dict(meta["graph"])
            size = size or int(meta["config"]["model"]["unet"]["image_size"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{args.run}: checkpoint metadata is incomplete: {e}") from e
        if args.graph:
            assert_same_graph(graph, CausalGraph.load(args.graph), args.run)
        dataset = open_dataset(args.data, graph.label_columns, size=size, split=args.split)
    else:
        graph = CausalGraph.load(args.graph)
        size = size or 32
        dataset = open_dataset(args.data, graph.label_columns, size=size, split=args.split)
        loc, scale = dataset.label_stats()
        graph = graph.with_label_stats(loc, scale)
    out = Path(args.out) if args.out else default_predictors_path(args.run)
    from causaldiffae.data.generate import folder_generator_params, model_generator_params, resolve_generated
    from causaldiffae.data.simulator import simulator_from_params

    trained_on = model_generator_params(args.run, meta) if args.run else None  # the rendering the run saw
    gen = None if args.labelled_images else folder_generator_params(resolve_generated(args.data, size, trained_on))
    simulator = simulator_from_params(gen) if gen else None
    if simulator is not None:
        print(f"training on {args.n_samples} independent draws of the {simulator!r} (every factor varies on its own)")
    path = train_predictors(graph, dataset, out, steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                            device=args.device, progress=not args.no_progress, simulator=simulator,
                            n_samples=args.n_samples, size=size, categorical=args.categorical)
    loaded = load_predictors(path).meta
    mae, acc = loaded.get("val_mae", {}), loaded.get("val_accuracy", {})
    print("held-out MAE (normalised units): " + ", ".join(f"{k} {v:.4f}" if v is not None else f"{k} -" for k, v in mae.items())
          + "".join(f"; {k} accuracy {v:.4f}" for k, v in acc.items() if v is not None))
    print(f"wrote {path}")
    return 0


@command("evaluate")
def _evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="reconstruction, effectiveness (beside do-nothing and floor), composition, reversibility, "
                                        "ground truth (whole image and changed region), latent mechanism check and DCI")
    p.add_argument("--run", required=True, help="run folder or checkpoint")
    p.add_argument("--data", required=True, help="data folder / .npz / generated name (a generated folder brings its simulator)")
    p.add_argument("--predictors", help="predictors file (default: RUN/predictors.safetensors, or X.predictors.safetensors "
                                        "beside a checkpoint X.safetensors such as a shipped model, if it exists)")
    p.add_argument("--n", type=int, default=64, help="images to evaluate (a seeded pick of the split; 64 at least for quoted figures)")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps of each counterfactual")
    p.add_argument("--strength", type=float, default=1.0, help="guidance weight w")
    p.add_argument("--refine", type=int, default=0, help="fixed-point corrections per DDIM inversion step in every query")
    p.add_argument("--recon-steps", type=int, nargs="+", default=[10, 20, 50, 100], help="step counts of the reconstruction table")
    p.add_argument("--cycles", type=int, nargs="+", default=[1, 10], help="composition: report L1 after these numbers of null interventions")
    p.add_argument("--reversibility-cycles", type=int, default=5)
    p.add_argument("--intended", choices=["auto", "simulator", "dowhy", "scm"], default="auto",
                   help="effectiveness' intended labels (auto: the simulator if any, else DoWhy)")
    p.add_argument("--dowhy", choices=["auto", "linear"], default="auto", help="DoWhy mechanisms: auto-assigned or linear additive noise")
    p.add_argument("--metrics", nargs="+", help="run only these (reconstruction effectiveness composition reversibility ground_truth latent dci)")
    p.add_argument("--split", default="test", help="rows of the data's split column to evaluate on (ignored without one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", help="output folder (default: RUN/evaluation)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_evaluate)


def _evaluate(args) -> int:
    from causaldiffae import metrics as M
    from causaldiffae.data import open_dataset
    from causaldiffae.errors import CheckpointError
    from causaldiffae.model import CausalDiffAE
    from causaldiffae.predictors import default_predictors_path, load_predictors

    model, meta = CausalDiffAE.load(args.run, device=args.device)
    metrics = tuple(args.metrics) if args.metrics else M.METRICS
    unknown = [m for m in metrics if m not in M.METRICS]
    if unknown:
        from causaldiffae.errors import ConfigError

        raise ConfigError(f"unknown metric(s) {unknown}; known: {', '.join(M.METRICS)}")
    size = model.image_shape[1]
    from causaldiffae.data.generate import model_generator_params, resolve_generated

    data_spec = resolve_generated(args.data, size, model_generator_params(args.run, meta))  # the rendering it was trained on
    dataset = open_dataset(data_spec, model.graph.label_columns, size=size, split=args.split)
    predictors = None
    ppath = Path(args.predictors) if args.predictors else default_predictors_path(args.run)
    if not args.predictors and not ppath.exists():  # a checkpoint file X.safetensors (a shipped model): X.predictors.safetensors
        from causaldiffae.checkpoint import resolve_checkpoint

        ckpt = resolve_checkpoint(args.run)
        if ckpt.with_name(ckpt.stem + ".predictors.safetensors").exists():
            ppath = ckpt.with_name(ckpt.stem + ".predictors.safetensors")
    if args.predictors or ppath.exists():
        predictors = load_predictors(ppath, device=args.device)
        if predictors.graph.nodes != model.graph.nodes:
            raise CheckpointError(f"{ppath} predicts nodes {predictors.graph.nodes}, the model has {model.graph.nodes}")
    found = M.find_simulator(data_spec, size)
    simulator, sim_size = (found[0], found[1]) if found else (None, None)
    results = M.evaluate(
        model, dataset, predictors=predictors, simulator=simulator, n=args.n, steps=args.steps, strength=args.strength,
        recon_steps=args.recon_steps, composition_cycles=args.cycles, reversibility_cycles=args.reversibility_cycles,
        intended=args.intended, simulator_size=sim_size, dowhy_mechanisms=args.dowhy, metrics=metrics, seed=args.seed,
        progress=not args.no_progress, refine=args.refine,
    )
    results = {"run": str(args.run), "data": str(args.data), "split": args.split,
               "predictors": str(ppath) if predictors is not None else None,
               "simulator": found[2] if found else None, **results}
    run = Path(args.run)
    out = Path(args.out) if args.out else (run if run.is_dir() else run.parent) / "evaluation"
    js, md = M.write_report(results, out, title=f"Evaluation of {args.run}")
    for line in M.summary_lines(results):
        print(line)
    if results.get("skipped"):
        print("skipped: " + "; ".join(f"{k} ({v})" for k, v in results["skipped"].items()))
    print(f"wrote {js} and {md}")
    return 0


@command("ablate")
def _ablate_parser(sub) -> None:
    p = sub.add_parser("ablate", help="label-fraction and guidance-strength ablations with seeds, a table and plots")
    asub = p.add_subparsers(dest="ablate_command", required=True)

    f = asub.add_parser("label-fraction", help="train and score a run per label fraction and seed (and the Diff-AE baseline)",
                        description="Train CausalDiffAE at each label fraction and seed (plus each baseline with all labels), "
                                    "score every run on the same held-out images, and write results.csv, results.md and plots "
                                    "into --out. Rerun the same command to continue a killed sweep. See docs/ablations.md.")
    f.add_argument("--graph", required=True, help="graph file or shipped name")
    f.add_argument("--data", required=True, help="data folder (images + labels.csv), .npz, or a generated name")
    f.add_argument("--fractions", type=float, nargs="+", help="label fractions in (0, 1] (default: 0.01 0.1 0.5 1)")
    f.add_argument("--seeds", type=int, default=3, help="seeds per fraction (0 .. N-1)")
    f.add_argument("--steps", type=int, default=600, help="training steps of every run (the budget)")
    f.add_argument("--baselines", nargs="*", default=["diffae"], choices=["diffae"], help="baseline variants with all labels (none: --baselines)")
    f.add_argument("--config", help="run config file for every run instead of the budget-scaled default (its steps are set to --steps)")
    f.add_argument("--batch-size", type=int)
    f.add_argument("--jobs", type=int, default=1, help="runs trained side by side (processes)")
    f.add_argument("--threads", type=int, help="torch threads per run (default: cores / jobs)")
    f.add_argument("--print-commands", action="store_true", help="print each run's `causaldiffae train` command and stop")
    f.add_argument("--device", choices=["cpu", "cuda"], default=None)
    f.add_argument("-o", "--out", required=True, help="the sweep's folder (rerun into it to continue)")
    f.set_defaults(func=_ablate_fraction)

    s = asub.add_parser("strength", help="score trained runs at several guidance weights w")
    s.add_argument("--run", nargs="+", required=True, help="run folders (runs of one variant and label fraction are averaged)")
    s.add_argument("--data", required=True, help="data folder / .npz / generated name")
    s.add_argument("--strengths", type=float, nargs="+", help="guidance weights w (default: 0 0.5 1 2 3 5)")
    s.add_argument("--jobs", type=int, default=1, help="evaluations side by side (processes)")
    s.add_argument("--threads", type=int, help="torch threads per evaluation (default: cores / jobs)")
    s.add_argument("-o", "--out", required=True, help="output folder")
    s.set_defaults(func=_ablate_strength)
    for q in (f, s):
        q.add_argument("--n", type=int, default=64, help="held-out images every run is scored on")
        q.add_argument("--eval-steps", type=int, default=20, help="DDIM steps of every query")
        q.add_argument("--metrics", nargs="+", help="evaluate() metrics (default: reconstruction effectiveness ground_truth, "
                       "for strength without reconstruction; also composition reversibility dci)")
        q.add_argument("--predictors", help="anti-causal predictors file (default: trained once into --out)")
        q.add_argument("--predictor-steps", type=int, default=2000, help="training steps of those predictors")
        q.add_argument("--predictor-samples", type=int, default=8000,
                       help="independent simulator draws they train on (generated data sets only)")
        q.add_argument("--eval-seed", type=int, default=0, help="seeds the choice of images and interventions")
        q.add_argument("--no-progress", action="store_true")
    f.add_argument("--strength", type=float, default=1.0, help="guidance weight w of every query")


def _ablate_fraction(args) -> int:
    from causaldiffae import ablation

    ablation.label_fraction(
        args.graph, args.data, args.out, fractions=args.fractions or ablation.FRACTIONS, seeds=args.seeds, steps=args.steps,
        baselines=args.baselines, config=args.config, batch_size=args.batch_size, n=args.n, eval_steps=args.eval_steps,
        strength=args.strength, metrics=args.metrics or ablation.DEFAULT_METRICS, eval_seed=args.eval_seed, predictors=args.predictors,
        predictor_steps=args.predictor_steps, predictor_samples=args.predictor_samples, jobs=args.jobs,
        threads=args.threads, device=args.device,
        progress=not args.no_progress, print_commands=args.print_commands)
    return 0


def _ablate_strength(args) -> int:
    from causaldiffae import ablation

    ablation.strength(
        args.run, args.data, args.out, strengths=args.strengths or ablation.STRENGTHS, n=args.n, eval_steps=args.eval_steps,
        metrics=args.metrics or ablation.STRENGTH_METRICS,
        eval_seed=args.eval_seed, predictors=args.predictors, predictor_steps=args.predictor_steps,
        predictor_samples=args.predictor_samples, jobs=args.jobs,
        threads=args.threads, progress=not args.no_progress)
    return 0


@command("demo")
def _demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="counterfactuals from a shipped model beside the simulator's true ones")
    p.add_argument("--model", default="pendulum", choices=["pendulum", "morphomnist"], help="shipped model")
    p.add_argument("-o", "--out", default="demo", help="output folder for grid.png")
    p.add_argument("--n", type=int, default=6, help="scenes")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps (inversion and decoding)")
    p.add_argument("--strength", type=float, default=2.0,
                   help="guidance weight w (default 2: closest to the true counterfactuals in docs/results.md)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_demo)


def _demo(args) -> int:
    from causaldiffae.demo import run_demo

    run_demo(args.model, out=args.out, n=args.n, steps=args.steps, strength=args.strength, seed=args.seed)
    return 0


# ----------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="causaldiffae",
        description="Counterfactual image generation with causal diffusion autoencoders.",
    )
    from causaldiffae import __version__

    parser.add_argument("--version", action="version", version=f"causaldiffae {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for build in _COMMANDS.values():
        build(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``causaldiffae`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CausalDiffAEError as e:
        print(f"causaldiffae: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("causaldiffae: interrupted", file=sys.stderr)
        return 130


def _path(s: str) -> Path:
    return Path(s).expanduser()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
