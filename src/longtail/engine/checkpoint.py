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


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
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
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
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


def class_counts_hash(class_counts) -> str:
    """sha256 of the per-class training counts, stored in checkpoints to catch mismatched loads."""
    counts = [int(c) for c in class_counts]
    return hashlib.sha256(json.dumps(counts).encode()).hexdigest()
