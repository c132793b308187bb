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

# name -> constructor(class_counts, **options); what `regularizer.name` may be in a run config.
REGULARIZERS = {"car": CAR}


def available_regularizers() -> list[str]:
    return sorted(REGULARIZERS)


def build_regularizer(name: str, class_counts, **options):
    """The regularizer ``name`` for ``class_counts``; unknown names raise a ValueError listing the valid ones."""
    if name not in REGULARIZERS:
        raise ValueError(f"unknown regularizer {name!r}; valid names: {', '.join(available_regularizers())}")
    return REGULARIZERS[name](class_counts, **options)

__all__ = [
    "CAR",
    "REGULARIZERS",
    "available_regularizers",
    "build_regularizer",
    "bounds",
    "class_weights",
    "confusion_surrogate",
    "hard_confusion",
    "margin_confusion",
    "per_class_error",
    "top_singular_pair",
    "weighted_spectral_norm",
]
