"""Losses for long-tailed recognition: CCAR (spec section 1) and the baselines of spec section 4.

Every loss is an ``nn.Module`` called as ``loss(logits, targets)`` with class-index (B,) or soft
(B, K) targets, built on one per-sample core (:mod:`longtail.losses.base`) so wrappers compose:
``CCAR(class_counts, base=FocalLoss(class_counts))``, ``DeferredReweighting(LDAMLoss(counts), counts)``.

    loss_fn = longtail.losses.CCAR(class_counts, base="balanced_softmax")
    loss_fn = longtail.losses.build_loss("ldam_drw", class_counts, head=model.head)  # names: available_losses()
    for epoch in range(epochs):
        loss_fn.set_epoch(epoch)   # scheduled losses (DRW, also inside CCAR) switch on the epoch

LDAM checks ``head`` is a cosine head and takes its scale; without ``head`` it warns that it assumes
one of scale 30. A DRW loss never given ``set_epoch`` warns on its first call.
"""

from .base import PerSampleLoss, SoftmaxLoss, reduce_loss
from .ccar import CCAR, ccar_weight, class_frequencies
from .contrastive import BalancedContrastiveLoss, balanced_contrastive_loss
from .ce import CrossEntropy, WeightedCrossEntropy
from .class_balanced import ClassBalancedLoss
from .focal import FocalLoss
from .ldam import LDAMLoss, ldam_margins
from .logit_adjusted import BalancedSoftmaxLoss, LogitAdjustedLoss, logit_adjustment, post_hoc_adjust
from .registry import available_losses, build_loss, loss_options
from .schedules import DeferredReweighting
from .weights import class_weights

DRW = DeferredReweighting

__all__ = [
    "BalancedContrastiveLoss",
    "BalancedSoftmaxLoss",
    "CCAR",
    "ClassBalancedLoss",
    "CrossEntropy",
    "DRW",
    "DeferredReweighting",
    "FocalLoss",
    "LDAMLoss",
    "LogitAdjustedLoss",
    "PerSampleLoss",
    "SoftmaxLoss",
    "WeightedCrossEntropy",
    "available_losses",
    "balanced_contrastive_loss",
    "build_loss",
    "ccar_weight",
    "class_frequencies",
    "class_weights",
    "ldam_margins",
    "logit_adjustment",
    "loss_options",
    "post_hoc_adjust",
    "reduce_loss",
]
