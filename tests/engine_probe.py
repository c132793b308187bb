"""Helpers for engine tests that watch what the real Trainer does, without accuracy.

A Trainer is built from a real config on the tiny idx dataset of conftest; the tests then spy on
what crosses the engine's boundaries (the model's forward, the loss's inputs, the optimizer's step)
by wrapping those objects' methods on the instance. Nothing in the engine knows it is watched.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from conftest import tiny_run_overrides
from longtail.engine.config import build_config
from longtail.engine.training.trainer import Trainer, _StopFlag

# Everything that would make two runs differ for reasons other than the option under test is off:
# no augmentation, no warm-up, a constant lr.
# fp32: these probes compare trainers against exact float32 arithmetic, which the default
# train.precision=auto would replace by bf16 autocast on a CPU with native bf16.
QUIET = ["data.crop_padding=0", "data.flip=false", "optim.schedule=constant", "train.eval_train=false",
         "model.options={width: 4}", "train.precision=fp32"]


class TinyNet(nn.Module):
    """Linear features + linear head, no batch norm: a large batch and its halves give the same
    mean gradient, which a batch-norm model would not."""

    def __init__(self, num_classes: int, in_channels: int, pixels: int = 28 * 28, width: int = 8):
        super().__init__()
        self.backbone = nn.Sequential(nn.Flatten(1), nn.Linear(in_channels * pixels, width), nn.Tanh())
        self.head = nn.Linear(width, num_classes)

    def features(self, x):
        return self.backbone(x)

    def forward(self, x):
        return self.head(self.features(x))


def tiny_model(monkeypatch):
    """Make the Trainer build a TinyNet instead of the configured model (seeded like the real one)."""
    import longtail.engine.training.trainer as trainer_module

    def build(config, num_classes, in_channels, device):
        return TinyNet(num_classes, in_channels).to(device)

    monkeypatch.setattr(trainer_module, "build_model", build)


def make_trainer(root: Path, output: Path, *overrides: str, epochs: int = 1, method=None) -> Trainer:
    config, label = build_config(None, None, [*tiny_run_overrides(root, output, epochs=epochs), *QUIET,
                                              "train.device=cpu", *overrides], method)
    return Trainer(config, label)


class Spy:
    """Records the arguments (and result) of every call of ``obj.method`` (patched on the instance)."""

    def __init__(self, obj, method: str, record):
        self.calls = []
        original = getattr(obj, method)

        def wrapped(*args, **kwargs):
            result = original(*args, **kwargs)
            self.calls.append(record(*args, result=result, **kwargs))
            return result

        setattr(obj, method, wrapped)


def spy_loss(trainer: Trainer) -> Spy:
    """(epoch, logits, targets, loss value) of every call of the base loss."""
    return Spy(trainer.loss_fn, "forward", lambda logits, targets, result: {
        "epoch": trainer.state.epoch, "logits": logits.detach().clone(), "targets": targets.detach().clone(),
        "loss": result.detach().clone()})


def spy_forward(trainer: Trainer, extra=None) -> Spy:
    """The images the training forward received, with ``extra()`` evaluated inside the forward."""
    return Spy(trainer.model, "forward", lambda images, result: {
        "images": images.detach().clone(), "output_dtype": result.dtype, **(extra() if extra else {})})


def spy_step(trainer: Trainer) -> Spy:
    """At every optimizer step: lr, the parameters before the step and their (unscaled) gradients."""
    optimizer = trainer.optimizer
    params = [p for group in optimizer.param_groups for p in group["params"]]
    before = {}

    original = optimizer.step

    def step(*args, **kwargs):
        before["params"] = [p.detach().clone() for p in params]
        before["grads"] = [p.grad.detach().clone() for p in params]
        before["lr"] = optimizer.param_groups[0]["lr"]
        return original(*args, **kwargs)

    optimizer.step = step
    spy = Spy(optimizer, "step", lambda *a, result, **k: {
        **before, "after": [p.detach().clone() for p in params]})
    return spy


def run_epochs(trainer: Trainer, epochs: int) -> None:
    """Train ``epochs`` epochs through the trainer's own epoch loop (no evaluation, no outputs)."""
    stop = _StopFlag()
    for _ in range(epochs):
        trainer.train_epoch(stop)
        trainer.state.epoch += 1
        trainer.state.batch = 0


def parameters(trainer: Trainer) -> list:
    return [p.detach().clone() for p in trainer.model.parameters()]
