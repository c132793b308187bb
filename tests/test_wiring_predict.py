"""What a prediction names and scores, and what identifies a compare cell (issue 22).

The run here is trained on Fashion-MNIST-LT images (conftest's tiny idx files read as
``fashion-mnist-lt``), whose class names in label order (T-shirt/top, Trouser, Pullover, ...) are
not sorted: a name list stored sorted would name the wrong class. The fixture asserts the run
learnt something (test accuracy at least CHANCE + MARGIN), so comparing predictions with the
trainer's evaluation compares two informative classifiers, not two constant ones."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_run_overrides
from longtail.cli import main
from longtail.data.datasets.idx import FASHION_MNIST_CLASSES

CHANCE, MARGIN = 0.1, 0.2  # 10 classes; measured 0.41-0.415 for this run (6 epochs, lr 0.05)


@pytest.fixture(scope="module")
def fashion_run(tiny_idx_root, tmp_path_factory):
    base = tmp_path_factory.mktemp("fashion-run")
    overrides = [o for o in tiny_run_overrides(tiny_idx_root, base / "runs", epochs=6)
                 if not o.startswith(("data.name", "optim.lr"))]
    # fp32: predict computes in fp32, so the trainer's evaluation must too for an image-for-image match
    assert main(["train", "data.name=fashion-mnist-lt", "optim.lr=0.05", "train.precision=fp32", *overrides,
                 "train.run_name=r"]) == 0
    run = base / "runs" / "r"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= CHANCE + MARGIN, metrics["test"]["accuracy"]  # it learnt something
    from PIL import Image

    from longtail.data import build_dataset

    test = build_dataset("fashion-mnist", "test", root=str(tiny_idx_root))
    folder = base / "pngs"
    files, labels = [], []
    for index in range(len(test)):
        label = int(test.labels[index])
        target = folder / f"label{label}"  # folder names free of the '/' in 'T-shirt/top'
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(test.images[index, 0].numpy()).save(target / f"{index:04d}.png")
        files.append(target / f"{index:04d}.png")
        labels.append(label)
    return {"run": run, "metrics": metrics, "folder": folder, "files": files, "labels": labels, "base": base}


def predictions_of(run, folder, tmp_path, *extra) -> dict:
    output = tmp_path / f"p{len(list(tmp_path.iterdir()))}.json"
    assert main(["predict", str(run), str(folder), "--output", str(output), "--device", "cpu", *extra]) == 0
    return {Path(p["path"]).name: p for p in json.loads(output.read_text())["predictions"]}


def test_predictions_name_classes_in_label_order_and_match_the_trainers_accuracy(fashion_run, tmp_path):
    import longtail

    names = list(FASHION_MNIST_CLASSES)
    assert names != sorted(names)  # the point of this run
    loaded = longtail.load_run(fashion_run["run"])
    assert loaded.classes == names and not loaded.model.training
    predicted = predictions_of(fashion_run["run"], fashion_run["folder"], tmp_path)
    correct = [predicted[f.name]["prediction"] == names[label] for f, label in zip(fashion_run["files"], fashion_run["labels"])]
    # the same images, from PNG files, through the run directory alone: the trainer's test accuracy
    assert sum(correct) / len(correct) == pytest.approx(fashion_run["metrics"]["test"]["accuracy"], abs=1e-12)
    assert fashion_run["metrics"]["classes"] == names
    output = tmp_path / "model.pt"
    assert main(["export", str(fashion_run["run"]), "--format", "torchscript", "--output", str(output)]) == 0
    assert json.loads(Path(str(output) + ".json").read_text())["classes"] == names


def expected_top1(fashion_run, logits_of) -> dict:
    """{file name: (class name, probability)} of the top class under ``logits_of(loaded, batch)``."""
    import longtail
    from PIL import Image

    loaded = longtail.load_run(fashion_run["run"])
    files = fashion_run["files"][::5]
    with torch.no_grad():
        logits = logits_of(loaded, loaded.preprocess([Image.open(f) for f in files])).double()
    probabilities = logits.softmax(dim=1)
    top = probabilities.max(dim=1)
    return {f.name: (loaded.classes[int(j)], float(p)) for f, j, p in zip(files, top.indices, top.values)}


@pytest.mark.parametrize("method", ["logit_adjust", "tau_norm"])
def test_predict_applies_the_chosen_tau(fashion_run, tmp_path, method):
    run = fashion_run["run"]
    assert main(["posthoc", str(run), "--method", method, "--taus", "0.4", "--device", "cpu"]) == 0
    chosen = json.loads((run / f"posthoc_{method}.json").read_text())
    assert chosen["tau"] == 0.4
    counts = torch.tensor(json.loads((run / "class_counts.json").read_text())["train_counts"], dtype=torch.float64)

    def adjusted(loaded, batch):
        if method == "logit_adjust":  # Menon et al.: z_j - tau log pi_j
            return loaded.model(batch).double() - 0.4 * (counts / counts.sum()).log()
        weight = loaded.model.head.weight.double()  # Kang et al.: w_j / ||w_j|| ** tau, no bias
        return loaded.model.features(batch).double() @ (weight / weight.norm(dim=1, keepdim=True) ** 0.4).t()

    expected = expected_top1(fashion_run, adjusted)
    plain = expected_top1(fashion_run, lambda loaded, batch: loaded.model(batch))
    assert any(abs(expected[n][1] - plain[n][1]) > 1e-3 for n in expected)  # tau 0.4 is visible
    predicted = predictions_of(run, fashion_run["folder"], tmp_path, "--posthoc", method)
    for name, (label, probability) in expected.items():
        assert predicted[name]["prediction"] == label
        assert predicted[name]["probability"] == pytest.approx(probability, abs=1e-5)


def test_a_posthoc_file_from_a_run_on_other_data_is_refused(fashion_run, tmp_path, capsys):
    run = fashion_run["run"]
    assert main(["posthoc", str(run), "--method", "logit_adjust", "--taus", "0.4", "--device", "cpu"]) == 0
    foreign = json.loads((run / "posthoc_logit_adjust.json").read_text())
    assert foreign["class_counts_hash"]
    foreign["class_counts_hash"] = "0" * len(foreign["class_counts_hash"])
    path = tmp_path / "posthoc_logit_adjust.json"
    path.write_text(json.dumps(foreign))
    capsys.readouterr()
    assert main(["predict", str(run), str(fashion_run["files"][0]), "--posthoc", str(path)]) == 2
    assert "different data" in capsys.readouterr().err


# ----------------------------------------------------------------------------- compare cells


def compare_cell(tmp_path, *overrides):
    from longtail.engine.compare import Cell
    from longtail.engine.config import build_config

    config, label = build_config(None, None, ["optim.epochs=1", *overrides])
    return Cell("ce", 0, None, config, label)


def recorded_cell(output, cell, state):
    from longtail.engine.config import dump_yaml

    run_dir = output / "cells" / cell.name
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(dump_yaml(cell.config))
    if state == "done":
        (run_dir / "metrics.json").write_text("{}")
    else:
        (run_dir / "checkpoints" / "last.pt").write_bytes(b"")
    return run_dir


@pytest.mark.parametrize("state", ["done", "resume"])
@pytest.mark.parametrize("old, new, reused", [
    ("train.precision=fp32", "train.precision=bf16", False),   # computes differently: a new cell
    ("optim.lr=0.1", "optim.lr=0.05", False),
    ("train.threads=1", "train.threads=2", True),              # only how fast: the cell is reused
])
def test_a_cell_is_reused_only_with_the_same_settings(tmp_path, state, old, new, reused):
    from longtail.engine.compare import _check_existing_cells
    from longtail.engine.config import ConfigError

    recorded_cell(tmp_path, compare_cell(tmp_path, old), state)
    asked = compare_cell(tmp_path, new)
    asked.fingerprint = None
    if reused:
        _check_existing_cells([asked], tmp_path)
    else:
        with pytest.raises(ConfigError, match=new.split("=")[0]):
            _check_existing_cells([asked], tmp_path)


def test_the_file_fingerprint_changes_with_a_files_modification_time(tmp_path):
    from longtail.engine.rundir.fingerprint import dataset_fingerprint, differences

    class Files:
        def __init__(self, paths):
            self.paths, self.labels = paths, [0] * len(paths)

    paths = []
    for n in range(3):
        path = tmp_path / f"{n}.png"
        path.write_bytes(b"same bytes")
        paths.append(str(path))
    before = dataset_fingerprint(Files(paths), str(tmp_path))
    stat = os.stat(paths[1])
    os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))  # same size and content
    after = dataset_fingerprint(Files(paths), str(tmp_path))
    assert before["sha256"] != after["sha256"]
    wrap = lambda record: {"sha256": record["sha256"], "splits": {"train": record}, "split": {}}  # noqa: E731
    assert "1 file(s) changed" in differences(wrap(before), wrap(after))[0]
