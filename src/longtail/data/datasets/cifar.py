"""CIFAR-10 / CIFAR-100 from the standard python pickles, read with a restricted unpickler.

On-disk format (https://www.cs.toronto.edu/~kriz/cifar.html; also what torchvision's download
extracts): ``cifar-10-batches-py/data_batch_1..5``, ``test_batch``, ``batches.meta`` and
``cifar-100-python/train``, ``test``, ``meta``. Each batch is a pickled dict with bytes keys:
``b'data'`` uint8 (N, 3072) = 1024 red, 1024 green, 1024 blue values of a 32x32 image (so a
reshape to (N, 3, 32, 32) is CHW), and ``b'labels'`` (CIFAR-10) or ``b'fine_labels'`` (CIFAR-100).
The training set is the batches concatenated in order, the order the LDAM-DRW generator indexes.

``pickle.load`` on a downloaded file can run arbitrary code (``__reduce__`` naming e.g.
``os.system``). ``SafeUnpickler`` resolves only the handful of globals these pickles need (numpy
array reconstruction, ``numpy.dtype`` and ``_codecs.encode``, used by protocol-2 pickles for bytes);
every other global raises ``UnsafePickleError`` before anything is called.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from longtail.data.datasets.images import InMemoryImages

# The CIFAR normalisation constants used by LDAM-DRW / Balanced Softmax and most CIFAR-LT code
# (mean of the training set; the std is the widely copied (0.2023, 0.1994, 0.2010)).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)

_LAYOUT = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
        "label_key": b"labels",
        "names_key": b"label_names",
        "num_classes": 10,
        "torchvision": "CIFAR10",
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "label_key": b"fine_labels",
        "names_key": b"fine_label_names",
        "num_classes": 100,
        "torchvision": "CIFAR100",
    },
}

# (module, name) pairs a CIFAR pickle may reference. numpy 2 renamed numpy.core -> numpy._core;
# both spellings appear in files written by different numpy versions.
_ALLOWED_GLOBALS = frozenset(
    [
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    ]
    + [
        (f"numpy.{core}.{module}", name)
        for core in ("core", "_core")
        for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))
    ]
)


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle referenced a global outside the CIFAR allow-list; nothing was executed.

    Also a ValueError, the library's bad-input error: `longtail train` turns it into exit code 2
    with this message instead of a traceback."""


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that admits builtin containers, bytes/str, numbers and numpy arrays only.

    Plain containers and scalars need no globals at all; ``find_class`` is the single door
    through which a pickle can reach callables, so refusing everything not on the allow-list
    (before import or call) makes loading an untrusted file unable to run code.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"refusing to load global {module}.{name}: a CIFAR pickle only contains dicts, lists, "
            f"bytes, numbers and numpy arrays. The file is not a genuine CIFAR batch (possibly "
            f"malicious); delete it and download the dataset again."
        )


def safe_load_pickle(path: str | os.PathLike) -> Any:
    """Load a (Python 2 or 3) CIFAR pickle with ``SafeUnpickler`` (``encoding="bytes"`` as the originals need)."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except UnsafePickleError as error:
        raise UnsafePickleError(f"{path}: {error}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as error:
        raise ValueError(
            f"{path}: not a readable CIFAR pickle ({type(error).__name__}: {error}); the file is truncated "
            f"or corrupt. Delete the folder and download the dataset again."
        ) from error


def resolve_cifar_dir(root: str | os.PathLike, name: str) -> Path:
    """The ``cifar-10-batches-py`` / ``cifar-100-python`` folder: ``root`` itself or its child."""
    folder = _LAYOUT[name]["folder"]
    root = Path(root)
    return root if root.name == folder else root / folder


def _get(batch: Any, key: bytes, path: Path) -> Any:
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(batch).__name__}; not a CIFAR batch file")
    if key in batch:
        return batch[key]
    text_key = key.decode()  # files re-pickled under Python 3 sometimes have str keys
    if text_key in batch:
        return batch[text_key]
    raise ValueError(
        f"{path}: no {key!r} entry (keys: {sorted(map(repr, batch))[:6]}); not a CIFAR batch of this dataset"
    )


def _read_batch(path: Path, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = safe_load_pickle(path)
    data = _get(batch, b"data", path)
    labels = _get(batch, label_key, path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(
            f"{path}: b'data' must be a uint8 array (N, 3072) (32x32x3 images), got "
            f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}; the file is corrupt."
        )
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(
            f"{path}: {label_key!r} must be {data.shape[0]} integer labels, got {labels.dtype} {labels.shape}; "
            f"the file is corrupt."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{path}: labels outside 0..{num_classes - 1}; the file is corrupt or from another dataset.")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _download(root: Path, name: str) -> None:
    import torchvision  # imported only on request: a download is the one thing we borrow it for

    dataset_class = getattr(torchvision.datasets, _LAYOUT[name]["torchvision"])
    try:
        # torchvision downloads the official tarball, checks its md5 and extracts it under root.
        dataset_class(str(root), train=True, download=True)
    except Exception as error:  # network errors come in many types (URLError, socket, ssl, ...)
        raise RuntimeError(
            f"downloading {name} into {root} failed ({type(error).__name__}: {error}). Without network access, "
            f"copy the extracted {_LAYOUT[name]['folder']}/ folder from "
            f"https://www.cs.toronto.edu/~kriz/cifar.html into {root} and pass root={str(root)!r}."
        ) from error


def load_cifar(
    root: str | os.PathLike | None, name: str = "cifar10", split: str = "train", download: bool = False
) -> InMemoryImages:
    """CIFAR-10 or CIFAR-100 ``split`` ("train" / "test") as ``InMemoryImages`` (N, 3, 32, 32).

    ``root`` is the folder holding ``cifar-10-batches-py/`` (or ``cifar-100-python/``), or that
    folder itself. With ``download=True`` and the files absent, torchvision downloads them first.
    """
    if name not in _LAYOUT:
        raise ValueError(f"unknown CIFAR dataset {name!r}; valid: {', '.join(_LAYOUT)}")
    layout = _LAYOUT[name]
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test' for {name}, got {split!r}")
    if root is None:
        raise ValueError(
            f"{name} needs root= the folder containing {layout['folder']}/ (download the python version from "
            f"https://www.cs.toronto.edu/~kriz/cifar.html), or root=<folder> with download=True."
        )
    directory = resolve_cifar_dir(root, name)
    needed = layout[split] + [layout["meta"]]
    missing = [file for file in needed if not (directory / file).is_file()]
    if missing and download:
        _download(Path(root) if Path(root).name != layout["folder"] else Path(root).parent, name)
        missing = [file for file in needed if not (directory / file).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{name}: missing {', '.join(missing)} in {directory}. Download and extract the CIFAR python version "
            f"(https://www.cs.toronto.edu/~kriz/cifar.html) so that {directory} exists, or pass download=True."
        )
    parts = [_read_batch(directory / file, layout["label_key"], layout["num_classes"]) for file in layout[split]]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    meta_path = directory / layout["meta"]
    names = _get(safe_load_pickle(meta_path), layout["names_key"], meta_path)
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    if len(classes) != layout["num_classes"]:
        raise ValueError(f"{meta_path}: {len(classes)} class names, expected {layout['num_classes']}; corrupt meta file.")
    return InMemoryImages(
        images=torch.from_numpy(np.ascontiguousarray(images)),
        labels=torch.from_numpy(labels),
        classes=classes,
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
        name=f"{name}-{split}",
    )
