"""DRW: deferred re-weighting (Cao et al. 2019), spec section 4.

Train unweighted, then switch class-balanced weights on at a fixed epoch (160 of 200 in the
CIFAR-LT protocol). :class:`DeferredReweighting` wraps *any* loss that takes per-class weights, i.e.
has ``set_class_weights(weights_or_None)`` (every :class:`~longtail.losses.base.SoftmaxLoss`: CE,
focal, LDAM, LA, ...), and switches them in ``set_epoch(epoch)``, the hook the engine calls on every
module that has it. Epochs count from 0: with ``switch_epoch=160`` epochs 0..159 are unweighted and
160.. use ``class_weights(class_counts, weighting, beta)`` (default effective number, beta = 0.9999,
normalised to sum K), as LDAM-DRW's ``idx = epoch // 160``. The weights depend only on the epoch, so
a resumed run gets the same weights after its first ``set_epoch``.

Outside the engine, a loop that never calls ``set_epoch`` would silently train without the
deferred weights; the first forward pass without any ``set_epoch`` call therefore warns.
"""

from __future__ import annotations

import warnings

from .._checks import ClassCounts
from .base import PerSampleLoss
from .weights import class_weights


class DeferredReweighting(PerSampleLoss):
    """Wrap ``loss``; weights off before ``switch_epoch``, ``class_weights(...)`` from it on."""

    def __init__(
        self,
        loss: PerSampleLoss,
        class_counts: ClassCounts,
        switch_epoch: int = 160,
        weighting: str = "effective_number",
        beta: float = 0.9999,
    ):
        if not callable(getattr(loss, "set_class_weights", None)):
            raise ValueError(
                f"DRW needs a loss that takes per-class weights (a set_class_weights method); "
                f"{type(loss).__name__} has none"
            )
        if int(switch_epoch) != switch_epoch or switch_epoch < 0:
            raise ValueError(f"switch_epoch must be a non-negative integer, got {switch_epoch}")
        deferred_weights = class_weights(class_counts, weighting, beta=beta)
        super().__init__(reduction=getattr(loss, "reduction", "mean"), num_classes=deferred_weights.numel())
        self.loss = loss
        self.switch_epoch = int(switch_epoch)
        self.weighting = weighting
        self.beta = beta
        self.register_buffer("deferred_weights", deferred_weights, persistent=False)
        self.epoch = 0
        # Epoch 0, set here rather than by set_epoch(0): that call is the training loop's to make.
        self.loss.set_class_weights(self.deferred_weights if self.weights_active else None)
        self._epoch_given = self.switch_epoch == 0  # weights on from the start: nothing to switch

    @property
    def weights_active(self) -> bool:
        return self.epoch >= self.switch_epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the weights for ``epoch`` (0-based): none before ``switch_epoch``, deferred ones after."""
        self.epoch = int(epoch)
        self._epoch_given = True
        self.loss.set_class_weights(self.deferred_weights if self.weights_active else None)
        super().set_epoch(epoch)  # a scheduled loss inside this one

    def validate(self, logits, targets):
        validate = getattr(self.loss, "validate", None)
        return validate(logits, targets) if validate else super().validate(logits, targets)

    def compute(self, logits, targets, soft_targets):
        if not self._epoch_given:
            self._epoch_given = True  # warn once
            warnings.warn(
                f"DRW switches its class weights on at epoch {self.switch_epoch}, but set_epoch(epoch) was never "
                f"called: call loss.set_epoch(epoch) at the start of every epoch (epochs from 0), otherwise the "
                f"loss stays unweighted for the whole run", stacklevel=3)
        return self.loss.compute(logits, targets, soft_targets)

    def sample_weights(self, targets, soft_targets):
        return self.loss.sample_weights(targets, soft_targets)

    def extra_repr(self) -> str:
        return (
            f"switch_epoch={self.switch_epoch}, weighting={self.weighting!r}, beta={self.beta:g}, "
            f"epoch={self.epoch}, weights_active={self.weights_active}"
        )
