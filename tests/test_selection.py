"""train.select_on: the final metrics come from the epoch with the best validation metric."""

from __future__ import annotations

import json

import torch

from conftest import tiny_run_overrides
from longtail.cli import main
from longtail.engine.rundir.checkpoint import load_checkpoint
from longtail.engine.config import build_config
from longtail.engine.evaluation.evaluate import evaluate_checkpoint
from longtail.engine.training.trainer import Trainer, config_of_run

SELECTION = ["data.validation_per_class=2", "train.select_on=balanced_accuracy", "train.eval_train=false"]


def test_the_best_validation_epoch_is_reported_and_eval_reproduces_it(tiny_idx_root, tmp_path, capsys):
    output = tmp_path / "runs"
    # A constant, large lr makes the validation curve move both ways over the epochs.
    assert main(["train", *tiny_run_overrides(tiny_idx_root, output, epochs=6), *SELECTION,
                 "optim.schedule=constant", "optim.lr=0.2", "train.run_name=run"]) == 0
    run = output / "run"
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    curve = [h["val"]["balanced_accuracy"] for h in history]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["selected"] == {"epoch": curve.index(max(curve)), "metric": "val/balanced_accuracy",
                                   "value": max(curve)}
    # The reported validation metric is the selected epoch's, re-measured on the restored weights.
    assert metrics["val"]["balanced_accuracy"] == max(curve)
    assert f"weights of epoch {curve.index(max(curve)) + 1} of 6" in capsys.readouterr().out
    assert evaluate_checkpoint(run, "test", "cpu")["accuracy"] == metrics["test"]["accuracy"]
    checkpoint = load_checkpoint(run / "checkpoints" / "last.pt")
    assert checkpoint["best"] == metrics["selected"]
    # Resuming the finished run restores the chosen weights from the checkpoint and reports them again.
    config, label = config_of_run(run)
    trainer = Trainer(config, label, resume_dir=run)
    try:
        resumed = trainer.fit()
    finally:
        trainer.close()
    assert resumed["selected"] == metrics["selected"] and resumed["test"] == metrics["test"]


def test_keeps_the_weights_of_the_first_best_epoch(tiny_idx_root, tmp_path):
    overrides = [*tiny_run_overrides(tiny_idx_root, tmp_path, epochs=1), *SELECTION]
    config, label = build_config(None, None, overrides + ["train.device=cpu"])
    trainer = Trainer(config, label)
    weights = []
    for epoch, value in enumerate([0.5, 0.7, 0.6, 0.7]):
        with torch.no_grad():
            for parameter in trainer.model.parameters():
                parameter.add_(1.0)  # each "epoch" leaves different weights
        weights.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
        trainer._keep_if_best(epoch, {"balanced_accuracy": value})
    assert trainer.state.best == {"epoch": 1, "metric": "val/balanced_accuracy", "value": 0.7}
    results = trainer.finish()
    assert results["selected"]["epoch"] == 1
    for key, value in trainer.model.state_dict().items():
        torch.testing.assert_close(value, weights[1][key], rtol=0, atol=0)
    trainer.close()
