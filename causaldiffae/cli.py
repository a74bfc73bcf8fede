"""The ``causaldiffae`` command line.

Every sub-command is a thin layer over the Python API. Errors a user can cause (a bad number, a
missing file, a bad graph file, an unknown node, a corrupt checkpoint...) print one line naming the
value and exit with status 2, without a traceback and before any output is written: argparse checks
every number and file when it reads the command line (:func:`_integer`, :func:`_number`,
:func:`check_files`, run before the command), the rest are :class:`~causaldiffae.errors.CausalDiffAEError`s. Warnings
(an intervention outside the training range, images resized) print once, as one line.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

from causaldiffae.errors import CausalDiffAEError

EXIT_USER_ERROR = 2


def _default_query_steps() -> int:
    """The counterfactual step count used when --steps is not given (shown in --help)."""
    from causaldiffae.counterfactual import DEFAULT_STEPS

    return DEFAULT_STEPS


def _default_refine() -> int:
    """The counterfactual query's inversion corrections when --refine is not given (shown in --help)."""
    from causaldiffae.counterfactual import DEFAULT_REFINE

    return DEFAULT_REFINE


def _residual_arguments(p: argparse.ArgumentParser, library_default: bool) -> None:
    """--residual / --residual-gate (the query carries the reconstruction residual)."""
    from causaldiffae.counterfactual import DEFAULT_RESIDUAL, DEFAULT_RESIDUAL_GATE

    default = (f"the library's query default, causaldiffae.counterfactual.DEFAULT_RESIDUAL: {'on' if DEFAULT_RESIDUAL else 'off'}"
               if library_default else "off, the protocol the published figures use")
    p.add_argument("--residual", action=argparse.BooleanOptionalAction, default=None if library_default else False,
                   help="carry the detail the decoder does not reproduce (x - decode(x_T, z)) into the counterfactual where it "
                        f"matches the reconstruction; a null query then returns the input exactly; one more decoding (default: {default})")
    p.add_argument("--residual-gate", type=_number(0.0, open_min=True), default=None, metavar="GREY",
                   help="grey levels (0-255) of change from the reconstruction at which the residual's weight reaches 0 "
                        f"(default: {DEFAULT_RESIDUAL_GATE:g})")


def _default_refine_carry() -> bool:
    """Whether the query's inversion corrections reuse their network call when not told (shown in --help)."""
    from causaldiffae.counterfactual import DEFAULT_REFINE_CARRY

    return DEFAULT_REFINE_CARRY


def _default_sample_steps() -> int:
    """The sample command's decoding steps when --steps is not given (shown in --help)."""
    from causaldiffae.counterfactual import DEFAULT_SAMPLE_STEPS

    return DEFAULT_SAMPLE_STEPS
EXIT_FALSIFIED = 1

_COMMANDS: dict[str, Callable[[argparse.ArgumentParser], None]] = {}


def command(name: str):
    """Register ``fn(subparsers)`` as the builder of sub-command ``name``."""

    def wrap(fn):
        _COMMANDS[name] = fn
        return fn

    return wrap


