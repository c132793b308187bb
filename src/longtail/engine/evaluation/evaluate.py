"""Re-evaluate a saved run: load the weights it reports (``load_trained``) and score them
(``evaluate_checkpoint`` / ``evaluate_run``). The scoring itself is :mod:`longtail.engine.training.scoring`."""

from __future__ import annotations

from pathlib import Path

from longtail.engine.training.scoring import evaluate_loader, name_classes, spectral_norm_weighting


def load_trained(target: Path, device: str = "auto", with_train_split: bool = False, check_data: bool = True):
    """(model, data, config, device) of a run directory (its last checkpoint) or a checkpoint file,
    with the weights its metrics.json reports: the last epoch's, or the validation-selected epoch's.
    ``with_train_split``: also an evaluation loader over the training set (eval transforms).
    ``check_data``: refuse (DataChangedError) when the data is not the data the run recorded."""
    import sys

    from longtail.engine.rundir.checkpoint import (CheckpointError, class_counts_hash, load_run_checkpoint, reported_weights,
                                            run_checkpoint)
    from longtail.engine.rundir.fingerprint import check_same_data, read_recorded
    from longtail.engine.training.components import build_model
    from longtail.engine.config import config_from_dict
    from longtail.engine.training.data_setup import build_data
    from longtail.engine.runtime.distributed import DistributedContext, select_device

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
