"""The LDAM-DRW long-tail generator (methods.md section 5), checked against the original code."""

from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest

from longtail.data import build_dataset, longtail_counts, make_longtail


def ldam_reference(labels: np.ndarray, imb_factor: float, imb_type: str = "exp", seed: int = 0):
    """LDAM-DRW's imbalance_cifar.py, transcribed independently: global seed, per-class shuffle.

    get_img_num_per_cls + gen_imbalanced_data with imb_factor = 1 / IF; run on the *global*
    numpy RNG as the original does (state saved and restored around it for the other tests).
    """
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        cls_num = len(np.unique(labels))
        img_max = len(labels) / cls_num
        if imb_type == "exp":
            img_num_per_cls = [int(img_max * (imb_factor ** (i / (cls_num - 1.0)))) for i in range(cls_num)]
        else:
            img_num_per_cls = [int(img_max)] * (cls_num // 2) + [int(img_max * imb_factor)] * (cls_num // 2)
        targets_np = np.array(labels, dtype=np.int64)
        selected = []
        for the_class, the_img_num in zip(np.unique(targets_np), img_num_per_cls):
            idx = np.where(targets_np == the_class)[0]
            np.random.shuffle(idx)
            selected.append(idx[:the_img_num])
        return np.concatenate(selected), img_num_per_cls
    finally:
        np.random.set_state(state)


def balanced_labels(num_classes: int, per_class: int, seed: int = 123) -> np.ndarray:
    # Interleaved, not sorted, like the real CIFAR batches: the generator must find each class's
    # positions itself.
    labels = np.repeat(np.arange(num_classes), per_class)
    return np.random.RandomState(seed).permutation(labels)


@pytest.mark.parametrize(
    "num_classes, per_class, imbalance_factor, expected",
    [(100, 500, 100, 10_847), (100, 500, 50, 12_608), (100, 500, 10, 19_573), (10, 5000, 100, 12_406), (10, 6000, 100, 14_886)],
)
def test_published_split_sizes_and_indices(num_classes, per_class, imbalance_factor, expected):
    labels = balanced_labels(num_classes, per_class)
    split = make_longtail(labels, imbalance_factor)
    reference, reference_counts = ldam_reference(labels, 1.0 / imbalance_factor)
    assert len(split) == sum(split.counts) == expected
    assert list(split.counts) == reference_counts
    np.testing.assert_array_equal(split.indices, reference)
    assert split.counts[0] == per_class and split.counts[-1] == int(per_class / imbalance_factor)
    assert longtail_counts(num_classes, per_class, imbalance_factor) == reference_counts


@pytest.mark.parametrize("seed", [0, 1, 7, 2**32 - 1])
def test_private_randomstate_equals_global_seed_shuffle(seed):
    # The claim that licenses RandomState(seed): same MT19937 stream, same shuffle algorithm.
    labels = balanced_labels(10, 40, seed=5)
    reference, _ = ldam_reference(labels, 1 / 20, seed=seed)
    np.testing.assert_array_equal(make_longtail(labels, 20, seed=seed).indices, reference)


def test_global_numpy_rng_state_is_left_alone():
    np.random.seed(42)
    before = np.random.get_state()
    make_longtail(balanced_labels(10, 30), 10, seed=3)
    after = np.random.get_state()
    assert before[0] == after[0] and np.array_equal(before[1], after[1]) and before[2:] == after[2:]
    np.random.seed(42)
    expected_next = np.random.rand()
    np.random.seed(42)
    make_longtail(balanced_labels(10, 30), 10, seed=3)
    assert np.random.rand() == expected_next


def test_step_profile_matches_reference_and_spec():
    labels = balanced_labels(10, 500)
    split = make_longtail(labels, 10, profile="step", seed=2)
    reference, counts = ldam_reference(labels, 0.1, imb_type="step", seed=2)
    assert list(split.counts) == counts == [500] * 5 + [50] * 5
    np.testing.assert_array_equal(split.indices, reference)
    # Odd K: the original would drop the last class; we give it the minority count.
    assert longtail_counts(5, 100, 10, "step") == [100, 100, 10, 10, 10]


def test_counts_use_the_original_float_expression():
    # int() truncation depends on how the float is formed; we follow img_max * (1/IF) ** (i / (K - 1.0)).
    for factor in (3, 7, 13, 20, 75, 150, 200, 256):
        ref = [int(500.0 * ((1.0 / factor) ** (i / (100 - 1.0)))) for i in range(100)]
        assert longtail_counts(100, 500, factor) == ref
    assert longtail_counts(10, 5000, 1) == [5000] * 10


def test_split_records_profile_factor_seed_counts_and_index_hash():
    labels = balanced_labels(10, 50)
    split = make_longtail(labels, 10, seed=4)
    assert (split.profile, split.imbalance_factor, split.seed, split.max_per_class) == ("exp", 10.0, 4, 50.0)
    assert split.indices.dtype == np.int64
    assert split.index_hash == hashlib.sha256(split.indices.astype("<i8").tobytes()).hexdigest()
    record = split.to_dict()
    assert record["counts"] == list(split.counts) and record["num_images"] == len(split)
    assert record["index_hash"] == split.index_hash
    assert make_longtail(labels, 10, seed=4).index_hash == split.index_hash
    assert make_longtail(labels, 10, seed=5).index_hash != split.index_hash
    # Every class's selection comes from that class, and no index is repeated.
    assert len(set(split.indices.tolist())) == len(split)
    assert np.bincount(labels[split.indices], minlength=10).tolist() == list(split.counts)


def test_accepts_tensors_and_datasets():
    torch = pytest.importorskip("torch")
    labels = balanced_labels(10, 20)
    from_numpy = make_longtail(labels, 5)
    assert make_longtail(torch.as_tensor(labels), 5).index_hash == from_numpy.index_hash
    assert make_longtail(labels.tolist(), 5).index_hash == from_numpy.index_hash


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"imbalance_factor": 0.01}, "imb_factor 0.01 is imbalance_factor=100"),
        ({"imbalance_factor": 10, "profile": "linear"}, "valid profiles: exp, step"),
        ({"imbalance_factor": 10, "seed": -1}, "seed"),
        ({"imbalance_factor": 10, "num_classes": 12}, "have no images"),
        ({"imbalance_factor": 10, "max_per_class": 21}, "max_per_class <= 20"),
    ],
)
def test_invalid_arguments_are_explained(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_longtail(balanced_labels(10, 20), **kwargs)


def test_unbalanced_source_needs_explicit_max_per_class():
    labels = np.concatenate([np.repeat(np.arange(5), 30), np.repeat(np.arange(5, 10), 10)])
    # The hint is the largest n_max that fits: int(16 * 0.5 ** (5/9)) = 10 <= 10 for class 5 (the
    # first 10-image class), int(17 * 0.5 ** (5/9)) = 11 > 10.
    with pytest.raises(ValueError, match="max_per_class <= 16"):
        make_longtail(labels, 2)
    assert make_longtail(labels, 2, max_per_class=16).counts[:6] == (16, 14, 13, 12, 11, 10)
    with pytest.raises(ValueError, match="class 5 needs 11"):
        make_longtail(labels, 2, max_per_class=17)


def write_cifar10(folder, labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """A CIFAR-10 python folder in the original format: 5 train batches + test batch + meta."""
    folder.mkdir(parents=True)
    rng = np.random.RandomState(seed)
    data = rng.randint(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    for i, part in enumerate(np.array_split(np.arange(len(labels)), 5), start=1):
        batch = {b"batch_label": f"training batch {i} of 5".encode(), b"labels": labels[part].tolist(), b"data": data[part], b"filenames": [b"x.png"] * len(part)}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    test = {b"batch_label": b"testing batch 1 of 1", b"labels": list(range(10)) * 2, b"data": data[:20], b"filenames": [b"y.png"] * 20}
    (folder / "test_batch").write_bytes(pickle.dumps(test, protocol=2))
    meta = {b"label_names": [f"class{i}".encode() for i in range(10)], b"num_cases_per_batch": 10, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return data


def test_cifar10_lt_from_cifar_format_files_matches_independent_generator(tmp_path):
    labels = balanced_labels(10, 60, seed=9)
    data = write_cifar10(tmp_path / "cifar-10-batches-py", labels)
    train = build_dataset("cifar10-lt", "train", root=tmp_path, imbalance_factor=10)
    reference, counts = ldam_reference(labels, 0.1)
    assert train.class_counts() == counts and len(train) == sum(counts)
    np.testing.assert_array_equal(train.longtail_split.indices, reference)
    expected_images = data[reference].reshape(-1, 3, 32, 32)
    np.testing.assert_array_equal(train.images.numpy(), expected_images)
    np.testing.assert_array_equal(train.labels.numpy(), labels[reference])
    test = build_dataset("cifar10-lt", "test", root=tmp_path, imbalance_factor=10)
    assert test.class_counts() == [2] * 10 and test.longtail_split is None  # test set stays balanced
