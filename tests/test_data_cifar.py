"""CIFAR python pickles: exact on-disk format, restricted unpickling, clear errors."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from longtail.data import UnsafePickleError, build_dataset, load_cifar, safe_load_pickle


def write_cifar100(root, per_class: int = 5, protocol: int = 2, test_per_class: int = 1, seed: int = 0):
    """cifar-100-python/{train,test,meta} in the original format (fine + coarse labels)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.RandomState(seed)
    arrays = {}
    for split, n in (("train", per_class), ("test", test_per_class)):
        fine = rng.permutation(np.repeat(np.arange(100), n))
        data = rng.randint(0, 256, size=(len(fine), 3072), dtype=np.uint8)
        batch = {
            b"filenames": [b"img.png"] * len(fine),
            b"batch_label": split.encode(),
            b"fine_labels": fine.tolist(),
            b"coarse_labels": (fine // 5).tolist(),
            b"data": data,
        }
        (folder / split).write_bytes(pickle.dumps(batch, protocol=protocol))
        arrays[split] = (data, fine)
    meta = {b"fine_label_names": [f"fine{i}".encode() for i in range(100)], b"coarse_label_names": [f"c{i}".encode() for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return arrays


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar100_reads_every_pickle_protocol(tmp_path, protocol):
    arrays = write_cifar100(tmp_path, protocol=protocol)
    train = load_cifar(tmp_path, "cifar100", "train")
    data, fine = arrays["train"]
    assert train.images.shape == (500, 3, 32, 32) and train.images.dtype.is_floating_point is False
    # Row layout: 1024 R, then G, then B values, row-major 32x32: so [c, y, x] = data[c*1024 + 32*y + x].
    assert int(train.images[7, 2, 3, 4]) == int(data[7, 2 * 1024 + 3 * 32 + 4])
    np.testing.assert_array_equal(train.labels.numpy(), fine)
    assert train.classes[:2] == ["fine0", "fine1"] and train.num_classes == 100
    assert len(train.mean) == 3 and train.name == "cifar100-train"
    # root may also be the cifar-100-python folder itself
    assert len(load_cifar(tmp_path / "cifar-100-python", "cifar100", "test")) == 100


def test_cifar100_lt_counts_and_balanced_test(tmp_path):
    write_cifar100(tmp_path, per_class=20)
    train = build_dataset("cifar100-lt", "train", root=tmp_path, imbalance_factor=10)
    expected = [int(20 * (0.1 ** (i / 99.0))) for i in range(100)]
    assert train.class_counts() == expected
    assert train.longtail_split.to_dict()["counts"] == expected
    test = build_dataset("cifar100-lt", "test", root=tmp_path)
    assert test.class_counts() == [1] * 100


class _RunsCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _Evals:
    def __reduce__(self):
        return (eval, ("__import__('pathlib').Path('MARKER').touch()",))


@pytest.mark.parametrize("payload", ["system", "eval", "nested"])
def test_malicious_pickle_is_refused_without_running(tmp_path, payload):
    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    evil = {"system": _RunsCommand(f"touch {marker}"), "eval": _Evals(), "nested": [{b"x": (1, _RunsCommand(f"touch {marker}"))}]}[payload]
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], b"evil": evil}
    (folder / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the eval payload would touch ./MARKER
    try:
        with pytest.raises(UnsafePickleError, match="refusing to load global"):
            safe_load_pickle(folder / "data_batch_1")
        for i in range(2, 6):
            (folder / f"data_batch_{i}").write_bytes((folder / "data_batch_1").read_bytes())
        (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a"] * 10}, protocol=2))
        with pytest.raises(UnsafePickleError, match="download the dataset again"):
            build_dataset("cifar10", "train", root=tmp_path)
    finally:
        os.chdir(cwd)
    assert not marker.exists() and not (tmp_path / "MARKER").exists()


def test_missing_and_corrupt_files_explain_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="needs root="):
        build_dataset("cifar10")
    with pytest.raises(FileNotFoundError, match=r"missing data_batch_1.*download=True"):
        load_cifar(tmp_path, "cifar10")
    write_cifar100(tmp_path)
    path = tmp_path / "cifar-100-python" / "train"
    path.write_bytes(path.read_bytes()[:5000])  # a cut-off download
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_cifar(tmp_path, "cifar100", "train")
    (tmp_path / "cifar-100-python" / "test").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"fine_labels": [0, 1]}, protocol=2))
    with pytest.raises(ValueError, match=r"\(N, 3072\)"):
        load_cifar(tmp_path, "cifar100", "test")


def test_download_is_only_attempted_on_request_and_failures_are_explained(tmp_path, monkeypatch):
    torchvision = pytest.importorskip("torchvision")
    calls = []

    class OfflineCIFAR10:
        def __init__(self, root, train=True, download=False):
            calls.append((root, download))
            raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", OfflineCIFAR10)
    with pytest.raises(FileNotFoundError):
        load_cifar(tmp_path, "cifar10")
    assert calls == []
    with pytest.raises(RuntimeError, match="copy the extracted cifar-10-batches-py"):
        build_dataset("cifar10", "train", root=tmp_path, download=True)
    assert calls == [(str(tmp_path), True)]


def test_the_malicious_payload_is_live_under_plain_pickle(tmp_path):
    # Guards the test above against passing vacuously: an ordinary unpickler does run it.
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps({b"evil": _RunsCommand(f"touch {marker}")}, protocol=2))
    assert marker.exists()
