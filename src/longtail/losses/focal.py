"""Focal loss (Lin et al. 2017), softmax form (spec section 4: "Focal loss (gamma = 1 or 2)"):

    loss_i = -(1 - p_t) ** gamma * log p_t                     (class-index targets)
    loss_i = -sum_c q_c (1 - p_c) ** gamma * log p_c           (soft targets q)

The multi-class softmax form used by the long-tail codebases (LDAM-DRW, BS); Cui et al.'s
class-balanced focal loss used the sigmoid form, which is not offered here. Optional ``class_weights``
(K,) multiply the per-class terms (class-balanced focal is :class:`~longtail.losses.ClassBalancedLoss`
with ``gamma > 0``); focal + LA / BS are :class:`~longtail.losses.LogitAdjustedLoss` /
:class:`~longtail.losses.BalancedSoftmaxLoss` with ``gamma > 0``.
"""

from __future__ import annotations

from typing import Optional

import torch

from .._checks import ClassCounts, as_class_counts
from .base import SoftmaxLoss


class FocalLoss(SoftmaxLoss):
    """Softmax focal loss with focusing parameter ``gamma`` (default 2, Lin et al.)."""

    def __init__(
        self,
        class_counts: Optional[ClassCounts] = None,
        gamma: float = 2.0,
        class_weights: Optional[torch.Tensor] = None,
        reduction: str = "mean",
    ):
        num_classes = None if class_counts is None else as_class_counts(class_counts).numel()
        super().__init__(gamma=gamma, class_weights=class_weights, num_classes=num_classes, reduction=reduction)
