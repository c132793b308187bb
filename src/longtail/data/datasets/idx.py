"""MNIST / Fashion-MNIST idx files (LeCun's format), read without trusting the file.

The idx format (http://yann.lecun.com/exdb/mnist/, identical for Fashion-MNIST) is a big-endian
header ``0x00 0x00 <type code> <ndim>`` followed by ``ndim`` uint32 sizes and the raw data.
Images are ``idx3-ubyte`` (magic 2051, shape (N, 28, 28)), labels ``idx1-ubyte`` (magic 2049,
shape (N,)). The files come either gzipped (``*.gz``, as published, as torchvision downloads them
into ``<root>/<Name>/raw/`` and as the Debian package ``dataset-fashion-mnist`` installs them in
``/usr/share/datasets/fashion-mnist/``) or decompressed.

Everything the header claims is checked against the bytes actually present, so a truncated or
corrupt download fails with a message naming the file and the remedy, instead of a reshape error
or silently short arrays.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from longtail.data.datasets.images import InMemoryImages

IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension
# A sanity bound on what a header may claim (the real train images are 47 MB), so a corrupt
# header cannot make us try to read gigabytes before noticing.
_MAX_PAYLOAD_BYTES = 1 << 31

FILE_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
MNIST_CLASSES = tuple(str(digit) for digit in range(10))

# Per-channel mean / std of the full (balanced) 60,000-image training sets in [0, 1] units,
# computed in float64 with numpy from the idx files (tests/test_data_idx.py recomputes them). The LT
# variants use the same constants, as CIFAR-LT codebases use the CIFAR constants, so that a
# model's input scaling does not depend on the imbalance factor.
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860405969887955,), (0.35302424451492254,)
MNIST_MEAN, MNIST_STD = (0.1306604762738429,), (0.30810780385646264,)


class IdxFormatError(ValueError):
    """An idx file is not what its header (or its name) says it is."""


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: str | os.PathLike, expected_magic: int | None = None) -> np.ndarray:
    """Read one idx file (``.gz`` or raw) into a uint8 array of the shape its header declares.

    Raises ``IdxFormatError`` (a ``ValueError``) when the magic number is not an unsigned-byte idx
    header, does not match ``expected_magic``, or the payload is shorter or longer than the header
    says (a truncated download), or the gzip stream is corrupt.
    """
    path = Path(path)
    remedy = (
        f"Delete {path} and download it again (or reinstall the Debian package "
        f"dataset-fashion-mnist for Fashion-MNIST)."
    )
    try:
        with _open(path) as stream:
            header = stream.read(4)
            if len(header) < 4:
                raise IdxFormatError(f"{path}: file is too short to be an idx file ({len(header)} bytes). {remedy}")
            magic = int.from_bytes(header, "big")
            if header[0] != 0 or header[1] != 0 or header[2] != 0x08:
                raise IdxFormatError(
                    f"{path}: not an unsigned-byte idx file (magic number {magic:#010x}; expected "
                    f"{IMAGES_MAGIC:#010x} for images or {LABELS_MAGIC:#010x} for labels). {remedy}"
                )
            if expected_magic is not None and magic != expected_magic:
                raise IdxFormatError(
                    f"{path}: magic number {magic} but {expected_magic} was expected "
                    f"({'images' if expected_magic == IMAGES_MAGIC else 'labels'} file); "
                    f"the file is misnamed or corrupt. {remedy}"
                )
            ndim = header[3]
            size_bytes = stream.read(4 * ndim)
            if len(size_bytes) != 4 * ndim:
                raise IdxFormatError(f"{path}: header is truncated (declares {ndim} dimensions). {remedy}")
            shape = tuple(int.from_bytes(size_bytes[4 * i : 4 * i + 4], "big") for i in range(ndim))
            expected = int(np.prod(shape, dtype=np.int64)) if shape else 1
            if expected > _MAX_PAYLOAD_BYTES:
                raise IdxFormatError(f"{path}: header declares an implausible shape {shape}. {remedy}")
            payload = stream.read(expected)
            trailing = stream.read(1)
    except (OSError, EOFError, zlib.error) as error:
        # gzip raises BadGzipFile (an OSError) / EOFError for corrupt or cut-off streams.
        if isinstance(error, FileNotFoundError):
            raise
        raise IdxFormatError(f"{path}: cannot be decompressed/read ({error}). {remedy}") from error
    if len(payload) != expected:
        raise IdxFormatError(
            f"{path}: truncated: header declares shape {shape} ({expected} bytes of data) but only "
            f"{len(payload)} bytes follow. {remedy}"
        )
    if trailing:
        raise IdxFormatError(
            f"{path}: has data beyond the {expected} bytes its header declares (shape {shape}); "
            f"the file is corrupt. {remedy}"
        )
    return np.frombuffer(payload, dtype=np.uint8).reshape(shape)


def _candidate_dirs(root: Path, torchvision_folder: str | None) -> list[Path]:
    # The layouts users actually have: the four files directly in root (Debian, manual
    # download), or torchvision's <root>/<FashionMNIST|MNIST>/raw/.
    dirs = [root, root / "raw"]
    if torchvision_folder:
        dirs += [root / torchvision_folder / "raw", root / torchvision_folder]
    return dirs


def find_idx_file(root: Path, stem: str, torchvision_folder: str | None = None) -> Path | None:
    """First existing ``<stem>.gz`` or ``<stem>`` in the usual layouts under ``root``."""
    for directory in _candidate_dirs(root, torchvision_folder):
        for name in (stem + ".gz", stem):
            candidate = directory / name
            if candidate.is_file():
                return candidate
    return None


def read_idx_pair(
    root: str | os.PathLike, split: str, torchvision_folder: str | None = None, what: str = "MNIST-type"
) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) uint8 of ``split`` ("train" / "test") under ``root``."""
    if split not in FILE_STEMS:
        raise ValueError(f"split must be one of {sorted(FILE_STEMS)} for {what} idx files, got {split!r}")
    root = Path(root)
    found = {stem: find_idx_file(root, stem, torchvision_folder) for stem in FILE_STEMS[split]}
    missing = [stem for stem, path in found.items() if path is None]
    if missing:
        raise FileNotFoundError(
            f"{what} {split} files not found under {root}: missing {', '.join(s + '[.gz]' for s in missing)} "
            f"(looked in {', '.join(str(d) for d in _candidate_dirs(root, torchvision_folder))}). Pass "
            f"root= the folder holding the idx files (e.g. what torchvision's download or the Debian package "
            f"dataset-fashion-mnist lays down)."
        )
    image_stem, label_stem = FILE_STEMS[split]
    images = read_idx(found[image_stem], IMAGES_MAGIC)
    labels = read_idx(found[label_stem], LABELS_MAGIC)
    if images.ndim != 3 or labels.ndim != 1:
        raise IdxFormatError(
            f"{found[image_stem]} / {found[label_stem]}: expected images (N, H, W) and labels (N,), "
            f"got {images.shape} and {labels.shape}"
        )
    if images.shape[0] != labels.shape[0]:
        raise IdxFormatError(
            f"{found[image_stem]} has {images.shape[0]} images but {found[label_stem]} has "
            f"{labels.shape[0]} labels; one of the files belongs to another split or is corrupt."
        )
    return images, labels


def load_idx_dataset(
    root: str | os.PathLike,
    split: str,
    classes: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    name: str,
    torchvision_folder: str | None = None,
) -> InMemoryImages:
    """An ``InMemoryImages`` (N, 1, 28, 28) from the idx files of ``split`` under ``root``."""
    images, labels = read_idx_pair(root, split, torchvision_folder, what=name)
    if labels.size and int(labels.max()) >= len(classes):
        raise IdxFormatError(
            f"{name} {split} labels contain {int(labels.max())} but the dataset has {len(classes)} classes; "
            f"the label file under {root} is not a {name} label file."
        )
    return InMemoryImages(
        images=torch.from_numpy(images.copy()).unsqueeze(1),
        labels=torch.from_numpy(labels.astype(np.int64)),
        classes=list(classes),
        mean=tuple(mean),
        std=tuple(std),
        name=f"{name}-{split}",
    )
