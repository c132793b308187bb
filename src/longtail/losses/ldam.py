"""LDAM: label-distribution-aware margin loss (Cao et al. 2019), spec section 4:

    m_j    = C / N_j ** 0.25,  C chosen so that max_j m_j = max_margin (0.5)
    loss_i = CE( s * (cos - m_{y_i} onehot(y_i)) , y_i ),  s = 30

LDAM needs a cosine-normalised classifier. Which logits it receives:

* ``logits_prescaled=True`` (default): logits are ``s * cos`` as produced by this project's
  ``longtail.models.heads.CosineHead(scale=s)`` / ``create_model(..., head="cosine", head_scale=30)``.
  The loss computes ``z - s * m_y`` (= s * (cos - m_y)); ``scale`` must equal the head's scale.
* ``logits_prescaled=False``: logits are raw cosines in [-1, 1] (LDAM-DRW's ``NormedLinear``, or
  ``CosineHead(...).cosine(x)``); the loss computes ``s * (cos - m_y)`` itself.

Both give the same number. Because the two readings differ by a factor s, the loss checks the logits
lie in the range the chosen reading implies (|z| <= s, resp. |cos| <= 1) and raises a ValueError
otherwise (e.g. a linear head, or cosine logits scaled twice).

The range check cannot see a linear head whose logits happen to be small, or a cosine head of a
smaller scale. So the head is one setting with the loss: pass ``head=model.head`` and the loss takes
its scale from that cosine head (``scale=None``), refusing any other head or a different ``scale``.
Without ``head`` the loss assumes ``CosineHead(scale=scale)`` (30 by default) and says so in a
warning on its first forward pass.

Soft targets q subtract q_c m_c from every logit (the one-hot case is the formula above).
The DRW variant (LDAM-DRW) is :class:`~longtail.losses.DeferredReweighting` around this loss.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch

from .._checks import ClassCounts, as_class_counts
from .base import SoftmaxLoss

# float32 cosines can exceed 1 by rounding; allow a little more than that.
_RANGE_TOLERANCE = 1e-3


def ldam_margins(class_counts: ClassCounts, max_margin: float = 0.5) -> torch.Tensor:
    """Per-class margins m_j = C / N_j ** 0.25 with C set so max_j m_j = ``max_margin`` (float64)."""
    if not max_margin > 0:
        raise ValueError(f"max_margin must be positive, got {max_margin}")
    counts = as_class_counts(class_counts)
    inverse_fourth_root = counts.pow(-0.25)
    return inverse_fourth_root * (max_margin / inverse_fourth_root.max())


class LDAMLoss(SoftmaxLoss):
    """LDAM with ``max_margin`` (0.5) and ``scale`` s (30) on cosine-classifier logits."""

    def __init__(
        self,
        class_counts: ClassCounts,
        max_margin: float = 0.5,
        scale: Optional[float] = None,
        logits_prescaled: bool = True,
        class_weights: Optional[torch.Tensor] = None,
        reduction: str = "mean",
        head: Optional[torch.nn.Module] = None,
    ):
        if head is not None:
            head_scale = cosine_head_scale(head)
            if scale is not None and float(scale) != head_scale:
                raise ValueError(f"LDAM scale={scale:g} differs from the cosine head's scale {head_scale:g}; they are "
                                 f"one setting: leave scale unset (it is taken from the head)")
            if not logits_prescaled:
                raise ValueError("the cosine head outputs s * cos, so logits_prescaled must be True with head=")
            scale = head_scale
        scale = 30.0 if scale is None else float(scale)
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
        self.logit_scale = float(scale)
        self.logits_prescaled = logits_prescaled
        self._head_unchecked = head is None

    def validate(self, logits, targets):
        soft = super().validate(logits, targets)
        if self._head_unchecked:
            self._head_unchecked = False  # warn once
            expected = f"s * cos from CosineHead(scale={self.logit_scale:g})" if self.logits_prescaled \
                else "raw cosines (s applied by the loss)"
            warnings.warn(
                f"LDAM assumes its logits are {expected}, with s = {self.logit_scale:g}, and cannot check a "
                f"linear head with small logits or a cosine head of another scale: build it with head=model.head "
                f"(e.g. build_loss('ldam_drw', counts, head=model.head)) to check the head and take its scale",
                stacklevel=3)
        bound = self.logit_scale if self.logits_prescaled else 1.0
        largest = float(logits.detach().abs().max()) if logits.numel() else 0.0
        if largest > bound * (1 + _RANGE_TOLERANCE):
            expected = f"s * cos in [-{bound:g}, {bound:g}] (CosineHead(scale={bound:g}))" if self.logits_prescaled \
                else "raw cosines in [-1, 1]"
            raise ValueError(
                f"LDAM expects {expected} but got |logit| = {largest:.4g}. Use a cosine-normalised head "
                f"and set logits_prescaled / scale to match it"
            )
        return soft


def cosine_head_scale(head: torch.nn.Module) -> float:
    """The scale s of a cosine-normalised head (``CosineHead``: ``scale * cosine(x)``); ValueError for
    any other head, whose logits LDAM's margins were not built for."""
    scale = getattr(head, "scale", None)
    if not (callable(getattr(head, "cosine", None)) and isinstance(scale, (int, float))):
        raise ValueError(f"LDAM needs a cosine-normalised classifier (CosineHead, model.head=cosine); got "
                         f"{type(head).__name__}")
    return float(scale)
