"""Long-tail evaluation: one confusion matrix (plus calibration sums) and everything derived from it.

``LongTailMetrics(num_classes, train_counts)``: ``update(logits, targets)``, ``all_reduce()``,
``compute() -> dict``, ``reset()``. Function forms: ``confusion_matrix``, ``per_class_accuracy``,
``shot_group_masks``, ``worst_class_ratio``.

Shifted test priors (:mod:`longtail.metrics.priors`): SADE's forward / uniform / backward test sets
(``shifted_test_sets``), exact expectations under a prior (``expected_metrics``), prior adaptation
(``encoded_prior``, ``adapt_logits``) and test-prior estimation (``em_prior``, ``bbse_prior``).
"""

from .confusion import confusion_matrix, harmonic_mean, per_class_accuracy, shot_group_masks, worst_fraction_mean
from .longtail_metrics import LongTailMetrics, worst_class_ratio
from .priors import (
    ENCODED_PRIOR_BY_LOSS,
    TEST_PRIOR_RHOS,
    BBSEResult,
    EMResult,
    ShiftedTestSet,
    adapt_logits,
    bbse_prior,
    draw_test_indices,
    drawn_metrics,
    em_prior,
    encoded_prior,
    expected_metrics,
    frequency_ranks,
    prior_from_counts,
    prior_shift,
    shifted_class_counts,
    shifted_prior_names,
    shifted_test_sets,
)

__all__ = [
    "LongTailMetrics",
    "worst_class_ratio",
    "confusion_matrix",
    "per_class_accuracy",
    "shot_group_masks",
    "worst_fraction_mean",
    "harmonic_mean",
    "TEST_PRIOR_RHOS",
    "ENCODED_PRIOR_BY_LOSS",
    "frequency_ranks",
    "shifted_class_counts",
    "shifted_prior_names",
    "draw_test_indices",
    "ShiftedTestSet",
    "shifted_test_sets",
    "prior_from_counts",
    "expected_metrics",
    "drawn_metrics",
    "encoded_prior",
    "prior_shift",
    "adapt_logits",
    "EMResult",
    "em_prior",
    "BBSEResult",
    "bbse_prior",
]
