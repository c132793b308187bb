"""BalSCL (spec concutmix.md section 3.5) against a float64 loop written from the spec's formula."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from longtail.losses import BalancedContrastiveLoss


def reference_loss(features, labels, prototypes, temperature):
    """Spec section 3.5, anchor by anchor and key by key (float64, plain Python loops)."""
    batch, views, _ = features.shape
    keys, key_labels = [], []
    for v in range(views):
        for b in range(batch):
            keys.append(features[b, v])
            key_labels.append(int(labels[b]))
    num_anchors = len(keys)
    for k in range(prototypes.shape[0]):
        keys.append(prototypes[k])
        key_labels.append(k)
    n = {}
    for y in key_labels:
        n[y] = n.get(y, 0) + 1
    total = 0.0
    for a in range(num_anchors):
        y_a = key_labels[a]
        s = [torch.dot(keys[a], keys[q]) / temperature for q in range(len(keys))]
        denominator = sum(torch.exp(s[q]) / (n[key_labels[q]] - (1 if key_labels[q] == y_a else 0))
                          for q in range(len(keys)) if q != a)
        positives = [q for q in range(len(keys)) if q != a and key_labels[q] == y_a]
        total = total - sum(s[q] - torch.log(denominator) for q in positives) / len(positives)
    return total / num_anchors


def random_inputs(labels, num_classes, dim=5, views=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    raw = torch.randn(len(labels), views, dim, generator=generator, dtype=torch.float64)
    raw_prototypes = torch.randn(num_classes, dim, generator=generator, dtype=torch.float64)
    return raw, raw_prototypes, torch.tensor(labels)


@pytest.mark.parametrize("labels, num_classes", [
    ([0, 1, 1, 2, 0, 1], 3),     # every class present, class 2 with a single view pair
    ([0, 0, 3, 3, 3], 5),        # classes 1, 2 and 4 absent (prototypes only)
    ([2], 4),                    # one sample
])
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_value_and_gradient_match_the_spec_formula(labels, num_classes, temperature):
    raw, raw_prototypes, labels = random_inputs(labels, num_classes)
    raw_ref, raw_prototypes_ref = raw.clone().requires_grad_(), raw_prototypes.clone().requires_grad_()
    expected = reference_loss(F.normalize(raw_ref, dim=-1), labels, F.normalize(raw_prototypes_ref, dim=-1), temperature)
    expected.backward()

    raw_32 = raw.float().requires_grad_()
    prototypes_32 = raw_prototypes.float().requires_grad_()
    loss = BalancedContrastiveLoss(num_classes, temperature)(F.normalize(raw_32, dim=-1), labels,
                                                             F.normalize(prototypes_32, dim=-1))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    loss.backward()
    torch.testing.assert_close(raw_32.grad.double(), raw_ref.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(prototypes_32.grad.double(), raw_prototypes_ref.grad, rtol=1e-4, atol=1e-6)


def test_three_views_and_large_similarities_are_stable():
    raw, raw_prototypes, labels = random_inputs([0, 1, 1, 0], 2, views=3, seed=3)
    features, prototypes = F.normalize(raw, dim=-1), F.normalize(raw_prototypes, dim=-1)
    expected = reference_loss(features, labels, prototypes, 0.5)
    loss = BalancedContrastiveLoss(2, 0.5)(features.float(), labels, prototypes.float())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # T = 0.01: exp(100) overflows float32 in a naive implementation.
    assert math.isfinite(BalancedContrastiveLoss(2, 0.01)(features.float(), labels, prototypes.float()).item())


def test_bad_shapes_are_refused():
    loss = BalancedContrastiveLoss(3)
    with pytest.raises(ValueError, match="prototypes"):
        loss(torch.zeros(2, 2, 4), torch.tensor([0, 1]), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="labels"):
        loss(torch.zeros(2, 2, 4), torch.tensor([0, 3]), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="B, V, D"):
        loss(torch.zeros(2, 4), torch.tensor([0, 1]), torch.zeros(3, 4))


@pytest.mark.parametrize("temperature", [0.1, 0.07])
def test_float64_inputs_give_a_float64_loss_equal_to_the_float64_reference(temperature):
    """The library's convention (as CCAR and CAR): float64 in, float64 out. A float32 computation
    would agree with the float64 reference only to ~1e-7, not 1e-12."""
    raw, raw_prototypes, labels = random_inputs([0, 1, 1, 2, 0, 1, 2, 2], 3, dim=7, seed=5)
    raw_ref, raw_prototypes_ref = raw.clone().requires_grad_(), raw_prototypes.clone().requires_grad_()
    expected = reference_loss(F.normalize(raw_ref, dim=-1), labels, F.normalize(raw_prototypes_ref, dim=-1), temperature)
    expected.backward()
    raw_64, prototypes_64 = raw.clone().requires_grad_(), raw_prototypes.clone().requires_grad_()
    loss = BalancedContrastiveLoss(3, temperature)(F.normalize(raw_64, dim=-1), labels, F.normalize(prototypes_64, dim=-1))
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    loss.backward()
    assert raw_64.grad.dtype == torch.float64
    torch.testing.assert_close(raw_64.grad, raw_ref.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(prototypes_64.grad, raw_prototypes_ref.grad, rtol=1e-10, atol=1e-12)


def test_half_precision_inputs_are_scored_in_float32():
    raw, raw_prototypes, labels = random_inputs([0, 1, 1, 0], 2, seed=2)
    features, prototypes = F.normalize(raw, dim=-1), F.normalize(raw_prototypes, dim=-1)
    loss = BalancedContrastiveLoss(2)(features.bfloat16(), labels, prototypes.bfloat16())
    assert loss.dtype == torch.float32
