"""Describe how long-tailed a labelled dataset is.

Quantities (methods.md preamble; classifier-balancing's ``shot_acc`` split):
* class counts N_j; imbalance factor IF = max_j N_j / min_j N_j (the CIFAR-LT "rho");
* Gini coefficient of the counts, G = sum_i sum_j |N_i - N_j| / (2 K^2 mean(N)): 0 for a balanced
  set, approaching 1 when one class holds everything;
* Many / Medium / Few: classes with > ``many_threshold`` (100) / between ``few_threshold`` (20)
  and ``many_threshold`` inclusive / < ``few_threshold`` training images. These are the same
  thresholds ``longtail.metrics.LongTailMetrics`` uses to group per-class accuracy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np


@dataclass(frozen=True)
class DatasetReport:
    """What ``analyze`` found; ``to_dict()`` is JSON-ready, ``str(report)`` is a short summary."""

    num_samples: int
    num_classes: int
    class_counts: list[int]
    max_count: int
    min_count: int
    imbalance_factor: float
    gini: float
    many_threshold: int
    few_threshold: int
    many_classes: list[int]
    medium_classes: list[int]
    few_classes: list[int]
    empty_classes: list[int]

    @property
    def num_many(self) -> int:
        return len(self.many_classes)

    @property
    def num_medium(self) -> int:
        return len(self.medium_classes)

    @property
    def num_few(self) -> int:
        return len(self.few_classes)

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record.update(num_many=self.num_many, num_medium=self.num_medium, num_few=self.num_few)
        return record

    def class_table(self, classes: Sequence[str] | None = None, limit: int | None = None) -> str:
        """One line per class, most frequent first: index, name, count, Many / Medium / Few group."""
        names = list(classes) if classes is not None else [str(j) for j in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} class names for {self.num_classes} classes")
        order = sorted(range(self.num_classes), key=lambda j: (-self.class_counts[j], j))
        width = max(len("class"), *(len(n) for n in names))

        def group(count: int) -> str:
            if count > self.many_threshold:
                return "many"
            return "few" if count < self.few_threshold else "medium"

        lines = [f"{'index':>5}  {'class':<{width}}  {'images':>7}  group"]
        shown = order if limit is None else order[:limit]
        lines += [f"{j:>5}  {names[j]:<{width}}  {self.class_counts[j]:>7}  {group(self.class_counts[j])}" for j in shown]
        if len(shown) < len(order):
            lines.append(f"... {len(order) - len(shown)} more classes")
        return "\n".join(lines)

    def __str__(self) -> str:
        lines = [
            f"{self.num_samples} samples, {self.num_classes} classes",
            f"per class: max {self.max_count}, min {self.min_count}, imbalance factor {self.imbalance_factor:.4g}",
            f"Gini coefficient {self.gini:.4f}",
            f"Many (>{self.many_threshold}): {self.num_many} classes, "
            f"Medium ({self.few_threshold}..{self.many_threshold}): {self.num_medium}, "
            f"Few (<{self.few_threshold}): {self.num_few}",
        ]
        if self.empty_classes:
            lines.append(f"classes with no samples: {self.empty_classes[:20]}")
        return "\n".join(lines)


def gini_coefficient(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts (mean absolute difference / (2 * mean))."""
    values = np.sort(np.asarray(counts, dtype=np.float64))
    k = values.size
    if k == 0 or values.sum() == 0:
        return 0.0
    # Sorted form of sum_i sum_j |x_i - x_j| / (2 k^2 mean): O(K log K) instead of O(K^2).
    ranks = np.arange(1, k + 1)
    return float(np.sum((2 * ranks - k - 1) * values) / (k * values.sum()))


def analyze(
    labels: Any = None,
    *,
    class_counts: Any = None,
    num_classes: int | None = None,
    many_threshold: int = 100,
    few_threshold: int = 20,
) -> DatasetReport:
    """Report class counts, imbalance factor, Gini and the Many/Medium/Few split.

    Pass either ``labels`` (class indices, or any dataset with a ``.labels`` attribute such as
    ``InMemoryImages``, ``ListFileDataset``, ``ImageFolderDataset``) or ``class_counts=`` (N_j per
    class). Counts are explicit because a short integer array could be read either way.
    ``num_classes`` lets classes with no samples be counted (they make the IF infinite).
    """
    if (labels is None) == (class_counts is None):
        raise ValueError("pass exactly one of labels (or a dataset) and class_counts=")
    if few_threshold > many_threshold:
        raise ValueError(f"few_threshold ({few_threshold}) must not exceed many_threshold ({many_threshold})")
    if labels is not None:
        if hasattr(labels, "labels"):
            labels = labels.labels
        if hasattr(labels, "detach"):
            labels = labels.detach().cpu().numpy()
        label_array = np.asarray(labels)
        if label_array.ndim != 1 or label_array.size == 0:
            raise ValueError(f"labels must be a non-empty 1-D sequence of class indices, got shape {label_array.shape}")
        if not np.issubdtype(label_array.dtype, np.integer) or int(label_array.min()) < 0:
            raise ValueError("labels must be non-negative integer class indices (pass class_counts= for counts)")
        minlength = int(label_array.max()) + 1 if num_classes is None else num_classes
        if int(label_array.max()) >= minlength:
            raise ValueError(f"label {int(label_array.max())} is out of range for num_classes={num_classes}")
        counts = np.bincount(label_array, minlength=minlength)
    else:
        if hasattr(class_counts, "detach"):
            class_counts = class_counts.detach().cpu().numpy()
        counts = np.asarray(class_counts)
        if counts.ndim != 1 or counts.size == 0:
            raise ValueError(f"class_counts must be a non-empty 1-D sequence, got shape {counts.shape}")
        if np.any(counts < 0) or np.any(np.mod(counts, 1) != 0):
            raise ValueError("class_counts must be non-negative whole numbers")
        counts = counts.astype(np.int64)
        if num_classes is not None and num_classes != counts.size:
            raise ValueError(f"class_counts has {counts.size} entries but num_classes={num_classes}")
    counts = counts.astype(np.int64)
    classes = np.arange(counts.size)
    max_count, min_count = int(counts.max()), int(counts.min())
    return DatasetReport(
        num_samples=int(counts.sum()),
        num_classes=int(counts.size),
        class_counts=counts.tolist(),
        max_count=max_count,
        min_count=min_count,
        imbalance_factor=float(max_count / min_count) if min_count > 0 else float("inf"),
        gini=gini_coefficient(counts),
        many_threshold=many_threshold,
        few_threshold=few_threshold,
        many_classes=classes[counts > many_threshold].tolist(),
        medium_classes=classes[(counts >= few_threshold) & (counts <= many_threshold)].tolist(),
        few_classes=classes[counts < few_threshold].tolist(),
        empty_classes=classes[counts == 0].tolist(),
    )
