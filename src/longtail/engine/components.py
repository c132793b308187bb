"""Build the layer-1 components (model, loss, regularizer, optimizer) named by a RunConfig.

Builder errors from the library (unknown names, unknown options) are ValueErrors; the CLI runs
this before any training starts and turns them into exit code 2.
"""

from __future__ import annotations

import torch
from torch import nn

from longtail.engine.config import ConfigError, RunConfig
from longtail.losses import build_loss
from longtail.models import create_model
from longtail.regularizers import CAR

REGULARIZERS = ("none", "car")


def build_model(config: RunConfig, num_classes: int, in_channels: int, device: torch.device) -> nn.Module:
    spec = config.model
    model = create_model(spec.name, num_classes, in_channels=in_channels, head=spec.head,
                         head_scale=spec.head_scale, pretrained=spec.pretrained, **spec.options)
    model = model.to(device)
    if spec.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def build_loss_fn(config: RunConfig, class_counts, device: torch.device) -> nn.Module:
    options = dict(config.loss.options)
    if "switch_fraction" in options:
        # Engine-level option: a schedule switch (DRW) placed relative to the protocol's length,
        # so one method preset means "80% of training" on a 200-epoch and a 6-epoch protocol alike.
        fraction = options.pop("switch_fraction")
        if not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
            raise ConfigError(f"loss.switch_fraction must be a number in [0, 1], got {fraction!r}")
        if "switch_epoch" in options:
            raise ConfigError("give loss.switch_epoch or loss.switch_fraction, not both")
        options["switch_epoch"] = int(round(fraction * config.optim.epochs))
    return build_loss(config.loss.name, class_counts, **options).to(device)


def build_regularizer(config: RunConfig, class_counts, device: torch.device):
    name = config.regularizer.name
    if name == "none":
        if config.regularizer.options:
            raise ConfigError(f"regularizer options {config.regularizer.options} given but regularizer.name=none")
        return None
    if name == "car":
        return CAR(class_counts, **config.regularizer.options).to(device)
    raise ConfigError(f"unknown regularizer '{name}'; valid: {', '.join(REGULARIZERS)}")


def build_optimizer(config: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    optim = config.optim
    params = [p for p in model.parameters() if p.requires_grad]
    if optim.name == "sgd":
        return torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum, nesterov=optim.nesterov,
                               weight_decay=optim.weight_decay)
    return torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay)
