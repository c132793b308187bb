"""Shared test helpers: real on-disk files written by the tests themselves."""

from __future__ import annotations

import contextlib
import functools
import gzip
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest


def idx_bytes(array: np.ndarray) -> bytes:
    """The idx format of MNIST / Fashion-MNIST: magic (0, 0, 8 = uint8, ndim), big-endian dims, data."""
    magic = bytes([0, 0, 0x08, array.ndim])
    return magic + b"".join(int(n).to_bytes(4, "big") for n in array.shape) + array.astype(np.uint8).tobytes()


def write_pair(folder: Path, images: np.ndarray, labels: np.ndarray, split="train", gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "train" if split == "train" else "t10k"
    for name, array in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
        data = idx_bytes(array)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)


def _first_per_class(images: np.ndarray, labels: np.ndarray, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    chosen = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)])
    chosen.sort()
    return images[chosen], labels[chosen]


@pytest.fixture(scope="session")
def tiny_idx_root(tmp_path_factory) -> Path:
    """A small MNIST-format dataset of real Fashion-MNIST images (taken from the embedded copy):
    40 training and 20 test images per class, as idx .gz files. With data.name=mnist-lt and
    data.imbalance_factor=10 it gives a 10-class long-tailed set of ~170 images: runs in seconds."""
    from longtail.data import load_builtin

    root = tmp_path_factory.mktemp("tiny-idx")
    for split, per_class in (("train", 40), ("test", 20)):
        data = load_builtin(split)
        images, labels = _first_per_class(data.images[:, 0].numpy(), data.labels.numpy(), per_class)
        write_pair(root, images, labels, split=split)
    return root


def tiny_run_overrides(root: Path, output_dir: Path, epochs: int = 2) -> list[str]:
    """Overrides of a seconds-long CPU training run on ``tiny_idx_root``."""
    return [
        "data.name=mnist-lt", f"data.root={root}", "data.imbalance_factor=10", "data.batch_size=16",
        "data.eval_batch_size=64", f"optim.epochs={epochs}", "optim.warmup_epochs=0", "optim.lr=0.02",
        f"train.output_dir={output_dir}", "train.progress=false", "train.threads=1",
    ]


