"""Engine behaviour that mutmut found unobserved (docs/mutation.md, section 2, engine), each tested
directly, without training: the comparison table of one seed, the input size chosen for images of
several sizes, prior files given as fractions, data-change reports, and refusals that name what is
wrong."""

from __future__ import annotations

import json
import math
from argparse import Namespace
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import tiny_run_overrides
from longtail.engine.config import build_config
from longtail.engine.evaluation.inference import InferenceError, evaluate_data_root
from longtail.engine.evaluation.priors import read_prior_file
from longtail.engine.rundir.fingerprint import differences
from longtail.engine.runtime.distributed import DistributedContext
from longtail.engine.training.data_setup import _choose_geometry


def _one_seed_cells(tiny_idx_root, output):
    from longtail.engine.compare import plan_cells

    args = Namespace(methods="ce,bs", seeds="0", imbalance_factors="10", paired=True, recipe=None, config=None,
                     output=str(output), overrides=tiny_run_overrides(tiny_idx_root, output))
    return plan_cells(args)[0]


def test_one_seed_comparison_shows_each_value_without_spread(tiny_idx_root, tmp_path):
    """With one seed a cell is just the value (format_percent of it: 100 x, two decimals) and its std
    is 0, not an invented spread; the CSV ends with the wins / seeds / headline / paired-seeds columns."""
    import csv

    from longtail.engine.compare import write_comparison
    from longtail.report.tables import SUMMARY_COLUMNS

    cells = _one_seed_cells(tiny_idx_root, tmp_path)
    keys = [key for key, _ in SUMMARY_COLUMNS]
    values = {}
    for n, cell in enumerate(cells):
        test = {key: 0.1 + 0.01 * (n * len(keys) + i) for i, key in enumerate(keys)}
        test["per_class_accuracy"] = [0.5] * 10
        values[cell.method] = test
        folder = tmp_path / "cells" / cell.name
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({"test": test}))
        (folder / "class_counts.json").write_text(json.dumps({"train_counts": [40 - 3 * j for j in range(10)]}))
    write_comparison(tmp_path, cells, "ce")
    rows = {row["method"]: row for row in json.loads((tmp_path / "comparison.json").read_text())["rows"]}
    table = (tmp_path / "comparison.md").read_text()
    for method, test in values.items():
        line = next(line for line in table.splitlines() if line.startswith(f"| {method} |"))
        for key in keys:
            assert rows[method][key]["std"] is None and rows[method][key]["mean"] == pytest.approx(test[key])
            assert f"{100 * test[key]:.2f}" in line, (method, key, line)
        assert "±" not in line
    with open(tmp_path / "comparison.csv", newline="") as handle:
        header, *lines = list(csv.reader(handle))
    assert header[:2] == ["imbalance_factor", "method"]
    assert header[-5:] == ["wins", "seeds", "headline", "headline_wins", "paired_seeds"]
    assert [line[header.index("seeds")] for line in lines] == ["1", "1"]
    assert [line[header.index("paired_seeds")] for line in lines] == ["1", "1"]


def test_reused_cells_made_otherwise_are_refused_naming_each(tiny_idx_root, tmp_path):
    from longtail.engine.compare import _check_existing_cells
    from longtail.engine.errors import ConfigError

    cells = _one_seed_cells(tiny_idx_root, tmp_path)
    (tmp_path / "cells" / cells[0].name).mkdir(parents=True)
    (tmp_path / "cells" / cells[0].name / "metrics.json").write_text("{}")  # a finished cell without config.yaml
    with pytest.raises(ConfigError) as error:
        _check_existing_cells(cells, tmp_path)
    assert str(error.value) == (
        f"{tmp_path} holds cells made with other settings or data than this command asks for: {cells[0].name} "
        f"(no config.yaml). Their results cannot be reused. Give another --output, or delete {tmp_path / 'cells'} "
        f"(or just those cells) to train them again")


def _geometry(train_sizes):
    config, _ = build_config("imagefolder-small", overrides=["data.root=unused"])
    return _choose_geometry(config, train_sizes, train_sizes, DistributedContext())


