"""InMemoryLoader: exact augmentation, sampler order, determinism and resumption."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from longtail.data.datasets.images import InMemoryImages
from longtail.data.loading.loader import InMemoryLoader
from longtail.data.sampling.samplers import build_sampler
from longtail.data.transforms.augment import BatchAugment

MEAN = (0.5, 0.4, 0.3)
STD = (0.25, 0.2, 0.3)


def make_data(count=70, channels=3, size=8, num_classes=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, channels, size, size), generator=generator, dtype=torch.uint8)
    labels = torch.randint(0, num_classes, (count,), generator=generator)
    labels[:num_classes] = torch.arange(num_classes)  # every class present
    return images, labels


def reference_normalize(images, mean=MEAN, std=STD):
    channels = images.shape[1]
    return (images.float() / 255 - torch.tensor(mean[:channels]).view(1, -1, 1, 1)) / torch.tensor(std[:channels]).view(1, -1, 1, 1)


def test_eval_mode_is_sequential_unaugmented_and_keeps_the_last_batch():
    images, labels = make_data()
    loader = InMemoryLoader(images, batch_size=16, labels=labels, mean=MEAN, std=STD)
    assert len(loader) == 5
    batches = list(loader)
    assert [len(y) for _, y in batches] == [16, 16, 16, 16, 6]
    all_images = torch.cat([x for x, _ in batches])
    assert torch.equal(torch.cat([y for _, y in batches]), labels)
    assert torch.allclose(all_images, reference_normalize(images), atol=1e-5)


def matching_crops(output_uint8, source, padding):
    """All (top, left, flipped) whose padded slice of ``source`` equals ``output`` (brute force)."""
    padded = F.pad(source, [padding] * 4)
    size = source.shape[-1]
    found = []
    for top in range(2 * padding + 1):
        for left in range(2 * padding + 1):
            window = padded[:, top : top + size, left : left + size]
            for flipped in (False, True):
                candidate = torch.flip(window, dims=[-1]) if flipped else window
                if torch.equal(candidate, output_uint8):
                    found.append((top, left, flipped))
    return found


def test_training_batches_are_padded_crops_and_flips_of_the_sampled_images():
    images, labels = make_data()
    sampler = build_sampler("class_balanced", labels, seed=1)
    loader = InMemoryLoader(images, 16, sampler, augment=True, labels=labels, mean=MEAN, std=STD, drop_last=True, seed=3)
    loader.set_epoch(2)
    sampler_order = list(sampler)
    offsets = []
    for batch_index, (batch, batch_labels) in enumerate(loader):
        positions = sampler_order[batch_index * 16 : (batch_index + 1) * 16]
        assert torch.equal(batch_labels, labels[positions])
        # Undo the normalisation exactly (values are k / 255 in float32) and find each crop by search.
        pixels = ((batch * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)) * 255).round().to(torch.uint8)
        for sample, position in enumerate(positions):
            found = matching_crops(pixels[sample], images[position], padding=4)
            assert len(found) == 1, (batch_index, sample, found)
            offsets.append(found[0])
    assert len(loader) == len(sampler) // 16
    # Per-sample randomness: many different offsets, both flip states.
    assert len({(t, l) for t, l, _ in offsets}) > 20
    assert {f for _, _, f in offsets} == {False, True}


def test_same_seed_and_epoch_give_identical_batches_and_resume_skips_exactly():
    images, labels = make_data()

    def fresh():
        sampler = build_sampler("sqrt", labels, seed=4)
        return InMemoryLoader(images, 16, sampler, augment=BatchAugment(cutout_size=4), labels=labels, mean=MEAN, std=STD, seed=9)

    full = fresh()
    full.set_epoch(3)
    reference = list(full)
    resumed = fresh()
    resumed.set_epoch(3, start_batch=2)
    assert len(resumed) == len(reference)  # the epoch length does not shrink on resume
    tail = list(resumed)
    assert len(tail) == len(reference) - 2
    for (x, y), (x_ref, y_ref) in zip(tail, reference[2:]):
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    other_epoch = fresh()
    other_epoch.set_epoch(4)
    assert not torch.equal(next(iter(other_epoch))[0], reference[0][0])
    other_seed = InMemoryLoader(images, 16, build_sampler("sqrt", labels, seed=4), augment=True, labels=labels, mean=MEAN, std=STD, seed=10)
    other_seed.set_epoch(3)
    assert not torch.equal(next(iter(other_seed))[0], reference[0][0])


def test_ddp_ranks_get_their_sampler_share():
    images, labels = make_data()
    seen = []
    for rank in range(2):
        sampler = build_sampler("instance", labels, num_replicas=2, rank=rank, seed=0)
        loader = InMemoryLoader(images, 8, sampler, labels=labels, mean=MEAN, std=STD)
        loader.set_epoch(1)
        assert len(loader) == 5  # 35 samples per rank, last batch kept
        x = torch.cat([x for x, _ in loader])
        # Unaugmented: each row is one image; recover which by exact match.
        pixels = reference_normalize(images)
        seen += [int((pixels - row).abs().flatten(1).amax(1).argmin()) for row in x]
    assert sorted(seen) == list(range(len(labels)))


def test_cutout_zeroes_one_clipped_square_after_normalisation():
    images = torch.full((40, 3, 10, 10), 255, dtype=torch.uint8)  # 1.0 everywhere: holes are obvious
    labels = torch.zeros(40, dtype=torch.long)
    augment = BatchAugment(crop_padding=0, flip=False, cutout_size=6)
    loader = InMemoryLoader(images, 40, augment=augment, labels=labels, mean=(0.0,) * 3, std=(1.0,) * 3)
    batch, _ = next(iter(loader))
    for sample in batch:
        hole = (sample == 0).all(0)
        assert torch.equal(hole, (sample == 0).any(0))  # same hole in every channel
        rows, cols = hole.nonzero().unbind(1)
        assert 1 <= rows.unique().numel() <= 6 and 1 <= cols.unique().numel() <= 6
        assert hole.sum() == rows.unique().numel() * cols.unique().numel()  # a rectangle
        assert (sample[:, ~hole] == 1).all()


def test_resize_channel_repeat_channels_last_and_dtype():
    images, labels = make_data(count=10, channels=1, size=28)
    loader = InMemoryLoader(
        images, 4, augment=True, labels=labels, mean=(0.3,), std=(0.3,), resize_to=(32, 32),
        repeat_channels=3, channels_last=True, dtype=torch.bfloat16,
    )
    x, y = next(iter(loader))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.bfloat16
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    with pytest.raises(ValueError, match="single-channel"):
        InMemoryLoader(*make_data()[:1], labels=make_data()[1], mean=MEAN, std=STD, repeat_channels=1)


def test_accepts_in_memory_images_and_computes_missing_statistics():
    images, labels = make_data()
    dataset = InMemoryImages(images=images, labels=labels, classes=[str(i) for i in range(5)], mean=MEAN, std=STD)
    x, _ = next(iter(InMemoryLoader(dataset, 70)))
    assert torch.allclose(x, reference_normalize(images), atol=1e-5)
    x, _ = next(iter(InMemoryLoader(images, 70, labels=labels)))
    # With statistics computed from the data, every channel is standardised.
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)


def test_shuffle_without_sampler_and_warning_without_set_epoch():
    images, labels = make_data()
    loader = InMemoryLoader(images, 70, labels=labels, mean=MEAN, std=STD, shuffle=True, seed=2)
    loader.set_epoch(0)
    first = next(iter(loader))[1]
    assert not torch.equal(first, labels) and torch.equal(first.sort().values, labels.sort().values)
    with pytest.warns(UserWarning, match="set_epoch"):
        next(iter(loader))
    loader.set_epoch(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not torch.equal(next(iter(loader))[1], first)


def test_invalid_inputs():
    images, labels = make_data()
    with pytest.raises(ValueError, match="labels"):
        InMemoryLoader(images)
    with pytest.raises(ValueError, match="uint8"):
        InMemoryLoader(images.float(), labels=labels)
    with pytest.raises(ValueError, match="one value per channel"):
        InMemoryLoader(images, labels=labels, mean=(0.5,), std=(0.5,))
    loader = InMemoryLoader(images, 16, labels=labels, mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="start_batch"):
        loader.set_epoch(0, start_batch=6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_are_deterministic_and_on_device():
    images, labels = make_data()
    loaders = [
        InMemoryLoader(images, 16, build_sampler("sqrt", labels), augment=True, labels=labels, mean=MEAN, std=STD, device="cuda")
        for _ in range(2)
    ]
    outputs = []
    for loader in loaders:
        loader.set_epoch(1)
        outputs.append(list(loader))
    for (x, y), (x2, y2) in zip(*outputs):
        assert x.is_cuda and y.is_cuda
        assert torch.equal(x, x2) and torch.equal(y, y2)
