"""Seed derivation shared by samplers, augmentation and mixing: every random stream of a run is
a pure function of ``(seed, epoch, ...)`` (docs/architecture.md, "Randomness")."""

from __future__ import annotations

import hashlib

__all__ = ["derive_seed"]


def derive_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed determined by ``(seed, *parts)``, e.g. ``(seed, epoch)`` or ``(seed, epoch, batch)``.

    Hashing instead of ``seed + epoch`` (what DistributedSampler does) keeps streams for different
    seeds from coinciding: with addition, (seed 0, epoch 1) and (seed 1, epoch 0) are the same draw.
    """
    text = ",".join(str(int(value)) for value in (seed, *parts)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1

