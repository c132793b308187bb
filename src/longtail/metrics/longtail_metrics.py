"""Long-tail evaluation metrics accumulated torchmetrics-style: state + ``update`` + ``compute``
+ a distributed reduce.

The state is one confusion matrix ``counts[true, pred]`` (int64, scikit-learn orientation) plus
what calibration needs: per-bin sums of max-softmax confidence and of correct predictions, per-bin
counts (equal-width ECE, Guo et al., "On Calibration of Modern Neural Networks", ICML 2017,
eq. 3) and the summed negative log-likelihood. Every metric is derived from that state, so
``all_reduce`` (a sum) makes a multi-process evaluation exactly equal to one pass over all data.

The spectral norm of the weighted hard confusion matrix is the quantity CAR bounds the worst-class
error with (spec section 2); it comes from :mod:`longtail.regularizers.bounds`, which owns the
paper orientation (pred x true) and the class weights.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from .._checks import as_class_counts, check_logits_and_targets
from .confusion import harmonic_mean, per_class_accuracy, shot_group_masks, worst_fraction_mean

__all__ = ["LongTailMetrics", "worst_class_ratio"]

WORST_FRACTION = 0.1
CLASS_WEIGHTINGS = ("frequency", "count", "none")


class LongTailMetrics:
    """Accumulate predictions; ``compute()`` returns a JSON-ready dict (plain floats / ints / lists).

    Args:
        num_classes: K.
        train_counts: training images per class N_j (defines Many / Medium / Few and CAR's weights).
        many_threshold, few_threshold: Many = N_j > many_threshold, Few = N_j < few_threshold,
            Medium = the rest (100 / 20 as in classifier-balancing).
        ece_bins: number of equal-width confidence bins for ECE (15, Guo et al. 2017).
        class_weights: weights for the weighted confusion spectral norm: ``None`` / ``"frequency"``
            (CAR default, lambda_j = (pi_j + 0.2) ** -0.5), ``"count"``, ``"none"``, or a
            sequence / tensor of K weights used as given.

    Keys of ``compute()`` (accuracies are fractions in [0, 1]):
        ``num_samples``, ``num_classes``, ``accuracy``, ``per_class_accuracy`` (list, None for a
        class without samples), ``per_class_support``, ``many_accuracy`` / ``medium_accuracy`` /
        ``few_accuracy`` (None when the group is empty), ``num_many_classes`` / ``num_medium_classes``
        / ``num_few_classes``, ``worst_class_accuracy``, ``worst_class``, ``worst_10pct_accuracy``,
        ``balanced_accuracy``, ``harmonic_mean_recall``, ``ece``, ``nll``, ``reliability``
        (``bin_confidence``, ``bin_accuracy``, ``bin_count``; None for empty bins) and
        ``confusion_spectral_norm``.
    """

    def __init__(
        self,
        num_classes: int,
        train_counts,
        many_threshold: float = 100,
        few_threshold: float = 20,
        ece_bins: int = 15,
        class_weights: str | Sequence[float] | torch.Tensor | None = None,
    ) -> None:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.num_classes = num_classes
        self.train_counts = as_class_counts(train_counts, "train_counts")
        if self.train_counts.numel() != num_classes:
            raise ValueError(f"train_counts has {self.train_counts.numel()} entries but num_classes is {num_classes}")
        if ece_bins < 1:
            raise ValueError(f"ece_bins must be >= 1, got {ece_bins}")
        self.many_threshold = many_threshold
        self.few_threshold = few_threshold
        self.group_masks = shot_group_masks(self.train_counts, many_threshold, few_threshold)
        self.ece_bins = int(ece_bins)
        self.class_weights = class_weights
        if isinstance(class_weights, str) and class_weights not in CLASS_WEIGHTINGS:
            raise ValueError(f"unknown class_weights {class_weights!r}; valid: {', '.join(CLASS_WEIGHTINGS)} or a list of K weights")
        if not (class_weights is None or isinstance(class_weights, str)):
            weights = torch.as_tensor(class_weights, dtype=torch.float64).flatten()
            if weights.numel() != num_classes:
                raise ValueError(f"class_weights has {weights.numel()} entries, expected {num_classes}")
            self.class_weights = weights
        self.reset()

    # ---- state -------------------------------------------------------------------------------

    def reset(self, device: torch.device | str | None = None) -> None:
        """Zero the state (on ``device``, CPU by default; ``update`` moves it to the logits' device)."""
        device = torch.device(device) if device is not None else torch.device("cpu")
        bins, classes = self.ece_bins, self.num_classes
        self.confusion = torch.zeros(classes, classes, dtype=torch.int64, device=device)
        self.bin_count = torch.zeros(bins, dtype=torch.int64, device=device)
        self.bin_confidence_sum = torch.zeros(bins, dtype=torch.float64, device=device)
        self.bin_correct_sum = torch.zeros(bins, dtype=torch.float64, device=device)
        self.nll_sum = torch.zeros((), dtype=torch.float64, device=device)
        self._reduced = False

    def _state(self) -> dict[str, torch.Tensor]:
        return {
            "confusion": self.confusion,
            "bin_count": self.bin_count,
            "bin_confidence_sum": self.bin_confidence_sum,
            "bin_correct_sum": self.bin_correct_sum,
            "nll_sum": self.nll_sum,
        }

    def _move_state(self, device: torch.device) -> None:
        for name, value in self._state().items():
            setattr(self, name, value.to(device))

    def to(self, device: torch.device | str) -> "LongTailMetrics":
        """Keep the state on ``device`` (like ``nn.Module.to``; returns self). ``update`` would move
        it to the logits' device anyway; moving it up front avoids that copy on the first batch."""
        self._move_state(torch.device(device))
        return self

    @torch.no_grad()
    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch: ``logits`` (B, K) (any float dtype), ``targets`` (B,) class indices."""
        if check_logits_and_targets(logits, targets, self.num_classes):
            raise ValueError("LongTailMetrics.update needs class-index targets, not soft (B, K) targets")
        if self.confusion.device != logits.device:
            self._move_state(logits.device)
        # float32 softmax even for bf16 / fp16 logits: confidence bins and NLL need the precision.
        log_probs = F.log_softmax(logits.float(), dim=1)
        max_log_prob, preds = log_probs.max(dim=1)
        targets = targets.to(logits.device)
        # Scatter-add into the flat matrix instead of adding a fresh bincount: O(batch) work per
        # update rather than O(K^2), which matters at K = 8142 (a 66M-entry matrix).
        # (Equivalent to self.confusion += confusion_matrix(preds, targets, K); targets were range-checked.)
        flat_index = targets.long() * self.num_classes + preds
        self.confusion.view(-1).index_put_((flat_index,), torch.ones_like(flat_index), accumulate=True)
        confidence = max_log_prob.double().exp()
        correct = (preds == targets).double()
        # Bins (k/B, (k+1)/B], as in Guo et al.: a confidence of exactly k/B goes to bin k-1.
        bin_index = (torch.ceil(confidence * self.ece_bins).long() - 1).clamp_(0, self.ece_bins - 1)
        self.bin_count += torch.bincount(bin_index, minlength=self.ece_bins)
        self.bin_confidence_sum.index_add_(0, bin_index, confidence)
        self.bin_correct_sum.index_add_(0, bin_index, correct)
        self.nll_sum -= log_probs.gather(1, targets.long()[:, None]).double().sum()
        self._reduced = False

    def all_reduce(self, group=None) -> None:
        """Sum the state over an initialised ``torch.distributed`` process group (no-op otherwise).

        After it, every rank's ``compute()`` describes all ranks' samples. Calling it twice without
        an ``update`` in between is a no-op (a second sum would double-count). With NCCL the state
        is moved to the current CUDA device first.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or self._reduced:
            return
        if dist.get_backend(group) == "nccl" and self.confusion.device.type != "cuda":
            self._move_state(torch.device("cuda", torch.cuda.current_device()))
        for value in self._state().values():
            dist.all_reduce(value, op=dist.ReduceOp.SUM, group=group)
        self._reduced = True

    # ---- derived metrics ---------------------------------------------------------------------

    def compute(self, spectral_norm: bool = True) -> dict:
        """All metrics as plain Python values (see the class docstring for the keys).

        ``spectral_norm=False`` skips the exact SVD behind ``confusion_spectral_norm`` (reported as
        None): at K = 8142 it takes tens of seconds, too much for a per-epoch evaluation.
        """
        confusion = self.confusion.cpu()
        num_samples = int(confusion.sum())
        if num_samples == 0:
            raise ValueError("LongTailMetrics.compute() called before any update (no samples)")
        recall, present = per_class_accuracy(confusion)
        present_recall = recall[present]
        groups = {}
        for name, mask in self.group_masks.items():
            members = mask & present
            groups[f"{name}_accuracy"] = float(recall[members].mean()) if bool(members.any()) else None
            groups[f"num_{name}_classes"] = int(mask.sum())
        worst_value, worst_position = present_recall.min(dim=0)
        bin_count = self.bin_count.cpu().double()
        bin_confidence_sum = self.bin_confidence_sum.cpu()
        bin_correct_sum = self.bin_correct_sum.cpu()
        # ECE = sum_b |B_b| / n * |acc_b - conf_b| = (1 / n) * sum_b |correct_b - confidence_b|.
        ece = float((bin_correct_sum - bin_confidence_sum).abs().sum() / num_samples)
        nonempty = bin_count > 0

        def per_bin(sums: torch.Tensor) -> list:
            return [float(s / c) if c > 0 else None for s, c in zip(sums.tolist(), bin_count.tolist())]

        return {
            "num_samples": num_samples,
            "num_classes": self.num_classes,
            "accuracy": float(confusion.diagonal().sum()) / num_samples,
            "per_class_accuracy": [None if value != value else float(value) for value in recall.tolist()],
            "per_class_support": confusion.sum(dim=1).tolist(),
            **groups,
            "worst_class_accuracy": float(worst_value),
            "worst_class": int(present.nonzero().flatten()[worst_position]),
            "worst_10pct_accuracy": worst_fraction_mean(present_recall, WORST_FRACTION),
            "balanced_accuracy": float(present_recall.mean()),
            "harmonic_mean_recall": harmonic_mean(present_recall),
            "ece": ece,
            "nll": float(self.nll_sum.cpu()) / num_samples,
            "reliability": {
                "bin_edges": torch.linspace(0, 1, self.ece_bins + 1, dtype=torch.float64).tolist(),
                "bin_confidence": per_bin(bin_confidence_sum),
                "bin_accuracy": per_bin(bin_correct_sum),
                "bin_count": self.bin_count.cpu().tolist(),
                "num_nonempty_bins": int(nonempty.sum()),
            },
            "confusion_spectral_norm": self._confusion_spectral_norm(confusion) if spectral_norm else None,
        }

    def _confusion_spectral_norm(self, confusion: torch.Tensor) -> float:
        """||H W||_2 with H the hard off-diagonal confusion in paper orientation (pred x true,
        column j divided by the number of class-j samples) and W = diag(class weights)."""
        # Imported here, not at module level: metrics should stay importable on their own, and
        # bounds owns the orientation (transpose) and the class-weight definitions.
        from ..regularizers import bounds

        if self.class_weights is None or isinstance(self.class_weights, str):
            weights = bounds.class_weights(self.train_counts, weighting=self.class_weights or "frequency")
        else:
            weights = self.class_weights
        hard = bounds.hard_confusion(confusion)
        return float(bounds.weighted_spectral_norm(hard, weights))


def worst_class_ratio(test_metrics: Mapping | float, train_metrics: Mapping | float) -> float | None:
    """Worst-class test accuracy / worst-class train accuracy (CAR's generalisation-gap measure).

    Accepts two ``compute()`` dicts or two numbers; None when the train worst-class accuracy is 0.
    """
    def worst(metrics):
        return float(metrics["worst_class_accuracy"]) if isinstance(metrics, Mapping) else float(metrics)

    test_worst, train_worst = worst(test_metrics), worst(train_metrics)
    return test_worst / train_worst if train_worst > 0 else None
