"""Regularizers added to a base loss: CAR, the confusion-aware spectral regularizer.

``car = CAR(class_counts)``; ``loss = base_loss(logits, y) + car(logits, y)``. The bound
utilities (hard / margin confusion, class weights, weighted spectral norm) live in
:mod:`longtail.regularizers.bounds`; ``longtail.metrics`` uses them for the test-set metric.
"""

from longtail.regularizers import bounds
from longtail.regularizers.bounds import (
    class_weights,
    hard_confusion,
    margin_confusion,
    per_class_error,
    weighted_spectral_norm,
)
from longtail.regularizers.car import CAR, confusion_surrogate, top_singular_pair

__all__ = [
    "CAR",
    "bounds",
    "class_weights",
    "confusion_surrogate",
    "hard_confusion",
    "margin_confusion",
    "per_class_error",
    "top_singular_pair",
    "weighted_spectral_norm",
]
