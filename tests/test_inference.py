"""Inference from a run directory whose training data is gone: `longtail predict`, `longtail export`,
`longtail eval --data-root`, `longtail.load_run`. Real PNG / JPEG files in an image-folder layout.

Independent references: the trainer's own evaluation (metrics.json, computed through the
training-time data pipeline while the data existed) and `longtail posthoc`'s test metrics; the
predictions made from the run directory alone must reproduce them image for image.
"""

from __future__ import annotations

import csv
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CLASSES
from longtail.cli import main


@pytest.fixture(scope="module")
def trained(trained_folder_run):
    return trained_folder_run

def read_csv(path: Path) -> list:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def accuracy_of(rows) -> float:
    return float(np.mean([row["prediction"] == Path(row["path"]).parent.name for row in rows]))


def test_results_and_the_printed_table_name_the_classes(trained):
    metrics = trained["metrics"]
    assert metrics["classes"] == CLASSES
    assert [row["class"] for row in metrics["per_class"]] == CLASSES
    assert [row["train_images"] for row in metrics["per_class"]] == [30, 16, 9, 5, 3]  # the files written
    assert [row["test_images"] for row in metrics["per_class"]] == [8] * 5
    assert [row["test_accuracy"] for row in metrics["per_class"]] == metrics["test"]["per_class_accuracy"]
    for split in ("test", "val", "train"):
        assert metrics[split]["worst_class_name"] == CLASSES[metrics[split]["worst_class"]]
    printed = trained["train_output"]
    assert "| class | train images | test acc | test images | val acc | val images |" in printed
    accuracy = metrics["per_class"][3]["test_accuracy"]
    assert f"| sandal | 5 | {100 * accuracy:.2f} | 8 |" in printed
    assert f"worst class (test): {metrics['test']['worst_class_name']} " in printed


def test_predict_from_the_run_directory_alone_matches_the_trainers_evaluation(trained, tmp_path, capsys):
    output = tmp_path / "predictions.csv"
    assert main(["predict", str(trained["run"]), str(trained["images"]), "--output", str(output),
                 "--top-k", "3", "--device", "cpu"]) == 0
    rows = read_csv(output)
    assert len(rows) == 40 and sum(r["path"].endswith(".jpg") for r in rows) > 0
    assert set(rows[0]) == {"path", "prediction", "probability", "class_1", "probability_1", "class_2",
                            "probability_2", "class_3", "probability_3"}
    # the reported (validation-selected) weights, preprocessed as the trainer evaluated: same accuracy
    assert accuracy_of(rows) == pytest.approx(trained["metrics"]["test"]["accuracy"], abs=1e-12)
    for row in rows:
        probabilities = [float(row[f"probability_{i}"]) for i in (1, 2, 3)]
        assert row["prediction"] == row["class_1"] and row["class_1"] in CLASSES
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1 + 1e-6
    assert "40 image(s) predicted" in capsys.readouterr().out


def test_predict_json_stdout_and_single_files(trained, tmp_path, capsys):
    files = sorted(trained["images"].rglob("*.png"))[:2]
    output = tmp_path / "out.json"
    assert main(["predict", str(trained["run"]), *map(str, files), "--output", str(output)]) == 0
    written = json.loads(output.read_text())
    assert [p["path"] for p in written["predictions"]] == [str(f) for f in files]
    first = written["predictions"][0]
    assert len(first["top_k"]) == 5 and first["top_k"][0]["class"] == first["prediction"]
    assert sum(entry["probability"] for entry in first["top_k"]) == pytest.approx(1.0, abs=1e-5)
    assert written["posthoc"] is None and "epoch" in written["weights"]
    capsys.readouterr()
    assert main(["predict", str(trained["run"]), str(files[0])]) == 0
    table = capsys.readouterr().out
    assert "| path | prediction | probability | next |" in table and first["prediction"] in table


@pytest.mark.parametrize("method", ["logit_adjust", "tau_norm", "ncm", "temperature"])
def test_predict_with_the_posthoc_classifier_reproduces_its_test_metrics(trained, tmp_path, method):
    chosen = json.loads((trained["run"] / f"posthoc_{method}.json").read_text())
    output = tmp_path / "p.csv"
    assert main(["predict", str(trained["run"]), str(trained["images"]), "--output", str(output),
                 "--posthoc", method]) == 0
    assert accuracy_of(read_csv(output)) == pytest.approx(chosen["test"]["accuracy"], abs=1e-12)
    by_file = tmp_path / "q.json"  # the file path form, same result
    assert main(["predict", str(trained["run"]), str(trained["images"]), "--output", str(by_file),
                 "--posthoc", str(trained["run"] / f"posthoc_{method}.json")]) == 0
    written = json.loads(by_file.read_text())
    assert written["posthoc"]["method"] == method and written["posthoc"]["tau"] == chosen["tau"]
    assert [p["prediction"] for p in written["predictions"]] == [r["prediction"] for r in read_csv(output)]


