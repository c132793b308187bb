"""Checks of a whole :class:`RunConfig` before any work starts: every numeric key's range, every
choice, cross-field rules, and each component's options (the selected method's own checks come
from :mod:`longtail.engine.methods`)."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Optional

from longtail.engine.config.schema import (OPEN_SECTIONS, SELECTABLE_METRICS, TYPED_SECTIONS, ConfigError,
                                           RunConfig)
from longtail.engine.methods import check_options, plan_for


_CHOICES = {
    "data.profile": ("exp", "step"),
    "data.class_order": ("index", "frequency"),
    "data.validation_group_scope": ("class", "dataset"),
    "data.mixing": ("none", "mixup", "cutmix"),
    "data.normalization": ("dataset", "imagenet", "clip"),
    "data.fingerprint": ("auto", "stat", "content"),
    "model.head": ("linear", "cosine"),
    "model.decoupled": ("none", "crt", "lws"),
    "model.compile": ("auto", "true", "false"),
    "model.finetune": ("full", "classifier", "norm_bias", "last_stage", "lora", "adaptformer"),
    "model.classifier_init": ("none", "class_mean", "text"),
    "model.lora_targets": ("linear+conv", "linear", "conv"),
    "optim.name": ("sgd", "adamw"),
    "optim.schedule": ("multistep", "cosine", "constant"),
    "optim.warmup_style": ("linear", "stepwise"),
    "train.precision": ("auto", "fp32", "bf16", "fp16"),
    "train.headline_metric": ("accuracy", "balanced_accuracy"),
}


# Valid range of every numeric key: (lowest, lowest allowed?, highest, highest allowed?); None = unbounded.
# Every float must also be finite. A None value (for Optional keys) means "off" and is not checked.
_RANGES = {
    "data.imbalance_factor": (1, True, None, False),
    "data.split_seed": (0, True, None, False),
    "data.validation_per_class": (0, True, None, False),
    "data.n_max": (1, True, None, False),
    "data.sampler_q": (0, True, None, False),
    "data.batch_size": (1, True, None, False),
    "data.eval_batch_size": (1, True, None, False),
    "data.crop_padding": (0, True, None, False),
    "data.cutout": (0, True, None, False),
    "data.image_size": (1, True, None, False),
    "data.channels": (1, True, None, False),
    "data.workers": (0, True, None, False),
    "data.mixing_alpha": (0, False, None, False),
    "data.mixing_prob": (0, True, 1, True),
    "data.mixing_until_epoch": (0, True, None, False),
    "data.test_fraction": (0, False, 1, False),
    "data.crop_scale_min": (0, False, 1, True),
    "optim.warmup_start_lr": (0, True, None, False),
    "optim.iterations": (1, True, None, False),
    "optim.warmup_iterations": (0, True, None, False),
    "model.head_scale": (0, False, None, False),
    "model.lora_rank": (1, True, None, False),
    "model.lora_alpha": (0, False, None, False),
    "model.adapter_dim": (1, True, None, False),
    "model.adapter_scale": (None, False, None, False),  # any finite factor (AdaptFormer's fixed s is 0.1)
    "optim.lr": (0, False, None, False),
    "optim.momentum": (0, True, 1, False),
    "optim.weight_decay": (0, True, None, False),
    "optim.epochs": (1, True, None, False),
    "optim.warmup_epochs": (0, True, None, False),
    "optim.min_lr": (0, True, None, False),
    "optim.grad_accumulation": (1, True, None, False),
    "optim.clip_grad_norm": (0, False, None, False),
    "train.seed": (0, True, None, False),
    "train.eval_every": (0, True, None, False),
    "train.checkpoint_every": (1, True, None, False),
    "train.threads": (1, True, None, False),
}
_LIST_RANGES = {"optim.milestones": (0, True, None, False), "optim.milestone_factors": (0, False, None, False)}


def _range_text(low, low_in, high, high_in) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>=' if low_in else '>'} {low:g}")
    if high is not None:
        parts.append(f"{'<=' if high_in else '<'} {high:g}")
    return " and ".join(parts) or "finite"


def _in_range(value, low, low_in, high, high_in) -> bool:
    if isinstance(value, float) and not math.isfinite(value):
        return False
    if low is not None and (value < low or (value == low and not low_in)):
        return False
    if high is not None and (value > high or (value == high and not high_in)):
        return False
    return True


def _check_ranges(config: RunConfig) -> None:
    for dotted, bounds in _RANGES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(config, section), key)
        if value is not None and not _in_range(value, *bounds):
            raise ConfigError(f"{dotted}={value!r} is out of range; valid: {_range_text(*bounds)}")
    for dotted, bounds in _LIST_RANGES.items():
        section, key = dotted.split(".")
        values = getattr(getattr(config, section), key)
        for value in values:
            if not _in_range(value, *bounds):
                raise ConfigError(f"{dotted}={values!r}: entry {value!r} is out of range; every entry must be "
                                  f"{_range_text(*bounds)}")
    # Any float anywhere (model options, loss / regularizer options included) must be finite.
    for section in TYPED_SECTIONS + OPEN_SECTIONS:
        for path, value in _walk(dataclasses.asdict(getattr(config, section)), section):
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{path}={value!r} is not a finite number")


def _walk(value, path):
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _walk(inner, f"{path}.{key}" if key != "options" else path)
    elif isinstance(value, (list, tuple)):
        for inner in value:
            yield from _walk(inner, path)
    else:
        yield path, value



def _check_components(config: RunConfig) -> None:
    """Check the method's own rules, loss / regularizer names, option names and option types (and
    those of the library's own models' options) now, before any data is read."""
    plan_for(config).check(config)
    from longtail.models.factory import _MODELS

    constructor = getattr(_MODELS.get(config.model.name), "constructor", None)
    if constructor is not None:  # timm and torchvision-style models check their options when built
        check_options("model.options", config.model.name, config.model.options, constructor,
                      kind="model", not_options=("self", "num_classes", "in_channels", "head"))
    regularizer = config.regularizer
    if regularizer.name == "none":
        if regularizer.options:
            raise ConfigError(f"regularizer options {regularizer.options} given but regularizer.name=none")
        return
    from longtail.regularizers import REGULARIZERS, build_regularizer

    if regularizer.name not in REGULARIZERS:
        raise ConfigError(f"unknown regularizer '{regularizer.name}'; valid: none, {', '.join(sorted(REGULARIZERS))}")
    check_options("regularizer", regularizer.name, regularizer.options, REGULARIZERS[regularizer.name].__init__)
    try:  # the regularizer's own value checks (CAR: weighting, surrogate...) on a tiny class-count vector
        build_regularizer(regularizer.name, [2, 1], **regularizer.options)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"regularizer '{regularizer.name}' with options {regularizer.options}: {error}") from None


def check_run_name(run_name: Optional[str]) -> None:
    """train.run_name is one directory name inside train.output_dir, never a path out of it."""
    if run_name is None:
        return
    if (run_name in ("", ".", "..") or "/" in run_name or "\\" in run_name or "\0" in run_name
            or Path(run_name).is_absolute()):
        raise ConfigError(f"train.run_name={run_name!r} is not valid: it must be a single directory name inside "
                          f"train.output_dir (no '/', '\\', '..' or absolute path)")


def validate(config: RunConfig) -> None:
    """Cross-field checks that single-key type checks cannot do."""
    _check_ranges(config)
    check_run_name(config.train.run_name)
    for dotted, choices in _CHOICES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(config, section), key)
        if value not in choices:
            raise ConfigError(f"{dotted}={value!r} is not valid; choose one of: {', '.join(choices)}")
    optim = config.optim
    if len(optim.milestones) != len(optim.milestone_factors):
        raise ConfigError(
            f"optim.milestones {optim.milestones} and optim.milestone_factors "
            f"{optim.milestone_factors} must have the same length"
        )
    if optim.min_lr > optim.lr:
        raise ConfigError(f"optim.min_lr={optim.min_lr:g} is out of range; valid: <= optim.lr ({optim.lr:g})")
    _validate_iterations(config)
    select_on = config.train.select_on
    if select_on != "final":
        if select_on not in SELECTABLE_METRICS:
            raise ConfigError(f"train.select_on={select_on!r} is not valid; choose final or one of: "
                              f"{', '.join(SELECTABLE_METRICS)}")
    _refuse_selection_on_test(config)
    if config.data.crop_scale_min is not None and not 0 < config.data.crop_scale_min <= 1:
        raise ConfigError(f"data.crop_scale_min must be in (0, 1], got {config.data.crop_scale_min}")
    if config.data.randaugment and config.data.autoaugment:
        raise ConfigError("data.randaugment and data.autoaugment are alternatives; switch on at most one")
    _check_validation_groups(config)
    device = config.train.device
    if not (device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:[0-9]+", device)):
        raise ConfigError(f"train.device={device!r} is not valid; use auto, cpu, cuda or cuda:N")
    _check_components(config)


def _check_validation_groups(config: RunConfig) -> None:
    """The group pattern compiles, the group file exists, and only one of them is given."""
    data = config.data
    if data.validation_group_pattern is not None and data.validation_group_file is not None:
        raise ConfigError("data.validation_group_pattern and data.validation_group_file are alternatives "
                          "(groups from file names, or from a group file); give one")
    if data.validation_group_pattern is not None:
        try:
            re.compile(data.validation_group_pattern)
        except re.error as error:
            raise ConfigError(f"data.validation_group_pattern={data.validation_group_pattern!r} is not a valid "
                              f"regular expression: {error}") from None
    if data.validation_group_file is not None and not Path(data.validation_group_file).is_file():
        raise ConfigError(f"data.validation_group_file={data.validation_group_file!r} does not exist; give a "
                          f"UTF-8 file of '<class folder>/<file><TAB><group>' lines")


def _refuse_selection_on_test(config: RunConfig) -> None:
    """train.select_on reads the 'val' split; refuse it where 'val' is the dataset's test split
    (iNaturalist 2018) unless data.validation_per_class carves a validation split from training."""
    if config.train.select_on == "final" or config.data.validation_per_class:
        return
    from longtail.data import dataset_test_splits

    try:
        test_splits = dataset_test_splits(config.data.name)
    except ValueError:
        return  # unknown dataset: reported with the valid names when the data is built
    if "val" in test_splits:
        raise ConfigError(
            f"train.select_on={config.train.select_on} would select on split 'val', which is the test split of "
            f"{config.data.name} (its val list is the test set of every paper); set data.validation_per_class=N to "
            f"carve a validation split from the training list, or train.select_on=final")


def _validate_iterations(config: RunConfig) -> None:
    """Iteration-based length and warm-up (optim.iterations / warmup_iterations / warmup_start_lr)."""
    optim = config.optim
    if optim.iterations is not None and optim.iterations < 1:
        raise ConfigError(f"optim.iterations must be at least 1 (or null for epoch-based training), got {optim.iterations}")
    if optim.warmup_iterations is not None:
        if optim.warmup_iterations < 0:
            raise ConfigError(f"optim.warmup_iterations must be >= 0, got {optim.warmup_iterations}")
        if optim.warmup_epochs:
            raise ConfigError(f"give optim.warmup_iterations or optim.warmup_epochs, not both "
                              f"(set optim.warmup_epochs=0; it is {optim.warmup_epochs})")
        if optim.warmup_style == "stepwise":
            raise ConfigError("optim.warmup_style=stepwise steps once per epoch; use optim.warmup_epochs with it")
    if optim.warmup_start_lr is not None:
        if optim.warmup_style == "stepwise":
            raise ConfigError("optim.warmup_start_lr applies to the linear warm-up; the stepwise one starts at "
                              "lr / warmup_epochs")
        if optim.warmup_start_lr < 0:
            raise ConfigError(f"optim.warmup_start_lr must be >= 0, got {optim.warmup_start_lr}")
    if optim.iterations is not None and config.data.sampler == "progressive":
        raise ConfigError("data.sampler=progressive schedules over optim.epochs, which optim.iterations derives "
                          "from the batches per epoch; give optim.epochs instead of optim.iterations")

