"""Evaluation: run a model over a loader into LongTailMetrics; re-evaluate a saved checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from longtail.engine.precision import autocast_context, resolve_precision
from longtail.metrics import LongTailMetrics


class NonFiniteOutputError(RuntimeError):
    """The model gave NaN / inf logits: its weights (or batch-norm statistics) have diverged."""


def spectral_norm_weighting(config, class_counts) -> tuple[torch.Tensor, dict]:
    """The class weights of the reported ``confusion_spectral_norm`` and a description of them.

    With CAR on, the run's own CAR weighting (``weighting``, ``r0``, ``l0`` as configured, CAR's
    defaults otherwise), so the reported test value is the quantity the run regularised; without
    CAR, CAR's default weighting. The description goes into metrics.json next to the value.
    """
    import inspect

    from longtail.regularizers import CAR
    from longtail.regularizers.bounds import class_weights

    keys = ("weighting", "r0", "l0")
    options = {k: p.default for k, p in inspect.signature(CAR).parameters.items() if k in keys}
    car_on = config.regularizer.name == "car"
    if car_on:
        options.update({k: v for k, v in config.regularizer.options.items() if k in keys})
    weights = class_weights(class_counts, options["weighting"], options["r0"], options["l0"])
    described = {"weighting": options["weighting"],
                 "source": "this run's CAR regularizer" if car_on else "CAR's default (this run has no CAR)"}
    if options["weighting"] == "frequency":
        described["r0"] = options["r0"]
    elif options["weighting"] == "count":
        described["l0"] = options["l0"]
    return weights, described


@torch.no_grad()
def evaluate_loader(model, loader, class_counts, device: torch.device, precision: str = "fp32",
                    class_weights=None) -> LongTailMetrics:
    """Accumulate the model's predictions on ``loader``; summed over processes when distributed.
    ``class_weights``: of the weighted confusion spectral norm (see :func:`spectral_norm_weighting`)."""
    metrics = LongTailMetrics(len(class_counts), class_counts, class_weights=class_weights)
    precision = resolve_precision(precision, device).chosen  # once, not per batch
    was_training = model.training
    model.eval()
    # Counted on the device and read once at the end (a per-batch check would stall a GPU).
    non_finite = torch.zeros((), device=device)
    for images, labels in loader:
        with autocast_context(device, precision):
            logits = model(images)
        logits = logits.float()
        non_finite += (~torch.isfinite(logits).all(dim=1)).sum()
        metrics.update(torch.nan_to_num(logits), labels)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(non_finite)
    if non_finite.item() > 0:
        raise NonFiniteOutputError(f"the model gives non-finite (NaN / inf) logits on {int(non_finite.item())} "
                                   f"evaluation image(s): its weights or batch-norm statistics have diverged")
    metrics.all_reduce()
    model.train(was_training)
    return metrics


def load_trained(target: Path, device: str = "auto", with_train_split: bool = False, check_data: bool = True):
    """(model, data, config, device) of a run directory (its last checkpoint) or a checkpoint file,
    with the weights its metrics.json reports: the last epoch's, or the validation-selected epoch's.
    ``with_train_split``: also an evaluation loader over the training set (eval transforms).
    ``check_data``: refuse (DataChangedError) when the data is not the data the run recorded."""
    import sys

    from longtail.engine.checkpoint import (CheckpointError, class_counts_hash, load_run_checkpoint, reported_weights,
                                            run_checkpoint)
    from longtail.engine.fingerprint import check_same_data, read_recorded
    from longtail.engine.components import build_model
    from longtail.engine.config import config_from_dict
    from longtail.engine.data_setup import build_data
    from longtail.engine.distributed import DistributedContext, select_device

    path = run_checkpoint(target)
    state = load_run_checkpoint(path)
    config = config_from_dict(state["config"])
    config.train.eval_train = with_train_split
    torch_device = select_device(device)
    data = build_data(config, torch_device, DistributedContext())
    if check_data:
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else None
        note = check_same_data(read_recorded(run_dir, state), data.fingerprint, f"the run {run_dir or path}")
        if note:
            print(note, file=sys.stderr)
    if class_counts_hash(data.class_counts) != state["class_counts_hash"]:
        raise CheckpointError(f"{path}: the dataset now gives different class counts than the run was trained on")
    model = build_model(config, len(data.class_counts), data.in_channels, torch_device)
    model.load_state_dict(reported_weights(state))
    model.eval()
    return model, data, config, torch_device


def evaluate_checkpoint(target: Path, split: str = "test", device: str = "auto") -> dict:
    """Re-evaluate the model of a run directory or checkpoint file (see :func:`load_trained`)."""
    return evaluate_run(target, split, device)[split]


def evaluate_run(target: Path, split: str = "test", device: str = "auto") -> dict:
    """:func:`evaluate_checkpoint` as ``{split: metrics}`` with the class names (:func:`name_classes`)."""
    model, data, config, torch_device = load_trained(target, device, with_train_split=split == "train")
    if split not in data.eval_loaders:
        raise ValueError(f"split '{split}' is not available for this run; available: {', '.join(data.eval_loaders)}")
    weights, described = spectral_norm_weighting(config, data.class_counts)
    metrics = evaluate_loader(model, data.eval_loaders[split], data.class_counts, torch_device,
                              config.train.precision, class_weights=weights).compute(spectral_norm=split == "test")
    if split == "test":
        metrics["confusion_spectral_norm_weighting"] = described
    return name_classes({split: metrics}, data.classes, data.class_counts)


def name_classes(results: dict, classes, class_counts) -> dict:
    """Add class names to a run's results (in place; returned): ``classes``, each split's
    ``worst_class_name``, and ``per_class``: one row per class (name, training images, then per
    evaluated split its accuracy and number of images), in label order."""
    classes = [str(name) for name in classes]
    results["classes"] = classes
    splits = [s for s in ("test", "val", "train") if isinstance(results.get(s), dict)]
    for split in splits:
        worst = results[split].get("worst_class")
        results[split]["worst_class_name"] = None if worst is None else classes[worst]
    rows = []
    for j, name in enumerate(classes):
        row = {"class": name, "train_images": int(class_counts[j])}
        for split in splits:
            row[f"{split}_accuracy"] = results[split]["per_class_accuracy"][j]
            row[f"{split}_images"] = int(results[split]["per_class_support"][j])
        rows.append(row)
    results["per_class"] = rows
    return results
