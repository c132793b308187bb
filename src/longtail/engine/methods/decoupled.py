"""Decoupled training, stage 2 (Kang et al. 2020), selected by ``model.decoupled``: start from a
finished run on the same data (``model.init_from``), freeze its backbone (batch-norm statistics
too) and train only the classifier: cRT re-initialises and retrains it, LWS keeps it frozen and
learns a per-class scale."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from longtail.engine.methods.base import Method
from longtail.models.heads import LWSHead

if TYPE_CHECKING:
    from longtail.engine.config.schema import RunConfig


def freeze_backbone(model: nn.Module) -> None:
    """Every part of the model but ``model.head`` stops learning, batch-norm statistics included
    (see :func:`keep_frozen_parts_in_eval`)."""
    for name, child in model.named_children():
        if name != "head":
            child.requires_grad_(False)


def keep_frozen_parts_in_eval(model: nn.Module) -> None:
    """After ``model.train()``: put the frozen backbone back in eval mode, so its batch-norm running
    statistics stay those of stage 1 (the representation is fixed; only the classifier moves)."""
    for name, child in model.named_children():
        if name != "head" and not any(p.requires_grad for p in child.parameters()):
            child.eval()


class ClassifierRetraining(Method):
    """cRT: a fresh classifier on the frozen stage-1 backbone."""

    name = "crt"
    kind = "stage"
    requires_init_from = True
    init_loads_head = False

    def wrap_model(self, model: nn.Module, config: "RunConfig") -> nn.Module:
        freeze_backbone(model)
        return model

    def start_epoch(self, model: nn.Module, objective: nn.Module, epoch: int) -> None:
        keep_frozen_parts_in_eval(model)


class LearnableWeightScaling(ClassifierRetraining):
    """LWS: the stage-1 classifier frozen too; only its per-class scales train."""

    name = "lws"
    init_loads_head = True

    def wrap_model(self, model: nn.Module, config: "RunConfig") -> nn.Module:
        freeze_backbone(model)
        model.head = LWSHead(model.head)  # freezes the classifier; only its per-class scales train
        return model


METHODS = (ClassifierRetraining(), LearnableWeightScaling())
