"""Everything derived from one confusion matrix ``counts[true, pred]`` (scikit-learn orientation).

Pure functions on count tensors, so the stateful :class:`~longtail.metrics.LongTailMetrics`, the
report layer and tests all use the same definitions:

- per-class accuracy = recall of class j = counts[j, j] / sum_p counts[j, p];
- Many / Medium / Few shot groups from the *training* counts N_j: > many_threshold /
  few_threshold..many_threshold / < few_threshold (100 / 20: Liu et al., "Large-Scale Long-Tailed
  Recognition in an Open World", CVPR 2019; classifier-balancing's ``shot_acc``);
- balanced accuracy = mean per-class recall (scikit-learn's ``balanced_accuracy_score``);
- harmonic mean of per-class recalls (0 when any class has recall 0).
"""

from __future__ import annotations

import math

import torch

__all__ = ["confusion_matrix", "per_class_accuracy", "shot_group_masks", "worst_fraction_mean", "harmonic_mean"]


def confusion_matrix(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """int64 (K, K) counts with ``counts[true, pred]``, like ``sklearn.metrics.confusion_matrix``.

    One ``bincount`` over ``true * K + pred``: no Python loop over samples or classes.
    """
    preds = torch.as_tensor(preds)
    targets = torch.as_tensor(targets, device=preds.device)
    if preds.shape != targets.shape or preds.dim() != 1:
        raise ValueError(f"preds and targets must be 1-D of equal length, got {tuple(preds.shape)} and {tuple(targets.shape)}")
    if preds.dtype.is_floating_point or targets.dtype.is_floating_point:
        raise ValueError("preds and targets must be integer class indices (take argmax of the logits first)")
    if preds.numel():
        for name, values in (("preds", preds), ("targets", targets)):
            low, high = int(values.min()), int(values.max())
            if low < 0 or high >= num_classes:
                raise ValueError(f"{name} contain label {low if low < 0 else high}, outside 0..{num_classes - 1}")
    flat = targets.long() * num_classes + preds.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(counts_true_pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(recall per class as float64, mask of classes that have at least one sample).

    Classes without samples get NaN recall; every summary below ignores them, as scikit-learn's
    balanced accuracy does.
    """
    # Row sums and the diagonal first, then float64: converting a K = 8142 matrix would cost 0.5 GB.
    support = counts_true_pred.sum(dim=1).double()
    present = support > 0
    correct = counts_true_pred.diagonal().double()
    recall = torch.where(present, correct / support.clamp_min(1), torch.full_like(support, float("nan")))
    return recall, present


def shot_group_masks(
    train_counts: torch.Tensor, many_threshold: float = 100, few_threshold: float = 20
) -> dict[str, torch.Tensor]:
    """Boolean masks ``{"many", "medium", "few"}``: N_j > many, few <= N_j <= many, N_j < few."""
    if few_threshold > many_threshold:
        raise ValueError(f"few_threshold ({few_threshold}) must not exceed many_threshold ({many_threshold})")
    many = train_counts > many_threshold
    few = train_counts < few_threshold
    return {"many": many, "medium": ~many & ~few, "few": few}


def worst_fraction_mean(values: torch.Tensor, fraction: float = 0.1) -> float:
    """Mean of the ceil(fraction * n) smallest values (at least one)."""
    count = max(1, math.ceil(fraction * values.numel()))
    return float(torch.sort(values).values[:count].mean())


def harmonic_mean(values: torch.Tensor) -> float:
    """Harmonic mean of non-negative values; 0 when any value is 0 (its limit)."""
    if bool((values <= 0).any()):
        return 0.0
    return float(values.numel() / (1.0 / values).sum())
