"""From files to objects: resolve a graph, a data set and a config into a run; the CLI's jobs.

These functions are what ``causaldiffae train``, ``counterfactual`` and ``sample`` call, so the
command line and Python give the same results::

    from causaldiffae.pipeline import fit
    ckpt = fit("pendulum", "pendulum", "runs/pendulum", steps=2000)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from causaldiffae.checkpoint import atomic_write_text, load_checkpoint
from causaldiffae.errors import ConfigError, DataError
from causaldiffae.graph import CausalGraph
from causaldiffae.training import RunConfig, train


def _set(config: RunConfig, dotted: str, value: Any) -> None:
    obj: Any = config
    *path, last = dotted.split(".")
    for p in path:
        obj = getattr(obj, p)
    if not hasattr(obj, last):
        raise ConfigError(f"unknown config key {dotted!r}")
    setattr(obj, last, value)


def resolve_graph_and_data(graph_spec: str | os.PathLike | CausalGraph, data_spec: Any, size: int):
    """Load the graph, open the data at ``size`` with the graph's label columns, fill in label stats.

    Returns ``(graph, dataset, data_info)``; nodes without declared ``loc``/``scale`` get the data's.
    """
    from causaldiffae.data import open_dataset
    from causaldiffae.data.generate import folder_generator_params, resolve_generated

    graph = graph_spec if isinstance(graph_spec, CausalGraph) else CausalGraph.load(graph_spec)
    folder = resolve_generated(data_spec, size)
    dataset = open_dataset(folder, graph.label_columns, size=size, split="train")
    generator = folder_generator_params(folder)
    loc, scale = dataset.label_stats()
    graph = graph.with_label_stats(loc, scale)
    lo, hi = dataset.label_range()
    info = {
        "source": str(data_spec),
        "size": size,
        "channels": dataset.channels,
        "label_range": {n: [float(lo[i]), float(hi[i])] for i, n in enumerate(graph.nodes)},
    }
    if generator is not None:
        info["generator"] = generator  # the renderer's parameters, so evaluation can render the same scenes
    return graph, dataset, info


# Options a run fixes when it starts: on resume they come from the run, and another value is refused
# (the CLI flag is named in the message).
RUN_FIXED = {"train.label_fraction": "--label-fraction", "train.batch_size": "--batch-size", "train.seed": "--seed",
             "model.unet.image_size": "--size", "model.variant": "--variant"}

# ``train.steps`` when only a time budget bounds the run (the first steps' speed then fixes it).
UNBOUNDED_STEPS = 10**7


def _get(config: RunConfig, dotted: str) -> Any:
    obj: Any = config
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _recorded_graph_and_data(meta: Mapping[str, Any], where: Any, graph_spec: Any, data_spec: Any) -> tuple[Any, Any]:
    """``graph_spec`` / ``data_spec``, each taken from a checkpoint's metadata where it is None."""
    if graph_spec is None:
        graph_spec = CausalGraph.from_dict(meta["graph"])
    if data_spec is None:
        data_spec = meta.get("data", {}).get("source")
        if data_spec is None:
            raise ConfigError(f"{where} does not record its data; give --data")
    return graph_spec, data_spec


