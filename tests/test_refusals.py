"""Nothing silently wrong, nothing lost: config refusals (exit 2 naming key, value and range),
containment, permissions, a full disk, the data fingerprint, finished runs and divergence."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_run_overrides
from longtail.cli import main
from longtail.engine.rundir import checkpoint as ckpt
from longtail.engine.config import ConfigError, build_config


def only_run_dir(output: Path) -> Path:
    runs = [p for p in output.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


# ----------------------------------------------------------------------------- config values


def test_scientific_notation_is_a_number_in_files_and_overrides(tmp_path):
    path = tmp_path / "sci.yaml"
    path.write_text("optim:\n  weight_decay: 5e-4\n  lr: 1E-2\n  min_lr: 1e-5\nloss:\n  name: ccar_bs\n  omega: 7.5e-1\n")
    config, _ = build_config(config_file=str(path), overrides=["optim.warmup_epochs=1e0", "data.mixing_alpha=2e-1"])
    assert config.optim.weight_decay == 5e-4 and config.optim.lr == 1e-2 and config.optim.min_lr == 1e-5
    assert config.loss.options == {"omega": 0.75}
    assert config.optim.warmup_epochs == 1.0 and config.data.mixing_alpha == 0.2


def test_option_order_never_matters(tmp_path):
    path = tmp_path / "order.yaml"
    path.write_text("loss:\n  omega: 0.5\n  name: ccar_bs\nregularizer:\n  alpha: 0.1\n  name: car\n")
    from_file, _ = build_config(config_file=str(path))
    from_cli, _ = build_config(overrides=["loss.omega=0.5", "regularizer.alpha=0.1", "loss.name=ccar_bs",
                                          "regularizer.name=car"])
    for config in (from_file, from_cli):
        assert config.loss.name == "ccar_bs" and config.loss.options == {"omega": 0.5}
        assert config.regularizer.name == "car" and config.regularizer.options == {"alpha": 0.1}
    # a preset's component replaced on the command line: the option written before the name is kept
    config, _ = build_config(method="focal", overrides=["loss.tau=2.0", "loss.name=la"])
    assert config.loss.name == "la" and config.loss.options == {"tau": 2.0}


@pytest.mark.parametrize("override, expected", [
    ("optim.min_lr=-0.1", "optim.min_lr=-0.1 is out of range; valid: >= 0"),
    ("optim.clip_grad_norm=-1", "optim.clip_grad_norm=-1.0 is out of range; valid: > 0"),
    ("optim.lr=nan", "optim.lr=nan is out of range; valid: > 0"),
    ("optim.lr=.inf", "optim.lr=inf is out of range; valid: > 0"),
    ("optim.weight_decay=-5e-4", "optim.weight_decay=-0.0005 is out of range; valid: >= 0"),
    ("optim.momentum=1.5", "optim.momentum=1.5 is out of range; valid: >= 0 and < 1"),
    ("data.batch_size=0", "data.batch_size=0 is out of range; valid: >= 1"),
    ("optim.epochs=-3", "optim.epochs=-3 is out of range; valid: >= 1"),
    ("data.mixing_prob=1.01", "data.mixing_prob=1.01 is out of range; valid: >= 0 and <= 1"),
    ("data.imbalance_factor=0.5", "data.imbalance_factor=0.5 is out of range; valid: >= 1"),
    ("optim.milestone_factors=[0.1, -1]", "entry -1 is out of range; every entry must be > 0"),
    ("loss.switch_fraction=2", "loss.switch_fraction=2 is out of range"),
    ("model.options={width: .nan}", "model.width=nan is not a finite number"),
    ("optim.min_lr=1", "optim.min_lr=1 is out of range; valid: <= optim.lr"),
    ("data.test_fraction=1", "data.test_fraction=1.0 is out of range; valid: > 0 and < 1"),
])
def test_out_of_range_values_are_refused_naming_key_value_and_range(override, expected):
    with pytest.raises(ConfigError) as error:
        build_config("fashion-mnist-lt", overrides=[override])
    assert expected in str(error.value)


def test_every_numeric_key_has_a_checked_range():
    import dataclasses

    from longtail.engine.config import TYPED_SECTIONS, RunConfig
    from longtail.engine.config.validate import _LIST_RANGES, _RANGES

    for section in TYPED_SECTIONS:
        for field in dataclasses.fields(getattr(RunConfig(), section)):
            key = f"{section}.{field.name}"
            if field.type in ("int", "float", "Optional[int]", "Optional[float]"):
                assert key in _RANGES, f"{key} has no range"
            elif field.type == "list":
                assert key in _LIST_RANGES, f"{key} has no range"


def test_bad_loss_regularizer_and_model_options_exit_2_with_a_message(capsys):
    cases = [(["loss.name=la", "loss.tau=abc"], "loss.tau='abc' (str) is not valid for loss 'la': expected a number"),
             (["loss.name=ccar_bs", "loss.omega=[1, 2]"], "loss.omega=[1, 2] (list) is not valid"),
             (["loss.name=ccar_bs", "loss.detach_weight=3"], "expected true or false"),
             (["loss.name=focal", "loss.gama=2"], "loss.gama is not an option of loss 'focal'; its options: gamma"),
             (["regularizer.name=car", "regularizer.alpha=high"], "regularizer.alpha='high' (str) is not valid"),
             (["loss.name=ccar_bs", "loss.confidence_from=sideways"], "loss 'ccar_bs' with options"),
             (["model.options={width: abc}"], "model.options.width='abc' (str) is not valid for model 'small_cnn': "
                                              "expected a whole number"),
             (["model.options={widht: 3}"], "model.options.widht is not an option of model 'small_cnn'"),
             (["model.name=resnet32", "model.options={width: 3}"], "model.options.width is not an option of model "
                                                                   "'resnet32'; its options: none")]
    for overrides, expected in cases:
        assert main(["train", "--print-config", *overrides]) == 2
        error = capsys.readouterr().err
        assert expected in error and "Traceback" not in error, (overrides, error)


def test_unreadable_config_files_exit_2(tmp_path, capsys):
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("description: caf\xe9\n".encode("latin-1"))
    assert main(["train", "--config", str(latin1)]) == 2
    assert "is not UTF-8 text" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path)]) == 2
    assert "is a directory; give a YAML file" in capsys.readouterr().err


def test_cuda_without_a_gpu_exits_2_before_any_work(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["train", "train.device=cuda", f"train.output_dir={tmp_path / 'runs'}"]) == 2
    assert "no CUDA device is available here; use train.device=cpu" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_unusable_output_directory_exits_2(tiny_idx_root, tmp_path, monkeypatch, capsys):
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("x")
    assert main(["train", *tiny_run_overrides(tiny_idx_root, a_file / "runs")]) == 2
    assert f"{a_file} is a file, not a directory" in capsys.readouterr().err
    locked = tmp_path / "locked"
    locked.mkdir()
    # The tests may run as root, for whom every directory is writable: simulate the permission answer.
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    assert main(["train", *tiny_run_overrides(tiny_idx_root, locked / "runs")]) == 2
    assert f"{locked} is not writable by this user" in capsys.readouterr().err


@pytest.mark.parametrize("run_name", ["../escaped", "a/b", "/tmp/abs", "..", "."])
def test_run_name_cannot_leave_the_output_directory(run_name, tmp_path, capsys):
    assert main(["train", f"train.output_dir={tmp_path / 'runs'}", f"train.run_name={run_name}"]) == 2
    assert "train.run_name" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_written_files_respect_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        ckpt.atomic_write_text(tmp_path / "a.json", "{}")
        ckpt.save_checkpoint(tmp_path / "c" / "last.pt", {"x": torch.zeros(1)})
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "c" / "last.pt").stat().st_mode) == 0o640


def test_full_disk_gives_a_clear_message_and_keeps_the_previous_checkpoint(tiny_idx_root, tmp_path, monkeypatch,
                                                                            capsys):
    """The disk fills while the epoch-2 checkpoint is written: exit 1, the message says so, and the
    epoch-1 checkpoint is still there, loadable, and resumable."""
    real_fsync = os.fsync
    writes = {"checkpoints": 0}

    def fsync(fd):
        target = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
        if ".last.pt." in target:
            writes["checkpoints"] += 1
            if writes["checkpoints"] == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(ckpt.os, "fsync", fsync)
    output = tmp_path / "runs"
    assert main(["train", *tiny_run_overrides(tiny_idx_root, output, epochs=3), "train.eval_train=false"]) == 1
    error = capsys.readouterr().err
    assert "No space left on device" in error and "the last good checkpoint (after epoch 1) is intact" in error
    run = only_run_dir(output)
    assert ckpt.load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["last.pt"]  # no temporary left behind
    monkeypatch.setattr(ckpt.os, "fsync", real_fsync)
    assert main(["train", "--resume", str(run)]) == 0


# ----------------------------------------------------------------------------- data fingerprint


def _write_idx_copy(source: Path, target: Path) -> Path:
    target.mkdir()
    for item in source.iterdir():
        (target / item.name).write_bytes(item.read_bytes())
    return target


def test_data_fingerprint_is_recorded_and_checked_by_eval_resume_and_init_from(tiny_idx_root, tmp_path, capsys):
    import gzip

    import numpy as np

    root = _write_idx_copy(tiny_idx_root, tmp_path / "data")
    output = tmp_path / "runs"
    assert main(["train", *tiny_run_overrides(root, output, epochs=1), "train.eval_train=false"]) == 0
    run = only_run_dir(output)
    record = json.loads((run / "data_fingerprint.json").read_text())
    assert record["splits"]["train"]["kind"] == "arrays" and record["splits"]["test"]["count"] == 200
    assert record["split"]["longtail"]["imbalance_factor"] == 10
    state = ckpt.load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["data_fingerprint"]["sha256"] == record["sha256"]
    assert main(["eval", str(run)]) == 0
    capsys.readouterr()
    # Same class counts, different pixels: flip one training image of the long-tailed set.
    images_path = root / "train-images-idx3-ubyte.gz"
    raw = bytearray(gzip.decompress(images_path.read_bytes()))
    header = 16
    pixels = np.frombuffer(bytes(raw[header:]), dtype=np.uint8).copy()
    pixels[: 28 * 28] = 255 - pixels[: 28 * 28]  # image 0: class of label 0, kept by the long-tailed cut
    images_path.write_bytes(gzip.compress(bytes(raw[:header]) + pixels.tobytes()))
    for argv in (["eval", str(run)],
                 ["train", "--method", "crt", *tiny_run_overrides(root, output, epochs=1),
                  f"model.init_from={run}"]):
        assert main(argv) == 2, argv
        error = capsys.readouterr().err
        assert "train split: the in-memory images / labels differ" in error, error
    # a resumable (unfinished) run: make it look interrupted by raising its epoch count
    state["config"]["optim"]["epochs"] = 2
    ckpt.save_checkpoint(run / "checkpoints" / "last.pt", state)
    assert main(["train", "--resume", str(run)]) == 2
    assert "the in-memory images / labels differ" in capsys.readouterr().err


def test_file_fingerprint_names_added_removed_and_changed_files(tmp_path):
    from longtail.engine.rundir.fingerprint import DataChangedError, check_same_data, data_fingerprint

    class Files:
        def __init__(self, paths):
            self.paths, self.labels = paths, [0] * len(paths)

    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in "abc":
        (folder / f"{name}.png").write_bytes(b"x" * 10)
    files = lambda: Files(sorted(str(p) for p in folder.iterdir()))  # noqa: E731
    before = data_fingerprint({"train": files()}, {}, root=str(folder))
    assert [row[0] for row in before["splits"]["train"]["files"]] == ["a.png", "b.png", "c.png"]
    assert check_same_data(before, data_fingerprint({"train": files()}, {}, root=str(folder)), "run") is None
    (folder / "a.png").write_bytes(b"y" * 11)
    (folder / "b.png").unlink()
    (folder / "d.png").write_bytes(b"z")
    with pytest.raises(DataChangedError) as error:
        check_same_data(before, data_fingerprint({"train": files()}, {}, root=str(folder)), "the run R")
    message = str(error.value)
    assert "the run R was made with other data" in message
    assert "1 file(s) added: d.png" in message and "1 file(s) removed: b.png" in message
    assert "1 file(s) changed (label, size or modification time): a.png" in message


def test_resume_of_a_finished_run_does_not_rewrite_metrics(tiny_idx_root, tmp_path, capsys):
    output = tmp_path / "runs"
    assert main(["train", *tiny_run_overrides(tiny_idx_root, output, epochs=1), "train.eval_train=false"]) == 0
    run = only_run_dir(output)
    metrics = run / "metrics.json"
    before = metrics.read_bytes(), metrics.stat().st_mtime_ns
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert "has finished all 1 epochs; nothing to resume" in out and "| test |" in out
    assert (metrics.read_bytes(), metrics.stat().st_mtime_ns) == before
    # the checkpoint file instead of the run directory: refused, naming the run directory
    assert main(["train", "--resume", str(run / "checkpoints" / "last.pt")]) == 2
    assert f"use --resume {run}" in capsys.readouterr().err


def test_a_torch_file_that_is_not_a_run_checkpoint_is_refused(tiny_idx_root, tmp_path, capsys):
    weights = tmp_path / "fake" / "checkpoints" / "last.pt"
    weights.parent.mkdir(parents=True)
    torch.save({"conv.weight": torch.zeros(2)}, weights)
    for argv in (["train", "--resume", str(weights.parent.parent)], ["eval", str(weights.parent.parent)],
                 ["train", "--method", "crt", *tiny_run_overrides(tiny_idx_root, tmp_path / "runs"),
                  f"model.init_from={weights.parent.parent}"]):
        assert main(argv) == 2, argv
        error = capsys.readouterr().err
        assert "is a torch file but not a longtail run checkpoint" in error and "Traceback" not in error


# ----------------------------------------------------------------------------- divergence


def test_diverged_batch_norm_statistics_never_become_last_pt(tiny_idx_root, tmp_path, capsys, monkeypatch):
    """The training loss (batch statistics) stays finite while a running variance overflows: the
    epoch-end checkpoint is refused, the previous one is intact and the message says which it is."""
    from longtail.engine.training import trainer as trainer_module

    real_train_epoch = trainer_module.Trainer.train_epoch

    def train_epoch(self, stop):
        record = real_train_epoch(self, stop)
        if self.state.epoch == 1:  # during the second epoch
            bn = next(m for m in self.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
            bn.running_var.fill_(float("inf"))
        return record

    monkeypatch.setattr(trainer_module.Trainer, "train_epoch", train_epoch)
    output = tmp_path / "runs"
    assert main(["train", *tiny_run_overrides(tiny_idx_root, output, epochs=3), "train.eval_train=false"]) == 1
    error = capsys.readouterr().err
    run = only_run_dir(output)
    assert "the model diverged (after epoch 2): non-finite values in" in error and "running_var" in error
    assert f"the last good checkpoint {run / 'checkpoints' / 'last.pt'} (after epoch 1) is intact" in error
    state = ckpt.load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["epoch"] == 1 and not (run / "metrics.json").exists()


def test_non_finite_parameters_are_caught_at_the_next_step(tiny_idx_root, tmp_path, capsys, monkeypatch):
    from longtail.engine.training import trainer as trainer_module

    real_loss_terms = trainer_module.Trainer._loss_terms

    def loss_terms(self, logits, targets):
        if self.state.global_step == 3:
            with torch.no_grad():
                self.model.head.weight.view(-1)[0] = float("nan")  # not used by this step's logits
        return real_loss_terms(self, logits, targets)

    monkeypatch.setattr(trainer_module.Trainer, "_loss_terms", loss_terms)
    assert main(["train", *tiny_run_overrides(tiny_idx_root, tmp_path / "runs", epochs=1)]) == 1
    error = capsys.readouterr().err
    assert "training diverged at epoch 1, batch 4" in error and "parameter_norm=nan" in error
    assert "no checkpoint had been written yet" in error


def test_image_folder_fingerprint_lists_files_and_compare_reads_it_without_decoding(tmp_path):
    import numpy as np
    from PIL import Image

    from longtail.engine.training.data_setup import build_data, data_fingerprint_of
    from longtail.engine.runtime.distributed import DistributedContext
    from longtail.engine.rundir.fingerprint import differences

    root = tmp_path / "folder"
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 4), ("test", 2)):
        for name in ("cat", "dog"):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / split / name / f"{i}.png")
    config, _ = build_config(overrides=["data.name=imagefolder", f"data.root={root}", "model.channels_last=false"])
    built = build_data(config, torch.device("cpu"), DistributedContext()).fingerprint
    assert data_fingerprint_of(config) == built
    rows = built["splits"]["train"]["files"]
    assert [row[:2] for row in rows] == [[f"train/{c}/{i}.png", label] for label, c in enumerate(("cat", "dog"))
                                         for i in range(4)]
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(root / "test" / "dog" / "9.png")
    assert differences(built, data_fingerprint_of(config)) == ["test split: 1 file(s) added: test/dog/9.png"]
