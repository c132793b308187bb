"""The embedded default dataset ``fashion-mnist-lt``: training works with no download.

Contents: Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, MIT licence, notice in ``builtin/NOTICE``)
training set made long-tailed with the LDAM-DRW generator of methods.md section 5 (IF 100,
exponential profile, seed 0: 6000, 3596, ..., 60 images per class, 14,886 in all) plus the full
balanced 10,000-image test set. Built by ``tools/build_builtin.py`` from the idx files (e.g.
``../shared/data/fashion-mnist`` or the Debian package ``dataset-fashion-mnist``).

Storage: ``builtin/fashion_mnist_lt.npz``, a zip of ``.npy`` uint8 / int64 arrays (deflate; the
zip entries carry a fixed timestamp so a rebuild is byte-identical with the same zlib). It is read
with ``allow_pickle=False`` (no code can run) and checked against two recorded sha256s: of the
shipped file (``BUILTIN_SHA256``; fast path) and, if that differs, of the decoded arrays
(``BUILTIN_CONTENT_SHA256``; a rebuild under another zlib compresses differently but decodes to
the same arrays). Anything else is a damaged or swapped file and fails loudly instead of
training on wrong data.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from longtail.data.datasets.idx import FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD, read_idx_pair
from longtail.data.datasets.images import InMemoryImages
from longtail.data.splits.imbalance import LongTailSplit, index_hash, make_longtail

BUILTIN_NAME = "fashion-mnist-lt"
BUILTIN_FILE = Path(__file__).with_name("builtin") / "fashion_mnist_lt.npz"
# Recorded when the file was built (tools/build_builtin.py prints both); tests recompute them.
BUILTIN_SHA256 = "17308259354a76a9a17e1cf81d8ec643af8c591a177b2f1fa8a818bebf5584d3"
BUILTIN_CONTENT_SHA256 = "21d7e83f793029c2312e622f3fe196c6ec9bcf1d3a7891bfedfde5b879d0548e"
BUILTIN_TRAIN_INDEX_HASH = "ed7a73125b2eb63a36be421826f78f842318f4af247699425c5a60caba7dd240"
BUILTIN_SPLIT = {"imbalance_factor": 100.0, "profile": "exp", "seed": 0}
BUILTIN_TRAIN_COUNTS = (6000, 3596, 2156, 1292, 774, 464, 278, 166, 100, 60)
BUILTIN_TEST_SIZE = 10_000
_ARRAYS = ("train_images", "train_labels", "train_source_indices", "test_images", "test_labels")


class BuiltinDataError(RuntimeError):
    """The embedded dataset file is missing, damaged or not the one this version shipped."""


def _remedy() -> str:
    return (
        "Reinstall longtail (pip install --force-reinstall longtail), or rebuild the file from the Fashion-MNIST "
        "idx files with `python tools/build_builtin.py --source <dir with train-images-idx3-ubyte.gz ...>`."
    )


def build_builtin_arrays(source_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of the embedded file, computed from the Fashion-MNIST idx files in ``source_dir``."""
    train_images, train_labels = read_idx_pair(source_dir, "train", "FashionMNIST", what="Fashion-MNIST")
    test_images, test_labels = read_idx_pair(source_dir, "test", "FashionMNIST", what="Fashion-MNIST")
    split = make_longtail(train_labels, num_classes=len(FASHION_MNIST_CLASSES), **BUILTIN_SPLIT)
    return {
        "train_images": np.ascontiguousarray(train_images[split.indices]),
        "train_labels": train_labels[split.indices].astype(np.uint8),
        "train_source_indices": split.indices.astype("<i8"),
        "test_images": np.ascontiguousarray(test_images),
        "test_labels": test_labels.astype(np.uint8),
    }


def content_sha256(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every array: identifies the data, not its compression."""
    digest = hashlib.sha256()
    for key in _ARRAYS:
        array = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def write_builtin(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> str:
    """Write ``arrays`` as a deterministic ``.npz`` and return its sha256.

    ``np.savez_compressed`` stamps each zip entry with the current time, so two builds of the
    same data would differ; fixing the timestamp makes the checksum reproducible.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key in _ARRAYS:
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(arrays[key]), allow_pickle=False)
    data = buffer.getvalue()
    Path(path).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def read_builtin_arrays(path: str | os.PathLike = BUILTIN_FILE, verify: bool = True) -> dict[str, np.ndarray]:
    """The verified arrays of the embedded file (see the module docstring for the two checksums)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BuiltinDataError(f"the embedded dataset file {path} is missing. {_remedy()}") from None
    file_digest = hashlib.sha256(data).hexdigest()
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            missing = [key for key in _ARRAYS if key not in archive.files]
            if missing:
                raise BuiltinDataError(f"{path} lacks arrays {missing}. {_remedy()}")
            arrays = {key: archive[key] for key in _ARRAYS}
    except BuiltinDataError:
        raise
    except Exception as error:  # zip / npy format errors come as ValueError, BadZipFile, EOFError, ...
        raise BuiltinDataError(
            f"the embedded dataset file {path} cannot be read ({type(error).__name__}: {error}); sha256 {file_digest}, "
            f"expected {BUILTIN_SHA256}. {_remedy()}"
        ) from error
    if verify and file_digest != BUILTIN_SHA256:
        digest = content_sha256(arrays)
        if digest != BUILTIN_CONTENT_SHA256:
            raise BuiltinDataError(
                f"the embedded dataset file {path} is damaged or from another version: file sha256 {file_digest} "
                f"(expected {BUILTIN_SHA256}), content sha256 {digest} (expected {BUILTIN_CONTENT_SHA256}). {_remedy()}"
            )
    return arrays


def load_builtin(split: str = "train", path: str | os.PathLike | None = None, verify: bool = True) -> InMemoryImages:
    """``fashion-mnist-lt``: the LT training set (14,886) or the balanced test set (10,000).

    ``verify=False`` skips the checksum (only for files you built yourself with other data).
    The training set carries its ``LongTailSplit`` (indices into the original 60,000 images).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test' for {BUILTIN_NAME}, got {split!r}")
    arrays = read_builtin_arrays(path or BUILTIN_FILE, verify)
    images = torch.from_numpy(arrays[f"{split}_images"]).unsqueeze(1)
    labels = torch.from_numpy(arrays[f"{split}_labels"].astype(np.int64))
    longtail_split = None
    if split == "train":
        indices = arrays["train_source_indices"].astype(np.int64)
        counts = tuple(np.bincount(arrays["train_labels"], minlength=len(FASHION_MNIST_CLASSES)).tolist())
        longtail_split = LongTailSplit(
            indices=indices,
            counts=counts,
            profile=str(BUILTIN_SPLIT["profile"]),
            imbalance_factor=float(BUILTIN_SPLIT["imbalance_factor"]),
            seed=int(BUILTIN_SPLIT["seed"]),
            max_per_class=6000.0,
            index_hash=index_hash(indices),
        )
    return InMemoryImages(
        images=images,
        labels=labels,
        classes=list(FASHION_MNIST_CLASSES),
        mean=FASHION_MNIST_MEAN,
        std=FASHION_MNIST_STD,
        name=f"{BUILTIN_NAME}-{split}",
        longtail_split=longtail_split,
    )
