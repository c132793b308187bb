"""classes.tsv through a whole run: the run records folder and display names, `eval --data-root`
matches another copy by folder name (the display names are for people), and `predict` / load_run
name the display names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import write_image_folder

import longtail
from longtail.cli import main

FOLDERS = ["c0", "c1", "c2"]
NAMES = ["Stop", "Give way", "No entry"]


@pytest.fixture(scope="module")
def named_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("named")
    root = base / "signs"
    write_image_folder(root, [12, 8, 5], size=(8, 8), split="train", seed=1)
    write_image_folder(root, [4, 4, 4], size=(8, 8), split="test", seed=2)
    (root / "classes.tsv").write_text("".join(f"{f}\t{n}\n" for f, n in zip(FOLDERS, NAMES)), encoding="utf-8")
    assert main(["train", "data.name=imagefolder", f"data.root={root}", "data.workers=0", "data.batch_size=8",
                 "optim.epochs=1", "optim.warmup_epochs=0", "train.progress=false", "train.threads=1",
                 f"train.output_dir={base / 'runs'}", "train.run_name=named"]) == 0
    return {"run": base / "runs" / "named", "root": root, "base": base}


def test_the_run_records_display_names_and_folders(named_run):
    counts = json.loads((named_run["run"] / "class_counts.json").read_text())
    assert counts["classes"] == NAMES and counts["folders"] == FOLDERS
    loaded = longtail.load_run(named_run["run"])
    assert loaded.classes == NAMES and loaded.folders == FOLDERS


def test_eval_data_root_matches_folders_and_names_classes(named_run, tmp_path, capsys):
    other = tmp_path / "copy"
    shutil.copytree(named_run["root"] / "test", other / "test")
    capsys.readouterr()
    assert main(["eval", str(named_run["run"]), "--data-root", str(other)]) == 0
    out = capsys.readouterr().out
    assert "scored 12 images" in out and "| Give way | 8 |" in out
    shutil.rmtree(other / "test" / "c1")
    assert main(["eval", str(named_run["run"]), "--data-root", str(other)]) == 0
    assert "1 of the run's 3 classes have no folder here (Give way)" in capsys.readouterr().out
    (other / "test" / "Stop").mkdir()  # a display name is not a folder name
    shutil.copy(next((other / "test" / "c0").iterdir()), other / "test" / "Stop")
    assert main(["eval", str(named_run["run"]), "--data-root", str(other)]) == 2
    error = capsys.readouterr().err
    assert "not trained on: ['Stop']" in error and "class folders: c0, c1, c2" in error


def test_predict_prints_display_names(named_run, tmp_path, capsys):
    output = tmp_path / "p.json"
    assert main(["predict", str(named_run["run"]), str(named_run["root"] / "test"), "--output", str(output)]) == 0
    predictions = json.loads(output.read_text())["predictions"]
    assert len(predictions) == 12
    assert {p["prediction"] for p in predictions} <= set(NAMES)
    assert all(entry["class"] in NAMES for p in predictions for entry in p["top_k"])
    capsys.readouterr()
    assert main(["predict", str(named_run["run"]), str(next((named_run["root"] / "test" / "c0").iterdir()))]) == 0
    table = capsys.readouterr().out
    assert any(name in table for name in NAMES) and "| c0 |" not in table and "| c1 |" not in table
