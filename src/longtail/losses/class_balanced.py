"""Class-balanced loss (Cui et al. 2019), spec section 4:

    weight_j = (1 - beta) / (1 - beta ** N_j),  beta = 0.9999, normalised to sum to K
    loss_i   = weight_{y_i} * L_base(i)         L_base = CE (gamma = 0) or softmax focal (gamma > 0)
"""

from __future__ import annotations

from .._checks import ClassCounts
from .base import SoftmaxLoss
from .weights import class_weights


class ClassBalancedLoss(SoftmaxLoss):
    """CB-CE (``gamma=0``, default) or CB-focal (``gamma > 0``) with effective-number weights."""

    def __init__(
        self,
        class_counts: ClassCounts,
        beta: float = 0.9999,
        gamma: float = 0.0,
        reduction: str = "mean",
    ):
        weights = class_weights(class_counts, "effective_number", beta=beta)
        super().__init__(class_weights=weights, gamma=gamma, num_classes=weights.numel(), reduction=reduction)
        self.beta = beta
