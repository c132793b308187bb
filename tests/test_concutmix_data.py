"""ConCutMix's pair sampler and mixer (spec concutmix.md sections 2, 3.1, 3.4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from longtail.data.sampling.pair_sampler import PairSampler
from longtail.data.transforms.concutmix import ConCutMix, rectified_targets

LABELS = torch.tensor([0] * 40 + [1] * 12 + [2] * 5 + [3] * 2 + [4] * 1)


def test_pair_sampler_background_instance_uniform_foreground_exactly_balanced():
    sampler = PairSampler(LABELS, seed=3)
    sampler.set_epoch(2)
    pairs = sampler.rank_indices()
    assert sorted(pairs[0].tolist()) == list(range(len(LABELS)))  # every image once
    counts = torch.bincount(LABELS[pairs[1]], minlength=5)
    assert int(counts.max() - counts.min()) <= 1 and int(counts.sum()) == len(LABELS)
    assert torch.equal(pairs, PairSampler(LABELS, seed=3).rank_indices(epoch=2))   # (seed, epoch) only
    assert not torch.equal(pairs, sampler.rank_indices(epoch=3))
    assert not torch.equal(pairs[0], pairs[1])


def test_pair_sampler_shares_are_disjoint_and_complete_across_ranks():
    single = PairSampler(LABELS, seed=1).rank_indices(epoch=4)
    shares = [PairSampler(LABELS, num_replicas=3, rank=r, seed=1).rank_indices(epoch=4) for r in range(3)]
    merged = torch.stack(shares, dim=2).reshape(2, -1)[:, : single.shape[1]]  # strided shares interleave back
    assert torch.equal(merged, single)
    assert len({len(s[0]) for s in shares}) == 1


def reference_rectified(g, c, area, y_a, y_b, lam, counts, topk, omega):
    """Spec section 3.4 in numpy, sample by sample."""
    out = []
    for b in range(g.shape[0]):
        s = np.array([1.0 / np.linalg.norm(g[b] - c[k]) for k in range(c.shape[0])])
        order = np.argsort(-s)[:topk]
        s_hat = np.zeros_like(s)
        s_hat[order] = s[order]
        s_hat /= s_hat.sum()
        rho = np.log(lam * counts[y_a[b]] + (1 - lam) * counts[y_b[b]]) / np.log(counts).sum()
        out.append(omega * rho * s_hat + (1 - omega * rho) * area[b])
    return np.stack(out)


@pytest.mark.parametrize("topk, omega", [(3, 20 / 255), (30, 1.0), (1, 0.5)])
def test_rectified_label_matches_numpy(topk, omega):
    generator = torch.Generator().manual_seed(0)
    counts = np.array([500.0, 120.0, 40.0, 9.0, 3.0])
    g, c = torch.randn(6, 4, generator=generator), torch.randn(5, 4, generator=generator)
    y_a, y_b, lam = torch.tensor([0, 1, 2, 3, 4, 0]), torch.tensor([4, 4, 0, 1, 2, 0]), 0.37
    area = lam * torch.nn.functional.one_hot(y_a, 5) + (1 - lam) * torch.nn.functional.one_hot(y_b, 5)
    got = rectified_targets(g.requires_grad_(), c, area.float(), y_a, y_b, lam, counts, topk, omega)
    expected = reference_rectified(g.detach().double().numpy(), c.double().numpy(), area.double().numpy(),
                                   y_a.numpy(), y_b.numpy(), lam, counts, topk, omega)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert not got.requires_grad
    np.testing.assert_allclose(got.sum(1).numpy(), 1.0, rtol=1e-6)


def test_mixer_probability_exact_area_label_and_reproducibility():
    mixer = ConCutMix([10, 5, 3], probability=0.5, topk=2, omega_s=0.1, rectify_from_epoch=1)
    decisions = [mixer.mixes(7, 0, b) for b in range(400)]
    assert 150 < sum(decisions) < 250
    batch_index = decisions.index(True)
    background = torch.zeros(4, 3, 8, 8)
    foreground = torch.ones(4, 3, 8, 8)
    labels_a, labels_b = torch.tensor([0, 0, 1, 2]), torch.tensor([1, 2, 2, 0])
    out = mixer.mix(background, labels_a, foreground, labels_b, 7, 0, batch_index)
    assert out.mixed
    kept = 1.0 - out.images[0, 0].mean().item()  # pasted pixels are ones
    assert out.lam == pytest.approx(kept)
    expected = out.lam * torch.nn.functional.one_hot(labels_a, 3) + (1 - out.lam) * torch.nn.functional.one_hot(out.labels_b, 3)
    torch.testing.assert_close(out.area_targets, expected.float())
    assert sorted(out.labels_b.tolist()) == sorted(labels_b.tolist())  # a permutation of the foregrounds
    again = mixer.mix(background, labels_a, foreground, labels_b, 7, 0, batch_index)
    assert torch.equal(again.images, out.images) and again.lam == out.lam
    # label by epoch: area up to rectify_from_epoch, rectified after; unmixed batches one-hot
    g, c = torch.randn(4, 2), torch.randn(3, 2)
    assert torch.equal(mixer.targets(out, 1, g, c), out.area_targets)
    assert not torch.equal(mixer.targets(out, 2, g, c), out.area_targets)
    unmixed = mixer.mix(background, labels_a, None, None, 7, 0, decisions.index(False))
    assert not unmixed.mixed and torch.equal(mixer.targets(unmixed, 5, g, c),
                                             torch.nn.functional.one_hot(labels_a, 3).float())


def test_batched_autoaugment_applies_torchvisions_ops_per_image_plan():
    from torchvision.transforms import v2

    from longtail.data.transforms.views import batched_autoaugment

    images = torch.randint(0, 256, (40, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out, plan = batched_autoaugment(images, torch.Generator().manual_seed(1))
    reference = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)
    for i in range(len(images)):
        expected = images[i:i + 1]
        for transform_id, magnitude in plan[i]:
            expected = reference._apply_image_or_video_transform(expected, transform_id, magnitude,
                                                                 interpolation=reference.interpolation,
                                                                 fill=reference._fill)
        assert torch.equal(out[i:i + 1], expected), (i, plan[i])
    assert len({tuple(p) for p in plan}) > 10  # images draw different sub-policies / ops
    again, _ = batched_autoaugment(images, torch.Generator().manual_seed(1))
    assert torch.equal(again, out)


def test_batch_views_are_seeded_per_call_and_random_per_sample():
    from longtail.data.transforms.views import BatchViews

    views = BatchViews("cifar", [0.5] * 3, [0.25] * 3)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    same = images[:1].expand(16, -1, -1, -1).contiguous()
    for make in (views.classification, views.contrastive):
        assert torch.equal(make(images, 5), make(images, 5))
        assert not torch.equal(make(images, 5), make(images, 6))
        out = make(same, 5)  # one image 16 times: per-sample parameters give different views
        assert len({out[i].sum().item() for i in range(16)}) > 8


def test_batched_hue_rotation_matches_torchvision_per_image():
    """adjust_hue_batched (the fast hue step of the contrastive views' ColorJitter) against
    torchvision's per-image adjust_hue, including grey pixels and ties between channels."""
    from torchvision.transforms.v2 import functional as TF

    from longtail.data.transforms.views import adjust_hue_batched

    generator = torch.Generator().manual_seed(3)
    images = torch.rand(12, 3, 16, 16, generator=generator)
    images[0, :, :4] = 0.5  # grey
    images[1, 1] = images[1, 0]  # red == green everywhere
    images[2] = (images[2] * 4).round() / 4  # many exact ties
    shift = torch.rand(12, generator=generator) - 0.5  # turns in [-0.5, 0.5)
    got = adjust_hue_batched(images, shift)
    expected = torch.stack([TF.adjust_hue(images[i], shift[i].item()) for i in range(12)])
    torch.testing.assert_close(got, expected, atol=2e-6, rtol=0)


@pytest.mark.parametrize("channels", [3, 1])
def test_batched_colour_jitter_matches_torchvision_per_image(channels):
    """color_jitter_batched (the views' ColorJitter) against torchvision's per-image adjust_brightness /
    contrast / saturation / hue with the same factors, in several step orders."""
    from torchvision.transforms.v2 import functional as TF

    from longtail.data.transforms.views import color_jitter_batched

    generator = torch.Generator().manual_seed(4)
    images = torch.rand(8, channels, 12, 12, generator=generator)
    brightness, contrast, saturation = (torch.rand(3, 8, generator=generator) * 0.8 + 0.6).unbind(0)
    hue = torch.rand(8, generator=generator) * 0.2 - 0.1
    steps = {0: lambda x, i: TF.adjust_brightness(x, brightness[i].item()),
             1: lambda x, i: TF.adjust_contrast(x, contrast[i].item()),
             2: lambda x, i: TF.adjust_saturation(x, saturation[i].item()),
             3: lambda x, i: TF.adjust_hue(x, hue[i].item()) if channels == 3 else x}
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]):
        got = color_jitter_batched(images, brightness, contrast, saturation, hue, order)
        for i in range(8):
            expected = images[i]
            for step in order:
                expected = steps[step](expected, i)
            torch.testing.assert_close(got[i], expected, atol=3e-6, rtol=0)


