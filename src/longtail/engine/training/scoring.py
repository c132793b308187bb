"""Scoring a model: run it over a loader into ``LongTailMetrics`` (under the run's precision), the
class weights of the reported confusion spectral norm, and class names in a run's results. Used by
the trainer every evaluation and by :mod:`longtail.engine.evaluation` on saved runs."""

from __future__ import annotations

import torch

from longtail.engine.runtime.precision import autocast_context, resolve_precision
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
