"""ConCutMix's pair sampler (spec concutmix.md section 2).

Each item is (background A, foreground B). A is instance-uniform (every image once per epoch), B
class-balanced with exact per-class quotas (uniform over classes up to one sample of rounding).
Both are :class:`~longtail.data.sampling.samplers.ClassPowerSampler` draws (q = 1 and q = 0) from
independent seeds, so they depend only on (seed, epoch) and split across DDP ranks into disjoint,
complete shares exactly as the library's other samplers do.
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch

from longtail.data.sampling.samplers import ClassPowerSampler
from longtail.data.seeds import derive_seed

_FOREGROUND_STREAM = 11

class PairSampler:
    """(background, foreground) dataset indices: instance-uniform A, class-balanced B (see module docstring)."""

    def __init__(self, labels, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 num_classes: Optional[int] = None) -> None:
        common = dict(num_replicas=num_replicas, rank=rank, num_classes=num_classes)
        self.background = ClassPowerSampler(labels, q=1.0, seed=seed, **common)
        self.foreground = ClassPowerSampler(labels, q=0.0, seed=derive_seed(seed, _FOREGROUND_STREAM), **common)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.background.set_epoch(epoch)
        self.foreground.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.background)

    def rank_indices(self, epoch: Optional[int] = None, rank: Optional[int] = None) -> torch.Tensor:
        """(2, n): row 0 this rank's backgrounds, row 1 its foregrounds."""
        return torch.stack([self.background.rank_indices(epoch, rank), self.foreground.rank_indices(epoch, rank)])

    def __iter__(self) -> Iterator[tuple]:
        return iter(map(tuple, self.rank_indices().t().tolist()))

    def __repr__(self) -> str:
        return (f"PairSampler(background=instance, foreground=class_balanced, num_samples="
                f"{self.background.num_samples}, num_replicas={self.background.num_replicas}, "
                f"rank={self.background.rank}, seed={self.seed}, epoch={self.epoch})")

