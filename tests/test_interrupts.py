"""Interruptions prove what they claim: SIGTERM / SIGINT mid-epoch save a mid-epoch checkpoint and
exit 128 + N; a second signal aborts without writing; an fp16 run resumes with its grad scaler
exactly. In-process (`longtail.cli.main`) with the signal sent to this process from inside a chosen
training step, so the step at which it arrives is known instead of raced.
"""

from __future__ import annotations

import functools
import os
import signal

import pytest
import torch

from conftest import tiny_run_overrides
from engine_probe import QUIET, tiny_model
from longtail.cli import main
from longtail.engine.rundir.checkpoint import load_checkpoint
from longtail.engine.training.trainer import Trainer

EPOCHS = 3  # 161 images, batches of 16 (the 1 left over is dropped): 10 steps per epoch


def arguments(root, output, *extra):
    return ["train", *tiny_run_overrides(root, output, epochs=EPOCHS), *QUIET, "train.device=cpu",
            "train.run_name=run", *extra]


def signal_at(monkeypatch, global_step: int, *signals: int) -> None:
    """Send ``signals`` to this process from inside the loss computation of ``global_step``."""
    original = Trainer._loss_terms
    sent = []

    def hooked(self, logits, targets):
        if self.state.global_step == global_step and not sent:
            sent.append(global_step)
            for signum in signals:
                os.kill(os.getpid(), signum)
        return original(self, logits, targets)

    monkeypatch.setattr(Trainer, "_loss_terms", hooked)


def final_weights(run):
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


@pytest.fixture
def reference(tiny_idx_root, tmp_path, monkeypatch):
    tiny_model(monkeypatch)
    assert main(arguments(tiny_idx_root, tmp_path / "reference")) == 0
    return final_weights(tmp_path / "reference" / "run")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_epoch_saves_that_step_and_resume_is_exact(tiny_idx_root, tmp_path, monkeypatch, capsys,
                                                               reference, signum):
    signal_at(monkeypatch, 13, signum)  # epoch 1, batch 3
    assert main(arguments(tiny_idx_root, tmp_path)) == 128 + signum  # 143 for SIGTERM, 130 for SIGINT
    run = tmp_path / "run"
    assert f"longtail train --resume {run}" in capsys.readouterr().err
    checkpoint = load_checkpoint(run / "checkpoints" / "last.pt")
    # The step that was running finished, then the checkpoint was written: mid-epoch, not at its end.
    assert (checkpoint["epoch"], checkpoint["batch"], checkpoint["global_step"]) == (1, 4, 14)
    assert not (run / "metrics.json").exists()
    monkeypatch.undo()
    tiny_model(monkeypatch)
    assert main(["train", "--resume", str(run)]) == 0
    resumed = final_weights(run)
    for key in reference:
        assert torch.equal(resumed[key], reference[key]), key