# ------------------------------------------------------------------------------ parsing helpers
class UsageError(Exception):
    """A command line argparse refused; the message is the whole one-line report."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default, except options whose default means "not given"
    (None, False, an empty list); descriptions and epilogs keep their line breaks (examples)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or "default:" in text or "(default" in text or default is argparse.SUPPRESS
                or default is None or default is False or default == []):
            return text  # no default to show, or the help states it in its own words
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
            return f"{text} (default: {shown})"
        return text


class Parser(argparse.ArgumentParser):
    """argparse with :class:`HelpFormatter` for every (sub-)parser and a one-line error report
    (``causaldiffae counterfactual: error: argument --strength: must be >= 0, got -1``)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        if kwargs.get("description"):  # the formatter keeps line breaks (for epilogs): wrap here
            import textwrap

            kwargs["description"] = "\n\n".join(textwrap.fill(p, 88) for p in kwargs["description"].split("\n\n"))
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # noqa: D102 - argparse's hook
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def _integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: a whole number in ``[minimum, maximum]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            raise argparse.ArgumentTypeError(f"must be a whole number {bound}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def _number(minimum: float | None = None, maximum: float | None = None, open_min: bool = False,
            open_max: bool = False) -> Callable[[str], float]:
    """An argparse ``type``: a finite number in the given (closed unless ``open_*``) interval."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        low_bad = minimum is not None and (value <= minimum if open_min else value < minimum)
        high_bad = maximum is not None and (value >= maximum if open_max else value > maximum)
        if low_bad or high_bad:
            parts = []
            if minimum is not None:
                parts.append(f"{'>' if open_min else '>='} {minimum:g}")
            if maximum is not None:
                parts.append(f"{'<' if open_max else '<='} {maximum:g}")
            raise argparse.ArgumentTypeError(f"must be {' and '.join(parts)}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


def _duration(text: str) -> str:
    """An argparse ``type``: a time budget as ``causaldiffae train --time`` reads it (90s, 10m, 1h30m);
    the text itself is kept (for the messages and the sweep's records)."""
    from causaldiffae.errors import ConfigError
    from causaldiffae.training import parse_duration

    try:
        parse_duration(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _input_files(parser: argparse.ArgumentParser, *options: str) -> None:
    """Mark ``options`` of ``parser`` as input files that must exist (checked by :func:`check_files`
    after parsing, so that parsing a command line never depends on the files around it)."""
    parser.set_defaults(_input_files=tuple(options))


def check_device(args: argparse.Namespace) -> None:
    """Raise UsageError for ``--device cuda`` on a machine without a CUDA device."""
    if getattr(args, "device", None) == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"causaldiffae {args.command}: error: --device cuda: no CUDA device is available here; use --device cpu")


def check_files(args: argparse.Namespace) -> None:
    """Raise UsageError for the first input file of ``args`` that is missing or a folder."""
    for dest in getattr(args, "_input_files", ()):
        values = getattr(args, dest, None)
        for text in [values] if isinstance(values, str) else values or []:
            p = Path(text).expanduser()
            flag = "--" + dest.replace("_", "-")
            if not p.exists():
                raise UsageError(f"causaldiffae {args.command}: error: {flag}: file {text!r} does not exist")
            if not p.is_file():
                raise UsageError(f"causaldiffae {args.command}: error: {flag}: {text!r} is a folder, not a file")


def _augmentation(text: str) -> tuple[str, Any]:
    """An argparse ``type``: ``NODE:shift=PIXELS,rotate=DEGREES`` -> ``(node, Augmentation)``."""
    from causaldiffae.predictors import Augmentation

    node, sep, spec = text.partition(":")
    if not sep or not node.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected NODE:shift=PIXELS,rotate=DEGREES (e.g. digit:shift=2,rotate=15)")
    try:
        return node.strip(), Augmentation.parse(spec)
    except CausalDiffAEError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


SEED = _integer(0)
COUNT = _integer(1)
STEPS = _integer(1)
STRENGTH = _number(0.0)

DO_HELP = ("NODE=V sets NODE to V (label units; negative values allowed, angle=-10 sets -10); "
           "NODE+=D / NODE-=D shift NODE's factual value by D; repeatable, one per node")


# ---------------------------------------------------------------------------------------- graph
@command("graph")
def _graph_parser(sub) -> None:
    p = sub.add_parser("graph", help="render or check a causal graph file", description="Render or check a causal graph file.")
    gsub = p.add_subparsers(dest="graph_command", required=True, metavar="{render,check}")

    r = gsub.add_parser("render", help="draw a graph with graphviz (png, svg or pdf)", description="Draw a graph with graphviz.")
    r.add_argument("graph", help="graph file (.dot/.gv/.gml/.yaml/.json) or a shipped name (pendulum, ...)")
    r.add_argument("-o", "--out", required=True, help="output file; the suffix picks the format (.png, .svg, .pdf)")
    r.add_argument("--do", action="append", default=[], metavar="NODE", help="highlight NODE as intervened and its descendants as affected (repeatable)")
    r.set_defaults(func=_graph_render)

    c = gsub.add_parser("check", help="test the graph's conditional independences on a label table with DoWhy",
                        description="Test the local Markov conditions the graph implies on a label table (DoWhy's "
                                    "falsification). Exit status 0: not rejected; 1: the data contradicts the graph; 2: bad input.")
    c.add_argument("graph", help="graph file or shipped name")
    c.add_argument("--labels", required=True, help="CSV with one column per node (the node's label column)")
    c.add_argument("--permutations", type=COUNT, default=20, help="DoWhy's random node permutations (more: slower, surer)")
    c.add_argument("--max-rows", type=_integer(10), default=2000, help="subsample the table to this many rows")
    c.add_argument("--significance", type=_number(0.0, 1.0, open_min=True, open_max=True), default=0.05,
                   help="significance level of each independence test and of the permutation test")
    c.add_argument("--seed", type=SEED, default=0, help="seed of the row subsample and the permutations")
    c.set_defaults(func=_graph_check)
    _input_files(c, "labels")


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
    report = check(graph, table, n_permutations=args.permutations, max_rows=args.max_rows, seed=args.seed,
                   significance_level=args.significance, significance_ci=args.significance)
    print(report)
    return EXIT_FALSIFIED if report.rejected else 0


# ----------------------------------------------------------------------------------------- data
@command("data")
def _data_parser(sub) -> None:
    p = sub.add_parser("data", help="generate a data set with ground-truth counterfactuals",
                       description="Generate a data set (images + labels.csv + generator.json) with ground-truth counterfactuals.")
    p.add_argument("name", choices=["pendulum", "morphomnist"], help="which generator")
    p.add_argument("--size", type=_integer(8, 1024), default=32, help="image size in pixels (square)")
    p.add_argument("--out", required=True, help="output folder (replaced only if it holds an earlier generated set)")
    p.add_argument("--n", type=COUNT, default=None, help="number of images (default: the data set's standard size)")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the sampled factors")
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
The shipped models took 2,400 (Pendulum) and 4,800 (Morpho-MNIST) steps, 50-88 min on one core; at 1,200
steps Pendulum's root interventions already reached 93-94% of the true change; 400 steps move
interventions only part of the way; tens of steps show nothing yet. The last line of every run says whether interventions move.

examples:
  causaldiffae train --graph my.dot --data my_images/ --time 30m --out runs/mine
  causaldiffae train --graph pendulum --data pendulum --steps 2400 --out runs/pendulum
  causaldiffae train --resume runs/mine --time 30m          # graph, data and config come from the run
  causaldiffae train --init-from pendulum --config ft.yaml --steps 300 --out runs/pend_ft   # fine-tune
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
    p.add_argument("--init-from", metavar="MODEL",
                   help="fine-tune: start the new run from a trained model's weights (exported file, run folder or shipped "
                        "name); its graph, label scales, data and config are used where none is given")
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
        if args.init_from:
            raise ConfigError("--init-from starts a new run; a resumed run continues from its own checkpoint")
        if not (Path(args.resume) / "checkpoint.safetensors").exists():
            raise ConfigError(f"--resume {args.resume}: not a run folder with a checkpoint.safetensors to continue from")
    else:
        if args.init_from:
            from causaldiffae.checkpoint import resolve_checkpoint

            resolve_checkpoint(args.init_from)  # a missing model is named before anything is read
        elif not args.graph or not args.data:
            raise ConfigError("a new run needs --graph and --data (or --init-from MODEL to fine-tune it)")
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
        args.graph, args.data, config_path=args.config, resume=args.resume, time_budget=budget, init_from=args.init_from,
        overrides={"train.label_fraction": args.label_fraction, "train.steps": args.steps, "train.batch_size": args.batch_size,
                   "train.seed": args.seed, "model.unet.image_size": args.size, "model.variant": args.variant},
    )
    heldout, what = (open_heldout(data_info["source"], graph, config.model.unet.image_size) if args.check_images
                     else (None, ""))
    train(graph, dataset, run_dir, config, resume=bool(args.resume), device=args.device, progress=not args.no_progress,
          data_info=data_info, time_budget=budget, overwrite=args.overwrite, heldout=heldout,
          heldout_n=args.check_images or 64, heldout_what=what, init_from=args.init_from)
    return 0


