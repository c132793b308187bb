"""Build the layer-1 components (model, loss, regularizer, optimizer) named by a RunConfig.

Builder errors from the library (unknown names, unknown options) are ValueErrors; the CLI runs
this before any training starts and turns them into exit code 2.
"""

from __future__ import annotations

import torch
from torch import nn

from longtail.engine.config import ConfigError, RunConfig
from longtail.engine.methods import plan_for
from longtail.models import create_model
from longtail.models.heads import LWSHead
from longtail.regularizers import REGULARIZERS
from longtail.regularizers import build_regularizer as build_regularizer_by_name


def build_model(config: RunConfig, num_classes: int, in_channels: int, device: torch.device) -> nn.Module:
    """The run's model: the library model, then what its methods add (extra heads, frozen parts)."""
    spec = config.model
    model = create_model(spec.name, num_classes, in_channels=in_channels, head=spec.head,
                         head_scale=spec.head_scale, pretrained=spec.pretrained, **spec.options)
    model = plan_for(config).wrap_model(model, config).to(device)
    if spec.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def init_from_run(model: nn.Module, source: str, class_counts, load_head: bool = True,
                  fingerprint: dict | None = None) -> str:
    """Load the weights a finished run reports (its validation-selected ones if it selected) into
    ``model``: the backbone, and the classifier unless ``load_head`` is False (cRT starts from a
    fresh one). With an LWS head the classifier weights go under the scales. ``fingerprint``: this run's
    data fingerprint, which must be the source run's (same data and split). Returns a line for the log."""
    from longtail.engine.rundir.checkpoint import (CheckpointError, class_counts_hash, load_run_checkpoint, reported_weights,
                                            run_checkpoint)

    path = run_checkpoint(source)
    if not path.exists():
        raise FileNotFoundError(f"model.init_from={source}: no checkpoint at {path}; give a run directory "
                                f"(runs/<run>) or a checkpoint file")
    state = load_run_checkpoint(path)
    if state.get("class_counts_hash") != class_counts_hash(class_counts):
        raise CheckpointError(f"model.init_from={source} was trained on different class counts than this run's "
                              f"data; stage 2 must use the same dataset and split")
    note = None
    if fingerprint is not None:  # same counts, but are they the same images?
        from longtail.engine.rundir.fingerprint import check_same_data, read_recorded

        source_dir = path.parent.parent if path.parent.name == "checkpoints" else None
        note = check_same_data(read_recorded(source_dir, state), fingerprint, f"model.init_from={source}")
    weights = reported_weights(state)
    target = model.head.base_head if isinstance(model.head, LWSHead) else model.head
    head_prefix = "head."
    body = {k: v for k, v in weights.items() if not k.startswith(head_prefix)}
    head = {k[len(head_prefix):]: v for k, v in weights.items() if k.startswith(head_prefix)}
    try:
        missing, unexpected = model.load_state_dict(body, strict=False)
        if load_head:
            target.load_state_dict(head)
    except RuntimeError as error:
        raise CheckpointError(f"model.init_from={source}: its weights do not fit this model ({error}); use the "
                              f"stage-1 run's model.name / options / head") from None
    missing = [k for k in missing if not k.startswith(head_prefix)]
    if missing or unexpected:
        raise CheckpointError(f"model.init_from={source}: its weights do not fit this model (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}); use the stage-1 run's model.name / options")
    epoch = state["best"]["epoch"] + 1 if state.get("best") else state["epoch"]
    return f"initialised from {path} (epoch {epoch})" + (f"\n{note}" if note else "")


def build_loss_fn(config: RunConfig, class_counts, device: torch.device, rank: int = 0,
                  head: nn.Module = None) -> nn.Module:
    """The configured loss module, built by the run's loss method (``head``: the built model's, which
    LDAM binds to; see engine/methods)."""
    return plan_for(config).loss.objective(config, class_counts, device, rank, head)


def build_regularizer(config: RunConfig, class_counts, device: torch.device):
    name = config.regularizer.name
    if name == "none":
        if config.regularizer.options:
            raise ConfigError(f"regularizer options {config.regularizer.options} given but regularizer.name=none")
        return None
    if name not in REGULARIZERS:
        raise ConfigError(f"unknown regularizer '{name}'; valid: none, {', '.join(sorted(REGULARIZERS))}")
    return build_regularizer_by_name(name, class_counts, **config.regularizer.options).to(device)


def build_optimizer(config: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    optim = config.optim
    params = [p for p in model.parameters() if p.requires_grad]
    if optim.name == "sgd":
        return torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum, nesterov=optim.nesterov,
                               weight_decay=optim.weight_decay)
    return torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay)