def write_image_folder(root: Path, counts, size=(16, 16), fmt="PNG", grey=False, seed=0, split=None) -> list[Path]:
    """Real image files root[/split]/c<j>/<n>.png|jpg, ``counts[j]`` per class; returns the paths.

    Each class has its own mean colour plus noise, so a small model can learn it in an epoch or two.
    ``size`` is (height, width), or a callable (class, n) -> (height, width) for mixed sizes.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = root / split if split else root
    suffix = "png" if fmt == "PNG" else "jpg"
    paths = []
    for label, count in enumerate(counts):
        (folder / f"c{label}").mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 256, 3)
        for n in range(count):
            height, width = size(label, n) if callable(size) else size
            pixels = np.clip(base + rng.normal(0, 40, (height, width, 3)), 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels[:, :, 0] if grey else pixels, mode="L" if grey else "RGB")
            path = folder / f"c{label}" / f"{n:03d}.{suffix}"
            image.save(path, format=fmt)
            paths.append(path)
    return paths


def image_run_overrides(root: Path, output_dir: Path, epochs: int = 1) -> list[str]:
    """Overrides of a seconds-long CPU training run on a small image folder."""
    return [
        "data.name=imagefolder", f"data.root={root}", "data.batch_size=8", "data.eval_batch_size=32",
        "data.workers=0", f"optim.epochs={epochs}", "optim.warmup_epochs=0", "optim.lr=0.02",
        f"train.output_dir={output_dir}", "train.progress=false", "train.threads=1",
    ]


# ---------------------------------------------------------------- a trained run on an image folder

CLASSES = ["ankle boot", "bag", "coat", "sandal", "trouser"]  # folder names, with a space: real names
FASHION_LABELS = [9, 8, 4, 5, 1]  # the Fashion-MNIST label of each


def write_folder(root: Path, per_class, offset: int = 0, jpeg_every: int = 3) -> None:
    """root/<class>/<n>.png|jpg from the embedded Fashion-MNIST test images; every third file is an
    RGB JPEG (mixed formats and modes, as users' folders are)."""
    from PIL import Image

    from longtail.data import load_builtin

    data = load_builtin("test")
    for name, label, count in zip(CLASSES, FASHION_LABELS, per_class):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        positions = (data.labels == label).nonzero().flatten()[offset:offset + count]
        for n, index in enumerate(positions.tolist()):
            image = Image.fromarray(data.images[index, 0].numpy())
            if n % jpeg_every == jpeg_every - 1:
                image.convert("RGB").save(folder / f"{index}.jpg", quality=95)
            else:
                image.save(folder / f"{index}.png")


FOLDER_CHANCE, FOLDER_MARGIN = 0.2, 0.4  # trained_folder_run: 5 balanced test classes


@pytest.fixture(scope="session")
def trained_folder_run(tmp_path_factory):
    """An 8-epoch run at native size (28 px) on a long-tailed PNG/JPEG folder with its own val/
    (weights selected on it), the four post-hoc results chosen, then the training data deleted.
    Shared by the inference and docs tests. Returns a dict of paths.

    It must learn: predictions compared with the trainer's evaluation mean nothing between two
    constant classifiers (the 4-epoch version predicted one class, accuracy 0.2 = chance). The test
    accuracy is asserted at least chance (0.2, five balanced test classes) + 0.4; measured 0.925."""
    from longtail.cli import main

    base = tmp_path_factory.mktemp("inference")
    data_root = base / "my-data"
    write_folder(data_root / "train", [30, 16, 9, 5, 3])
    write_folder(data_root / "val", [3] * 5, offset=100)
    write_folder(data_root / "test", [8] * 5, offset=200)
    output = base / "runs"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["train", "data.name=imagefolder", f"data.root={data_root}", "data.workers=0",
                     "data.batch_size=16", "optim.epochs=8", "optim.lr=0.05", "optim.warmup_epochs=0",
                     "train.select_on=accuracy", f"train.output_dir={output}", "train.progress=false",
                     "train.threads=1", "train.run_name=lt-run"])
    assert code == 0
    run = output / "lt-run"
    accuracy = json.loads((run / "metrics.json").read_text())["test"]["accuracy"]
    assert accuracy >= FOLDER_CHANCE + FOLDER_MARGIN, f"the shared inference run did not learn: {accuracy}"
    for method, taus in (("logit_adjust", "0,0.5,1"), ("tau_norm", "0,1"), ("ncm", None), ("temperature", None)):
        assert main(["posthoc", str(run), "--method", method, "--device", "cpu",
                     *(["--taus", taus] if taus else [])]) == 0
    new_images = base / "new-images"
    shutil.copytree(data_root / "test", new_images)
    shutil.rmtree(data_root)  # everything below must work from the run directory alone
    return {"run": run, "images": new_images, "base": base, "train_output": printed.getvalue(),
            "metrics": json.loads((run / "metrics.json").read_text())}


def free_port() -> int:
    """A free TCP port on the loopback address, for a gloo process group's rendezvous."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


GTSRB_ZIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "gtsrb-32.zip"


@functools.lru_cache(maxsize=1)
def gtsrb_train_listing() -> tuple[list[str], list[str], np.ndarray, bytes]:
    """(class folders, training file names, labels, classes.tsv bytes) of the shared GTSRB zip, read
    from its directory only (no image is decoded): the real counts and track names, in the sorted
    order an image folder lists them. Tests using it skip when the zip is absent."""
    import zipfile

    with zipfile.ZipFile(GTSRB_ZIP) as archive:
        entries = sorted(n for n in archive.namelist() if n.startswith("gtsrb-32/train/") and n.endswith(".png"))
        names_file = archive.read("gtsrb-32/classes.tsv")
    folder_of = [n.split("/")[2] for n in entries]
    folders = sorted(set(folder_of))
    index = {folder: label for label, folder in enumerate(folders)}
    labels = np.array([index[f] for f in folder_of], dtype=np.int64)
    return folders, [n.split("/")[3] for n in entries], labels, names_file
