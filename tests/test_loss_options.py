"""Every option of every registered loss reaches the loss (issue 22, mutmut survivors in the
registry): built with a non-default value, the loss gives another value or another gradient on the
same logits. Where an option only changes the gradient (detach_weight) the gradient is compared."""

from __future__ import annotations

import pytest
import torch

from longtail.losses.registry import available_losses, build_loss, loss_options

COUNTS = [40, 20, 8, 2]
OTHER = {"label_smoothing": 0.3, "reduction": "sum", "beta": 0.9, "gamma": 0.5, "omega": 0.5, "tau": 0.5,
         "confidence_from": "raw", "detach_weight": True, "frequency": "max_normalized",
         "weight_normalization": "batch_mean", "weighting": "sqrt", "max_margin": 0.3, "scale": 10.0,
         "logits_prescaled": False, "switch_epoch": 0}
CASES = [(name, option) for name in available_losses() if name not in ("la", "bs")  # aliases
         for option in loss_options(name) if option != "head"
         and (name, option) != ("ccar_ce", "confidence_from")]  # CE has no adjustment: raw = adjusted
# Context for a probe: DRW's weights act only from switch_epoch, so probe its other options there.
CONTEXT = {"ce_drw": {"switch_epoch": 0}, "ldam_drw": {"switch_epoch": 0}}


def value_and_gradient(loss, cosines=False):
    generator = torch.Generator().manual_seed(0)
    logits = 2 * torch.randn(12, 4, generator=generator, dtype=torch.float64)
    if cosines:  # LDAM with logits_prescaled=False takes raw cosines in [-1, 1]
        logits = 0.9 * torch.tanh(logits)
    logits.requires_grad_(True)
    targets = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 0, 1])
    if hasattr(loss, "set_epoch"):
        loss.set_epoch(0)
    value = loss(logits, targets)
    value.backward()
    return value.detach(), logits.grad


def test_every_option_has_a_probe_value():
    assert {option for _, option in CASES} <= set(OTHER)


@pytest.mark.parametrize("name, option", CASES)
def test_a_non_default_option_changes_the_loss(name, option):
    default = loss_options(name)[option]
    other = OTHER[option]
    if other == default:
        other = {"label_smoothing": 0.0}.get(option, other)
    context = {k: v for k, v in CONTEXT.get(name, {}).items() if k != option}
    cosines = name.startswith("ldam")
    base_value, base_grad = value_and_gradient(build_loss(name, COUNTS, **context), cosines)
    value, grad = value_and_gradient(build_loss(name, COUNTS, **context, **{option: other}), cosines)
    changed = (value - base_value).abs().max() > 1e-9 or (grad - base_grad).abs().max() > 1e-9
    assert changed, f"{name}: {option}={other!r} gives the same loss and gradient as {default!r}"


def test_refusals_name_what_is_wrong():
    from longtail.losses import BalancedContrastiveLoss, CrossEntropy, LDAMLoss
    from longtail.losses.schedules import DeferredReweighting
    from longtail.models.heads import CosineHead

    head = CosineHead(8, 4, scale=30.0)
    LDAMLoss(COUNTS, head=head)  # the scale is the head's
    LDAMLoss(COUNTS, scale=30.0, head=head)  # the same scale given twice is fine
    with pytest.raises(ValueError, match=r"LDAM scale=10 differs from the cosine head's scale 30"):
        LDAMLoss(COUNTS, scale=10.0, head=head)
    with pytest.raises(ValueError, match=r"CrossEntropyLoss has none"):
        DeferredReweighting(torch.nn.CrossEntropyLoss(), COUNTS)
    DeferredReweighting(CrossEntropy(COUNTS), COUNTS)
    BalancedContrastiveLoss(1)  # one class: only prototypes and same-class views, still defined
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        BalancedContrastiveLoss(0)


def test_documented_defaults_of_the_public_functions_and_classes():
    from longtail.losses import BalancedContrastiveLoss, LDAMLoss, LogitAdjustedLoss, WeightedCrossEntropy
    from longtail.losses.ccar import ccar_weight, class_frequencies
    from longtail.losses.schedules import DeferredReweighting
    from longtail.losses import CrossEntropy
    from longtail.models.heads import CosineHead

    counts = torch.tensor(COUNTS, dtype=torch.float64)
    torch.testing.assert_close(class_frequencies(COUNTS), counts / counts.sum())  # "raw" by default
    p, f = torch.tensor([0.2, 0.9], dtype=torch.float64), torch.tensor([0.1, 0.3], dtype=torch.float64)
    import math

    expected = torch.tensor([(math.e - 0.1) ** (0.75 - 0.2), (math.e - (1 - 0.3)) ** (0.75 - 0.9)], dtype=torch.float64)
    torch.testing.assert_close(ccar_weight(p, f), expected)  # omega 0.75 by default
    assert BalancedContrastiveLoss(3).temperature == 0.1
    assert WeightedCrossEntropy(COUNTS).reduction == "mean"
    assert LDAMLoss(COUNTS, head=CosineHead(8, 4, scale=16.0)).logit_scale == 16.0  # the head's scale
    # buffers derived from the class counts are not saved in checkpoints (rebuilt from the config)
    assert "logit_offset" not in LogitAdjustedLoss(COUNTS).state_dict()
    assert "deferred_weights" not in DeferredReweighting(CrossEntropy(COUNTS), COUNTS).state_dict()


def test_ldam_refuses_logits_outside_its_range_and_other_messages():
    from longtail.losses import CCAR, LDAMLoss
    from longtail.losses.base import SoftmaxLoss

    raw = LDAMLoss(COUNTS, scale=30.0, logits_prescaled=False)
    with pytest.raises(ValueError, match=r"LDAM expects raw cosines in \[-1, 1\] but got \|logit\| = 1.5"):
        raw(torch.tensor([[1.5, 0.0, 0.0, 0.0]]), torch.tensor([0]))
    raw(torch.tensor([[0.99, 0.0, 0.0, 0.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="class_weights must be non-negative"):
        LDAMLoss(COUNTS, scale=30.0).set_class_weights(torch.tensor([1.0, -1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"^labels must have shape \(2,\), got \(3,\)$"):
        from longtail.losses import balanced_contrastive_loss
        balanced_contrastive_loss(torch.zeros(2, 2, 4), torch.tensor([0, 1, 0]), torch.zeros(3, 4))
    with pytest.raises((TypeError, ValueError), match="CrossEntropyLoss has none"):
        CCAR(COUNTS, base=torch.nn.CrossEntropyLoss())
    assert issubclass(LDAMLoss, SoftmaxLoss)
