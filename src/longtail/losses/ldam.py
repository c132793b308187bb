"""LDAM: label-distribution-aware margin loss (Cao et al. 2019), spec section 4:

    m_j    = C / N_j ** 0.25,  C chosen so that max_j m_j = max_margin (0.5)
    loss_i = CE( s * (cos - m_{y_i} onehot(y_i)) , y_i ),  s = 30

The logits are expected to be *cosine similarities* cos(theta) in [-1, 1], from a cosine-normalised
classifier without scale (``longtail.models.heads.CosineHead(scale=1)``), as in the LDAM-DRW code.
If your head already multiplies by s (``CosineHead(scale=30)``), pass ``logits_prescaled=True``: the
loss then subtracts s * m_y from the given logits and does not scale again (the same number).

Soft targets q subtract q_c m_c from every logit (the one-hot case is the formula above).
The DRW variant (LDAM-DRW) is :class:`~longtail.losses.DeferredReweighting` around this loss.
"""

from __future__ import annotations

from typing import Optional

import torch

from .._checks import ClassCounts, as_class_counts
from .base import SoftmaxLoss


def ldam_margins(class_counts: ClassCounts, max_margin: float = 0.5) -> torch.Tensor:
    """Per-class margins m_j = C / N_j ** 0.25 with C set so max_j m_j = ``max_margin`` (float64)."""
    if not max_margin > 0:
        raise ValueError(f"max_margin must be positive, got {max_margin}")
    counts = as_class_counts(class_counts)
    inverse_fourth_root = counts.pow(-0.25)
    return inverse_fourth_root * (max_margin / inverse_fourth_root.max())


class LDAMLoss(SoftmaxLoss):
    """LDAM on cosine logits with ``max_margin`` (0.5) and ``scale`` s (30)."""

    def __init__(
        self,
        class_counts: ClassCounts,
        max_margin: float = 0.5,
        scale: float = 30.0,
        logits_prescaled: bool = False,
        class_weights: Optional[torch.Tensor] = None,
        reduction: str = "mean",
    ):
        margins = ldam_margins(class_counts, max_margin)
        if logits_prescaled:
            # s * (cos - m) = z - s * m for z = s * cos.
            margins, core_scale = margins * scale, 1.0
        else:
            core_scale = scale
        super().__init__(
            true_class_margins=margins,
            scale=core_scale,
            class_weights=class_weights,
            num_classes=margins.numel(),
            reduction=reduction,
        )
        self.max_margin = max_margin
        self.logit_scale = scale
        self.logits_prescaled = logits_prescaled
