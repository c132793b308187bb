"""Training methods: what a method needs beyond the generic training loop (docs/architecture.md).

Each module here declares ``METHODS``, instances of :class:`~longtail.engine.methods.base.Method`:
a loss-kind method is chosen by ``loss.name`` (``claims``), a stage-kind one by
``model.decoupled``. :func:`plan_for` gives a run's pair; the trainer, the data setup and the
config checks call its hooks and never branch on a method's name. Adding a method is one module
here (found automatically) plus one preset in ``recipes/methods.yaml``.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from longtail.engine.errors import ConfigError
from longtail.engine.methods.base import Method, StepContext, check_options
from longtail.engine.methods.standard import StandardLoss

if TYPE_CHECKING:
    from longtail.engine.config.schema import RunConfig

__all__ = ["Method", "MethodPlan", "StepContext", "all_loss_names", "available_methods", "check_options", "plan_for"]


@lru_cache(maxsize=None)
def available_methods() -> tuple[Method, ...]:
    """Every method declared by a module of this package (sorted by module name, then declaration)."""
    found = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        found.extend(getattr(module, "METHODS", ()))
    return tuple(found)


def all_loss_names() -> list[str]:
    """Every valid ``loss.name``: the loss registry's plus the names methods add."""
    return sorted({name for method in available_methods() for name in method.loss_names()})


@dataclass(frozen=True)
class MethodPlan:
    """A run's two methods: ``loss`` (chosen by loss.name) and ``stage`` (by model.decoupled)."""

    loss: Method
    stage: Method

    def check(self, config: "RunConfig") -> None:
        if config.loss.name not in all_loss_names():
            raise ConfigError(f"unknown loss '{config.loss.name}'; valid: {', '.join(all_loss_names())}")
        self.loss.check(config)
        self.stage.check(config)

    def wrap_model(self, model, config: "RunConfig"):
        return self.stage.wrap_model(self.loss.wrap_model(model, config), config)

    def start_epoch(self, model, objective, epoch: int) -> None:
        self.loss.start_epoch(model, objective, epoch)
        self.stage.start_epoch(model, objective, epoch)


def plan_for(config: "RunConfig") -> MethodPlan:
    methods = available_methods()
    loss = next((m for m in methods if m.kind == "loss" and m.claims(config)), None)
    stage = next((m for m in methods if m.kind == "stage" and m.claims(config)), None)
    return MethodPlan(loss or _STANDARD, stage or _ONE_STAGE)


_STANDARD = StandardLoss()
_ONE_STAGE = Method()
