"""Batched augmentation ops against per-sample reference computations, and the file pipelines."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from longtail.data.transforms.preprocess import Preprocessing
from longtail.data.transforms.augment import (
    BatchAugment,
    apply_cutout,
    build_file_transforms,
    crop_flip,
    normalize,
    resize_images,
    sample_crop_flip,
    sample_cutout,
)


def random_batch(batch=16, channels=3, height=12, width=10, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, channels, height, width), generator=generator, dtype=torch.uint8)


@pytest.mark.parametrize("padding_mode, pad_mode", [("constant", "constant"), ("reflect", "reflect"), ("edge", "replicate")])
def test_crop_flip_equals_per_sample_padded_slice(padding_mode, pad_mode):
    images = random_batch()
    padding = 3
    top, left, flipped = sample_crop_flip(images.shape[0], padding, 0.5, torch.Generator().manual_seed(1))
    assert 0 < int(flipped.sum()) < images.shape[0]  # both branches exercised
    out = crop_flip(images, padding, top, left, flipped, padding_mode)

    padded = F.pad(images.float(), [padding] * 4, mode=pad_mode).to(torch.uint8)
    height, width = images.shape[-2:]
    for b in range(images.shape[0]):
        expected = padded[b, :, top[b] : top[b] + height, left[b] : left[b] + width]
        if flipped[b]:
            expected = torch.flip(expected, dims=[-1])
        assert torch.equal(out[b], expected), f"sample {b}"


def test_crop_offsets_cover_the_whole_range():
    top, left, flipped = sample_crop_flip(4000, 4, 0.5, torch.Generator().manual_seed(0))
    assert set(top.tolist()) == set(range(9)) and set(left.tolist()) == set(range(9))
    assert abs(flipped.float().mean().item() - 0.5) < 0.05


def test_zero_padding_without_flip_is_identity():
    images = random_batch()
    zeros = torch.zeros(images.shape[0], dtype=torch.long)
    assert torch.equal(crop_flip(images, 0, zeros, zeros, None), images)
    assert torch.equal(crop_flip(images, 0, zeros, zeros, torch.ones(images.shape[0], dtype=torch.bool)), images.flip(-1))


def test_cutout_zeroes_the_clipped_square_only():
    images = torch.ones(6, 2, 9, 9)
    center_y = torch.tensor([0, 4, 8, 2, 7, 4])
    center_x = torch.tensor([0, 4, 8, 6, 1, 0])
    out = apply_cutout(images, 4, center_y, center_x)
    for b in range(6):
        expected = torch.ones(2, 9, 9)
        y0, y1 = max(int(center_y[b]) - 2, 0), min(int(center_y[b]) + 2, 9)
        x0, x1 = max(int(center_x[b]) - 2, 0), min(int(center_x[b]) + 2, 9)
        expected[:, y0:y1, x0:x1] = 0
        assert torch.equal(out[b], expected)
    cy, cx = sample_cutout(1000, 9, 7, torch.Generator().manual_seed(0))
    assert set(cy.tolist()) == set(range(9)) and set(cx.tolist()) == set(range(7))


def test_normalize_matches_the_torchvision_definition():
    images = random_batch(channels=3)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    expected = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    out = normalize(images, mean, std)
    assert out.dtype == torch.float32
    assert torch.allclose(out, expected, atol=1e-5)
    assert normalize(images, mean, std, dtype=torch.bfloat16).dtype == torch.bfloat16


def test_resize_images_to_network_size():
    images = random_batch(batch=5, channels=1, height=28, width=28)
    out = resize_images(images, (32, 32), chunk_size=2)
    assert out.shape == (5, 1, 32, 32) and out.dtype == torch.uint8
    reference = F.interpolate(images.float(), size=(32, 32), mode="bilinear", antialias=True).round().clamp(0, 255)
    assert torch.equal(out, reference.to(torch.uint8))
    assert resize_images(images, (28, 28)) is images


def test_batch_augment_validates_options():
    with pytest.raises(ValueError):
        BatchAugment(padding_mode="wrap")
    with pytest.raises(ValueError):
        BatchAugment(crop_padding=-1)


# -- file pipelines --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photo():
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (180, 240, 3), dtype=np.uint8))


IMAGENET = Preprocessing(size=(64, 64), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                         resize="resize_center_crop")


def test_file_eval_transform_is_the_preprocessing_and_train_crops_to_its_size(photo):
    assert build_file_transforms(IMAGENET, train=False) is IMAGENET
    train = build_file_transforms(IMAGENET, train=True)
    torch.manual_seed(0)
    out = train(photo)
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    # crop_padding=0 under the ImageNet policy: no random crop, i.e. the evaluation geometry (+ flip).
    still = build_file_transforms(IMAGENET, train=True, crop_padding=0, flip=False)
    assert torch.equal(still(photo), IMAGENET(photo))


def test_autoaugment_policy_and_randaugment_options(photo):
    from torchvision.transforms import v2

    assert build_file_transforms(IMAGENET, autoaugment=True).policy.policy == v2.AutoAugmentPolicy.IMAGENET
    small = Preprocessing(size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3, resize="resize")
    assert build_file_transforms(small, autoaugment=True).policy.policy == v2.AutoAugmentPolicy.CIFAR10
    rand = build_file_transforms(small, randaugment=True, randaugment_magnitude=14)
    assert isinstance(rand.policy, v2.RandAugment) and rand.policy.magnitude == 14
    assert rand(photo).shape == (3, 32, 32)
    with pytest.raises(ValueError, match="at most one"):
        build_file_transforms(small, randaugment=True, autoaugment=True)


def test_file_train_pipeline_padding_flip_cutout_and_channels():
    grey = Image.fromarray(np.full((32, 32), 200, dtype=np.uint8), mode="L")
    prep = Preprocessing(size=(32, 32), mean=(0.5,), std=(0.5,), color="L", channels=3)
    train = build_file_transforms(prep, train=True, crop_padding=4)
    torch.manual_seed(0)
    outs = torch.stack([train(grey) for _ in range(20)])
    assert outs.shape == (20, 3, 32, 32)
    assert torch.equal(outs[:, 0], outs[:, 2])  # the grey channel repeated for an RGB model
    # Pixels are either the image value or the zero padding (-1 after normalisation).
    values = set(torch.round(outs * 1000).unique().tolist())
    assert values <= {round((200 / 255 - 0.5) / 0.5 * 1000), -1000}
    assert -1000 in values
    # No crop, no flip, Cutout 8: exactly one 8x8 hole of zeros (the mean colour) per image, clipped at borders.
    ramp = Image.fromarray(np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1)), mode="L")
    cut = build_file_transforms(prep, train=True, crop_padding=0, flip=False, cutout=8)
    plain = prep(ramp)
    for _ in range(10):
        out = cut(ramp)
        changed = (out != plain)[0]
        assert 0 < int(changed.sum()) <= 64 and torch.all(out[:, changed] == 0)
    # Flip off: with no crop and no flip the training transform is the evaluation one.
    assert torch.equal(build_file_transforms(prep, train=True, crop_padding=0, flip=False)(ramp), plain)

def test_sample_uniforms_match_a_plain_python_lowbias32_and_are_uniform():
    from longtail.data.sampling.samplers import derive_seed
    from longtail.data.transforms.augment import AUGMENT_STREAM, sample_uniforms

    def mix(x):  # lowbias32 with Python's unbounded integers
        x ^= x >> 16
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x ^= x >> 15
        x = (x * 0x846CA68B) & 0xFFFFFFFF
        return x ^ (x >> 16)

    key = derive_seed(3, 7, AUGMENT_STREAM)
    positions = [0, 1, 2, 999, 2**33 + 5]
    got = sample_uniforms(3, 7, torch.tensor(positions), 4)
    for row, p in zip(got.tolist(), positions):
        base = mix(mix((p & 0xFFFFFFFF) ^ (key & 0xFFFFFFFF)) ^ (p >> 32) ^ (key >> 32))
        expected = [mix(base ^ (((j + 1) * 0x9E3779B9) & 0xFFFFFFFF)) / 2**32 for j in range(4)]
        assert row == expected
    many = sample_uniforms(0, 0, torch.arange(20000), 2)
    from scipy import stats

    assert stats.kstest(many[:, 0].numpy(), "uniform").pvalue > 1e-3
    assert abs(float(torch.corrcoef(many.T)[0, 1])) < 0.03
    assert not torch.equal(sample_uniforms(0, 1, torch.arange(10), 2), sample_uniforms(0, 0, torch.arange(10), 2))
