"""Any loss of the library's registry (``longtail.losses``), with an optional regularizer, trained
by the generic step: the default method of every run whose loss needs nothing more.

Engine option ``loss.switch_fraction``: a schedule switch (DRW) placed at a fraction of
``optim.epochs``, so one method preset means "80 % of training" on a 200-epoch and a 6-epoch
protocol alike.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Optional

import torch
from torch import nn

from longtail.engine.errors import ConfigError
from longtail.engine.methods.base import Method, check_options
from longtail.losses import build_loss
from longtail.losses.registry import ALIASES, LOSSES

if TYPE_CHECKING:
    from longtail.engine.config.schema import RunConfig


class StandardLoss(Method):
    name = "standard"
    kind = "loss"
    engine_options = ("switch_fraction",)

    def claims(self, config: "RunConfig") -> bool:
        return False  # the fallback: chosen when no other loss method claims the run

    def check(self, config: "RunConfig") -> None:
        loss = config.loss
        key = ALIASES.get(loss.name, loss.name)  # a known name: the plan refused unknown ones
        switch = loss.options.get("switch_fraction")
        if switch is not None and (isinstance(switch, bool) or not isinstance(switch, (int, float))
                                   or not 0 <= switch <= 1):
            raise ConfigError(f"loss.switch_fraction={switch!r} is out of range; valid: a number in [0, 1]")
        check_options("loss", loss.name, loss.options, LOSSES[key], engine_options=self.engine_options)
        # Build it once on a tiny class-count vector: the builder's own value checks (omega range,
        # unknown weighting...) then fire here, before any data is read.
        options = {k: v for k, v in loss.options.items() if k not in self.engine_options}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                build_loss(loss.name, [2, 1], **self.test_options(options))
            except (ValueError, TypeError) as error:
                raise ConfigError(f"loss '{loss.name}' with options {options}: {error}") from None

    def test_options(self, options: dict) -> dict:
        """Options for the trial build in :meth:`check` (a subclass may add what the engine binds)."""
        return options

    def loss_options(self, config: "RunConfig", head: Optional[nn.Module]) -> dict:
        """The library builder's keyword options for this run."""
        options = dict(config.loss.options)
        if "switch_fraction" in options:
            fraction = options.pop("switch_fraction")
            if not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
                raise ConfigError(f"loss.switch_fraction must be a number in [0, 1], got {fraction!r}")
            if "switch_epoch" in options:
                raise ConfigError("give loss.switch_epoch or loss.switch_fraction, not both")
            options["switch_epoch"] = int(round(fraction * config.optim.epochs))
        return options

    def objective(self, config: "RunConfig", class_counts, device: torch.device, rank: int,
                  head: Optional[nn.Module]) -> nn.Module:
        loss = build_loss(config.loss.name, class_counts, **self.loss_options(config, head)).to(device)
        if callable(getattr(loss, "track_statistics", None)):
            # Losses that can say what they do to training (CCAR: Omega per class group) record it
            # into history.jsonl every epoch (Method.epoch_statistics).
            loss.track_statistics()
        return loss

    def start_epoch(self, model: nn.Module, objective: nn.Module, epoch: int) -> None:
        if hasattr(objective, "set_epoch"):  # DRW-style schedules, also nested (e.g. inside CCAR)
            objective.set_epoch(epoch)

    def loss_names(self) -> tuple[str, ...]:
        return (*LOSSES, *ALIASES)


METHODS = (StandardLoss(),)
