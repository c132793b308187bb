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
from . import priors
from .priors import *  # noqa: F401,F403 - its public names, listed once in priors.__all__

__all__ = [
    "LongTailMetrics",
    "worst_class_ratio",
    "confusion_matrix",
    "per_class_accuracy",
    "shot_group_masks",
    "worst_fraction_mean",
    "harmonic_mean",
] + priors.__all__