def test_second_signal_aborts_without_writing(tiny_idx_root, tmp_path, monkeypatch):
    tiny_model(monkeypatch)
    signal_at(monkeypatch, 13, signal.SIGTERM, signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        main(arguments(tiny_idx_root, tmp_path))
    folder = tmp_path / "run" / "checkpoints"
    checkpoint = load_checkpoint(folder / "last.pt")
    assert (checkpoint["epoch"], checkpoint["batch"]) == (1, 0)  # still the end-of-epoch-0 checkpoint
    assert sorted(p.name for p in folder.iterdir()) == ["last.pt"]  # no temporary file left either
    assert not (tmp_path / "run" / "metrics.json").exists()
    # The handlers are restored: a later signal is not swallowed by a stale flag.
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_fp16_with_its_grad_scaler_resumes_exactly(tiny_idx_root, tmp_path, monkeypatch):
    """CPU autocast runs fp16 here, with a real torch.amp.GradScaler. The scaler starts at 2**20 and
    may grow every step, so it overflows, skips steps and backs off during the run: its state
    (scale, growth tracker, interval) at the checkpoint differs from a fresh scaler's, and the
    resumed run ends on the same weights only if that state was restored."""
    tiny_model(monkeypatch)
    busy_scaler = functools.partial(torch.amp.GradScaler, init_scale=2.0 ** 20, growth_interval=1)
    monkeypatch.setattr(torch.amp, "GradScaler", busy_scaler)
    fp16 = ["train.precision=fp16", "optim.lr=0.05"]
    assert main(arguments(tiny_idx_root, tmp_path / "reference", *fp16)) == 0
    reference = load_checkpoint(tmp_path / "reference" / "run" / "checkpoints" / "last.pt")
    signal_at(monkeypatch, 13, signal.SIGTERM)
    assert main(arguments(tiny_idx_root, tmp_path, *fp16)) == 128 + signal.SIGTERM
    run = tmp_path / "run"
    saved = load_checkpoint(run / "checkpoints" / "last.pt")
    assert saved["batch"] == 4 and saved["scaler"]["growth_interval"] == 1
    assert saved["scaler"]["scale"] != 2.0 ** 20  # the scale moved
    monkeypatch.undo()  # the resumed run builds a default scaler: it must load the saved one
    tiny_model(monkeypatch)
    assert main(["train", "--resume", str(run)]) == 0
    resumed = load_checkpoint(run / "checkpoints" / "last.pt")
    assert resumed["scaler"] == reference["scaler"]
    for key in reference["model"]:
        assert torch.equal(resumed["model"][key], reference["model"][key]), key


def test_resume_mid_epoch_restores_the_regularizer_state(tiny_idx_root, tmp_path, monkeypatch):
    """CAR carries state across steps (the EMA confusion and the power iteration's vector): a resumed
    run ends on the uninterrupted run's weights only if that state came back from the checkpoint."""
    tiny_model(monkeypatch)
    car = ["regularizer.name=car", "regularizer.alpha=1.0"]
    assert main(arguments(tiny_idx_root, tmp_path / "reference", *car)) == 0
    reference = final_weights(tmp_path / "reference" / "run")
    signal_at(monkeypatch, 13, signal.SIGTERM)
    assert main(arguments(tiny_idx_root, tmp_path, *car)) == 128 + signal.SIGTERM
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert saved["batch"] == 4 and saved["regularizer"]  # mid-epoch, with CAR's state
    monkeypatch.undo()
    tiny_model(monkeypatch)
    assert main(["train", "--resume", str(tmp_path / "run")]) == 0
    resumed = final_weights(tmp_path / "run")
    for key in reference:
        assert torch.equal(resumed[key], reference[key]), key


@pytest.mark.parametrize("step", [13, 19])  # mid-epoch (epoch 1, batch 3), and the last batch of epoch 1
def test_history_of_a_resumed_epoch_covers_the_whole_epoch(tiny_idx_root, tmp_path, monkeypatch, step):
    """history.jsonl after SIGTERM + --resume equals the uninterrupted run's, line for line (losses and
    image counts; timings differ): the interrupted epoch's running sums travel in the checkpoint."""
    import json

    def history(run):
        lines = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
        return [{k: v for k, v in line.items() if k not in ("seconds", "images_per_s")} for line in lines]

    tiny_model(monkeypatch)
    assert main(arguments(tiny_idx_root, tmp_path / "reference")) == 0
    signal_at(monkeypatch, step, signal.SIGTERM)
    assert main(arguments(tiny_idx_root, tmp_path / "interrupted")) == 128 + signal.SIGTERM
    run = tmp_path / "interrupted" / "run"
    assert load_checkpoint(run / "checkpoints" / "last.pt")["batch"] == step - 10 + 1
    monkeypatch.undo()
    tiny_model(monkeypatch)
    assert main(["train", "--resume", str(run)]) == 0
    expected = history(tmp_path / "reference" / "run")
    assert len(expected) == EPOCHS and expected[1]["loss"] > 0
    assert history(run) == expected
