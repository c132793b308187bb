"""The per-sample core every loss in ``longtail.losses`` is built from.

Two pieces, shared by all losses (pytorch-metric-learning style: behaviour composes instead of
being copied into each loss):

* :class:`PerSampleLoss`: the contract. A loss validates its input once, computes a vector of
  per-sample losses together with ``log p_t`` (the log-probability it assigned to the true
  class), and reduces. Wrappers such as :class:`~longtail.losses.CCAR` and
  :class:`~longtail.losses.DeferredReweighting` call :meth:`PerSampleLoss.per_sample` (or the
  unvalidated :meth:`PerSampleLoss.compute`) of the loss they wrap.
* :class:`SoftmaxLoss`: the one softmax cross-entropy family every baseline of spec section 4 is an
  instance of. For logits z, true class y and target distribution q (one-hot for class-index
  targets)::

      a      = scale * (z - margin ⊙ q) + offset            (LDAM margin, LA / BS offset tau log pi)
      log p  = log_softmax(a)
      loss_i = - sum_c  q_c * w_c * (1 - p_c) ** gamma * log p_c

  with per-class weights w (weighted CE, class-balanced, DRW) and focal exponent gamma; label
  smoothing replaces q by (1 - eps) q + eps / K. For class-index targets without smoothing this is
  ``-w_y (1 - p_y) ** gamma log p_y`` with ``-log p_y`` from PyTorch's fused ``F.cross_entropy``
  (no one-hot is built).

Which p_t is reported (used by CCAR):
  * class-index targets: p_t = p_y, the softmax of the very logits ``a`` the loss scores (so for LA /
    BS it is the *adjusted* probability, spec section 1 "which p_t"); label smoothing does not change
    which class is true.
  * soft targets q (mixup / CutMix): p_t = sum_c q_c p_c, the probability that a label drawn from q
    is the one predicted. It is linear in q (a mixup of two labels gives lambda p_A + (1 - lambda) p_B),
    reduces exactly to p_y for one-hot q, and stays differentiable; the argmax-class alternative would
    jump discontinuously when lambda crosses 1/2. It is computed as logsumexp(log q + log p).

Numerics: half-precision logits (float16 / bfloat16) are scored in float32 (autocast is switched
off inside the loss), float64 stays float64; the returned per-sample losses are float32 or float64.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_logits_and_targets

REDUCTIONS = ("mean", "weighted_mean", "sum", "none")


def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def reduce_loss(
    per_sample: torch.Tensor, reduction: str, sample_weights: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Reduce a (B,) vector of per-sample losses.

    * ``mean``: the plain batch mean, also for class-weighted losses. With weights normalised to sum
      to K (spec section 4) it keeps the loss on the scale of unweighted CE; class-balanced loss's
      reference code divides by the batch size too.
    * ``weighted_mean``: ``sum_i loss_i / sum_i w_i`` with ``sample_weights`` w_i = sum_c q_ic w_c
      (w_{y_i} for class indices), the normalisation of ``F.cross_entropy(weight=w)`` that LDAM-DRW's
      code uses. Without class weights (``sample_weights`` None) it is ``mean``. A batch whose
      weights are all 0 has loss 0 (not 0 / 0). Under DDP each rank normalises by its own shard.
    * ``sum``, ``none``.
    """
    if reduction == "weighted_mean" and sample_weights is not None:
        total = sample_weights.sum().to(per_sample.dtype)
        return per_sample.sum() / total.clamp_min(torch.finfo(total.dtype).tiny)
    if reduction in ("mean", "weighted_mean"):
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample


def compute_dtype(logits: torch.Tensor) -> torch.dtype:
    """float32 for half-precision (and float32) logits, float64 for float64 logits."""
    return torch.promote_types(logits.dtype, torch.float32)


def autocast_enabled(tensor: torch.Tensor) -> bool:
    return torch.is_autocast_enabled(tensor.device.type)


def soft_log_p_true(log_probs: torch.Tensor, soft_targets: torch.Tensor) -> torch.Tensor:
    """log(sum_c q_c p_c) for soft targets q, computed stably as logsumexp(log q + log p)."""
    return torch.logsumexp(log_probs + torch.log(soft_targets), dim=1)


