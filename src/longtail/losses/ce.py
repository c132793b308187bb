"""Cross-entropy, weighted cross-entropy and label smoothing (spec section 4, first rows).

All three are the shared :class:`~longtail.losses.base.SoftmaxLoss` core with a particular setting:

* CE:                 loss_i = -log p_{y_i}
* weighted CE:        loss_i = -w_{y_i} log p_{y_i},  w from :func:`~longtail.losses.weights.class_weights`
                      (``"inverse"``: w ∝ 1/N_j, ``"sqrt"``: w ∝ 1/sqrt(N_j), normalised to sum K)
* label smoothing:    loss_i = -sum_c ((1 - eps) q_c + eps / K) log p_c   (PyTorch's convention)

Soft targets (B, K) give -sum_c q_c w_c log p_c (as ``F.cross_entropy`` with probabilities).
"""

from __future__ import annotations

from typing import Optional

from .._checks import ClassCounts, as_class_counts
from .base import SoftmaxLoss
from .weights import class_weights


class CrossEntropy(SoftmaxLoss):
    """Plain (optionally label-smoothed) softmax cross-entropy.

    ``class_counts`` is optional: when given, the number of classes is checked against the logits.
    """

    def __init__(
        self,
        class_counts: Optional[ClassCounts] = None,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
    ):
        num_classes = None if class_counts is None else as_class_counts(class_counts).numel()
        super().__init__(label_smoothing=label_smoothing, num_classes=num_classes, reduction=reduction)


class WeightedCrossEntropy(SoftmaxLoss):
    """Cross-entropy with per-class weights from the training counts (``weighting="inverse"`` or ``"sqrt"``)."""

    def __init__(
        self,
        class_counts: ClassCounts,
        weighting: str = "inverse",
        label_smoothing: float = 0.0,
        reduction: str = "mean",
    ):
        weights = class_weights(class_counts, weighting)
        super().__init__(
            class_weights=weights,
            label_smoothing=label_smoothing,
            num_classes=weights.numel(),
            reduction=reduction,
        )
        self.weighting = weighting