# ------------------------------------------------------------------------------- counterfactual
def _parse_do(exprs: Sequence[str]) -> dict:
    """Parse ``--do`` expressions into an intervention.

    ``NODE=V`` sets NODE to V (label units; ``angle=-10`` sets -10); ``NODE+=D`` shifts it by +D and
    ``NODE-=D`` by -D (:class:`~causaldiffae.counterfactual.Shift`). ``NODE=+D`` is refused as
    ambiguous (it used to shift).
    """
    from causaldiffae.counterfactual import Shift
    from causaldiffae.errors import InterventionError

    out: dict = {}
    for e in exprs:
        name, sep, value = e.partition("=")
        op = ""
        if name.endswith(("+", "-")):
            name, op = name[:-1], name[-1]
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise InterventionError(f"malformed --do {e!r}: expected NODE=VALUE (set) or NODE+=DELTA / NODE-=DELTA (shift)")
        if not op and value.startswith("+"):
            raise InterventionError(f"--do {e!r} is ambiguous: write {name}+={value[1:]} to shift {name} by {value[1:]}, "
                                    f"or {name}={value[1:]} to set it to {value[1:]}")
        try:
            number = float(value)
        except ValueError:
            raise InterventionError(f"malformed --do {e!r}: {value!r} is not a number") from None
        if not math.isfinite(number):
            raise InterventionError(f"--do {e!r}: the value must be a finite number")
        if name in out:
            raise InterventionError(f"--do names {name!r} twice")
        out[name] = Shift(number) if op == "+" else Shift(-number) if op == "-" else number
    return out


