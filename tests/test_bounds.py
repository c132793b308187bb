"""Bound utilities of CAR (methods.md section 2: class weights, hard / margin confusion, the bound)."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix

from longtail.regularizers.bounds import (
    class_weights,
    hard_confusion,
    margin_confusion,
    per_class_error,
    weighted_spectral_norm,
)


def cifar100_lt_counts(imbalance_factor=100):
    return [int(500 * imbalance_factor ** (-i / 99)) for i in range(100)]


def test_class_weights_formulas():
    counts = [100, 10, 1]
    total = sum(counts)
    raw = np.array([(n / total + 0.2) ** -0.5 for n in counts])
    np.testing.assert_allclose(class_weights(counts).numpy(), raw / raw.mean(), rtol=1e-12)
    raw = np.array([(n + 10.0) ** -0.5 for n in counts])
    np.testing.assert_allclose(class_weights(counts, "count").numpy(), raw / raw.mean(), rtol=1e-12)
    raw = np.array([(n + 3.0) ** -0.5 for n in counts])
    np.testing.assert_allclose(class_weights(counts, "count", l0=3.0).numpy(), raw / raw.mean(), rtol=1e-12)
    assert torch.equal(class_weights(counts, "none"), torch.ones(3, dtype=torch.float64))


def test_class_weights_floor():
    # One enormous class next to many tiny ones: its normalised weight falls below the floor.
    counts = [1] * 10 + [10 ** 12]
    weights = class_weights(counts, "count", l0=0.0)
    assert weights.min().item() == pytest.approx(1e-3)


def test_frequency_weights_are_nearly_flat_count_weights_are_not():
    """The docs' warning, measured on CIFAR-100-LT IF=100 (500 ... 5 images per class)."""
    counts = cifar100_lt_counts()
    frequency = class_weights(counts, "frequency")
    count = class_weights(counts, "count")
    assert 1.05 < (frequency.max() / frequency.min()).item() < 1.15
    # sqrt((500 + 10) / (5 + 10)) = 5.83 here; 9.1 on CIFAR-10-LT IF=100: the spec's "6-9x".
    assert (count.max() / count.min()).item() == pytest.approx(math.sqrt(510 / 15), rel=1e-9)
    # Tail classes get the larger weight in both.
    assert frequency[-1] > frequency[0] and count[-1] > count[0]


def test_class_weights_reject_bad_input():
    with pytest.raises(ValueError, match="positive"):
        class_weights([3, 0, 2])
    with pytest.raises(ValueError, match="unknown weighting"):
        class_weights([3, 1], "inverse")


def test_hard_confusion_orientation_and_normalisation():
    # Three class-0 samples: two predicted 1, one correct. One class-2 sample predicted 0.
    counts = confusion_matrix([0, 0, 0, 2], [1, 1, 0, 0], labels=[0, 1, 2])  # [true, pred]
    hard = hard_confusion(counts)
    expected = np.zeros((3, 3))
    expected[1, 0] = 2 / 3  # predicted 1, true 0
    expected[0, 2] = 1.0  # predicted 0, true 2
    np.testing.assert_allclose(hard.numpy(), expected)
    np.testing.assert_allclose(per_class_error(hard).numpy(), [2 / 3, 0.0, 1.0])


def reference_margin_confusion(logits, labels, gamma):
    num_classes = logits.shape[1]
    counts = np.zeros((num_classes, num_classes))
    for z, j in zip(logits, labels):
        competitors = [k for k in range(num_classes) if k != j]
        strongest = max(competitors, key=lambda k: (z[k], -k))  # ties: lowest index, like argmax
        if z[j] <= z[strongest] + gamma:
            counts[strongest, j] += 1
    per_class = np.bincount(labels, minlength=num_classes)
    return counts / np.maximum(per_class, 1)[None, :]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("gamma", [0.0, 0.3, 2.0])
def test_margin_confusion_and_the_bound(seed, gamma):
    generator = np.random.default_rng(seed)
    num_classes = int(generator.integers(2, 12))
    samples = int(generator.integers(5, 60))
    # Rounded logits create exact ties, the case where argmax conventions matter.
    logits = np.round(generator.normal(size=(samples, num_classes)) * 2) / 2
    labels = generator.integers(0, num_classes, size=samples)
    margin = margin_confusion(torch.tensor(logits), torch.tensor(labels), gamma).numpy()
    np.testing.assert_allclose(margin, reference_margin_confusion(logits, labels, gamma), atol=1e-12)

    predictions = logits.argmax(axis=1)
    hard = hard_confusion(confusion_matrix(labels, predictions, labels=range(num_classes))).numpy()
    assert (hard <= margin + 1e-12).all(), "H <= C^gamma entrywise"

    counts = generator.integers(1, 1000, size=num_classes)
    for weighting in ("frequency", "count", "none"):
        lam = class_weights(counts, weighting).numpy()
        errors = hard.sum(axis=0)
        left = (lam * errors).max()
        right = math.sqrt(num_classes) * np.linalg.norm(margin * lam[None, :], ord=2)
        assert left <= right + 1e-12, "max_j lambda_j e_j <= sqrt(K) ||C^gamma Lambda||_2"
        assert weighted_spectral_norm(margin, lam) == pytest.approx(
            np.linalg.svd(margin * lam[None, :], compute_uv=False)[0], rel=1e-12
        )


def test_margin_confusion_rejects_soft_targets_and_negative_gamma():
    logits = torch.randn(4, 3)
    with pytest.raises(ValueError, match="class-index"):
        margin_confusion(logits, torch.full((4, 3), 1 / 3))
    with pytest.raises(ValueError, match="gamma"):
        margin_confusion(logits, torch.tensor([0, 1, 2, 0]), -0.1)


def test_weighted_spectral_norm_weights_scale_columns():
    matrix = np.array([[0.0, 1.0], [0.0, 0.0]])  # a single entry in column 1
    assert weighted_spectral_norm(matrix, [1.0, 5.0]) == pytest.approx(5.0)
    assert weighted_spectral_norm(matrix, [5.0, 1.0]) == pytest.approx(1.0)
    assert weighted_spectral_norm(matrix) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one entry per column"):
        weighted_spectral_norm(matrix, [1.0])
