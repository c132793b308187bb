"""mixup and CutMix: soft targets, exact CutMix area, pixel content, determinism."""

import numpy as np
import pytest
import torch

from longtail.data.transforms.mixing import (
    Box,
    CutMix,
    Mixup,
    available_mixers,
    build_mixer,
    cutmix_box,
    mix_targets,
    one_hot_targets,
    paste_box,
)

NUM_CLASSES = 7


def batch(size=12, height=16, width=20):
    """Images whose every pixel identifies its sample (value = sample index + 1), so mixing is traceable."""
    images = torch.arange(1, size + 1, dtype=torch.float32).view(size, 1, 1, 1).expand(size, 3, height, width).clone()
    labels = torch.arange(size) % NUM_CLASSES
    return images, labels


def test_cutmix_targets_use_the_exact_kept_area_and_pixels_match_the_box():
    images, labels = batch()
    for seed in range(25):
        mixed, targets = CutMix(alpha=1.0)(images, labels, NUM_CLASSES, torch.Generator().manual_seed(seed))
        assert torch.allclose(targets.sum(1), torch.ones(len(labels)))
        for i in range(len(labels)):
            values = mixed[i].unique().tolist()
            own = float(i + 1)
            # The sample keeps its own pixels outside one rectangle filled by one partner.
            kept_fraction = (mixed[i] == own).float().mean().item()
            partner_values = [v for v in values if v != own]
            assert len(partner_values) <= 1
            expected = one_hot_targets(labels[i : i + 1], NUM_CLASSES)[0] * kept_fraction
            if partner_values:
                partner = int(partner_values[0]) - 1
                expected = expected + one_hot_targets(labels[partner : partner + 1], NUM_CLASSES)[0] * (1 - kept_fraction)
                pasted = (mixed[i, 0] != own).nonzero()
                top, left = pasted.min(0).values.tolist()
                bottom, right = (pasted.max(0).values + 1).tolist()
                # The pasted region is one full rectangle.
                assert (bottom - top) * (right - left) == pasted.shape[0]
            assert torch.allclose(targets[i], expected, atol=1e-6), (seed, i)


def test_cutmix_box_clips_and_returns_exact_lambda():
    rng = np.random.default_rng(0)
    for _ in range(200):
        height, width = rng.integers(4, 40, size=2).tolist()
        lam = float(rng.uniform())
        box, exact = cutmix_box(height, width, lam, rng=rng)
        assert 0 <= box.top <= box.bottom <= height and 0 <= box.left <= box.right <= width
        assert exact == pytest.approx(1 - box.area / (height * width))
        # Unclipped, the box has the CutMix cut size (int(H sqrt(1 - lam)), rounded down to even by //2 * 2).
        assert box.bottom - box.top <= 2 * (int(height * np.sqrt(1 - lam)) // 2)
    assert cutmix_box(10, 10, 1.0, rng=rng)[1] == 1.0
    with pytest.raises(ValueError):
        cutmix_box(10, 10, 1.5)


def test_paste_box_pixels_in_and_out():
    background = torch.zeros(2, 3, 8, 8)
    foreground = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    box = Box(top=1, left=2, bottom=5, right=7)
    mixed = paste_box(background, foreground, box)
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[1:5, 2:7] = True
    assert torch.equal(mixed[..., inside], foreground[..., inside])
    assert torch.equal(mixed[..., ~inside], background[..., ~inside])
    assert background.abs().sum() == 0  # the input is not modified
    assert box.area == 20


def identity_batch(size=8):
    """Image i is the basis vector e_i over channels, so a mixed image reads as its mixing weights."""
    return torch.eye(size).view(size, size, 1, 1).expand(size, size, 3, 3).clone()


def test_mixup_is_a_convex_combination_with_matching_targets():
    images = identity_batch()
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 0])
    for seed in range(10):
        mixed, targets = Mixup(alpha=0.4)(images, labels, NUM_CLASSES, torch.Generator().manual_seed(seed))
        weights = mixed[:, :, 0, 0]  # (B, B): how much of each sample went into each mixed image
        assert torch.allclose(mixed, weights[:, :, None, None].expand_as(mixed))
        assert torch.allclose(weights.sum(1), torch.ones(8))
        # One lambda per batch: every image keeps the same share of itself (unless paired with itself).
        own = weights.diagonal()
        paired = own < 1 - 1e-6
        if paired.any():
            assert torch.allclose(own[paired], own[paired][0].expand(int(paired.sum())))
            assert ((weights > 1e-6).sum(1) <= 2).all()
        expected = weights @ one_hot_targets(labels, NUM_CLASSES)
        assert torch.allclose(targets, expected, atol=1e-6)
        assert torch.allclose(targets.sum(1), torch.ones(8))


