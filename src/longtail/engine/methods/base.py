"""The hooks a training method may fill in, and their generic defaults.

A *method* is what a run's ``loss.name`` (or, for decoupled stage 2, ``model.decoupled``) selects
beyond the loss value itself: extra heads on the model, its own sampler or loader, its own training
step, per-epoch hooks, statistics for history.jsonl, and the options it refuses. Each method is
one module of :mod:`longtail.engine.methods` with a module-level ``METHOD``; the trainer, the data
setup and the config checks call the hooks of :func:`~longtail.engine.methods.plan_for`'s plan
and never test a method's name.

Nothing here imports the rest of the engine: hooks receive what they need as arguments.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

import torch
from torch import nn

from longtail.engine.errors import ConfigError

if TYPE_CHECKING:  # annotations only: the config schema imports nothing from here either way
    from longtail.engine.config.schema import RunConfig


@dataclass
class StepContext:
    """What a training step may use, handed to :meth:`Method.training_step` for every batch."""

    model: nn.Module                 # the model to call (possibly the DDP / compiled wrapper)
    objective: nn.Module             # the method's loss module (``Method.objective``)
    regularizer: Optional[nn.Module]
    autocast: Callable               # () -> the run's autocast context
    check_finite: Callable           # {name: scalar tensor} -> raises if any is non-finite (collective)
    mix: Callable                    # (images, targets, epoch, batch index) -> mixed batch (data.mixing)
    loss_terms: Callable             # (float32 logits, targets) -> {base_loss, regularizer}, checked finite


class Method:
    """Generic behaviour: every hook does what a plain ``loss`` + ``regularizer`` run needs.

    A loss-kind method (``kind = "loss"``) is chosen by :meth:`claims` on ``loss.name``; a
    stage-kind method (``kind = "stage"``) by ``model.decoupled``. A run has one of each
    (the defaults: :class:`~longtail.engine.methods.standard.StandardLoss` and :class:`Method` itself
    as the one-stage "none").
    """

    name = "none"
    kind = "stage"
    # Stage 2 of decoupled training starts from a finished run (model.init_from) and says whether
    # that run's classifier is loaded too.
    requires_init_from = False
    init_loads_head = True
    # The method's training step needs image batches (its own views or heads): cached backbone
    # features (data.feature_cache) cannot stand in for them.
    uses_image_batches = False

    def claims(self, config: "RunConfig") -> bool:
        return self.kind == "stage" and config.model.decoupled == self.name

    def loss_names(self) -> tuple[str, ...]:
        """``loss.name`` values this method adds to the loss registry's (for listings and errors)."""
        return ()

    # ---------------------------------------------------------------- before any data is read
    def check(self, config: "RunConfig") -> None:
        """Raise ConfigError for options this method refuses."""

    # ---------------------------------------------------------------- model and objective
    def wrap_model(self, model: nn.Module, config: "RunConfig") -> nn.Module:
        """Extra heads, frozen parts: the model the run trains (rebuilt alike by eval / load_run)."""
        return model

    def objective(self, config: "RunConfig", class_counts, device: torch.device, rank: int,
                  head: Optional[nn.Module]) -> Optional[nn.Module]:
        """The loss module (its state_dict goes into checkpoints); None: not this method's concern."""
        return None

    def before_training(self, model: nn.Module, train_model: nn.Module, data, config: "RunConfig",
                        device: torch.device, context, say: Callable) -> tuple:
        """A fresh run, after the model is built and before the optimizer: data-dependent
        initialisation, or another (model to train, training loader) pair; ``say`` prints on the main process."""
        return train_model, data.train_loader

    # ---------------------------------------------------------------- data
    def sampler(self, config: "RunConfig", labels: torch.Tensor, num_classes: int, world_size: int, rank: int):
        """A training sampler of the method's own, or None for ``data.sampler``."""
        return None

    def train_loader(self, config: "RunConfig", loader, train_set, sampler, batch: int, device: torch.device,
                     rank: int, class_counts: list, preprocessing):
        """The training loader, given the ordinary one built over the same data."""
        return loader

    # ---------------------------------------------------------------- training
    def start_epoch(self, model: nn.Module, objective: nn.Module, epoch: int) -> None:
        """Called after ``model.train()`` at the start (or resumed middle) of every epoch."""

    def training_step(self, step: StepContext, images, targets: torch.Tensor, epoch: int, batch_index: int) -> dict:
        """One batch's forward and loss terms {name: scalar}; their sum is back-propagated."""
        images, targets = step.mix(images, targets, epoch, batch_index)
        with step.autocast():
            logits = step.model(images)
        return step.loss_terms(logits.float(), targets)

    def epoch_statistics(self, objective: nn.Module) -> dict:
        """Extra numbers for this epoch's history.jsonl line (called on every process): what the
        objective reports through its own ``epoch_statistics()`` (e.g. CCAR's weights per class
        group, ConCutMix's rectified label mass), else nothing."""
        report = getattr(objective, "epoch_statistics", None)
        return report() if callable(report) else {}


def check_options(section: str, name: str, options: dict, builder, engine_options=(),
                  kind: Optional[str] = None, not_options=("self", "class_counts")) -> None:
    """Refuse unknown options and values whose type cannot be the builder's: each option's type must
    match its default's (a number for a float, a whole number for an int, true/false for a bool, text
    for a string). The builder's own checks (ranges, choices) run when the component is built."""
    signature = inspect.signature(builder)
    kind = kind or section
    parameters = {k: p for k, p in signature.parameters.items()
                  if k not in not_options and p.kind is not inspect.Parameter.VAR_KEYWORD}
    for option, value in options.items():
        if option in engine_options:
            continue
        if option not in parameters:
            raise ConfigError(f"{section}.{option} is not an option of {kind} '{name}'; its options: "
                              f"{', '.join(parameters) or 'none'}")
        default = parameters[option].default
        expected = None
        if isinstance(default, bool):
            ok, expected = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok, expected = isinstance(value, int) and not isinstance(value, bool), "a whole number"
        elif isinstance(default, float):
            ok, expected = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        elif isinstance(default, str):
            ok, expected = isinstance(value, str), "text"
        else:  # no default or None / an object default: the builder checks it
            ok = True
        if not ok:
            raise ConfigError(f"{section}.{option}={value!r} ({type(value).__name__}) is not valid for {kind} "
                              f"'{name}': expected {expected} like its default {default!r}")

