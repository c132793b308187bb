"""Long-tail evaluation: one confusion matrix (plus calibration sums) and everything derived from it.

``LongTailMetrics(num_classes, train_counts)``: ``update(logits, targets)``, ``all_reduce()``,
``compute() -> dict``, ``reset()``. Function forms: ``confusion_matrix``, ``per_class_accuracy``,
``shot_group_masks``, ``worst_class_ratio``.
"""

from .confusion import confusion_matrix, harmonic_mean, per_class_accuracy, shot_group_masks, worst_fraction_mean
from .longtail_metrics import LongTailMetrics, worst_class_ratio

__all__ = [
    "LongTailMetrics",
    "worst_class_ratio",
    "confusion_matrix",
    "per_class_accuracy",
    "shot_group_masks",
    "worst_fraction_mean",
    "harmonic_mean",
]
