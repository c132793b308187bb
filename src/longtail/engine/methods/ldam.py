"""LDAM and LDAM-DRW (Cao et al. 2019): the margin loss is bound to the cosine classifier it was
built for, and LDAM's scale s *is* that head's scale (``model.head_scale``): one setting, so
``loss.scale`` is refused and the engine passes the model's own head to the loss."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from torch import nn

from longtail.engine.errors import ConfigError
from longtail.engine.methods.standard import StandardLoss
from longtail.losses.registry import _canonical

if TYPE_CHECKING:
    from longtail.engine.config.schema import RunConfig


class LDAM(StandardLoss):
    name = "ldam"

    def claims(self, config: "RunConfig") -> bool:
        try:
            return _canonical(config.loss.name) in ("ldam", "ldam_drw")
        except ValueError:
            return False  # an unknown name is reported with the valid ones by the standard check

    def check(self, config: "RunConfig") -> None:
        options = config.loss.options
        if config.model.head != "cosine":
            raise ConfigError(f"loss.name={config.loss.name} needs the cosine classifier it was built for: set "
                              f"model.head=cosine (its scale s is model.head_scale, {config.model.head_scale:g})")
        if "scale" in options:
            raise ConfigError(f"loss.scale: LDAM's scale is the cosine head's scale, one setting; set "
                              f"model.head_scale={options['scale']} instead of loss.scale")
        if options.get("logits_prescaled", True) is not True:
            raise ConfigError("loss.logits_prescaled: the engine's cosine head outputs s * cos; leave it True")
        if "head" in options:
            raise ConfigError("loss.head: the engine passes the model's own head")
        super().check(config)

    def loss_options(self, config: "RunConfig", head: Optional[nn.Module]) -> dict:
        options = super().loss_options(config, head)
        options["scale"] = config.model.head_scale
        if head is not None:
            options["head"] = head
        return options


METHODS = (LDAM(),)
