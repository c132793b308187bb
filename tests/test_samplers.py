"""Class-aware samplers: exact quotas, DDP split, determinism (methods.md section 4)."""

from collections import Counter

import numpy as np
import pytest
import torch

from longtail.data.sampling.samplers import (
    ClassPowerSampler,
    ProgressiveSampler,
    available_samplers,
    build_sampler,
    class_quotas,
    derive_seed,
)

# A long-tailed label set: 6 classes with 300, 120, 45, 17, 6, 2 images, in shuffled order.
CLASS_SIZES = [300, 120, 45, 17, 6, 2]


@pytest.fixture(scope="module")
def labels():
    ordered = np.repeat(np.arange(len(CLASS_SIZES)), CLASS_SIZES)
    return torch.from_numpy(np.random.default_rng(0).permutation(ordered))


def draw(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(iter(sampler))


def largest_remainder(weights, total):
    """Independent Hamilton apportionment (plain Python / fractions-free floats)."""
    weights = np.asarray(weights, dtype=np.float64)
    ideal = weights / weights.sum() * total
    quotas = np.floor(ideal + 1e-9).astype(int)
    remainders = ideal - quotas
    for j in np.argsort(-remainders, kind="stable")[: total - quotas.sum()]:
        quotas[j] += 1
    return quotas


def test_registry_names_and_unknown_name(labels):
    assert available_samplers() == ["class_balanced", "instance", "power", "progressive", "sqrt"]
    with pytest.raises(ValueError, match="class_balanced, instance, power, progressive, sqrt"):
        build_sampler("balanced", labels)
    with pytest.raises(ValueError, match="total_epochs"):
        build_sampler("progressive", labels)
    with pytest.raises(ValueError, match="q="):
        build_sampler("power", labels)


@pytest.mark.parametrize("name, q", [("instance", 1.0), ("sqrt", 0.5), ("class_balanced", 0.0), ("power", 0.25)])
def test_exact_class_quotas_per_epoch(labels, name, q):
    options = {"q": q} if name == "power" else {}
    sampler = build_sampler(name, labels, seed=3, **options)
    assert len(sampler) == len(labels)  # epoch length defaults to the dataset size
    expected = largest_remainder(np.asarray(CLASS_SIZES, dtype=float) ** q, len(labels))
    for epoch in range(3):
        counts = np.bincount(labels[draw(sampler, epoch)].numpy(), minlength=len(CLASS_SIZES))
        # Equal to the apportionment up to how ties in the remainders were broken (at most 1 per class).
        assert counts.sum() == len(labels)
        assert np.abs(counts - expected).max() <= 1
        assert np.array_equal(counts, sampler.class_quotas(epoch).numpy())
        ideal = np.asarray(CLASS_SIZES, dtype=float) ** q / np.sum(np.asarray(CLASS_SIZES, dtype=float) ** q) * len(labels)
        assert np.all(np.abs(counts - ideal) < 1)


def test_instance_sampler_is_a_permutation(labels):
    sampler = build_sampler("instance", labels, seed=1)
    assert sorted(draw(sampler, 0)) == list(range(len(labels)))


def test_every_image_of_a_class_is_used_before_any_repeats(labels):
    sampler = build_sampler("class_balanced", labels, seed=5, num_samples=3000)
    indices = np.asarray(draw(sampler, 2))
    for cls, size in enumerate(CLASS_SIZES):
        uses = Counter(indices[labels.numpy()[indices] == cls].tolist())
        quota = sum(uses.values())
        if quota >= size:  # every image used, and usage differs by at most one between images
            assert len(uses) == size
            assert max(uses.values()) - min(uses.values()) <= 1
        else:
            assert max(uses.values()) == 1


def test_quota_ties_are_broken_randomly_across_epochs():
    # 3 classes x 10 images, 31 samples: one class gets 11. Which one must vary with the epoch.
    labels = torch.arange(3).repeat_interleave(10)
    sampler = build_sampler("class_balanced", labels, num_samples=31)
    winners = {int(sampler.class_quotas(epoch).argmax()) for epoch in range(20)}
    assert winners == {0, 1, 2}
    assert class_quotas(torch.tensor([1.0, 1.0, 1.0]), 31).tolist() == [11, 10, 10]


@pytest.mark.parametrize("world_size", [2, 3, 4])
@pytest.mark.parametrize("name", ["instance", "sqrt", "class_balanced"])
def test_ranks_take_disjoint_strided_shares_of_one_global_draw(labels, world_size, name):
    single = build_sampler(name, labels, seed=7)
    global_draw = draw(single, 4)
    shares = [draw(build_sampler(name, labels, num_replicas=world_size, rank=r, seed=7), 4) for r in range(world_size)]

    # Same global draw whatever the world size: only the split differs.
    padded_length = world_size * len(shares[0])
    padded = (global_draw * 2)[:padded_length]
    for rank, share in enumerate(shares):
        assert len(share) == -(-len(labels) // world_size)
        assert share == padded[rank::world_size]
    # Disjoint positions: interleaving the shares back gives the padded draw exactly.
    interleaved = [shares[position % world_size][position // world_size] for position in range(padded_length)]
    assert interleaved == padded
    # Disjoint as images too, for the instance sampler (every image once; only padding repeats).
    if name == "instance":
        flat = [index for share in shares for index in share]
        padding = padded_length - len(labels)
        assert len(set(flat)) == len(labels) and len(flat) == len(labels) + padding


def test_drop_last_truncates_instead_of_padding(labels):
    shares = [draw(build_sampler("sqrt", labels, num_replicas=4, rank=r, drop_last=True, seed=2), 0) for r in range(4)]
    flat = [i for share in shares for i in share]
    assert all(len(share) == len(labels) // 4 for share in shares)
    assert len(flat) == 4 * (len(labels) // 4)
    global_draw = draw(build_sampler("sqrt", labels, seed=2), 0)
    assert sorted(flat) == sorted(global_draw[: len(flat)])


def test_determined_by_seed_and_epoch(labels):
    first = build_sampler("sqrt", labels, seed=11)
    second = build_sampler("sqrt", labels, seed=11)
    assert draw(first, 3) == draw(second, 3)
    assert draw(first, 3) != draw(first, 4)
    assert draw(first, 3) != draw(build_sampler("sqrt", labels, seed=12), 3)
    # Hashing the seed parts avoids the seed + epoch collision of DistributedSampler.
    assert derive_seed(0, 1) != derive_seed(1, 0)
    assert draw(build_sampler("sqrt", labels, seed=0), 1) != draw(build_sampler("sqrt", labels, seed=1), 0)


def test_progressive_endpoints_and_midpoint(labels):
    epochs = 5
    sampler = build_sampler("progressive", labels, total_epochs=epochs)
    instance = build_sampler("instance", labels)
    balanced = build_sampler("class_balanced", labels)
    sizes = torch.tensor(CLASS_SIZES, dtype=torch.float64)
    assert torch.allclose(sampler.class_probabilities(0), instance.class_probabilities(0))
    assert torch.allclose(sampler.class_probabilities(epochs - 1), balanced.class_probabilities(0))
    assert torch.allclose(sampler.class_probabilities(epochs + 3), balanced.class_probabilities(0))
    assert sampler.q_at(2) == pytest.approx(0.5)
    assert torch.allclose(sampler.class_probabilities(2), sizes.sqrt() / sizes.sqrt().sum())
    assert sorted(draw(sampler, 0)) == list(range(len(labels)))  # epoch 0: a plain permutation
    last = np.bincount(labels[draw(sampler, epochs - 1)].numpy())
    assert last.max() - last.min() <= 1


def test_progressive_probability_interpolation_option(labels):
    # Kang et al. eq. 2: a linear mix of the instance- and class-balanced distributions.
    sampler = ProgressiveSampler(labels, total_epochs=3, interpolate="probabilities")
    sizes = torch.tensor(CLASS_SIZES, dtype=torch.float64)
    expected = 0.5 * sizes / sizes.sum() + 0.5 / len(CLASS_SIZES)
    assert torch.allclose(sampler.class_probabilities(1), expected)


def test_class_probability_statistics_over_many_epochs(labels):
    """Statistical check: the empirical class frequency over epochs matches N_j^q / sum N^q."""
    sampler = ClassPowerSampler(labels, q=0.5, num_samples=97, num_replicas=2, rank=0)
    counts = np.zeros(len(CLASS_SIZES))
    other = ClassPowerSampler(labels, q=0.5, num_samples=97, num_replicas=2, rank=1)
    for epoch in range(40):
        for s in (sampler, other):
            counts += np.bincount(labels[draw(s, epoch)].numpy(), minlength=len(CLASS_SIZES))
    sizes = np.asarray(CLASS_SIZES, dtype=float)
    expected = np.sqrt(sizes) / np.sqrt(sizes).sum()
    # One padded index per epoch (98 = 2 x 49) adds at most 40 samples out of 3920.
    assert np.allclose(counts / counts.sum(), expected, atol=0.012)


def test_missing_classes_get_no_samples():
    labels = torch.tensor([0, 0, 0, 2, 2])  # class 1 has no images
    sampler = build_sampler("class_balanced", labels, num_classes=4)
    assert sampler.class_probabilities(0).tolist() == [0.5, 0.0, 0.5, 0.0]
    assert set(draw(sampler, 0)) <= set(range(5))


def test_invalid_arguments(labels):
    with pytest.raises(ValueError):
        build_sampler("sqrt", labels, num_replicas=2, rank=2)
    with pytest.raises(ValueError):
        build_sampler("sqrt", torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError):
        build_sampler("sqrt", torch.tensor([0, -1]))