@command("counterfactual")
def _cf_parser(sub) -> None:
    p = sub.add_parser("counterfactual", help="what would these images look like under do(...)?",
                       description="What would these images look like under do(...)? Abduction (DDIM inversion), action, "
                                   "prediction (DDIM decoding).",
                       epilog="examples:\n  --do light=120          set light to 120\n"
                              "  --do angle+=10          shift each image's angle by +10\n"
                              "  --do angle-=10          shift it by -10\n"
                              "  --do angle=-10          set angle to -10")
    p.add_argument("--run", required=True, help="run folder, checkpoint, or shipped model name (pendulum, morphomnist)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    src.add_argument("--data", help="data folder / .npz / generated name to draw images from")
    p.add_argument("--n", type=COUNT, default=16, help="images to take from --data (a random pick of its test split, set by --seed)")
    p.add_argument("--resize", action="store_true", help="convert and resize --images to the model's size and channels")
    p.add_argument("--do", action="append", default=[], metavar="NODE=V | NODE+=D | NODE-=D", help=DO_HELP)
    p.add_argument("--strength", type=STRENGTH, default=1.0, help="guidance weight w >= 0 (1: plain conditional; >1 stronger; 0 ignores the latents)")
    p.add_argument("--steps", type=STEPS, default=None,
                   help="DDIM decoding steps, and inversion steps unless --inversion-steps is given (the library's "
                        f"query default, causaldiffae.counterfactual.DEFAULT_STEPS) (default: {_default_query_steps()})")
    p.add_argument("--inversion-steps", type=STEPS, default=None, help="DDIM inversion steps, if not those of --steps")
    p.add_argument("--guided-steps", type=_integer(0), default=None,
                   help="apply --strength only at the first (highest-noise) this many decoding steps (default: all)")
    p.add_argument("--abduction", choices=["ddim", "noise"], default="ddim", help="ddim: invert the decoder (keeps identity); noise: forward noising (a baseline)")
    p.add_argument("--refine", type=_integer(0), default=None,
                   help="fixed-point corrections per DDIM inversion step: exact abduction, each one costs an inversion's "
                        f"network calls again; 0 is plain DDIM inversion (the library's query default, "
                        f"causaldiffae.counterfactual.DEFAULT_REFINE) (default: {_default_refine()})")
    p.add_argument("--refine-carry", action=argparse.BooleanOptionalAction, default=None,
                   help="each inversion step reuses the previous correction's network call (one correction then "
                        "costs steps + 1 calls instead of 2 x steps); --no-refine-carry gives the exact corrections "
                        f"(default: {'on' if _default_refine_carry() else 'off'}, causaldiffae.counterfactual.DEFAULT_REFINE_CARRY)")
    _residual_arguments(p, library_default=True)
    p.add_argument("--seed", type=SEED, default=0, help="seed of the --data pick and of noise abduction")
    p.add_argument("-o", "--out", required=True, help="output folder (replaced only if it holds an earlier counterfactual)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the model runs")
    p.set_defaults(func=_counterfactual)
    _input_files(p, "images")


def _counterfactual(args) -> int:
    from causaldiffae.pipeline import run_counterfactual_command

    return run_counterfactual_command(args, _parse_do(args.do))


@command("sample")
def _sample_parser(sub) -> None:
    p = sub.add_parser("sample", help="interventional samples: u from the prior, do(...), random x_T",
                       description="Interventional samples: u from the prior, do(...), a random x_T, DDIM decoding.")
    p.add_argument("--run", required=True, help="run folder, checkpoint, or shipped model name")
    p.add_argument("--n", type=COUNT, default=16, help="number of samples")
    p.add_argument("--do", action="append", default=[], metavar="NODE=V | NODE+=D | NODE-=D", help=DO_HELP)
    p.add_argument("--strength", type=STRENGTH, default=1.0, help="guidance weight w >= 0 (1: plain conditional; >1 stronger)")
    p.add_argument("--steps", type=STEPS, default=None,
                   help=f"DDIM decoding steps (causaldiffae.counterfactual.DEFAULT_SAMPLE_STEPS) (default: {_default_sample_steps()})")
    p.add_argument("--seed", type=SEED, default=0, help="seed of u and x_T")
    p.add_argument("-o", "--out", required=True, help="output folder (replaced only if it holds earlier samples)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the model runs")
    p.set_defaults(func=_sample)


def _sample(args) -> int:
    from causaldiffae.pipeline import run_sample_command

    return run_sample_command(args, _parse_do(args.do))


@command("export")
def _export_parser(sub) -> None:
    p = sub.add_parser("export", help="write a run's EMA weights as a small inference-only checkpoint",
                       description="Write a run's EMA weights as a small inference-only checkpoint.")
    p.add_argument("--run", required=True, help="run folder or checkpoint")
    p.add_argument("-o", "--out", required=True, help="output .safetensors file")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="storage precision of the weights")
    p.set_defaults(func=_export)


