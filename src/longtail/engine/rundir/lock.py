"""One process at a time per run directory (and per compare cell): an exclusive ``flock`` on a lock file.

Two processes training the same run would interleave their checkpoints and history. The lock is
taken without waiting (a second process is refused at once, naming the holder) and is released by
the kernel when its holder exits, however it exits (SIGKILL included): no stale lock to clean up.
A compare cell's lock is passed on to the cell's subprocess, so it stays held for as long as the
cell trains, even if the compare that started it was killed.

Where ``fcntl`` does not exist (Windows) no lock is taken.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_NAME = ".lock"


class RunLockedError(RuntimeError):
    """Another process holds the lock of a run directory or compare cell (the CLI exits with code 2)."""


def acquire(path: Path, what: str) -> Optional[int]:
    """Lock ``path`` (created if missing) for this process; returns the open file descriptor that
    holds it (close it to release), or raises RunLockedError naming the holder. ``what`` names what
    is locked in the message."""
    if fcntl is None:
        return None
    path = Path(path)
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise RunLockedError(f"cannot create the lock file {path} ({error.strerror}): {what} is not writable "
                             f"by this user") from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(descriptor, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(descriptor)
        raise RunLockedError(
            f"{what} is being trained by another process right now (its lock {path} was taken by process "
            f"{holder}, or by a cell that process started). Wait for it to finish, or stop it (it saves a "
            f"checkpoint on SIGINT / SIGTERM), then run this again") from None
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
    return descriptor


def release(descriptor: Optional[int]) -> None:
    if descriptor is not None:
        os.close(descriptor)  # closing the last descriptor of the open file releases the flock