def one_hot_like(targets: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    return F.one_hot(targets, num_classes).to(dtype)


class PerSampleLoss(nn.Module):
    """Base class: validate, compute per-sample losses and log p_t, reduce.

    Subclasses implement :meth:`compute`. ``num_classes`` (from ``class_counts``) is checked against
    the logits when known; losses that need no class statistics accept any K.
    """

    #: Whether (B, K) soft targets are accepted.
    supports_soft_targets: bool = True

    def __init__(self, reduction: str = "mean", num_classes: Optional[int] = None):
        super().__init__()
        self.reduction = check_reduction(reduction)
        self.num_classes = num_classes

    def validate(self, logits: torch.Tensor, targets: torch.Tensor) -> bool:
        """Check shapes, label range and finiteness; return True for soft targets."""
        soft = check_logits_and_targets(logits, targets, self.num_classes)
        if soft and not self.supports_soft_targets:
            raise ValueError(f"{type(self).__name__} needs class-index targets (batch,), got soft targets")
        return soft

    def compute(
        self, logits: torch.Tensor, targets: torch.Tensor, soft_targets: bool
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-sample losses (B,) and log p_t (B,) for already validated input."""
        raise NotImplementedError

    def sample_weights(self, targets: torch.Tensor, soft_targets: bool) -> Optional[torch.Tensor]:
        """Each sample's class weight sum_c q_c w_c, the ``weighted_mean`` denominator; None when the
        loss has no class weights (then ``weighted_mean`` is ``mean``)."""
        return None

    def set_epoch(self, epoch: int) -> None:
        """Tell every scheduled loss inside this one the (0-based) epoch, e.g. a DRW base wrapped by
        CCAR. A loss with a schedule of its own (:class:`~longtail.losses.DeferredReweighting`)
        overrides this and calls it too. Call it at the start of every epoch."""
        for child in self.children():
            if callable(getattr(child, "set_epoch", None)):
                child.set_epoch(epoch)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Validated per-sample losses (B,) and log-probability of the true class (B,)."""
        return self.compute(logits, targets, self.validate(logits, targets))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        soft_targets = self.validate(logits, targets)
        per_sample, _ = self.compute(logits, targets, soft_targets)
        weights = self.sample_weights(targets, soft_targets) if self.reduction == "weighted_mean" else None
        return reduce_loss(per_sample, self.reduction, weights)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class SoftmaxLoss(PerSampleLoss):
    """The shared softmax cross-entropy core (see the module docstring for the formula).

    Args:
        logit_offset: (K,) added to the (scaled) logits; ``tau * log pi`` for LA / Balanced Softmax
            (see :func:`~longtail.losses.logit_adjusted.logit_adjustment`).
        true_class_margins: (K,) margin m_c subtracted from the true-class logit (LDAM).
        scale: multiplies the margin-adjusted logits (LDAM's s).
        gamma: focal exponent; 0 is plain cross-entropy.
        label_smoothing: eps in [0, 1); target becomes (1 - eps) q + eps / K (PyTorch convention).
        class_weights: (K,) per-class weights w_c, or None for unweighted. Change them later with
            :meth:`set_class_weights` (used by the DRW schedule).
        num_classes: K when known (checked against the logits).
    """

    def __init__(
        self,
        *,
        logit_offset: Optional[torch.Tensor] = None,
        true_class_margins: Optional[torch.Tensor] = None,
        scale: float = 1.0,
        gamma: float = 0.0,
        label_smoothing: float = 0.0,
        class_weights: Optional[torch.Tensor] = None,
        num_classes: Optional[int] = None,
        reduction: str = "mean",
    ):
        super().__init__(reduction=reduction, num_classes=num_classes)
        if not (math.isfinite(gamma) and gamma >= 0):
            raise ValueError(f"gamma (focal exponent) must be >= 0, got {gamma}")
        if not (0.0 <= label_smoothing < 1.0):
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive number, got {scale}")
        self.gamma = float(gamma)
        self.label_smoothing = float(label_smoothing)
        self.scale = float(scale)
        # Derived from class_counts, so not checkpoint state (persistent=False); kept in float64 and
        # cast to the compute dtype per call so float64 tests see no float32 rounding.
        self.register_buffer("logit_offset", self._vector(logit_offset, "logit_offset"), persistent=False)
        self.register_buffer(
            "true_class_margins", self._vector(true_class_margins, "true_class_margins"), persistent=False
        )
        self.register_buffer("class_weights", None, persistent=False)
        self.set_class_weights(class_weights)

    def _vector(self, values, name: str) -> Optional[torch.Tensor]:
        if values is None:
            return None
        vector = torch.as_tensor(values, dtype=torch.float64).detach().clone()
        if vector.dim() != 1 or (self.num_classes is not None and vector.numel() != self.num_classes):
            raise ValueError(f"{name} must be a vector with one entry per class, got shape {tuple(vector.shape)}")
        if self.num_classes is None:
            self.num_classes = vector.numel()
        if not bool(torch.isfinite(vector).all()):
            raise ValueError(f"{name} must be finite, got {vector.tolist()}")
        return vector

    def set_class_weights(self, class_weights: Optional[torch.Tensor]) -> None:
        """Replace the per-class weights (None = unweighted). Used by :class:`DeferredReweighting`."""
        weights = self._vector(class_weights, "class_weights")
        if weights is not None and bool((weights < 0).any()):
            raise ValueError("class_weights must be non-negative")
        if weights is not None:
            # Follow the module if it was moved with .to(device); compute() casts per call anyway.
            for existing in (self.class_weights, self.logit_offset, self.true_class_margins):
                if existing is not None:
                    weights = weights.to(existing.device)
                    break
        self.class_weights = weights

    def sample_weights(self, targets, soft_targets):
        if self.class_weights is None:
            return None
        weights = self.class_weights.to(targets.device)
        # Class-index targets: w_{y_i} whatever the label smoothing, as F.cross_entropy(weight=w) does.
        return targets.to(weights.dtype) @ weights if soft_targets else weights[targets]

    @staticmethod
    def _cast(vector: Optional[torch.Tensor], like: torch.Tensor) -> Optional[torch.Tensor]:
        return None if vector is None else vector.to(device=like.device, dtype=like.dtype)

    def compute(self, logits, targets, soft_targets):
        if autocast_enabled(logits):
            with torch.autocast(device_type=logits.device.type, enabled=False):
                return self._compute(logits, targets, soft_targets)
        return self._compute(logits, targets, soft_targets)

    def _compute(self, logits, targets, soft_targets):
        z = logits.to(compute_dtype(logits))
        num_classes = z.shape[1]
        margins = self._cast(self.true_class_margins, z)
        offset = self._cast(self.logit_offset, z)
        weights = self._cast(self.class_weights, z)
        if soft_targets:
            q = targets.to(z.dtype)
        if margins is not None:
            if soft_targets:
                z = z - q * margins
            else:
                index = targets.unsqueeze(1)
                z = z.scatter_add(1, index, -margins[targets].unsqueeze(1))
        if self.scale != 1.0:
            z = z * self.scale
        if offset is not None:
            z = z + offset

        if not soft_targets and self.label_smoothing == 0.0:
            # Fast path: PyTorch's fused log_softmax + NLL (about half the time and memory traffic of
            # log_softmax + gather on large K); log p_t = -CE_i exactly, gradient included.
            loss = F.cross_entropy(z, targets, reduction="none")
            log_p_true = -loss
            if self.gamma:
                loss = loss * self._focal_factor(log_p_true)
            if weights is not None:
                loss = loss * weights[targets]
            return loss, log_p_true

        log_probs = F.log_softmax(z, dim=1)
        if soft_targets:
            log_p_true = soft_log_p_true(log_probs, q)
        else:
            log_p_true = log_probs.gather(1, targets.unsqueeze(1)).squeeze(1)
            q = one_hot_like(targets, num_classes, z.dtype)
        if self.label_smoothing:
            q = q * (1.0 - self.label_smoothing) + self.label_smoothing / num_classes
        per_class = -log_probs
        if self.gamma:
            per_class = per_class * self._focal_factor(log_probs)
        if weights is not None:
            per_class = per_class * weights
        loss = (q * per_class).sum(dim=1)
        return loss, log_p_true

    def _focal_factor(self, log_probs: torch.Tensor) -> torch.Tensor:
        # (1 - p) ** gamma with 1 - p = -expm1(log p): exact near p -> 1 where 1 - exp(.) cancels.
        # The floor keeps d/dp finite for gamma < 1 when p rounds to exactly 1.
        one_minus_p = (-torch.expm1(log_probs)).clamp_min(torch.finfo(log_probs.dtype).tiny)
        return one_minus_p.pow(self.gamma)

    def extra_repr(self) -> str:
        parts = [f"num_classes={self.num_classes}"]
        if self.gamma:
            parts.append(f"gamma={self.gamma:g}")
        if self.label_smoothing:
            parts.append(f"label_smoothing={self.label_smoothing:g}")
        if self.scale != 1.0:
            parts.append(f"scale={self.scale:g}")
        for name in ("logit_offset", "true_class_margins", "class_weights"):
            if getattr(self, name) is not None:
                parts.append(f"{name}=({self.num_classes},)")
        parts.append(super().extra_repr())
        return ", ".join(parts)
