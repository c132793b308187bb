"""Atomic, safe checkpoints.

A checkpoint is written to a temporary file in the same directory, flushed and fsynced, then
renamed over the target: a process killed at any instant leaves either the previous checkpoint
or the new one, never a half-written file. Loading always uses ``weights_only=True``: a
checkpoint from an untrusted source cannot execute code.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used (missing, corrupt, or from a different setup)."""


CHECKPOINT_NAME = "last.pt"  # runs/<run>/checkpoints/last.pt: the one resumable checkpoint of a run


def run_checkpoint(target) -> Path:
    """The checkpoint of a run directory, or ``target`` itself when it is a checkpoint file."""
    target = Path(target)
    return target / "checkpoints" / CHECKPOINT_NAME if target.is_dir() else target


def reported_weights(state: dict) -> dict:
    """The model weights a run's metrics.json reports: the validation-selected epoch's
    (``train.select_on``) when the run selected, else the last epoch's."""
    return state.get("best_model") or state["model"]


class OutputWriteError(OSError):
    """Writing an output file failed (disk full, permissions...); the previous file is left as it was."""


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically. The file gets mode ``0o666 & ~umask`` (0644 under the
    usual umask 022), as a plain ``open()`` would give it; mkstemp's private 0600 is not kept.
    An OSError (e.g. a full disk) leaves ``path`` untouched and is re-raised as OutputWriteError
    naming the file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise OutputWriteError(error.errno, f"cannot write {path}: {error.strerror or error}") from error
    try:
        os.fchmod(handle, 0o666 & ~_current_umask())
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # make the rename itself durable
        finally:
            os.close(directory)
    except BaseException as error:
        if os.path.exists(temporary):
            os.unlink(temporary)
        if isinstance(error, OSError) and not isinstance(error, OutputWriteError):
            previous = "the previous version is intact" if path.exists() else "nothing was written"
            raise OutputWriteError(error.errno, f"cannot write {path}: {error.strerror or error} ({previous})") \
                from error
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def save_checkpoint(path: Path, state: dict) -> None:
    """Serialise ``state`` with torch.save into memory, then write it atomically."""
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path, map_location: Any = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for corrupt / unsafe files
        raise CheckpointError(
            f"cannot load checkpoint {path}: {error}. The file is corrupt, truncated, or contains "
            f"objects that are not plain tensors/containers (refused for safety)."
        ) from error


RUN_CHECKPOINT_KEYS = ("config", "label", "model", "class_counts_hash", "epoch")


def load_run_checkpoint(path: Path, map_location: Any = "cpu") -> dict:
    """Load a checkpoint written by a longtail run, refusing any other torch file with a clear message."""
    state = load_checkpoint(path, map_location)
    missing = [key for key in RUN_CHECKPOINT_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        kind = f"a {type(state).__name__}" if not isinstance(state, dict) else f"a dict with keys {sorted(state)[:8]}"
        raise CheckpointError(f"{path} is a torch file but not a longtail run checkpoint ({kind}; missing "
                              f"{', '.join(missing)}). Give a run directory (runs/<run>) made by `longtail train`; "
                              f"plain weights go in model.pretrained=FILE")
    return state


def resume_target(target) -> Path:
    """The run directory ``--resume`` continues; a path that is not one is refused naming the right one."""
    target = Path(target)
    if target.is_dir():
        if not (target / "checkpoints" / CHECKPOINT_NAME).is_file():
            raise CheckpointError(f"{target} holds no checkpoints/{CHECKPOINT_NAME}: not a run directory, or the "
                                  f"run stopped before its first checkpoint (start it again instead)")
        return target
    if target.is_file() and target.parent.name == "checkpoints":
        raise CheckpointError(f"--resume takes the run directory, not its checkpoint file: use "
                              f"--resume {target.parent.parent}")
    if target.is_file():
        raise CheckpointError(f"--resume takes a run directory (runs/<run>), and {target} is a file")
    raise CheckpointError(f"run directory not found: {target}")


def class_counts_hash(class_counts) -> str:
    """sha256 of the per-class training counts, stored in checkpoints to catch mismatched loads."""
    counts = [int(c) for c in class_counts]
    return hashlib.sha256(json.dumps(counts).encode()).hexdigest()
