"""Checkpoint files: safetensors weights plus JSON metadata, written atomically, loaded without code.

One checkpoint is one ``.safetensors`` file. The JSON metadata (configs, the causal graph, label
normalisation, training step...) lives in the safetensors header under the key ``"causaldiffae"``,
together with a SHA-256 digest of the tensor data, so that weights and metadata can never drift
apart and a truncated or corrupted file is detected on load. Because everything is one file, the
atomic write is simple: write a temporary file in the same folder, ``fsync`` it, ``os.replace`` it
over the target, then ``fsync`` the folder.

Loading never executes code: safetensors holds raw tensors and the metadata is plain JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from causaldiffae.errors import CheckpointError

FORMAT = "causaldiffae-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.safetensors"


def _digest(tensors: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().contiguous().cpu()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file, fsync, rename)."""
    _atomic_write_bytes(Path(path), text.encode())


def save_checkpoint(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> Path:
    """Atomically write ``tensors`` and JSON-serialisable ``meta`` to one safetensors file.

    Args:
        path: the file to write (conventionally ``RUN/checkpoint.safetensors``).
        tensors: name -> tensor (any device; stored on CPU, contiguous).
        meta: JSON-serialisable metadata.

    Returns:
        The path written.
    """
    path = Path(path)
    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    header = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "sha256": _digest(cpu),
        "meta": meta,
    }
    try:
        header_json = json.dumps(header, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint metadata for {path} is not JSON-serialisable: {e}") from e
    _atomic_write_bytes(path, st_save(cpu, metadata={"causaldiffae": header_json}))
    return path


PRETRAINED_DIR = Path(__file__).parent / "pretrained"


def pretrained_names() -> list[str]:
    """Names of the models shipped with the package (``causaldiffae/pretrained/<name>.safetensors``)."""
    return sorted(p.stem for p in PRETRAINED_DIR.glob("*.safetensors") if "." not in p.stem)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """Map a run folder, a checkpoint file or a shipped model's name (``"pendulum"``, when no such
    path exists) to the checkpoint file; raise if there is none."""
    p = Path(path)
    if not p.exists() and p.suffix == "" and len(p.parts) == 1 and (PRETRAINED_DIR / f"{p}.safetensors").is_file():
        return PRETRAINED_DIR / f"{p}.safetensors"
    if p.is_dir():
        p = p / CHECKPOINT_NAME
    if not p.exists():
        shipped = pretrained_names()
        raise CheckpointError(f"no checkpoint at {p}" + ("" if p.parent.exists() else f" (folder {p.parent} does not exist)")
                              + (f"; shipped models: {', '.join(shipped)}" if shipped else ""))
    return p


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load and verify a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: a checkpoint file or a run folder holding ``checkpoint.safetensors``.
        map_location: device for the returned tensors.

    Returns:
        ``(tensors, meta)``.

    Raises:
        CheckpointError: the file is missing, truncated, corrupted, or not a causaldiffae checkpoint.
    """
    p = resolve_checkpoint(path)
    data = p.read_bytes()
    try:
        tensors = st_load(data)
        # safetensors.torch.load drops the metadata; read it from the header ourselves.
        n = int.from_bytes(data[:8], "little")
        st_header = json.loads(data[8 : 8 + n])
    except Exception as e:  # noqa: BLE001 - safetensors, json and int parsing fail in different ways
        raise CheckpointError(f"{p} is not a readable safetensors checkpoint (truncated or corrupt?): {e}") from e
    raw = (st_header.get("__metadata__") or {}).get("causaldiffae")
    if raw is None:
        raise CheckpointError(f"{p} is a safetensors file but not a causaldiffae checkpoint (no 'causaldiffae' metadata)")
    try:
        header = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{p}: checkpoint metadata is corrupt: {e}") from e
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{p}: unknown checkpoint format {header.get('format')!r}")
    if header.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{p}: checkpoint format version {header['version']} is newer than this causaldiffae ({FORMAT_VERSION})")
    if _digest(tensors) != header.get("sha256"):
        raise CheckpointError(f"{p}: checksum mismatch, the weights are corrupted")
    if map_location != "cpu":
        tensors = {k: v.to(map_location) for k, v in tensors.items()}
    return tensors, header["meta"]