def test_unreadable_images_are_listed_and_nothing_is_written_unless_skipped(trained, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "mixed"
    shutil.copytree(trained["images"] / "bag", folder)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (folder / "empty.jpg").write_bytes(b"")
    Image.new("RGB", (40, 30)).save(folder / "too-big.png")  # the run is native 28x28: refused, not resized
    output = tmp_path / "out.csv"
    assert main(["predict", str(trained["run"]), str(folder), "--output", str(output)]) == 2
    error = capsys.readouterr().err
    assert "3 image(s) cannot be used" in error and "broken.png: cannot be decoded" in error
    assert "empty.jpg: cannot be decoded" in error and "too-big.png: image is 30x40" in error
    assert not output.exists()
    assert main(["predict", str(trained["run"]), str(folder), "--output", str(output), "--skip-unreadable"]) == 0
    assert "skipped 3 unusable" in capsys.readouterr().err
    assert len(read_csv(output)) == 8


@pytest.mark.parametrize("arguments, message", [
    (["{run}", "{images}", "--output", "x.txt"], ".csv or .json"),
    (["{base}/nope", "{images}"], "not a run directory"),
    (["{run}", "{base}/missing.png"], "not found"),
    (["{run}", "{empty}"], "no image files"),
    (["{run}", "{images}", "--posthoc", "{base}/posthoc_x.json"], "longtail posthoc"),
])
def test_predict_usage_errors_exit_2(trained, tmp_path, capsys, arguments, message):
    (tmp_path / "empty").mkdir()
    names = dict(run=trained["run"], images=trained["images"], base=trained["base"], empty=tmp_path / "empty")
    assert main(["predict", *[a.format(**names) for a in arguments]]) == 2
    assert message in capsys.readouterr().err


def test_load_run_in_python(trained):
    import longtail
    from PIL import Image

    run = longtail.load_run(trained["run"])
    assert run.classes == CLASSES and not run.model.training
    files = sorted(trained["images"].rglob("*.*"))
    images = [Image.open(f) for f in files]
    results = run.predict(images, top_k=2)
    correct = [r["prediction"] == f.parent.name for r, f in zip(results, files)]
    assert np.mean(correct) == pytest.approx(trained["metrics"]["test"]["accuracy"], abs=1e-12)
    batch = run.preprocess(images[:4])
    assert batch.dtype == torch.float32 and batch.shape[0] == 4
    assert torch.allclose(run.logits(images[:4]), run.model(batch), atol=1e-6)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_the_pytorch_logits(trained, tmp_path, capsys, fmt):
    import longtail
    from PIL import Image

    output = tmp_path / "out" / ("model.onnx" if fmt == "onnx" else "model.pt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["export", str(trained["run"]), "--format", fmt, "--output", str(output)]) == 0
    assert not [w for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))]
    # one model file (ONNX weights inside it, not in an external data file) and its metadata
    assert sorted(p.name for p in output.parent.iterdir()) == sorted([output.name, output.name + ".json"])
    metadata = json.loads(Path(str(output) + ".json").read_text())
    assert metadata["classes"] == CLASSES and metadata["input"]["shape"][1:] == [3, 28, 28]
    assert "preprocessing" in metadata and "epoch" in metadata["weights"]
    run = longtail.load_run(trained["run"])
    images = [Image.open(f) for f in sorted(trained["images"].rglob("*.*"))[:7]]
    batch = run.preprocess(images)
    with torch.no_grad():
        expected = run.model(batch).numpy()
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
        got = session.run(["logits"], {"images": batch.numpy()})[0]
    else:
        got = torch.jit.load(str(output))(batch).detach().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_eval_data_root_scores_another_folder(trained, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(trained["images"], other / "test")
    assert main(["eval", str(trained["run"]), "--data-root", str(other)]) == 0
    out = capsys.readouterr().out
    assert f"| test | {100 * trained['metrics']['test']['accuracy']:.2f} |" in out and "scored 40 images" in out
    assert "| ankle boot | 30 |" in out  # the per-class table, with the run's training counts
    shutil.rmtree(other / "test" / "sandal")  # a class without images here: scored without it, said so
    assert main(["eval", str(trained["run"]), "--data-root", str(other)]) == 0
    assert "1 of the run's 5 classes have no folder here (sandal)" in capsys.readouterr().out
    (other / "test" / "hat").mkdir()
    shutil.copy(next((other / "test" / "bag").iterdir()), other / "test" / "hat")
    assert main(["eval", str(trained["run"]), "--data-root", str(other)]) == 2
    assert "not trained on: ['hat']" in capsys.readouterr().err


def test_validation_carved_from_an_image_folder_without_val(tmp_path, capsys):
    """data.validation_per_class on root/{train,test} (no val/) with train.select_on: the carved split
    serves selection (it used to fail looking for root/val)."""
    from conftest import write_folder

    write_folder(tmp_path / "data" / "train", [8, 6, 5, 4, 3])
    write_folder(tmp_path / "data" / "test", [2] * 5, offset=200)
    assert main(["train", "data.name=imagefolder", f"data.root={tmp_path / 'data'}", "data.workers=0",
                 "data.batch_size=8", "data.validation_per_class=1", "train.select_on=balanced_accuracy",
                 "optim.epochs=1", "optim.warmup_epochs=0", f"train.output_dir={tmp_path / 'runs'}",
                 "train.progress=false", "train.threads=1", "train.run_name=r"]) == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "runs" / "r" / "metrics.json").read_text())
    assert metrics["val"]["num_samples"] == 5 and metrics["selected"]["metric"] == "val/balanced_accuracy"