def test_random_colour_jitter_draws_per_sample_and_skips_with_probability():
    from longtail.data.transforms.views import _RandomColorJitter

    images = torch.rand(400, 3, 4, 4, generator=torch.Generator().manual_seed(8))
    torch.manual_seed(0)
    out = _RandomColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8)(images)
    unchanged = (out == images).flatten(1).all(1).float().mean().item()
    assert 0.13 < unchanged < 0.27  # about 1 - p of the samples untouched
    ratios = (out.mean(dim=(1, 2, 3)) / images.mean(dim=(1, 2, 3)))
    assert len({round(r, 4) for r in ratios.tolist()}) > 250  # factors differ per sample


@pytest.mark.parametrize("size", [(32, 32), (28, 20), (5, 9)])
def test_batched_gaussian_blur_matches_a_reflect_padded_convolution(size):
    """gaussian_blur_batched against numpy: reflect padding (np.pad) and a 13-tap Gaussian per sample,
    and against kornia's gaussian_blur2d where kornia accepts the size."""
    from kornia.filters import gaussian_blur2d

    from longtail.data.transforms.views import gaussian_blur_batched

    generator = torch.Generator().manual_seed(5)
    images = torch.rand(4, 3, *size, generator=generator, dtype=torch.float64)
    sigma = torch.rand(4, generator=generator, dtype=torch.float64) * 1.9 + 0.1
    got = gaussian_blur_batched(images, sigma)
    taps = np.arange(-6, 7)
    for i in range(4):
        kernel = np.exp(-taps ** 2 / (2 * sigma[i].item() ** 2))
        kernel /= kernel.sum()
        padded = np.pad(images[i].numpy(), ((0, 0), (6, 6), (6, 6)), mode="reflect")
        rows = sum(kernel[t] * padded[:, t:t + size[0], :] for t in range(13))
        expected = sum(kernel[t] * rows[:, :, t:t + size[1]] for t in range(13))
        np.testing.assert_allclose(got[i].numpy(), expected, atol=1e-12)
        if min(size) > 6:
            kornia = gaussian_blur2d(images[i:i + 1], (13, 13), torch.stack([sigma[i], sigma[i]])[None])
            torch.testing.assert_close(got[i:i + 1], kornia, atol=1e-12, rtol=0)
