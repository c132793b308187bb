"""Quantities of CAR's worst-class error bound (methods.md section 2, "Class weights" and "Bound check").

All matrices here are in the **paper orientation**: rows i = predicted / competing class, columns
j = true class, zero diagonal, class weights multiply columns (``A = C * w[None, :]``). Column j
then sums to the error of class j. ``longtail.metrics`` accumulates counts in scikit-learn
orientation ``counts[true, pred]``; :func:`hard_confusion` is the one place where that is
transposed.

The finite-sample core of the theory, which ``tests/test_bounds.py`` asserts on random predictions:

    H <= C^gamma (entrywise, any gamma >= 0)   and   max_j lambda_j e_j <= sqrt(K) ||C^gamma Lambda||_2

with e_j = sum_i H[i, j] the error of class j and Lambda = diag(lambda). Proof sketch (why the
test must hold): e_j <= sum_i C^gamma[i, j] = ||C^gamma[:, j]||_1 <= sqrt(K) ||C^gamma[:, j]||_2, and
lambda_j ||C^gamma[:, j]||_2 = ||C^gamma Lambda e_j||_2 <= ||C^gamma Lambda||_2.

Everything returned is float64 on the CPU (these are metrics, not training-time tensors), except
:func:`class_weights`, which is float64 too and cast by the caller.
"""

from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch

from longtail._checks import ClassCounts, as_class_counts, check_logits_and_targets

WEIGHTINGS = ("frequency", "count", "none")

# The spec floors the mean-normalised weights so that no class is ever switched off entirely.
WEIGHT_FLOOR = 1e-3

ArrayLike = Union[torch.Tensor, np.ndarray]


def class_weights(
    class_counts: ClassCounts, weighting: str = "frequency", r0: float = 0.2, l0: float = 10.0
) -> torch.Tensor:
    """Column weights w of CAR's weighted confusion ``A = C * w[None, :]`` (methods.md section 2).

    - ``"frequency"`` (default): lambda_j = (pi_j + r0) ** -0.5 with pi_j = N_j / N.
    - ``"count"``: lambda_j = (N_j + l0) ** -0.5 (earlier versions of the authors' mixing code).
    - ``"none"``: w = 1.

    Then w_j = lambda_j / mean_k(lambda_k), floored at 1e-3. Note that relative frequencies are
    tiny next to r0 = 0.2, so the ``"frequency"`` weights are nearly flat (tail / head ~1.1 on
    CIFAR-100-LT IF=100), whereas ``"count"`` weights differ 6-9x; see docs/car.md.

    Returns a float64 CPU tensor of shape (K,).
    """
    counts = as_class_counts(class_counts)
    if weighting == "frequency":
        if not r0 > 0:
            raise ValueError(f"r0 must be > 0 for the frequency weighting, got {r0}")
        raw = (counts / counts.sum() + r0) ** -0.5
    elif weighting == "count":
        if not l0 >= 0:
            raise ValueError(f"l0 must be >= 0 for the count weighting, got {l0}")
        raw = (counts + l0) ** -0.5
    elif weighting == "none":
        return torch.ones_like(counts)
    else:
        raise ValueError(f"unknown weighting {weighting!r}; choose one of {WEIGHTINGS}")
    return (raw / raw.mean()).clamp_min(WEIGHT_FLOOR)


def _as_float64_cpu(matrix: ArrayLike, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(matrix) if not isinstance(matrix, torch.Tensor) else matrix)
    tensor = tensor.detach().to("cpu", torch.float64)
    if tensor.dim() != 2 or tensor.shape[0] != tensor.shape[1]:
        raise ValueError(f"{name} must be a square K x K matrix, got shape {tuple(tensor.shape)}")
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains non-finite values")
    return tensor


