"""Issue 21: inputs that cannot be meant are refused before any work (exit 2, a message naming what
is wrong and what to do), never trained on silently. Real image files written by the tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import image_run_overrides, write_image_folder
from longtail.cli import main


def test_a_test_class_folder_that_training_lacks_is_refused(tmp_path, capsys):
    root = tmp_path / "data"
    write_image_folder(root, [6, 6], split="train")
    write_image_folder(root, [3, 3, 3], split="test")  # c2 exists only in test/
    output = tmp_path / "runs"
    assert main(["train", *image_run_overrides(root, output)]) == 2
    error = capsys.readouterr().err
    assert f"{root / 'test'} has class folders that {root / 'train'} does not: ['c2']" in error
    assert "left out of every metric" in error and not output.exists()


@pytest.mark.parametrize("arguments", [["recipes"], ["train", "--print-config"]])
def test_a_closed_stdout_pipe_stops_quietly(arguments):
    """`longtail ... | head -1`: the reader closes the pipe; no traceback, no 'Exception ignored'."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    process = subprocess.Popen([sys.executable, "-m", "longtail", *arguments], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=env)
    process.stdout.close()  # before anything is written: every write meets a closed pipe
    error = process.stderr.read().decode()
    code = process.wait(timeout=60)
    assert error == "" and code in (0, 141), (code, error)


@pytest.mark.parametrize("taus", ["nan", "0,inf", "1e400", "-inf,1"])
def test_posthoc_taus_that_are_not_finite_are_named(tmp_path, capsys, taus):
    assert main(["posthoc", str(tmp_path), "--method", "logit_adjust", f"--taus={taus}"]) == 2
    assert "--taus must be finite numbers" in capsys.readouterr().err


@pytest.mark.parametrize("key", ["data.cutout", "data.crop_padding"])
def test_augmentation_as_large_as_the_image_is_refused(tiny_idx_root, tmp_path, capsys, key):
    from conftest import tiny_run_overrides

    output = tmp_path / "runs"
    assert main(["train", *tiny_run_overrides(tiny_idx_root, output, epochs=1), f"{key}=28"]) == 2
    error = capsys.readouterr().err
    assert f"{key}=28 is at or above the image side (28x28 px model input)" in error
    assert not output.exists() or not any(output.rglob("last.pt"))


def test_an_image_folder_with_one_class_is_refused(tmp_path, capsys):
    root = tmp_path / "data"
    write_image_folder(root, [6], split="train")
    write_image_folder(root, [3], split="test")
    assert main(["train", *image_run_overrides(root, tmp_path / "runs")]) == 2
    assert "has 1 class (c0); a classifier needs at least 2" in capsys.readouterr().err


@pytest.mark.parametrize("position", [{"batch": 10**6}, {"batch": -1}, {"global_step": -5}])
def test_a_checkpoint_past_its_runs_end_is_refused_by_resume(tiny_idx_root, tmp_path, capsys, position):
    from conftest import tiny_run_overrides
    from longtail.engine.rundir import checkpoint as ckpt

    output = tmp_path / "runs"
    assert main(["train", *tiny_run_overrides(tiny_idx_root, output, epochs=1), "train.run_name=r",
                 "train.eval_train=false"]) == 0
    checkpoint = output / "r" / "checkpoints" / "last.pt"
    state = ckpt.load_checkpoint(checkpoint)
    state["config"]["optim"]["epochs"] = 2  # unfinished: --resume would train on
    state.update(position)
    ckpt.save_checkpoint(checkpoint, state)
    capsys.readouterr()
    assert main(["train", "--resume", str(output / "r")]) == 2
    error = capsys.readouterr().err
    assert "which this run does not have (2 epochs of" in error and "Traceback" not in error


@pytest.mark.parametrize("output_dir", ["/proc/runs", "/sys/runs"])
def test_an_output_dir_that_passes_os_access_but_cannot_be_written_exits_2(tiny_idx_root, capsys, output_dir):
    from conftest import tiny_run_overrides

    if not Path(output_dir).parent.is_dir():
        pytest.skip(f"no {Path(output_dir).parent} here")
    assert main(["train", *tiny_run_overrides(tiny_idx_root, Path(output_dir), epochs=1)]) == 2
    assert f"train.output_dir={output_dir}: nothing can be created in" in capsys.readouterr().err


def test_a_class_folder_name_that_is_not_utf8_is_refused_before_training(tmp_path, capsys):
    import os

    root = tmp_path / "data"
    for split, counts in (("train", [6, 4]), ("test", [3, 3])):
        write_image_folder(root, counts, split=split)
        os.rename(root / split / "c1", os.fsencode(root / split) + b"/caf\xe9")  # a Latin-1 folder name
    output = tmp_path / "runs"
    assert main(["train", *image_run_overrides(root, output)]) == 2
    error = capsys.readouterr().err
    assert "class folder name(s) [b'caf\\xe9']" in error and "not valid UTF-8" in error and not output.exists()