def _export(args) -> int:
    from causaldiffae.errors import ConfigError
    from causaldiffae.training import export_model

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"-o {args.out!r}: the exported file must end in .safetensors")
    if out.is_dir():
        raise ConfigError(f"-o {args.out!r} is a folder; give a file name ending in .safetensors")
    path = export_model(args.run, args.out, dtype=args.dtype)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


# ----------------------------------------------------------------------------------- evaluation
@command("predictors")
def _predictors_parser(sub) -> None:
    p = sub.add_parser("predictors", help="train anti-causal predictors (one CNN regressor per node) for the effectiveness metric",
                       description="Train anti-causal predictors (one CNN regressor per node) for the effectiveness metric.")
    p.add_argument("--graph", help="graph file or shipped name (default: the graph of --run)")
    p.add_argument("--data", required=True, help="data folder / .npz / generated name with labelled images")
    p.add_argument("--run", help="run folder: use its graph, normalisation and image size; write RUN/predictors.safetensors")
    p.add_argument("--out", help="output .safetensors file (default: beside the run)")
    p.add_argument("--steps", type=STEPS, default=2000, help="optimisation steps")
    p.add_argument("--batch-size", type=COUNT, default=64, help="images per step")
    p.add_argument("--size", type=_integer(8, 1024), help="image size (default: the run's, else 32)")
    p.add_argument("--split", default="train", help="rows of the data's split column to train on (ignored without one)")
    p.add_argument("--seed", type=SEED, default=0, help="seed of initialisation, batches and the held-out part")
    p.add_argument("--labelled-images", action="store_true",
                   help="train on the data's labelled images even where it has a simulator (default there: independent draws)")
    p.add_argument("--n-samples", type=COUNT, default=8000, help="scenes drawn from the simulator")
    p.add_argument("--categorical", nargs="+", default=None, metavar="NODE", help="nodes to classify (besides those typed categorical)")
    p.add_argument("--augment", type=_augmentation, action="append", default=None, metavar="NODE:shift=P,rotate=D",
                   help="random shifts (whole pixels) and rotations (degrees) of NODE's training images only; repeatable. "
                        "Only for a factor they do not change (a digit class, not a position or an angle)")
    p.add_argument("--width", type=COUNT, default=8, help="channels of each predictor's first convolution")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the networks train")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
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
    if args.out and Path(args.out).suffix != ".safetensors":
        raise ConfigError(f"--out {args.out!r}: the predictors file must end in .safetensors")
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
                            n_samples=args.n_samples, size=size, categorical=args.categorical,
                            augment=dict(args.augment or []), width=args.width)
    loaded = load_predictors(path).meta
    mae, acc = loaded.get("val_mae", {}), loaded.get("val_accuracy", {})
    print("held-out MAE (normalised units): " + ", ".join(f"{k} {v:.4f}" if v is not None else f"{k} -" for k, v in mae.items())
          + "".join(f"; {k} accuracy {v:.4f}" for k, v in acc.items() if v is not None))
    print(f"wrote {path}")
    return 0