def test_eval_data_root_on_an_idx_dataset_and_predict_on_png_files(tiny_idx_root, tmp_path, capsys):
    """An in-memory (idx) run: --data-root another copy of the files scores like the run's own test
    evaluation, and predict on PNG exports of the same test images agrees image for image. The files
    are read as Fashion-MNIST-LT, whose class names in label order are not sorted (issue 22)."""
    from PIL import Image

    from conftest import tiny_run_overrides
    from longtail.data import build_dataset
    from longtail.data.datasets.idx import FASHION_MNIST_CLASSES

    other = tmp_path / "copy"
    shutil.copytree(tiny_idx_root, other)
    assert main(["train", *tiny_run_overrides(tiny_idx_root, tmp_path / "runs", epochs=1), "data.name=fashion-mnist-lt",
                 "train.run_name=r"]) == 0
    run = tmp_path / "runs" / "r"
    metrics = json.loads((run / "metrics.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(run), "--data-root", str(other)]) == 0
    assert f"| test | {100 * metrics['test']['accuracy']:.2f} |" in capsys.readouterr().out
    test = build_dataset("fashion-mnist", "test", root=str(other))
    folder = tmp_path / "pngs"
    for index in range(0, len(test), 7):
        target = folder / f"label{int(test.labels[index])}"  # 'T-shirt/top' holds a '/'

        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(test.images[index, 0].numpy()).save(target / f"{index}.png")
    output = tmp_path / "p.json"
    assert main(["predict", str(run), str(folder), "--output", str(output)]) == 0
    predictions = json.loads(output.read_text())["predictions"]
    assert len(predictions) == len(range(0, len(test), 7))
    import longtail

    loaded = longtail.load_run(run)
    expected = loaded.logits(list(test.images[::7])).argmax(dim=1).tolist()
    by_index = {int(Path(p["path"]).stem): p["prediction"] for p in predictions}
    names = list(FASHION_MNIST_CLASSES)
    assert loaded.classes == names != sorted(names)
    assert [by_index[i] for i in range(0, len(test), 7)] == [names[j] for j in expected]


def test_a_run_on_other_data_is_not_named_after_the_default_recipe(tmp_path):
    from longtail.engine.config import build_config

    root = tmp_path / "my-photos"
    assert build_config(None, None, ["data.name=imagefolder", f"data.root={root}"])[1] == "my-photos"
    assert build_config(None, None, ["data.name=imagefolder", f"data.root={root}"], "ccar_bs")[1] == "my-photos/ccar_bs"
    assert build_config(None, None, ["data.name=mnist-lt"])[1] == "mnist-lt"
    assert build_config(None, None, [])[1] == "fashion-mnist-lt"
    assert build_config("imagefolder-small", None, [f"data.root={root}"])[1] == "imagefolder-small"  # a named recipe
    # Nor described as the embedded dataset in the printed / saved config.
    description = build_config(None, None, ["data.name=imagefolder", f"data.root={root}"])[0].description
    assert "Fashion" not in description and description.startswith("imagefolder data")
    assert "Fashion-MNIST" in build_config(None, None, [])[0].description


@pytest.mark.parametrize("command", [["predict", "{run}", "{image}"], ["export", "{run}", "--format", "onnx"]])
def test_a_torch_file_that_is_not_a_run_checkpoint_is_refused_clearly(tmp_path, capsys, command):
    from PIL import Image

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"weights": torch.zeros(3)}, run / "checkpoints" / "last.pt")
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    assert main([a.format(run=run, image=tmp_path / "x.png") for a in command]) == 2
    assert "not a longtail run checkpoint" in capsys.readouterr().err


def test_a_posthoc_temperature_divides_the_logits_and_changes_no_prediction(trained):
    from PIL import Image

    from longtail.engine.evaluation.inference import load_run

    temperature = json.loads((trained["run"] / "posthoc_temperature.json").read_text())["tau"]
    images = [Image.open(path).convert("RGB") for path in sorted(trained["images"].rglob("*.png"))[:12]]
    plain = load_run(trained["run"], "cpu").logits(images).double()
    scaled = load_run(trained["run"], "cpu", posthoc="temperature").logits(images).double()
    assert temperature != 1.0 and torch.allclose(scaled, plain / temperature, atol=1e-5)
    assert torch.equal(scaled.argmax(dim=1), plain.argmax(dim=1))
