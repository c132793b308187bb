"""A killed run resumes to exactly the final metrics of an uninterrupted one (CPU)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import tiny_run_overrides
from longtail.cli import main
from longtail.engine.rundir.checkpoint import load_checkpoint

EPOCHS = 30
# CAR + CCAR (EMA state, power-iteration vectors), mixing (per-batch randomness) and selection on a
# validation split (best epoch and its weights) make resumption non-trivial.
METHOD = ["--method", "car_ccar_bs", "data.mixing=cutmix", "data.mixing_prob=0.5", "train.eval_train=false",
          "data.validation_per_class=2", "train.select_on=balanced_accuracy"]


def start(tiny_idx_root: Path, output: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "longtail", "train", *METHOD,
               *tiny_run_overrides(tiny_idx_root, output, epochs=EPOCHS), "train.run_name=run"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_epochs(run: Path, process: subprocess.Popen, epochs: int, timeout: float = 120) -> None:
    history = run / "history.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if history.exists() and len(history.read_text().splitlines()) >= epochs:
            return
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.01)
    raise AssertionError("training did not progress")


@pytest.fixture(scope="module")
def reference_metrics(tiny_idx_root, tmp_path_factory) -> dict:
    output = tmp_path_factory.mktemp("reference")
    assert main(["train", *METHOD, *tiny_run_overrides(tiny_idx_root, output, epochs=EPOCHS),
                 "train.run_name=run"]) == 0
    metrics = json.loads((output / "run" / "metrics.json").read_text())
    metrics["history"] = [json.loads(line) for line in (output / "run" / "history.jsonl").read_text().splitlines()]
    return metrics


def ccar_statistics(history: list) -> list:
    return [{k: v for k, v in record.items() if k.startswith("ccar_")} for record in history]


def resume_and_compare(run: Path, reference: dict) -> None:
    assert not (run / "metrics.json").exists(), "the process finished before it was killed"
    assert main(["train", "--resume", str(run)]) == 0
    resumed = json.loads((run / "metrics.json").read_text())
    assert resumed["test"] == reference["test"]
    assert resumed["selected"] == reference["selected"]
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == list(range(EPOCHS))
    # CCAR's per-epoch statistics continue exactly too (an epoch cut by the signal included).
    assert ccar_statistics(history) == ccar_statistics(reference["history"])
    assert all("ccar_omega_mean_all" in record for record in ccar_statistics(history))


def test_sigkill_mid_epoch_then_resume_gives_identical_final_metrics(tiny_idx_root, tmp_path, reference_metrics):
    process = start(tiny_idx_root, tmp_path)
    run = tmp_path / "run"
    wait_for_epochs(run, process, 3)
    time.sleep(0.05)  # somewhere inside a later epoch (or inside a checkpoint write: atomic either way)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    checkpoint = load_checkpoint(run / "checkpoints" / "last.pt")  # a kill during a write never breaks last.pt
    assert 3 <= checkpoint["epoch"] < EPOCHS
    resume_and_compare(run, reference_metrics)


def test_sigterm_from_outside_saves_a_checkpoint_and_resume_is_exact(tiny_idx_root, tmp_path, reference_metrics):
    # A signal from another process lands wherever the run is (inside an epoch or its evaluation), so
    # this test cannot promise a mid-epoch checkpoint; tests/test_interrupts.py sends the signal from
    # inside a known step and asserts the checkpoint is that step's.
    process = start(tiny_idx_root, tmp_path)
    run = tmp_path / "run"
    wait_for_epochs(run, process, 2)
    time.sleep(0.03)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert f"longtail train --resume {run}" in stderr
    checkpoint = load_checkpoint(run / "checkpoints" / "last.pt")
    assert checkpoint["epoch"] < EPOCHS
    resume_and_compare(run, reference_metrics)


# ---- the file pipeline: image files read per batch by DataLoader workers, augmented per sample

FILE_EPOCHS = 5
FILE_OPTIONS = ["data.in_memory=false", "data.workers=2", "data.crop_padding=2", "data.cutout=4",
                "data.autoaugment=true", "train.eval_train=false", "data.mixing=mixup", "data.mixing_prob=0.5",
                "train.run_name=run"]


@pytest.fixture(scope="module")
def jpeg_root(tmp_path_factory) -> Path:
    from conftest import write_image_folder

    root = tmp_path_factory.mktemp("jpeg-resume")
    write_image_folder(root, [24, 12, 6], size=(12, 12), fmt="JPEG", split="train")
    write_image_folder(root, [4, 4, 4], size=(12, 12), fmt="JPEG", split="test", seed=1)
    return root


def file_run_command(root: Path, output: Path) -> list[str]:
    from conftest import image_run_overrides

    overrides = [o for o in image_run_overrides(root, output, epochs=FILE_EPOCHS) if not o.startswith("data.workers")]
    return ["train", *overrides, *FILE_OPTIONS]


@pytest.fixture(scope="module")
def file_reference(jpeg_root, tmp_path_factory) -> dict:
    output = tmp_path_factory.mktemp("file-reference")
    assert main(file_run_command(jpeg_root, output)) == 0
    return json.loads((output / "run" / "metrics.json").read_text())


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
def test_file_pipeline_with_workers_resumes_exactly(jpeg_root, tmp_path, file_reference, stop):
    process = subprocess.Popen([sys.executable, "-m", "longtail", *file_run_command(jpeg_root, tmp_path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "run"
    wait_for_epochs(run, process, 2)
    time.sleep(0.05)  # inside a later epoch
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode in (128 + signal.SIGTERM, -signal.SIGKILL), stderr
    checkpoint = load_checkpoint(run / "checkpoints" / "last.pt")
    assert 2 <= checkpoint["epoch"] < FILE_EPOCHS
    assert not (run / "metrics.json").exists(), "the process finished before it was stopped"
    assert main(["train", "--resume", str(run)]) == 0
    resumed = json.loads((run / "metrics.json").read_text())
    assert resumed["test"] == file_reference["test"]
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == list(range(FILE_EPOCHS))
