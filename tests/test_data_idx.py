"""MNIST / Fashion-MNIST idx loaders: real files, and corrupt ones failing clearly."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from longtail.data import IdxFormatError, build_dataset, make_longtail, read_idx, read_idx_pair
from longtail.data.datasets.idx import FASHION_MNIST_MEAN, FASHION_MNIST_STD, MNIST_MEAN, MNIST_STD

from conftest import idx_bytes, write_pair

SHARED = Path(os.environ.get("LONGTAIL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.mark.parametrize("gz", [True, False])
def test_round_trip_gz_and_raw_and_torchvision_layout(tmp_path, gz):
    images = np.random.RandomState(0).randint(0, 256, size=(20, 28, 28)).astype(np.uint8)
    labels = np.arange(20, dtype=np.uint8) % 10
    write_pair(tmp_path / "FashionMNIST" / "raw", images, labels, gz=gz)  # torchvision's layout
    data = build_dataset("fashion-mnist", "train", root=tmp_path)
    np.testing.assert_array_equal(data.images.numpy()[:, 0], images)
    assert data.labels.tolist() == labels.tolist() and data.classes[0] == "T-shirt/top"
    lt = build_dataset("fashion-mnist-lt", "train", root=tmp_path, imbalance_factor=2)
    assert lt.class_counts() == [int(2 * 0.5 ** (i / 9)) for i in range(10)]


def test_corrupt_files_fail_with_the_remedy(tmp_path):
    good = idx_bytes(np.zeros((4, 28, 28), np.uint8))
    cases = {
        "truncated_payload.gz": gzip.compress(good[:-10]),
        "trailing.gz": gzip.compress(good + b"\x00"),
        "bad_magic": b"\x12\x34\x08\x03" + good[4:],
        "float_type": b"\x00\x00\x0d\x03" + good[4:],
        "short": b"\x00\x00",
        "cut_gzip.gz": gzip.compress(good)[:40],
        "not_gzip.gz": good,
    }
    expected = {
        "truncated_payload.gz": "truncated", "trailing.gz": "beyond", "bad_magic": "not an unsigned-byte idx",
        "float_type": "not an unsigned-byte idx", "short": "too short", "cut_gzip.gz": "cannot be decompressed",
        "not_gzip.gz": "cannot be decompressed",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(IdxFormatError, match=expected[name]) as error:
            read_idx(tmp_path / name)
        assert "download it again" in str(error.value)
    (tmp_path / "labels").write_bytes(idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(IdxFormatError, match="magic number 2049 but 2051"):
        read_idx(tmp_path / "labels", expected_magic=2051)


def test_mismatched_pair_and_missing_files(tmp_path):
    write_pair(tmp_path, np.zeros((5, 28, 28), np.uint8), np.zeros(4, np.uint8))
    with pytest.raises(IdxFormatError, match="5 images but .* 4 labels"):
        read_idx_pair(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        build_dataset("mnist", "test", root=tmp_path)
    write_pair(tmp_path / "big", np.zeros((2, 28, 28), np.uint8), np.array([3, 12], np.uint8))
    with pytest.raises(IdxFormatError, match="contain 12 but the dataset has 10"):
        build_dataset("mnist", "train", root=tmp_path / "big")


def pixel_mean_std(images: np.ndarray) -> tuple[float, float]:
    """Mean / std of images / 255 from exact integer sums (fast, no float copy of the set)."""
    n = images.size
    total = float(images.sum(dtype=np.uint64))
    squares = float((images.astype(np.uint16) ** 2).sum(dtype=np.uint64))
    mean = total / n
    return mean / 255.0, np.sqrt(squares / n - mean**2) / 255.0


@pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason="shared MNIST not available")
def test_real_mnist_lt_and_normalisation_constants():
    train = build_dataset("mnist-lt", "train", root=SHARED / "mnist", imbalance_factor=10)
    images, full_labels = read_idx_pair(SHARED / "mnist", "train")
    smallest = int(np.bincount(full_labels).min())  # MNIST is not balanced: 5421 ("5") .. 6742 ("1")
    assert smallest == 5421
    assert train.class_counts() == [int(smallest * 0.1 ** (i / 9)) for i in range(10)]
    assert train.longtail_split.max_per_class == smallest
    # LDAM's n_max = 6000 would silently short class "0" (5923 images); the hint is the largest
    # n_max that fits in index order: class 0 bounds it (class "5", rank 5, needs only int(n * 0.1 ** (5/9))).
    with pytest.raises(ValueError, match=r"class 0 needs 6000 images .*but has only 5923.*max_per_class <= 5923"):
        make_longtail(full_labels, 10)
    assert make_longtail(full_labels, 10, max_per_class=5923).counts[0] == 5923
    assert pixel_mean_std(images) == pytest.approx((MNIST_MEAN[0], MNIST_STD[0]), abs=1e-9)


@pytest.mark.skipif(not (SHARED / "fashion-mnist").is_dir(), reason="shared Fashion-MNIST not available")
def test_real_fashion_mnist_constants():
    images, labels = read_idx_pair(SHARED / "fashion-mnist", "train")
    assert images.shape == (60_000, 28, 28) and np.bincount(labels).tolist() == [6000] * 10
    assert pixel_mean_std(images) == pytest.approx((FASHION_MNIST_MEAN[0], FASHION_MNIST_STD[0]), abs=1e-9)
