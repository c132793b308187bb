"""Logit adjustment: the one shared piece ``tau * log pi`` used by LA, Balanced Softmax, their focal
variants, CCAR's LA / BS bases, and post-hoc adjustment (spec section 4).

* Logit-adjusted loss (Menon et al. 2021):  loss_i = CE(z + tau log pi, y_i),  pi_j = N_j / N, tau = 1.
* Balanced Softmax (Ren et al. 2020):        the same with tau = 1.
* Focal + LA / focal + BS:                   softmax focal loss on z + tau log pi (``gamma > 0``).
* Post-hoc adjustment (inference):           predict argmax(z - tau log pi), tau tuned on validation only.

p_t reported to CCAR is the *adjusted* probability softmax(z + tau log pi)_y (spec section 1 default).
"""

from __future__ import annotations

import torch

from .._checks import ClassCounts, as_class_counts
from .base import SoftmaxLoss


def logit_adjustment(class_counts: ClassCounts, tau: float = 1.0) -> torch.Tensor:
    """``tau * log pi`` (float64, shape (K,)) with pi_j = N_j / sum_k N_k."""
    counts = as_class_counts(class_counts)
    return tau * torch.log(counts / counts.sum())


def post_hoc_adjust(logits: torch.Tensor, class_counts: ClassCounts, tau: float = 1.0) -> torch.Tensor:
    """Inference-time logit adjustment ``z - tau * log pi`` (argmax of it is the balanced prediction).

    Returns a tensor of the logits' dtype and device; tune ``tau`` on a validation split, never on test.
    """
    adjustment = logit_adjustment(class_counts, tau)
    if logits.dim() < 1 or logits.shape[-1] != adjustment.numel():
        raise ValueError(
            f"logits have {logits.shape[-1] if logits.dim() else 0} classes but class_counts has "
            f"{adjustment.numel()} entries"
        )
    return logits - adjustment.to(device=logits.device, dtype=logits.dtype)


class LogitAdjustedLoss(SoftmaxLoss):
    """Logit-adjusted cross-entropy CE(z + tau log pi); focal + LA with ``gamma > 0``."""

    def __init__(
        self,
        class_counts: ClassCounts,
        tau: float = 1.0,
        gamma: float = 0.0,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
    ):
        offset = logit_adjustment(class_counts, tau)
        super().__init__(
            logit_offset=offset,
            gamma=gamma,
            label_smoothing=label_smoothing,
            num_classes=offset.numel(),
            reduction=reduction,
        )
        self.tau = tau


class BalancedSoftmaxLoss(LogitAdjustedLoss):
    """Balanced Softmax: CE(z + log pi) (LA with tau = 1); focal + BS with ``gamma > 0``."""

    def __init__(
        self,
        class_counts: ClassCounts,
        gamma: float = 0.0,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
    ):
        super().__init__(class_counts, tau=1.0, gamma=gamma, label_smoothing=label_smoothing, reduction=reduction)