def test_images_of_several_sizes_are_resized_to_the_most_common_ties_to_the_larger_area(capsys):
    assert _geometry([(32, 32)] * 3 + [(64, 48)] * 2) == ("resize", (32, 32))  # most common, not largest
    assert _geometry([(32, 32)] * 2 + [(16, 80)] * 2) == ("resize", (16, 80))  # tie: 1280 > 1024 pixels
    assert "the most common training size" in capsys.readouterr().out


def test_a_prior_file_of_fractions_summing_to_one_is_accepted(tmp_path):
    (tmp_path / "prior.txt").write_text("0.5\n0.3  # a comment\n0.2\n")
    np.testing.assert_allclose(read_prior_file(tmp_path / "prior.txt", None, 3), [0.5, 0.3, 0.2], rtol=1e-15)
    (tmp_path / "zero.txt").write_text("0\n0\n0\n")
    with pytest.raises(Exception, match="the frequencies sum to 0"):
        read_prior_file(tmp_path / "zero.txt", None, 3)


def test_data_change_report_counts_files_when_the_fingerprints_hold_different_things():
    """A recorded summary fingerprint (modification times) against a current one of contents: only the
    file counts can be compared, and the report says so."""
    recorded = {"sha256": "a", "splits": {"train": {"sha256": "x", "kind": "files", "mode": "stat", "count": 3}}}
    current = {"sha256": "b", "splits": {"train": {"sha256": "y", "kind": "files", "mode": "content", "count": 4}}}
    assert differences(recorded, current) == ["train split: 3 files then, 4 now"]


def test_data_root_that_is_not_a_folder_is_refused_by_name(tmp_path):
    with pytest.raises(InferenceError, match=f"^--data-root {tmp_path / 'nowhere'} is not a folder$"):
        evaluate_data_root(SimpleNamespace(classes=["a", "b"]), tmp_path / "nowhere")


def test_a_finished_run_with_corrupt_metrics_says_to_re_evaluate(tmp_path):
    import torch

    from longtail.engine.rundir.checkpoint import CheckpointError
    from longtail.engine.training.trainer import finished_results

    (tmp_path / "checkpoints").mkdir()
    torch.save({"config": {"optim": {"epochs": 2}}, "label": "ce", "model": {}, "class_counts_hash": "0", "epoch": 2},
               tmp_path / "checkpoints" / "last.pt")
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=rf"^{tmp_path / 'metrics.json'} is not valid JSON \(.*\); the run "
                                              rf"finished, so there is nothing to resume: re-evaluate it with "
                                              rf"`longtail eval {tmp_path}`$"):
        finished_results(tmp_path)


def test_an_unreadable_cell_config_is_named_even_when_its_error_says_nothing(tmp_path, monkeypatch):
    """The first line of the reader's error explains an unreadable config.yaml; an error without a
    message is named by its type instead of leaving the sentence empty."""
    import longtail.engine.config as config_module
    from longtail.engine.compare import _recorded_config, _UnreadableConfig

    (tmp_path / "config.yaml").write_text("data: {}\n")

    def silent_failure(text):
        raise ValueError()

    monkeypatch.setattr(config_module, "load_yaml", silent_failure)
    with pytest.raises(_UnreadableConfig, match="^its config.yaml cannot be read as a run's config: ValueError$"):
        _recorded_config(tmp_path)


def test_each_epoch_is_logged_to_history_and_tensorboard_at_its_epoch(tmp_path):
    """history.jsonl holds the checkpointed history; TensorBoard gets every finite training number and
    every test / val metric as a scalar at step = the record's epoch."""
    from longtail.engine.training.trainer import Trainer

    class Writer:
        def __init__(self):
            self.scalars, self.flushed = [], 0

        def add_scalar(self, tag, value, step=None):
            self.scalars.append((tag, value, step))

        def flush(self):
            self.flushed += 1

    first = {"epoch": 1, "loss": 1.5, "test": {"accuracy": 0.25}}
    record = {"epoch": 2, "loss": 0.5, "lr": 0.1, "grad_norm": float("nan"), "note": "text",
              "test": {"accuracy": 0.5}, "val": {"balanced_accuracy": 0.4}}
    trainer = SimpleNamespace(context=SimpleNamespace(is_main=True), state=SimpleNamespace(history=[first, record]),
                              run_dir=tmp_path, writer=Writer())
    Trainer._log_epoch(trainer, record)
    assert (tmp_path / "history.jsonl").read_text() == json.dumps(first) + "\n" + json.dumps(record) + "\n"
    assert sorted(trainer.writer.scalars) == sorted([("train/loss", 0.5, 2), ("train/lr", 0.1, 2),
                                                     ("test/accuracy", 0.5, 2), ("val/balanced_accuracy", 0.4, 2)])
    assert trainer.writer.flushed == 1


