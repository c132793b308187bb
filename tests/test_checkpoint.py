"""Checkpoints: atomic writes, and loading never executes code."""

from __future__ import annotations

import os

import pytest
import torch

from longtail.cli import main
from longtail.engine.rundir import checkpoint as ckpt


class RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_refused_without_running(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    path.parent.mkdir(parents=True)
    torch.save({"model": RunsACommand(marker)}, path)
    with pytest.raises(ckpt.CheckpointError, match="refused for safety"):
        ckpt.load_checkpoint(path)
    assert main(["eval", str(tmp_path / "run")]) == 2
    assert "cannot load checkpoint" in capsys.readouterr().err
    assert not marker.exists()
    # The same file does run its payload under a plain pickle load: the refusal above is what protects.
    with open(path, "rb") as handle:
        torch.load(handle, weights_only=False)
    assert marker.exists()


def test_truncated_and_missing_checkpoints_fail_clearly(tmp_path):
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint(path, {"weights": torch.ones(1000)})
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ckpt.CheckpointError, match="corrupt, truncated"):
        ckpt.load_checkpoint(path)
    with pytest.raises(ckpt.CheckpointError, match="not found"):
        ckpt.load_checkpoint(tmp_path / "nothing.pt")


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint(path, {"step": torch.tensor(1)})

    def crash(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(path, {"step": torch.tensor(2)})
    assert ckpt.load_checkpoint(path)["step"].item() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind
