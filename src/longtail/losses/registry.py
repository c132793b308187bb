"""Loss registry: ``build_loss(name, class_counts, **options)`` and ``available_losses()``.

A plain dict of name -> builder (timm style: names are the public interface, no ``eval`` on strings).
Each builder's keyword arguments are the options that name accepts; an unknown name or option
raises a ValueError listing the valid ones.
"""

from __future__ import annotations

import inspect
from typing import Callable, Dict, List

from torch import nn

from .._checks import ClassCounts
from .ccar import CCAR
from .ce import CrossEntropy, WeightedCrossEntropy
from .class_balanced import ClassBalancedLoss
from .focal import FocalLoss
from .ldam import LDAMLoss
from .logit_adjusted import BalancedSoftmaxLoss, LogitAdjustedLoss
from .schedules import DeferredReweighting


def _ce(class_counts, label_smoothing=0.0, reduction="mean"):
    return CrossEntropy(class_counts, label_smoothing=label_smoothing, reduction=reduction)


def _label_smoothing(class_counts, label_smoothing=0.1, reduction="mean"):
    return CrossEntropy(class_counts, label_smoothing=label_smoothing, reduction=reduction)


def _weighted_ce(class_counts, weighting="inverse", label_smoothing=0.0, reduction="mean"):
    if weighting not in ("inverse", "sqrt"):
        raise ValueError(f"weighted_ce weighting must be 'inverse' or 'sqrt', got {weighting!r}")
    return WeightedCrossEntropy(class_counts, weighting, label_smoothing=label_smoothing, reduction=reduction)


def _focal(class_counts, gamma=2.0, reduction="mean"):
    return FocalLoss(class_counts, gamma=gamma, reduction=reduction)


def _cb_ce(class_counts, beta=0.9999, reduction="mean"):
    return ClassBalancedLoss(class_counts, beta=beta, gamma=0.0, reduction=reduction)


def _cb_focal(class_counts, beta=0.9999, gamma=2.0, reduction="mean"):
    return ClassBalancedLoss(class_counts, beta=beta, gamma=gamma, reduction=reduction)


# LDAM: scale None = the scale of ``head`` (a CosineHead, e.g. model.head), or 30 without a head.
def _ldam(class_counts, max_margin=0.5, scale=None, logits_prescaled=True, head=None, reduction="mean"):
    return LDAMLoss(class_counts, max_margin, scale, logits_prescaled=logits_prescaled, reduction=reduction, head=head)


# DRW defaults to LDAM-DRW's normalisation: its code calls F.cross_entropy(weight=w), a weighted mean.
def _ldam_drw(
    class_counts, max_margin=0.5, scale=None, logits_prescaled=True, head=None, switch_epoch=160, beta=0.9999,
    reduction="weighted_mean",
):
    loss = LDAMLoss(class_counts, max_margin, scale, logits_prescaled=logits_prescaled, reduction=reduction, head=head)
    return DeferredReweighting(loss, class_counts, switch_epoch=switch_epoch, beta=beta)


def _ce_drw(class_counts, switch_epoch=160, beta=0.9999, reduction="weighted_mean"):
    return DeferredReweighting(CrossEntropy(class_counts, reduction=reduction), class_counts, switch_epoch, beta=beta)


def _logit_adjusted(class_counts, tau=1.0, label_smoothing=0.0, reduction="mean"):
    return LogitAdjustedLoss(class_counts, tau=tau, label_smoothing=label_smoothing, reduction=reduction)


def _balanced_softmax(class_counts, label_smoothing=0.0, reduction="mean"):
    return BalancedSoftmaxLoss(class_counts, label_smoothing=label_smoothing, reduction=reduction)


def _focal_la(class_counts, gamma=2.0, tau=1.0, reduction="mean"):
    return LogitAdjustedLoss(class_counts, tau=tau, gamma=gamma, reduction=reduction)


def _focal_bs(class_counts, gamma=2.0, reduction="mean"):
    return BalancedSoftmaxLoss(class_counts, gamma=gamma, reduction=reduction)


def _ccar(base):
    def build(
        class_counts, omega=0.75, confidence_from="adjusted", detach_weight=False, frequency="raw",
        weight_normalization="none", reduction="mean",
    ):  # fmt: skip
        return CCAR(
            class_counts, base=base, omega=omega, confidence_from=confidence_from, detach_weight=detach_weight,
            reduction=reduction, frequency=frequency, weight_normalization=weight_normalization,
        )  # fmt: skip

    return build


def _ccar_la(
    class_counts, omega=0.75, tau=1.0, confidence_from="adjusted", detach_weight=False, frequency="raw",
    weight_normalization="none", reduction="mean",
):  # fmt: skip
    return CCAR(
        class_counts, base="logit_adjusted", omega=omega, tau=tau, confidence_from=confidence_from,
        detach_weight=detach_weight, reduction=reduction, frequency=frequency,
        weight_normalization=weight_normalization,
    )  # fmt: skip


LOSSES: Dict[str, Callable[..., nn.Module]] = {
    "ce": _ce,
    "label_smoothing": _label_smoothing,
    "weighted_ce": _weighted_ce,
    "focal": _focal,
    "cb_ce": _cb_ce,
    "cb_focal": _cb_focal,
    "ldam": _ldam,
    "ldam_drw": _ldam_drw,
    "ce_drw": _ce_drw,
    "logit_adjusted": _logit_adjusted,
    "balanced_softmax": _balanced_softmax,
    "focal_la": _focal_la,
    "focal_bs": _focal_bs,
    "ccar_ce": _ccar("ce"),
    "ccar_la": _ccar_la,
    "ccar_bs": _ccar("balanced_softmax"),
}
ALIASES: Dict[str, str] = {"la": "logit_adjusted", "bs": "balanced_softmax"}


def available_losses() -> List[str]:
    """All names ``build_loss`` accepts (canonical names and aliases), sorted."""
    return sorted([*LOSSES, *ALIASES])


def loss_options(name: str) -> Dict[str, object]:
    """The options ``name`` accepts, with their defaults."""
    builder = LOSSES[_canonical(name)]
    parameters = list(inspect.signature(builder).parameters.values())[1:]  # skip class_counts
    return {parameter.name: parameter.default for parameter in parameters}


def _canonical(name: str) -> str:
    key = name.strip().lower().replace("-", "_") if isinstance(name, str) else name
    key = ALIASES.get(key, key)
    if key not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(available_losses())}")
    return key


def build_loss(name: str, class_counts: ClassCounts, **options) -> nn.Module:
    """Build the loss registered as ``name`` for the given training ``class_counts``.

    Example: ``build_loss("ccar_bs", counts, omega=0.5)``; see :func:`available_losses` and
    :func:`loss_options` for the names and each name's options.
    """
    key = _canonical(name)
    valid = loss_options(key)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for loss {name!r}; valid options: "
            + ", ".join(f"{option}={default!r}" for option, default in valid.items())
        )
    return LOSSES[key](class_counts, **options)
