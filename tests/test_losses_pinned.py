"""Gaps the mutation score found in the loss tests (docs/mutation.md): the default options of
every registered loss, and edge cases of their input checks. Each expected value is written out
here in float64 from the papers' formulas, not taken from the library."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from longtail.losses import build_loss
from longtail.losses.weights import class_weights

COUNTS = [50, 20, 8, 3]


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(12, 4, generator=generator, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2, 3] * 3)
    return logits, targets


def log_prior():
    counts = torch.tensor(COUNTS, dtype=torch.float64)
    return (counts / counts.sum()).log()


def ce(logits, targets):
    return F.cross_entropy(logits, targets)


def focal(logits, targets, gamma):
    log_p = F.log_softmax(logits, dim=1).gather(1, targets[:, None]).squeeze(1)
    return (-(1 - log_p.exp()) ** gamma * log_p).mean()


def effective_number_weights(beta):
    counts = torch.tensor(COUNTS, dtype=torch.float64)
    raw = (1 - beta) / (1 - beta ** counts)
    return raw * len(COUNTS) / raw.sum()


# name -> the documented default loss, in float64 (spec methods.md section 4 and the papers)
DEFAULTS = {
    "ce": lambda z, y: ce(z, y),
    "label_smoothing": lambda z, y: (0.9 * F.nll_loss(F.log_softmax(z, 1), y) - 0.1 * F.log_softmax(z, 1).mean(1).mean()),
    "focal": lambda z, y: focal(z, y, 2.0),  # Lin et al.: gamma = 2
    "la": lambda z, y: ce(z + log_prior(), y),  # Menon et al.: tau = 1
    "logit_adjusted": lambda z, y: ce(z + log_prior(), y),
    "bs": lambda z, y: ce(z + log_prior(), y),  # Balanced Softmax = LA with tau 1 in training
    "focal_la": lambda z, y: focal(z + log_prior(), y, 2.0),
    "cb_ce": lambda z, y: (effective_number_weights(0.9999)[y] * F.cross_entropy(z, y, reduction="none")).mean(),
}


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_default_options_are_the_documented_ones(name, batch):
    logits, targets = batch
    loss = build_loss(name, COUNTS)
    expected = DEFAULTS[name](logits, targets)
    assert loss(logits.float(), targets).item() == pytest.approx(expected.item(), rel=1e-5)


def test_effective_number_weights_accept_beta_zero_as_uniform():
    weights = class_weights(COUNTS, "effective_number", beta=0.0)
    assert torch.allclose(weights, torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(class_weights(COUNTS, "effective_number", beta=0.99), effective_number_weights(0.99))
    with pytest.raises(ValueError, match="beta"):
        class_weights(COUNTS, "effective_number", beta=1.0)


def test_logit_adjustment_refuses_logits_without_a_class_axis():
    from longtail.losses import post_hoc_adjust

    with pytest.raises(ValueError, match="classes"):
        post_hoc_adjust(torch.tensor(1.0), COUNTS, 1.0)
    adjusted = post_hoc_adjust(torch.zeros(2, 4), COUNTS, 0.5)
    torch.testing.assert_close(adjusted, (-0.5 * log_prior()).float().expand(2, 4))
    assert math.isclose(float(adjusted[0, 0] - adjusted[0, 3]), -0.5 * float(log_prior()[0] - log_prior()[3]),
                        rel_tol=1e-6)


@pytest.mark.parametrize("max_margin", [0.0, -0.5])
def test_ldam_margins_need_a_positive_maximum(max_margin):
    from longtail.losses.ldam import ldam_margins

    with pytest.raises(ValueError, match="max_margin must be positive"):
        ldam_margins(COUNTS, max_margin)
    margins = ldam_margins(COUNTS, 0.5)  # m_j = C / N_j ** 0.25, largest (rarest class) = 0.5
    expected = torch.tensor(COUNTS, dtype=torch.float64) ** -0.25
    torch.testing.assert_close(margins, 0.5 * expected / expected.max())


@pytest.mark.parametrize("switch_epoch, warns", [(3, True), (0, False)])
def test_drw_warns_only_when_a_switch_can_be_missed(batch, switch_epoch, warns):
    """Never given an epoch, DRW cannot switch: its first forward warns, unless the weights are on
    from epoch 0 anyway (switch_epoch=0)."""
    import warnings

    logits, targets = batch
    loss = build_loss("ce_drw", COUNTS, switch_epoch=switch_epoch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss(logits.float(), targets)
    assert bool(caught) == warns, [str(w.message) for w in caught]
