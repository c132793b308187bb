"""The lr of every optimizer step of the real Trainer follows the schedule options (issue 22):
iteration-based runs span exactly ``optim.iterations`` batches, ``warmup_iterations`` counts
batches, ``warmup_start_lr`` and ``warmup_style`` reach the trainer. The expected lr is written
here from the protocols' formulas, never by calling the engine's ``learning_rate``."""

from __future__ import annotations

import math

import pytest

from engine_probe import make_trainer, run_epochs, spy_step, tiny_model


def test_iteration_based_cosine_with_linear_warmup_from_a_start_lr(tiny_idx_root, tmp_path, monkeypatch):
    tiny_model(monkeypatch)
    base, start, min_lr, iterations, warmup = 0.2, 0.01, 0.001, 17, 5
    trainer = make_trainer(tiny_idx_root, tmp_path, f"optim.lr={base}", "optim.schedule=cosine",
                           f"optim.min_lr={min_lr}", f"optim.iterations={iterations}",
                           f"optim.warmup_iterations={warmup}", f"optim.warmup_start_lr={start}")
    per_epoch = trainer.data.steps_per_epoch
    # The schedule must not line up with epochs, or "whole epochs" and "iterations" would agree.
    assert iterations % per_epoch != 0 and warmup != per_epoch
    steps = spy_step(trainer)
    run_epochs(trainer, math.ceil(iterations / per_epoch))
    assert len(steps.calls) == iterations
    for i, call in enumerate(steps.calls):
        if i < warmup:  # linear per batch from warmup_start_lr to the base lr over `warmup` batches
            expected = start + (base - start) * i / warmup
        else:  # cosine from the base lr to min_lr over the remaining batches, to exactly `iterations`
            expected = min_lr + (base - min_lr) * (1 + math.cos(math.pi * (i - warmup) / (iterations - warmup))) / 2
        assert call["lr"] == pytest.approx(expected, rel=1e-9, abs=1e-12), i


def test_stepwise_warmup_is_what_the_trainer_uses(tiny_idx_root, tmp_path, monkeypatch):
    """LDAM-DRW's adjust_learning_rate: lr * (e + 1) / warmup_epochs, constant within epoch e."""
    tiny_model(monkeypatch)
    base, epochs = 0.3, 3
    trainer = make_trainer(tiny_idx_root, tmp_path, f"optim.lr={base}", "optim.warmup_style=stepwise",
                           "optim.warmup_epochs=2", epochs=epochs)
    steps = spy_step(trainer)
    run_epochs(trainer, epochs)
    per_epoch = trainer.data.steps_per_epoch
    assert len(steps.calls) == epochs * per_epoch
    for i, call in enumerate(steps.calls):
        epoch = i // per_epoch
        expected = base * min(1.0, (epoch + 1) / 2)
        assert call["lr"] == pytest.approx(expected, rel=1e-12), i