@command("evaluate")
def _evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="reconstruction, effectiveness (beside do-nothing and floor, with the predictors' floor gate), "
                                        "composition, reversibility, ground truth (whole image and changed region), latent mechanism "
                                        "check, DCI and the field's units (Morpho-MNIST)",
                       description="Score a run: reconstruction, effectiveness (beside do-nothing and floor, with the predictors' "
                                   "floors on the true counterfactuals and the 0.05 gate), composition, reversibility, ground truth "
                                   "(whole image and changed region), latent mechanism check, DCI, and where the simulator has "
                                   "them the scores in the field's units beside the published best (Morpho-MNIST).")
    p.add_argument("--run", required=True, help="run folder or checkpoint")
    p.add_argument("--data", required=True, help="data folder / .npz / generated name (a generated folder brings its simulator)")
    p.add_argument("--predictors", help="predictors file (default: RUN/predictors.safetensors, or X.predictors.safetensors "
                                        "beside a checkpoint X.safetensors such as a shipped model, if it exists)")
    p.add_argument("--n", type=COUNT, default=64, help="images to evaluate (a seeded pick of the split; 64 at least for quoted figures)")
    p.add_argument("--steps", type=STEPS, default=20, help="DDIM steps of each counterfactual")
    p.add_argument("--strength", type=STRENGTH, default=1.0, help="guidance weight w")
    p.add_argument("--refine", type=_integer(0), default=0, help="fixed-point corrections per DDIM inversion step in every query")
    p.add_argument("--refine-carry", action=argparse.BooleanOptionalAction, default=None,
                   help="with --refine: each inversion step reuses the previous correction's network call "
                        f"(default: the library's query default, {'on' if _default_refine_carry() else 'off'}); "
                        "--no-refine-carry gives the exact corrections")
    _residual_arguments(p, library_default=False)
    p.add_argument("--recon-steps", type=STEPS, nargs="+", default=[10, 20, 50, 100], help="step counts of the reconstruction table")
    p.add_argument("--cycles", type=COUNT, nargs="+", default=[1, 10], help="composition: report L1 after these numbers of null interventions")
    p.add_argument("--reversibility-cycles", type=COUNT, default=5, help="do(x') then do(x) round trips for reversibility")
    p.add_argument("--intended", choices=["auto", "simulator", "dowhy", "scm"], default="auto",
                   help="effectiveness' intended labels (auto: the simulator if any, else DoWhy)")
    p.add_argument("--dowhy", choices=["auto", "linear"], default="auto", help="DoWhy mechanisms: auto-assigned or linear additive noise")
    p.add_argument("--metrics", nargs="+", metavar="METRIC",
                   help="run only these (reconstruction effectiveness composition reversibility ground_truth latent dci field; "
                        "field: the simulator's scores in the field's units, e.g. Morpho-MNIST's)")
    p.add_argument("--split", default="test", help="rows of the data's split column to evaluate on (ignored without one)")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the image pick and the intervention values")
    p.add_argument("-o", "--out", help="output folder (default: RUN/evaluation)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the model runs")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_evaluate)
    _input_files(p, "predictors")


def _evaluate(args) -> int:
    from causaldiffae import metrics as M
    from causaldiffae.data import open_dataset
    from causaldiffae.errors import CheckpointError
    from causaldiffae.model import CausalDiffAE
    from causaldiffae.predictors import default_predictors_path, load_predictors

    _output_folder(args.out)
    metrics = tuple(args.metrics) if args.metrics else M.METRICS
    unknown = [m for m in metrics if m not in M.METRICS]
    if unknown:
        from causaldiffae.errors import ConfigError

        raise ConfigError(f"unknown metric(s) {unknown}; known: {', '.join(M.METRICS)}")
    model, meta = CausalDiffAE.load(args.run, device=args.device)
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
        progress=not args.no_progress, refine=args.refine, refine_carry=args.refine_carry,
        residual=bool(args.residual), residual_gate=args.residual_gate,
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