def test_an_epochs_training_loss_is_the_sample_weighted_mean_of_its_batch_losses(tiny_idx_root, tmp_path, monkeypatch):
    """The history's loss / base_loss of an epoch: sum_b loss_b * |b| / sum_b |b| over the batches the
    loss actually received (the last batch is smaller), and a positive throughput."""
    from engine_probe import make_trainer, spy_loss, tiny_model
    from longtail.engine.training.trainer import _StopFlag

    tiny_model(monkeypatch)
    trainer = make_trainer(tiny_idx_root, tmp_path)
    losses = spy_loss(trainer)
    record = trainer.train_epoch(_StopFlag())
    sizes = [len(call["targets"]) for call in losses.calls]
    assert len(set(sizes)) > 1  # a smaller last batch: a plain mean of batch losses would differ
    expected = math.fsum(float(call["loss"]) * n for call, n in zip(losses.calls, sizes)) / sum(sizes)
    assert record["loss"] == pytest.approx(expected, rel=1e-6)
    assert record["base_loss"] == pytest.approx(expected, rel=1e-6)
    assert record["images_per_s"] > 0


def test_learning_rate_defaults_to_no_warm_up():
    from longtail.engine.training.schedules import learning_rate

    assert learning_rate(0.1, 0.5, 10, "constant") == 0.1
    assert learning_rate(0.1, 0.0, 10) == 0.1  # multistep without milestones
    for position in (0.0, 0.25, 3.5, 9.9):
        assert learning_rate(0.1, position, 10, "cosine") == pytest.approx(0.05 * (1 + math.cos(math.pi * position / 10)),
                                                                           rel=1e-12)


def test_an_unknown_regularizer_is_refused_with_the_valid_names():
    from longtail.engine.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^unknown regularizer 'nope'; valid: none, car$"):
        build_config("fashion-mnist-lt", overrides=["regularizer.name=nope"])


def test_model_compile_true_compiles_the_training_model(tiny_idx_root, tmp_path, monkeypatch):
    """model.compile=true hands the model the trainer trains to torch.compile at build time (recorded
    here instead of compiling, which takes minutes on a CPU; test_compile.py runs the real thing)."""
    import torch

    from engine_probe import make_trainer, tiny_model

    compiled = []

    def recording_compile(model, *args, **kwargs):
        compiled.append(model)
        return model

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setattr(torch, "compile", recording_compile)
    tiny_model(monkeypatch)
    for setting, expected in (("true", 1), ("false", 0)):
        compiled.clear()
        trainer = make_trainer(tiny_idx_root, tmp_path / setting, f"model.compile={setting}")
        try:
            assert len(compiled) == expected and all(model is trainer.model for model in compiled)
        finally:
            trainer.close()


def test_a_cuda_index_beyond_the_machines_devices_is_refused(monkeypatch):
    """Seen on a CPU machine made to report two CUDA devices (only the checks run; nothing touches a GPU)."""
    import torch

    from longtail.engine.errors import ConfigError
    from longtail.engine.runtime.distributed import select_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert select_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match=r"^train.device=cuda:2 but this machine has 2 CUDA device\(s\): cuda:0 to cuda:1$"):
        select_device("cuda:2")


def test_a_bad_override_is_refused_naming_where_it_came_from():
    from longtail.engine.config.overrides import set_override
    from longtail.engine.errors import ConfigError

    config, _ = build_config("fashion-mnist-lt")
    with pytest.raises(ConfigError, match=r"^override: loss.name must be a name, got 3$"):
        set_override(config, "loss.name", 3)
    with pytest.raises(ConfigError, match=r"^recipe.yaml: loss.name must be a name, got 3$"):
        set_override(config, "loss.name", 3, source="recipe.yaml")
