"""``InMemoryImages``: a whole image dataset as one uint8 tensor.

The contract the in-memory batch loader relies on (docs/architecture.md, ``longtail.data``):
``images`` uint8 (N, C, H, W), ``labels`` int64 (N,), ``classes`` (names, index = label),
``mean`` / ``std`` per channel in [0, 1] units for normalisation, and a ``name``. Datasets that
fit in memory (CIFAR, MNIST-type, the embedded default) are loaded into this once; long-tailed
versions are ``subset(split.indices)`` of the balanced set.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

if TYPE_CHECKING:  # only for annotations; imbalance.py does not import this module
    from longtail.data.splits.imbalance import LongTailSplit


@dataclass(frozen=True, eq=False)
class InMemoryImages:
    """A labelled image set held as tensors (CPU unless moved by the caller).

    ``longtail_split`` is the ``LongTailSplit`` this set was cut with (None for a balanced or
    natural set), so a run can record the profile / IF / seed / index hash of its training data.
    Indexing (``dataset[i]`` -> ``(uint8 image (C, H, W), int label)``) makes it usable as a
    plain torch ``Dataset`` too.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: Sequence[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str = "images"
    longtail_split: "LongTailSplit | None" = field(default=None, repr=False)

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"{self.name}: images must be a uint8 tensor (N, C, H, W), got "
                f"{getattr(images, 'dtype', type(images))} with shape {tuple(getattr(images, 'shape', ()))}"
            )
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.dim() != 1:
            raise ValueError(f"{self.name}: labels must be an int64 tensor (N,), got {getattr(labels, 'dtype', type(labels))}")
        if labels.shape[0] != images.shape[0]:
            raise ValueError(f"{self.name}: {images.shape[0]} images but {labels.shape[0]} labels")
        num_classes = len(self.classes)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(
                f"{self.name}: labels span {int(labels.min())}..{int(labels.max())} but there are "
                f"{num_classes} class names; pass one name per class"
            )
        channels = images.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(
                f"{self.name}: mean/std need one entry per channel ({channels}), got {len(self.mean)} / {len(self.std)}"
            )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"{self.name}: std entries must be positive, got {self.std}")
        # Frozen dataclass: normalise the containers once so equality / hashing of configs is stable.
        object.__setattr__(self, "classes", list(self.classes))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    def class_counts(self) -> list[int]:
        """Training images per class N_j (length ``num_classes``; classes with none give 0)."""
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()

    def subset(self, indices: Any, name: str | None = None, longtail_split: "LongTailSplit | None" = None) -> "InMemoryImages":
        """The images at ``indices`` (in that order), same classes / mean / std."""
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        if index.dim() != 1:
            raise ValueError(f"subset indices must be 1-D, got shape {tuple(index.shape)}")
        if index.numel() and (int(index.min()) < -len(self) or int(index.max()) >= len(self)):
            raise IndexError(f"subset indices out of range for {self.name} with {len(self)} images")
        return replace(
            self,
            images=self.images[index].contiguous(),
            labels=self.labels[index].contiguous(),
            name=name or self.name,
            longtail_split=longtail_split,
        )

    def __repr__(self) -> str:
        _, c, h, w = self.images.shape
        return (
            f"InMemoryImages(name={self.name!r}, n={len(self)}, shape=({c}, {h}, {w}), "
            f"classes={self.num_classes})"
        )
