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
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from causaldiffae.data.dataset import ImageLabelDataset
from causaldiffae.errors import DataError

GENERATORS = ("pendulum", "morphomnist")
GENERATOR_VERSION = 1


def data_cache_dir() -> Path:
    """Where generated data sets named on the command line are kept (``$CAUSALDIFFAE_DATA`` or
    ``~/.cache/causaldiffae/data``)."""
    return Path(os.environ.get("CAUSALDIFFAE_DATA", Path.home() / ".cache" / "causaldiffae" / "data"))


def _generate_tables(name: str, size: int, n: int | None, seed: int):
    if name == "pendulum":
        from causaldiffae.data.pendulum import pendulum_grid, render_pendulum, sample_pendulum, split_pendulum

        table = pendulum_grid() if n is None else sample_pendulum(n, seed)
        table["split"] = split_pendulum(table)
        return table, lambda t: render_pendulum(t, size)
    if name == "morphomnist":
        from causaldiffae.data.morphomnist import pad_to, render_morphomnist, sample_morphomnist

        table = sample_morphomnist(5000 if n is None else n, seed)
        split = np.full(len(table), "train", dtype=object)
        split[3::4] = "test"
        table["split"] = split
        return table, lambda t: pad_to(render_morphomnist(t), size)
    raise DataError(f"unknown generated data set {name!r}; known: {', '.join(GENERATORS)}")


def generate_dataset(name: str, out: str | os.PathLike, size: int = 32, n: int | None = None, seed: int = 0,
                     progress: bool = True, chunk: int = 256) -> Path:
    """Generate a data set into ``out`` (cached: an identical earlier run is reused). Returns ``out``."""
    from PIL import Image
    from tqdm.auto import tqdm

    out = Path(out)
    params = {"generator": name, "version": GENERATOR_VERSION, "size": size, "n": n, "seed": seed}
    meta = out / "generator.json"
    if meta.exists():
        try:
            if json.loads(meta.read_text()) == params:
                return out
        except json.JSONDecodeError:
            pass
    if out.exists():
        if not meta.exists() and any(out.iterdir()) and not (out / "labels.csv").exists() and not (out / "images").exists():
            raise DataError(f"{out} exists and is not a generated data set; choose another --out")
        shutil.rmtree(out)
    table, render = _generate_tables(name, size, n, seed)
    (out / "images").mkdir(parents=True)
    files = [f"images/{i:05d}.png" for i in range(len(table))]
    for s in tqdm(range(0, len(table), chunk), desc=f"generate {name}", disable=not progress, unit="chunk"):
        imgs = render(table.iloc[s : s + chunk].reset_index(drop=True))
        for k, img in enumerate(imgs):
            Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(out / files[s + k])
    table.insert(0, "file", files)
    table.to_csv(out / "labels.csv", index=False)
    meta.write_text(json.dumps(params, indent=2))
    return out


def open_dataset(spec: Any, columns: Sequence[str], size: int | None = None, split: str | None = None) -> ImageLabelDataset:
    """Open a data set from a spec: an :class:`ImageLabelDataset` (returned as is), a folder with
    ``labels.csv``, an ``.npz``, or a generated data set's name (generated into
    :func:`data_cache_dir` on first use). ``split`` picks rows of a ``split`` column."""
    from causaldiffae.data.folder import load_folder, load_npz

    if isinstance(spec, ImageLabelDataset):
        return spec
    s = str(spec)
    if s in GENERATORS and not Path(s).exists():
        folder = generate_dataset(s, data_cache_dir() / f"{s}-{size or 32}", size=size or 32)
        return load_folder(folder, columns, size=size, split=split)
    p = Path(s)
    if p.suffix == ".npz":
        return load_npz(p, columns, size=size)
    if p.is_dir():
        return load_folder(p, columns, size=size, split=split)
    raise DataError(f"data {s!r} is neither a folder with labels.csv, an .npz file, nor a generated data set ({', '.join(GENERATORS)})")


def simulate(name: str, n: int, seed: int = 0, size: int = 32):
    """Draw ``n`` fresh scenes from a generator: ``(uint8 images (n, size, size, C), label table)``.

    The table carries the exogenous columns that :func:`true_counterfactual_function` needs.
    """
    if name == "pendulum":
        from causaldiffae.data.pendulum import render_pendulum, sample_pendulum

        table = sample_pendulum(n, seed)
        return render_pendulum(table, size), table
    if name == "morphomnist":
        from causaldiffae.data.morphomnist import pad_to, render_morphomnist, sample_morphomnist

        table = sample_morphomnist(n, seed)
        return pad_to(render_morphomnist(table), size), table
    raise DataError(f"unknown generated data set {name!r}; known: {', '.join(GENERATORS)}")


def true_counterfactual_function(name: str):
    """The simulator's ``true_counterfactual(table, do, size)`` for a generated data set."""
    if name == "pendulum":
        from causaldiffae.data.pendulum import true_counterfactual
    elif name == "morphomnist":
        from causaldiffae.data.morphomnist import true_counterfactual
    else:
        raise DataError(f"no simulator for {name!r}; known: {', '.join(GENERATORS)}")
    return true_counterfactual