def test_mixers_are_deterministic_given_a_generator():
    images, labels = batch()
    for mixer in (Mixup(), CutMix()):
        first = mixer(images, labels, NUM_CLASSES, torch.Generator().manual_seed(9))
        second = mixer(images, labels, NUM_CLASSES, torch.Generator().manual_seed(9))
        third = mixer(images, labels, NUM_CLASSES, torch.Generator().manual_seed(10))
        assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
        assert not torch.equal(first[1], third[1])


def test_lambda_follows_beta_alpha_alpha():
    images = identity_batch()
    labels = torch.arange(8) % NUM_CLASSES
    generator = torch.Generator().manual_seed(0)
    mixer = Mixup(alpha=0.2)
    lams = []
    for _ in range(1500):
        mixed, _ = mixer(images, labels, NUM_CLASSES, generator)
        own = mixed[:, :, 0, 0].diagonal()
        paired = (own < 1 - 1e-6).nonzero()
        if len(paired):
            lams.append(own[paired[0, 0]].item())
    lams = np.asarray(lams)
    # Beta(0.2, 0.2) is U-shaped; compare the mean distance from 1/2 with a NumPy reference sample.
    reference = np.random.default_rng(1).beta(0.2, 0.2, 200000)
    assert abs(np.abs(lams - 0.5).mean() - np.abs(reference - 0.5).mean()) < 0.02
    assert abs(lams.mean() - 0.5) < 0.05


def test_probability_soft_inputs_and_registry():
    images, labels = batch()
    never = Mixup(probability=0.0)
    out, targets = never(images, labels, NUM_CLASSES, torch.Generator().manual_seed(0))
    assert out is images and torch.equal(targets, one_hot_targets(labels, NUM_CLASSES))
    soft = torch.full((len(labels), NUM_CLASSES), 1.0 / NUM_CLASSES)
    _, targets = CutMix()(images, soft, NUM_CLASSES, torch.Generator().manual_seed(0))
    assert torch.allclose(targets, soft)
    assert available_mixers() == ["cutmix", "mixup"]
    assert isinstance(build_mixer("cutmix", alpha=0.5), CutMix)
    with pytest.raises(ValueError, match="cutmix, mixup"):
        build_mixer("manifold")
    with pytest.raises(ValueError):
        Mixup(alpha=0)
    with pytest.raises(ValueError):
        one_hot_targets(torch.tensor([0, NUM_CLASSES]), NUM_CLASSES)


def test_uint8_images_give_float_targets():
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    mixed, targets = CutMix()(images, torch.tensor([0, 1, 2, 3]), 4, torch.Generator().manual_seed(0))
    assert mixed.dtype == torch.uint8 and targets.dtype == torch.float32


def test_mix_targets_with_a_scalar_or_per_sample_lambda():
    labels_a, labels_b = torch.tensor([0, 1, 2]), torch.tensor([1, 1, 0])
    scalar = mix_targets(labels_a, labels_b, 0.25, 3)
    assert torch.allclose(scalar, torch.tensor([[0.25, 0.75, 0.0], [0.0, 1.0, 0.0], [0.75, 0.0, 0.25]]))
    per_sample = mix_targets(labels_a, labels_b, torch.tensor([1.0, 0.5, 0.0]), 3)
    assert torch.allclose(per_sample, torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))
