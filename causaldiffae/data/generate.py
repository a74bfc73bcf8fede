"""Write generated data sets in the users' folder format, cached; open any data spec.

``generate_dataset("pendulum", "data/pendulum", size=32)`` writes ``images/*.png``,
``labels.csv`` (a ``file`` column, one column per node, a ``split`` column and the exogenous state
the true counterfactuals need) and ``generator.json`` (the generator parameters). The JSON is
written last, so a folder without it was interrupted; a folder whose JSON matches the request is
reused as it is.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from causaldiffae.data.dataset import ImageLabelDataset
from causaldiffae.errors import DataError

GENERATORS = ("pendulum", "morphomnist")
GENERATOR_VERSION = 1


def data_cache_dir() -> Path:
    """Where generated data sets named on the command line are kept (``$CAUSALDIFFAE_DATA`` or
    ``~/.cache/causaldiffae/data``)."""
    return Path(os.environ.get("CAUSALDIFFAE_DATA", Path.home() / ".cache" / "causaldiffae" / "data"))


def generated_folder_name(name: str, size: int = 32, **params: Any) -> str:
    """The data-cache folder of a generated set: ``NAME-SIZE``, plus ``-KEYVALUE`` for every
    generator parameter that differs from its default (so different renderings never share a folder)."""
    from causaldiffae.data.simulator import get_simulator

    defaults = get_simulator(name, size=size).params()
    extra = "".join(f"-{k}{params[k]:g}" if isinstance(params[k], float) else f"-{k}{params[k]}"
                    for k in sorted(params) if k in defaults and params[k] != defaults[k])
    return f"{name}-{size}{extra}"


def generate_dataset(name: str, out: str | os.PathLike, size: int = 32, n: int | None = None, seed: int = 0,
                     progress: bool = True, chunk: int = 256, **generator_params: Any) -> Path:
    """Generate a data set into ``out`` (cached: an identical earlier run is reused). Returns ``out``.

    ``generator_params`` are the simulator's parameters (Pendulum: ``shadow_width``); all of them
    are written to ``generator.json``, so the folder's simulator can be rebuilt exactly
    (:func:`causaldiffae.data.simulator.simulator_from_params`).
    """
    from PIL import Image
    from tqdm.auto import tqdm

    from causaldiffae.data.simulator import SIMULATORS, get_simulator

    if name not in SIMULATORS:
        raise DataError(f"unknown generated data set {name!r}; known: {', '.join(GENERATORS)}")
    sim = get_simulator(name, size=size, **generator_params)
    out = Path(out)
    params = {"generator": name, "version": GENERATOR_VERSION, "size": size, "n": n, "seed": seed, **sim.params()}
    meta = out / "generator.json"
    if _same_generated_set(meta, params):
        return out
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} is a file; --out must be a folder")
    if out.is_dir() and not meta.exists() and any(out.iterdir()):
        # only a folder this function wrote (it has generator.json) is ever replaced: never the user's own data
        raise DataError(f"{out} exists and is not a generated data set (no generator.json); choose another --out")
    table = sim.dataset_table(n, seed)
    render = sim.render
    # written into a hidden sibling of this process's own and moved into place at the end: an
    # interrupted run leaves no half set, and two processes generating the same set at once (two
    # trainings started together) neither write into nor delete each other's images
    _remove_abandoned_partials(out)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        (tmp / "images").mkdir(parents=True)
        files = [f"images/{i:05d}.png" for i in range(len(table))]
        for s in tqdm(range(0, len(table), chunk), desc=f"generate {name}", disable=not progress, unit="chunk"):
            imgs = render(table.iloc[s : s + chunk].reset_index(drop=True))
            for k, img in enumerate(imgs):
                Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(tmp / files[s + k])
        table.insert(0, "file", files)
        table.to_csv(tmp / "labels.csv", index=False)
        (tmp / "generator.json").write_text(json.dumps(params, indent=2))
        if _same_generated_set(meta, params):
            return out  # another process put the identical set in place meanwhile: keep it
        if out.exists():
            shutil.rmtree(out)
        try:
            os.replace(tmp, out)
        except OSError:
            if not _same_generated_set(meta, params):  # lost a race to an identical set: fine; anything else is not
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _remove_abandoned_partials(out: Path) -> None:
    """Delete the partial folders of ``out`` left by killed processes (their pid no longer runs)."""
    for tmp in out.parent.glob(f".{out.name}.partial-*"):
        try:
            pid = int(tmp.name.rsplit("-", 2)[-2])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, IndexError, OSError):
            pass  # not ours to judge (a name we did not write, or a process of another user)


def _same_generated_set(meta: Path, params: Mapping[str, Any]) -> bool:
    """Whether ``meta`` (a folder's generator.json) exists and records exactly ``params``."""
    try:
        return json.loads(meta.read_text()) == params
    except (OSError, json.JSONDecodeError):
        return False


def resolve_generated(spec: Any, size: int | None = None, generator: Mapping[str, Any] | None = None) -> Any:
    """A generated data set's name -> its folder in :func:`data_cache_dir` (generated on first use);
    any other spec is returned unchanged.

    ``generator`` holds the generator parameters to use (e.g. the ones a model was trained on,
    :func:`model_generator_params`); it is ignored unless it names the same generator.
    """
    s = str(spec)
    if isinstance(spec, ImageLabelDataset) or s not in GENERATORS or Path(s).exists():
        return spec
    size = int(size or 32)
    params = {k: v for k, v in dict(generator or {}).items() if k not in ("generator", "version", "size", "n", "seed", "note")}
    if generator and generator.get("generator") not in (None, s):
        params = {}
    folder = data_cache_dir() / generated_folder_name(s, size, **params)
    return generate_dataset(s, folder, size=size, **params)


def open_dataset(spec: Any, columns: Sequence[str], size: int | None = None, split: str | None = None,
                 generator: Mapping[str, Any] | None = None) -> ImageLabelDataset:
    """Open a data set from a spec: an :class:`ImageLabelDataset` (returned as is), a folder with
    ``labels.csv``, an ``.npz``, or a generated data set's name (generated into
    :func:`data_cache_dir` on first use, with the generator parameters ``generator`` if given,
    see :func:`resolve_generated`). ``split`` picks rows of a ``split`` column."""
    from causaldiffae.data.folder import load_folder, load_npz

    if isinstance(spec, ImageLabelDataset):
        return spec
    s = str(spec)
    if s in GENERATORS and not Path(s).exists():
        folder = resolve_generated(s, size, generator)
        return load_folder(folder, columns, size=size, split=split)
    p = Path(s)
    if p.suffix == ".npz":
        return load_npz(p, columns, size=size)
    if p.is_dir():
        return load_folder(p, columns, size=size, split=split)
    raise DataError(f"data {s!r} is neither a folder with labels.csv, an .npz file, nor a generated data set ({', '.join(GENERATORS)})")


def simulate(name: str, n: int, seed: int = 0, size: int = 32, **generator_params: Any):
    """Draw ``n`` fresh scenes from a generator's SCM: ``(uint8 images (n, size, size, C), label table)``.

    The table carries the exogenous columns that the true counterfactual needs. Fresh draws may
    repeat training scenes (Pendulum's grid is finite, Morpho-MNIST's digits are 5,000): to show
    held-out scenes use ``get_simulator(name).split_rows("test")``.
    """
    from causaldiffae.data.simulator import get_simulator

    return get_simulator(name, size=size, **generator_params).sample(n, seed)


def true_counterfactual_function(name: str, params: Mapping[str, Any] | None = None):
    """The simulator of a generated data set (callable as ``true_counterfactual(table, do, size)``).

    ``params``: the folder's ``generator.json`` (missing parameters take the legacy values, see
    :func:`causaldiffae.data.simulator.simulator_from_params`); None: the current defaults.
    """
    from causaldiffae.data.simulator import get_simulator, simulator_from_params

    if params is not None:
        return simulator_from_params({**params, "generator": name})
    return get_simulator(name)


PRETRAINED_GENERATORS = Path(__file__).resolve().parent.parent / "pretrained" / "generators.json"


def model_generator_params(run: Any, meta: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The generator parameters a model was trained on, or None if unknown.

    From the checkpoint's data info (``meta["data"]["generator"]``, recorded by training on a
    generated folder), else, for a shipped model named ``run``, from
    ``causaldiffae/pretrained/generators.json`` (a model must be evaluated and demonstrated on the
    rendering it was trained on, e.g. Pendulum's shadow width).
    """
    data = (meta or {}).get("data") if isinstance(meta, Mapping) else None
    if isinstance(data, Mapping) and isinstance(data.get("generator"), Mapping):
        return dict(data["generator"])
    name = str(run)
    if PRETRAINED_GENERATORS.is_file() and not Path(name).exists():
        try:
            registry = json.loads(PRETRAINED_GENERATORS.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{PRETRAINED_GENERATORS} is not valid JSON: {e}") from None
        if name in registry:
            return dict(registry[name])
    return None


def folder_generator_params(spec: Any) -> dict[str, Any] | None:
    """The ``generator.json`` of a generated folder (None for anything else)."""
    if isinstance(spec, ImageLabelDataset):
        return None
    meta = Path(str(spec)) / "generator.json"
    if not meta.is_file():
        return None
    try:
        params = json.loads(meta.read_text())
    except (json.JSONDecodeError, OSError) as e:
        raise DataError(f"{meta} is not readable JSON: {e}") from None
    return params if isinstance(params, dict) and "generator" in params else None