ABLATE_EPILOG = """\
examples:
  causaldiffae ablate label-fraction --graph my.dot --data my_images/ --steps 600 --out runs/frac
  causaldiffae ablate label-fraction --graph my.dot --data my_images/ --time 10m --out runs/frac-10m   # 10 min per run
  causaldiffae ablate label-fraction --graph my.dot --data my_images/ --time 10m --out runs/frac-10m --print-commands
"""


@command("ablate")
def _ablate_parser(sub) -> None:
    p = sub.add_parser("ablate", help="label-fraction and guidance-strength ablations with seeds, a table and plots")
    asub = p.add_subparsers(dest="ablate_command", required=True, help="label-fraction or strength")

    f = asub.add_parser("label-fraction", help="train and score a run per label fraction and seed (and the Diff-AE baseline)",
                        description="Train CausalDiffAE at each label fraction and seed (plus each baseline with all labels), "
                                    "score every run on the same held-out images, and write results.csv, results.md and plots "
                                    "into --out. Every run trains the same number of steps: --steps N, or the steps that "
                                    "--time T (per run) buys at the speed measured once when the sweep starts (kept in "
                                    "OUT/time-plan.json). Rerun the same command to continue a killed sweep. See docs/ablations.md.",
                        epilog=ABLATE_EPILOG)
    f.add_argument("--graph", required=True, help="graph file or shipped name")
    f.add_argument("--data", required=True, help="data folder (images + labels.csv), .npz, or a generated name")
    f.add_argument("--fractions", type=float, nargs="+", help="label fractions in (0, 1] (default: 0.01 0.1 0.5 1)")
    f.add_argument("--seeds", type=_integer(1), default=3, help="seeds per fraction (0 .. N-1)")
    budget = f.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=_integer(1), metavar="N", help="training steps of every run (default: 600, unless --time)")
    budget.add_argument("--time", type=_duration, metavar="DURATION",
                        help="training time of EACH run (not of the whole sweep; scoring comes on top), e.g. 90s, 10m, "
                             "1h30m as in `causaldiffae train --time`: a few timed steps fix ONE step count for every run, "
                             "recorded in OUT/time-plan.json and reused when the sweep is rerun, so the runs stay comparable; "
                             "for a whole-sweep budget T give T x jobs / runs")
    f.add_argument("--baselines", nargs="*", default=["diffae"], choices=["diffae"], help="baseline variants with all labels (none: --baselines)")
    f.add_argument("--config", help="run config file for every run instead of the budget-scaled default (its steps are set to --steps)")
    f.add_argument("--batch-size", type=_integer(1), help="batch size of every run (default: the config's, 64)")
    f.add_argument("--jobs", type=_integer(1), default=1, help="runs trained side by side (processes)")
    f.add_argument("--threads", type=_integer(1), help="torch threads per run (default: cores / jobs)")
    f.add_argument("--print-commands", action="store_true",
                   help="print the plan and each run's `causaldiffae train` command (with the fixed --steps) and stop; "
                        "with --time the speed is measured here first, unless OUT/time-plan.json holds the plan")
    f.add_argument("--device", choices=["cpu", "cuda"], default=None, help="train and score on this device (default: cuda if present)")
    f.add_argument("-o", "--out", required=True, help="the sweep's folder (rerun into it to continue)")
    f.set_defaults(func=_ablate_fraction)

    s = asub.add_parser("strength", help="score trained runs at several guidance weights w")
    s.add_argument("--run", nargs="+", required=True, help="run folders (runs of one variant and label fraction are averaged)")
    s.add_argument("--data", required=True, help="data folder / .npz / generated name")
    s.add_argument("--strengths", type=float, nargs="+", help="guidance weights w (default: 0 0.5 1 2 3 5)")
    s.add_argument("--jobs", type=_integer(1), default=1, help="evaluations side by side (processes)")
    s.add_argument("--threads", type=_integer(1), help="torch threads per evaluation (default: cores / jobs)")
    s.add_argument("-o", "--out", required=True, help="output folder")
    s.set_defaults(func=_ablate_strength)
    for q in (f, s):
        q.add_argument("--n", type=_integer(1), default=64, help="held-out images every run is scored on")
        q.add_argument("--eval-steps", type=_integer(1), default=20, help="DDIM steps of every query")
        q.add_argument("--metrics", nargs="+", help="evaluate() metrics (default: reconstruction effectiveness ground_truth, "
                       "for strength without reconstruction; also composition reversibility dci)")
        q.add_argument("--predictors", help="anti-causal predictors file (default: trained once into --out)")
        q.add_argument("--predictor-steps", type=_integer(1), default=2000, help="training steps of those predictors")
        q.add_argument("--predictor-samples", type=_integer(1), default=8000,
                       help="independent simulator draws they train on (generated data sets only)")
        q.add_argument("--eval-seed", type=_integer(0), default=0, help="seeds the choice of images and interventions")
        q.add_argument("--no-progress", action="store_true", help="no progress bars")
    f.add_argument("--strength", type=float, default=1.0, help="guidance weight w of every query")


