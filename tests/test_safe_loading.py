"""Loading an untrusted file never runs code, on every path that loads one: a run's checkpoint
(`train --resume`, `eval`, `posthoc`), `model.init_from`, `model.pretrained` and CIFAR pickles
(through `longtail train`). Each file carries a payload that demonstrably runs under a plain
pickle / ``torch.load(weights_only=False)``; through longtail it must not, and the command exits 2
with a message instead."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from conftest import tiny_run_overrides
from longtail.cli import main


class Payload:
    """Unpickling this calls os.system, which creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def malicious_checkpoint(path, marker):
    """A file shaped like a run checkpoint whose model weights are the payload."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": 1, "config": {}, "model": Payload(marker), "epoch": 1}, path)


def write_cifar10(folder, marker):
    """A complete CIFAR-10 python folder whose first training batch carries the payload."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), b"labels": list(range(10)) * 2}
        if name == "data_batch_1":
            batch[b"extra"] = Payload(marker)
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]}, protocol=2))


def plain_load_runs_payload(path, marker, kind: str) -> None:
    """The payload is live: the loaders longtail must not use run it."""
    assert not marker.exists()
    if kind == "torch":
        torch.load(path, weights_only=False)
    else:
        with open(path, "rb") as handle:
            pickle.load(handle, encoding="bytes")
    assert marker.exists()
    marker.unlink()


@pytest.mark.parametrize("path_kind", ["resume", "eval", "posthoc", "init_from", "pretrained", "cifar"])
def test_untrusted_files_are_refused_without_running(tiny_idx_root, tmp_path, capsys, path_kind):
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    overrides = [*tiny_run_overrides(tiny_idx_root, tmp_path / "out", epochs=1), "train.device=cpu"]
    if path_kind == "cifar":
        target, kind = tmp_path / "cifar" / "cifar-10-batches-py" / "data_batch_1", "pickle"
        write_cifar10(target.parent, marker)
        command = ["train", *overrides, "data.name=cifar10", f"data.root={tmp_path / 'cifar'}", "data.imbalance_factor=null"]
    else:
        target, kind = run / "checkpoints" / "last.pt", "torch"
        malicious_checkpoint(target, marker)
        command = {
            "resume": ["train", "--resume", str(run)],
            "eval": ["eval", str(run)],
            "posthoc": ["posthoc", str(run), "--method", "tau_norm", "--taus", "1"],
            "init_from": ["train", "--method", "crt", *overrides, f"model.init_from={run}"],
            "pretrained": ["train", *overrides, f"model.pretrained={target}"],
        }[path_kind]
    assert main(command) == 2
    error = capsys.readouterr().err
    assert not marker.exists(), f"{path_kind}: the payload ran"
    assert str(target) in error or target.name in error, error
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing was started
    plain_load_runs_payload(target, marker, kind)
