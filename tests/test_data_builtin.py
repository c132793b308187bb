"""The embedded fashion-mnist-lt and the dataset registry."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np
import pytest

from longtail.data import (
    BuiltinDataError,
    InMemoryImages,
    analyze,
    available_datasets,
    build_dataset,
    dataset_options,
    load_builtin,
    make_longtail,
    read_idx_pair,
)
from longtail.data.datasets import builtin

SHARED = Path(os.environ.get("LONGTAIL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
FASHION = SHARED / "fashion-mnist"


def test_embedded_file_checksum_size_and_notice():
    data = builtin.BUILTIN_FILE.read_bytes()
    assert hashlib.sha256(data).hexdigest() == builtin.BUILTIN_SHA256
    assert len(data) < 12 * 10**6
    notice = (builtin.BUILTIN_FILE.parent / "NOTICE").read_text(encoding="utf-8")
    assert "Copyright © 2017 Zalando SE" in notice and "Permission is hereby granted" in notice


def test_embedded_counts_split_record_and_speed():
    start = time.perf_counter()
    train = build_dataset("fashion-mnist-lt", "train")
    elapsed = time.perf_counter() - start
    test = build_dataset("fashion-mnist-lt", "test")
    assert isinstance(train, InMemoryImages) and train.images.shape == (14_886, 1, 28, 28)
    assert train.class_counts() == [6000, 3596, 2156, 1292, 774, 464, 278, 166, 100, 60]
    assert test.images.shape == (10_000, 1, 28, 28) and test.class_counts() == [1000] * 10
    split = train.longtail_split
    assert (split.profile, split.imbalance_factor, split.seed, len(split)) == ("exp", 100.0, 0, 14_886)
    assert split.index_hash == builtin.BUILTIN_TRAIN_INDEX_HASH
    assert train.classes[9] == "Ankle boot" and train.mean == builtin.FASHION_MNIST_MEAN
    report = analyze(train)
    assert (report.num_many, report.num_medium, report.num_few, report.imbalance_factor) == (8, 2, 0, 100.0)
    assert elapsed < 1.0, f"loading the embedded dataset took {elapsed:.2f}s"


@pytest.mark.skipif(not FASHION.is_dir(), reason="shared Fashion-MNIST not available")
def test_embedded_equals_the_generator_applied_to_fashion_mnist():
    images, labels = read_idx_pair(FASHION, "train")
    split = make_longtail(labels, 100, profile="exp", seed=0)
    assert len(split) == 14_886 and split.index_hash == builtin.BUILTIN_TRAIN_INDEX_HASH
    train = load_builtin("train")
    np.testing.assert_array_equal(train.images.numpy()[:, 0], images[split.indices])
    np.testing.assert_array_equal(train.labels.numpy(), labels[split.indices])
    test_images, test_labels = read_idx_pair(FASHION, "test")
    test = load_builtin("test")
    np.testing.assert_array_equal(test.images.numpy()[:, 0], test_images)
    np.testing.assert_array_equal(test.labels.numpy(), test_labels)
    # The build script's writer is deterministic: same arrays -> the recorded bytes' content hash.
    arrays = builtin.read_builtin_arrays()
    assert builtin.content_sha256(arrays) == builtin.BUILTIN_CONTENT_SHA256
    # ... and the build script's arrays, computed from the idx files, are the embedded ones.
    assert builtin.content_sha256(builtin.build_builtin_arrays(FASHION)) == builtin.BUILTIN_CONTENT_SHA256


def test_damaged_embedded_file_is_refused_with_remedy(tmp_path):
    damaged = tmp_path / "fashion_mnist_lt.npz"
    data = bytearray(builtin.BUILTIN_FILE.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(BuiltinDataError, match="tools/build_builtin.py"):
        load_builtin("train", path=damaged)
    with pytest.raises(BuiltinDataError, match="missing"):
        load_builtin("train", path=tmp_path / "absent.npz")
    # Same arrays re-written (as another zlib would): the file hash differs, the content hash accepts it.
    rewritten = tmp_path / "rewritten.npz"
    arrays = builtin.read_builtin_arrays()
    arrays["test_labels"] = arrays["test_labels"].copy()
    builtin.write_builtin(rewritten, arrays)
    assert load_builtin("test", path=rewritten).class_counts() == [1000] * 10
    arrays["test_labels"][0] = (arrays["test_labels"][0] + 1) % 10
    builtin.write_builtin(rewritten, arrays)
    with pytest.raises(BuiltinDataError, match="content sha256"):
        load_builtin("test", path=rewritten)


@pytest.mark.skipif(not FASHION.is_dir(), reason="shared Fashion-MNIST not available")
def test_other_imbalance_factors_come_from_the_idx_files():
    train = build_dataset("fashion-mnist-lt", "train", root=FASHION, imbalance_factor=10, profile="step")
    assert train.class_counts() == [6000] * 5 + [600] * 5
    assert build_dataset("fashion-mnist", "test", root=FASHION).class_counts() == [1000] * 10


def test_registry_names_splits_and_options():
    names = available_datasets()
    for name in ("fashion-mnist-lt", "fashion-mnist", "mnist", "mnist-lt", "cifar10", "cifar100", "cifar10-lt",
                 "cifar100-lt", "imagenet-lt", "places-lt", "inat2018", "imagefolder"):
        assert name in names
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar-10'; valid names: .*cifar10, cifar10-lt"):
        build_dataset("cifar-10")
    with pytest.raises(ValueError, match=r"no split 'val'; valid splits: train, test"):
        build_dataset("fashion-mnist-lt", "val")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['imb_factor'\].*imbalance_factor=100"):
        build_dataset("cifar100-lt", imb_factor=0.01)
    with pytest.raises(ValueError, match="valid profiles: exp, step"):
        build_dataset("fashion-mnist-lt", profile="linear")  # checked before any file is looked for
    with pytest.raises(ValueError, match="seed must be an integer"):
        build_dataset("cifar10-lt", root="/nonexistent", seed=-1)
    assert dataset_options("cifar10-lt") == {"download": False, "imbalance_factor": 100, "profile": "exp", "seed": 0, "max_per_class": None,
                                             "class_order": "index"}


def test_missing_idx_root_says_what_to_download(tmp_path, monkeypatch):
    from longtail.data.datasets import registry

    monkeypatch.setitem(registry._IDX["fashion-mnist"], "default_roots", (str(tmp_path / "nowhere"),))
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        build_dataset("fashion-mnist", "train")
    with pytest.raises(FileNotFoundError, match="embedded fashion-mnist-lt is only IF 100"):
        build_dataset("fashion-mnist-lt", "train", imbalance_factor=50)