def _ablate_fraction(args) -> int:
    from causaldiffae import ablation

    ablation.label_fraction(
        args.graph, args.data, args.out, fractions=args.fractions or ablation.FRACTIONS, seeds=args.seeds, steps=args.steps,
        time=args.time,
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
    p = sub.add_parser("demo", help="counterfactuals from a shipped model beside the simulator's true ones",
                       description="Counterfactuals from a shipped model beside the simulator's true ones, on scenes it never saw.")
    p.add_argument("--model", default="pendulum", choices=["pendulum", "morphomnist"], help="shipped model")
    p.add_argument("-o", "--out", default="demo", help="output folder for grid.png")
    p.add_argument("--n", type=COUNT, default=6, help="scenes")
    p.add_argument("--steps", type=STEPS, default=20, help="DDIM steps (inversion and decoding)")
    p.add_argument("--strength", type=STRENGTH, default=1.0,
                   help="guidance weight w (1, the library's default: closest to the true counterfactuals on the shipped models, docs/results.md)")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the scenes and the intervention values")
    p.set_defaults(func=_demo)


def _output_folder(out: str | None, flag: str = "-o") -> None:
    """ConfigError when an output folder argument names an existing file."""
    from causaldiffae.errors import ConfigError

    if out and Path(out).exists() and not Path(out).is_dir():
        raise ConfigError(f"{flag} {out!r} is a file; give a folder")


def _demo(args) -> int:
    from causaldiffae.demo import run_demo

    _output_folder(args.out)
    run_demo(args.model, out=args.out, n=args.n, steps=args.steps, strength=args.strength, seed=args.seed)
    return 0


# ----------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    """The parser of every sub-command (one :class:`Parser` class, so one help format and one error style)."""
    parser = Parser(
        prog="causaldiffae",
        description="Counterfactual image generation with causal diffusion autoencoders.",
    )
    from causaldiffae import __version__

    parser.add_argument("--version", action="version", version=f"causaldiffae {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for build in _COMMANDS.values():
        build(sub)
    return parser


def _one_line_warnings(stream=None):
    """A ``warnings.showwarning`` replacement: each distinct message once, as one line on stderr."""
    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        from causaldiffae.errors import CausalDiffAEWarning

        text = " ".join(str(message).split())
        if text in seen:
            return
        seen.add(text)
        kind = "" if issubclass(category, CausalDiffAEWarning) else f"{category.__name__}: "
        print(f"causaldiffae: warning: {kind}{text}", file=stream or sys.stderr)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``causaldiffae`` console script; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        check_files(args)
        check_device(args)
    except UsageError as e:
        print(e, file=sys.stderr)
        return EXIT_USER_ERROR
    except SystemExit as e:  # --help, --version
        return e.code if isinstance(e.code, int) else 0
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warnings()
        try:
            return int(args.func(args) or 0)
        except CausalDiffAEError as e:
            print(f"causaldiffae: error: {e}", file=sys.stderr)
            return EXIT_USER_ERROR
        except KeyboardInterrupt:
            print("causaldiffae: interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