def prepare_training(
    graph_spec: str | os.PathLike | CausalGraph | None,
    data_spec: Any,
    config_path: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    time_budget: float | None = None,
    init_from: str | os.PathLike | None = None,
):
    """Everything :func:`~causaldiffae.training.train` needs, from a graph, data and config spec.

    ``overrides`` maps dotted config keys (``"train.steps"``) to values; None values are ignored.
    On resume, the run's own config is used: only ``train.steps`` may change (another value of a
    key in :data:`RUN_FIXED`, or a config file, is refused with a ConfigError), and the graph and
    the data default to the run's own (``graph_spec`` / ``data_spec`` None). With a
    ``time_budget`` and no ``train.steps``, the steps are left open (the budget decides).
    A fine-tuning run (``init_from``: a trained model) takes that model's graph, data and config
    where none is given; the overrides still apply.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if time_budget is not None and "train.steps" not in overrides:
        overrides["train.steps"] = UNBOUNDED_STEPS
    if resume:
        _, meta = load_checkpoint(resume)
        config = RunConfig.from_dict(meta["config"], saved=True)
        if config_path:
            raise ConfigError(f"--config {config_path} cannot change the run {resume}: a resumed run keeps its own config")
        for key, flag in RUN_FIXED.items():
            if key in overrides and overrides[key] != _get(config, key):
                raise ConfigError(f"{flag} {overrides[key]} differs from the run's {_get(config, key)} ({resume}); "
                                  f"a run keeps it from start to end: drop {flag}, or start a new run with --out")
        if "train.steps" in overrides:
            config.train.steps = overrides["train.steps"]
        graph_spec, data_spec = _recorded_graph_and_data(meta, resume, graph_spec, data_spec)
    else:
        start_meta = load_checkpoint(init_from)[1] if init_from is not None else None
        if start_meta is not None:
            graph_spec, data_spec = _recorded_graph_and_data(start_meta, init_from, graph_spec, data_spec)
        if graph_spec is None or data_spec is None:
            raise ConfigError("a new run needs --graph and --data")
        config = (RunConfig.load(config_path) if config_path else
                  RunConfig.from_dict(start_meta["config"], saved=True) if start_meta is not None else RunConfig())
        for k, v in overrides.items():
            _set(config, k, v)
        config.model.__post_init__()
        config.train.__post_init__()
    graph, dataset, info = resolve_graph_and_data(graph_spec, data_spec, config.model.unet.image_size)
    if dataset.channels != config.model.unet.in_channels:
        config.model.unet.in_channels = dataset.channels  # the data decides the channel count
    return graph, dataset, config, info


def open_heldout(data_spec: Any, graph: CausalGraph, size: int):
    """The images a run is judged on: the data's ``test`` split, or, when the data has no split,
    its training images (named so). Returns ``(dataset, what)``."""
    from causaldiffae.data import open_dataset

    test = open_dataset(data_spec, graph.label_columns, size=size, split="test")
    has_split = test.extra is not None and "split" in getattr(test.extra, "columns", [])
    return test, ("held-out (test split)" if has_split else "training-image (the data has no test split)")


def fit(
    graph: str | os.PathLike | CausalGraph | None,
    data: Any,
    run_dir: str | os.PathLike,
    config: RunConfig | str | os.PathLike | None = None,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    time: float | str | None = None,
    overwrite: bool = False,
    check: bool = True,
    init_from: str | os.PathLike | None = None,
    **overrides: Any,
) -> Path:
    """Train from Python exactly as ``causaldiffae train`` does.

    ``overrides`` use underscores for dots, e.g. ``train_steps=500``, ``model_variant="diffae"``, or
    the short forms ``steps``, ``label_fraction``, ``batch_size``, ``seed``, ``size``. ``time`` is a
    budget (seconds or ``"10m"``); the schedule (warm-up, EMA, previews, checkpoints) follows the
    run's length unless given. ``overwrite`` replaces a previous run in ``run_dir`` (else refused);
    ``check`` runs the held-out check at the end (``RUN/summary.json``). On resume, ``graph`` and
    ``data`` may be None (the run's own). ``init_from`` fine-tunes a trained model (an exported
    file, a run or a shipped name): the new run starts from its weights, and ``graph``, ``data``
    and ``config`` left None are the model's own.
    """
    from causaldiffae.training import parse_duration

    budget = parse_duration(time) if isinstance(time, str) else (float(time) if time is not None else None)
    short = {"steps": "train.steps", "label_fraction": "train.label_fraction", "batch_size": "train.batch_size",
             "seed": "train.seed", "size": "model.unet.image_size", "variant": "model.variant"}
    dotted = {short.get(k, k.replace("_", ".", 1)): v for k, v in overrides.items()}
    if isinstance(config, RunConfig):
        base = config
        g, dataset, _, info = prepare_training(graph, data, None, run_dir if resume else None, dotted, time_budget=budget,
                                               init_from=init_from)
        for k, v in dotted.items():
            _set(base, k, v)
        if budget is not None and "train.steps" not in dotted:
            base.train.steps = UNBOUNDED_STEPS
        base.model.unet.in_channels = dataset.channels
        cfg = base
    else:
        g, dataset, cfg, info = prepare_training(graph, data, config, run_dir if resume else None, dotted, time_budget=budget,
                                                 init_from=init_from)
    heldout, what = open_heldout(info["source"], g, cfg.model.unet.image_size) if check else (None, "")
    return train(g, dataset, run_dir, cfg, resume=resume, device=device, progress=progress, data_info=info,
                 time_budget=budget, overwrite=overwrite, heldout=heldout, heldout_what=what, init_from=init_from)


# --------------------------------------------------------------------------- CLI jobs
class _Staging:
    """Write into ``out/.partial`` and move into place at the end, so an interrupted or failed
    command never leaves an output folder that looks complete.

    ``marker`` is the file every output of the command holds (``query.json``): an existing ``out``
    is replaced only if it is empty or holds one, so a mistyped ``-o`` cannot delete other files.
    Call :meth:`check` before the work starts.
    """

    def __init__(self, out: str | os.PathLike, marker: str = "query.json", what: str = "command") -> None:
        self.out = Path(out)
        self.tmp = self.out.parent / f".{self.out.name}.partial"
        self.marker, self.what = marker, what

    def check(self) -> "_Staging":
        o = self.out
        if o.exists() and not o.is_dir():
            raise ConfigError(f"-o {str(o)!r} is a file; give a folder for the {self.what} output")
        if o.is_dir() and any(o.iterdir()) and not (o / self.marker).exists():
            raise ConfigError(f"-o {str(o)!r} exists and is not the output of an earlier {self.what} (it has no "
                              f"{self.marker}); choose another folder or empty it")
        return self

    def __enter__(self) -> Path:
        self.check()
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if self.out.exists():
            shutil.rmtree(self.out)
        os.replace(self.tmp, self.out)


def _load_images(paths, model, resize: bool = False) -> torch.Tensor:
    """Read image files for ``model``: each must have its size and channel count unless ``resize``
    (then they are converted and resized with :func:`causaldiffae.data.resize_images`'s rule).
    Every file is read (and refused with its name if it is not an image) before any work starts."""
    from causaldiffae.data import load_image_files
    from causaldiffae.data.folder import read_image

    c, h, w = model.image_shape
    if resize:
        return load_image_files(paths, channels=c, size=h)
    for p in paths:
        a = read_image(Path(p))
        if a.shape != (h, w, c):
            raise DataError(f"{p} is {a.shape[1]}x{a.shape[0]} with {a.shape[2]} channel(s), but the model takes "
                            f"{w}x{h} with {c}; pass --resize to convert and resize it")
    return load_image_files(paths)


def _image_sources(ds, pick: np.ndarray, spec: Any) -> list[str]:
    """Where each picked image of ``ds`` came from: the image file when the data is a folder with a
    ``file`` column (a generated set is one, in the cache), else ``SPEC[row]``."""
    files = ds.extra["file"] if ds.extra is not None and "file" in getattr(ds.extra, "columns", ()) else None
    if files is None or not Path(str(spec)).is_dir():
        return [f"{spec}[{int(i)}]" for i in pick]
    return [str(Path(str(spec)) / str(files.iloc[int(i)])) for i in pick]


def _value_range(meta: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    return {k: tuple(v) for k, v in meta.get("data", {}).get("label_range", {}).items()}


def run_counterfactual_command(args, do: Mapping[str, Any]) -> int:
    """``causaldiffae counterfactual``: images + grid + CSV into ``args.out``.

    Everything a user can get wrong (the output folder, the run, the images or data, ``--n``, the
    intervention) is checked before the first network call; values outside the training range warn.
    """
    from causaldiffae import counterfactual as cf
    from causaldiffae.graph import render
    from causaldiffae.model import CausalDiffAE

    staging = _Staging(args.out, "query.json", "causaldiffae counterfactual").check()
    model, meta = CausalDiffAE.load(args.run, device=args.device)
    value_range = _value_range(meta)
    if args.images:
        images = _load_images(args.images, model, resize=getattr(args, "resize", False))
        sources = [str(p) for p in args.images]
    else:
        from causaldiffae.data import open_dataset
        from causaldiffae.data.generate import model_generator_params, resolve_generated

        size = model.image_shape[1]
        data = resolve_generated(args.data, size, model_generator_params(args.run, meta))  # the rendering it was trained on
        ds = open_dataset(data, model.graph.label_columns, size=size, split="test")
        if args.n > len(ds):
            raise DataError(f"--n {args.n}: {args.data} has only {len(ds)} test images; ask for at most {len(ds)}")
        # a seeded random pick: generated sets are stored in grid order, so the first rows are near-duplicates
        pick = np.sort(np.random.default_rng(args.seed).choice(len(ds), size=args.n, replace=False))
        images, _ = ds.batch(pick)
        sources = _image_sources(ds, pick, data)
    model.check_images(images, what=f"images from {args.images[0] if args.images else args.data}")
    with torch.no_grad():
        factual = model.predict_labels(model.encode(images.to(args.device))[1]).cpu()
    cf.check_do(model, do, images.shape[0], value_range, factual=factual)
    affected = model.scm.affected(do) if do else []
    print(f"intervened: {', '.join(do) or '(none)'}; changes: {', '.join(affected) or '(nothing)'}; "
          f"left as they were: {', '.join(n for n in model.graph.nodes if n not in affected) or '(none)'}")
    steps, inversion_steps, guided_steps = cf.query_settings(args.steps, getattr(args, "inversion_steps", None),
                                                             getattr(args, "guided_steps", None))
    refine = cf.resolve_refine(getattr(args, "refine", None))
    carry = cf.resolve_refine_carry(getattr(args, "refine_carry", None)) if refine else None
    residual, gate = cf.resolve_residual(getattr(args, "residual", None), getattr(args, "residual_gate", None), args.abduction)
    query = {"run": str(args.run), "do": cf.do_to_json(do), "strength": args.strength, "steps": steps,
             "inversion_steps": inversion_steps, "guided_steps": guided_steps,
             "abduction": args.abduction, "refine": refine, "refine_carry": carry,
             "residual_gate": gate if residual else None, "seed": args.seed, "affected": affected,
             "sources": sources}
    caption = (f"{cf.describe_do(do)}  strength {args.strength:g}  steps {steps}"
               + (f"/{inversion_steps} inverted" if inversion_steps != steps else "")
               + (f"  guided {guided_steps}" if guided_steps is not None else "") + f"  abduction {args.abduction}"
               + (f"  refine {refine}" + ("" if carry else " exact") if refine else "")
               + (f"  residual (gate {gate:g})" if residual else "") + f"  run {args.run}")
    with staging as tmp:
        res = cf.counterfactual(model, images.to(args.device), do=do, strength=args.strength, steps=steps,
                                abduction=args.abduction, seed=args.seed, progress=True, value_range=value_range,
                                refine=refine, refine_carry=carry, inversion_steps=inversion_steps, guided_steps=guided_steps,
                                residual=residual, residual_gate=gate)
        cf.save_images(res.images, tmp / "images", prefix="counterfactual")
        cf.difference_grid(res, tmp / "grid.png", caption=caption)
        table = res.to_dataframe()
        table.insert(1, "source", sources)
        table.to_csv(tmp / "labels.csv", index=False)
        render(model.graph, tmp / "graph.png", intervened=list(do))
        atomic_write_text(tmp / "query.json", json.dumps(query, indent=2))
    print(f"wrote {args.out}/grid.png, {args.out}/labels.csv, {args.out}/graph.png and {res.images.shape[0]} images")
    return 0


def run_sample_command(args, do: Mapping[str, Any]) -> int:
    """``causaldiffae sample``: interventional samples + grid + CSV into ``args.out``."""
    from causaldiffae import counterfactual as cf
    from causaldiffae.model import CausalDiffAE

    staging = _Staging(args.out, "query.json", "causaldiffae sample").check()
    model, meta = CausalDiffAE.load(args.run, device=args.device)
    value_range = _value_range(meta)
    cf.check_do(model, do, args.n, value_range)
    steps = cf.DEFAULT_SAMPLE_STEPS if args.steps is None else args.steps
    caption = f"samples of {cf.describe_do(do)}  strength {args.strength:g}  steps {steps}  seed {args.seed}  run {args.run}"
    with staging as tmp:
        res = cf.sample(model, args.n, do=do, strength=args.strength, steps=steps, seed=args.seed, progress=True,
                        value_range=value_range)
        cf.save_images(res.images, tmp / "images", prefix="sample")
        cf.wrapped_grid(res.images, tmp / "grid.png", ncol=8, caption=caption, row_name="samples")
        res.to_dataframe().to_csv(tmp / "labels.csv", index=False)
        atomic_write_text(tmp / "query.json", json.dumps({
            "run": str(args.run), "do": cf.do_to_json(do), "n": args.n, "strength": args.strength, "steps": steps,
            "seed": args.seed, "affected": res.affected}, indent=2))
    print(f"wrote {args.out}/grid.png, {args.out}/labels.csv and {args.n} images", file=sys.stdout)
    return 0