def hard_confusion(counts_true_pred: ArrayLike) -> torch.Tensor:
    """Hard off-diagonal confusion H in paper orientation from counts in scikit-learn orientation.

    ``counts_true_pred[t, p]`` = number of samples of true class t predicted as p (what
    ``sklearn.metrics.confusion_matrix`` and ``longtail.metrics`` produce). Returns H with
    ``H[i, j] = counts[j, i] / N_j`` for i != j (N_j = number of class-j samples, the row sum of
    the counts), ``H[j, j] = 0``, and all-zero columns for classes without samples. Column j of H
    sums to the error rate e_j of class j.
    """
    counts = _as_float64_cpu(counts_true_pred, "counts_true_pred")
    if bool((counts < 0).any()):
        raise ValueError("counts_true_pred must be non-negative counts")
    samples_per_true_class = counts.sum(dim=1)
    # The explicit transpose: scikit-learn's [true, pred] -> paper's [pred, true].
    hard = counts.t() / samples_per_true_class.clamp_min(1.0)[None, :]
    hard.fill_diagonal_(0.0)
    return hard


def margin_confusion(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 0.0) -> torch.Tensor:
    """Margin confusion C^gamma (methods.md section 2, "Bound check"), paper orientation.

    ``C^gamma[i, j]`` = fraction of class-j samples whose strongest competitor (argmax over
    k != j of z[k]) is i and whose margin is at most gamma: z[j] <= z[i] + gamma. Columns of
    classes without samples are zero; the diagonal is zero by construction.

    Ties between competitors are broken by the lowest index (``torch.argmax``), the same rule
    that picks the predicted class, so that ``hard_confusion <= margin_confusion`` holds exactly.
    """
    if not gamma >= 0:
        raise ValueError(f"gamma must be >= 0 (the bound is stated for non-negative margins), got {gamma}")
    if check_logits_and_targets(logits, targets):
        raise ValueError("margin_confusion needs class-index targets (batch,), not soft targets")
    scores = logits.detach().to("cpu", torch.float64)
    labels = targets.detach().to("cpu", torch.long)
    batch, num_classes = scores.shape
    true_score = scores.gather(1, labels[:, None]).squeeze(1)
    competitor_scores = scores.scatter(1, labels[:, None], float("-inf"))
    strongest_competitor = competitor_scores.argmax(dim=1)
    within_margin = true_score <= competitor_scores.gather(1, strongest_competitor[:, None]).squeeze(1) + gamma
    # Flat index pred * K + true counts each sample into its [competitor, true class] cell.
    flat = (strongest_competitor * num_classes + labels)[within_margin]
    counts = torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    samples_per_class = torch.bincount(labels, minlength=num_classes).to(torch.float64)
    return counts.to(torch.float64) / samples_per_class.clamp_min(1.0)[None, :]


def weighted_spectral_norm(matrix: ArrayLike, weights: Optional[ArrayLike] = None) -> float:
    """sigma_max(matrix * weights[None, :]) in float64 via an exact SVD; weights scale columns.

    ``matrix`` is in paper orientation (e.g. :func:`hard_confusion` of test-set counts, with
    ``weights = class_weights(train_counts)``, for the "spectral norm of the weighted hard
    confusion" metric). ``weights=None`` means no weighting.
    """
    tensor = _as_float64_cpu(matrix, "matrix")
    if weights is not None:
        column_weights = torch.as_tensor(
            np.asarray(weights) if not isinstance(weights, torch.Tensor) else weights
        ).detach().to("cpu", torch.float64)
        if column_weights.shape != (tensor.shape[1],):
            raise ValueError(
                f"weights must have one entry per column ({tensor.shape[1]}), got shape {tuple(column_weights.shape)}"
            )
        tensor = tensor * column_weights[None, :]
    return float(torch.linalg.matrix_norm(tensor, ord=2))


def per_class_error(confusion: ArrayLike) -> torch.Tensor:
    """e_j = sum_i H[i, j]: the column sums of a paper-orientation confusion (float64, (K,))."""
    return _as_float64_cpu(confusion, "confusion").sum(dim=0)
