"""Issue 21 on a trained run: `predict` / `export` / `eval` / `load_run` never write NaN with exit 0
and never answer a user's mistake with a traceback (exit 2 and a message naming the cause)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from longtail.cli import main
from longtail.engine.rundir import checkpoint as ckpt


@pytest.fixture(scope="module")
def trained(trained_folder_run):
    return trained_folder_run


def copy_run(trained, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    return run


def rewrite_weights(run: Path, change) -> None:
    """Apply ``change`` to every weight dict of the run's checkpoint (last and validation-selected)."""
    path = ckpt.run_checkpoint(run)
    state = ckpt.load_checkpoint(path)
    for key in ("model", "best_model"):
        if state.get(key) is not None:
            change(state[key])
    ckpt.save_checkpoint(path, state)


# ----------------------------------------------------------------------------- item 2: no NaN written


@pytest.mark.parametrize("tau", [float("nan"), float("inf"), "1e400"])
def test_a_non_finite_posthoc_tau_is_refused(trained, tmp_path, capsys, tau):
    run = copy_run(trained, tmp_path)
    posthoc = run / "posthoc_logit_adjust.json"
    result = json.loads(posthoc.read_text())
    text = json.dumps({**result, "tau": tau if isinstance(tau, float) else 0.5})
    posthoc.write_text(text if isinstance(tau, float) else text.replace('"tau": 0.5', f'"tau": {tau}'))
    output = tmp_path / "out.csv"
    assert main(["predict", str(run), str(trained["images"]), "--posthoc", "logit_adjust",
                 "--output", str(output)]) == 2
    error = capsys.readouterr().err
    assert "needs a finite numeric tau" in error and "Traceback" not in error and not output.exists()


def test_a_finite_tau_that_makes_logits_infinite_is_named(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path)
    posthoc = run / "posthoc_logit_adjust.json"
    posthoc.write_text(json.dumps({**json.loads(posthoc.read_text()), "tau": 1e308}))
    assert main(["predict", str(run), str(trained["images"]), "--posthoc", "logit_adjust"]) == 2
    error = capsys.readouterr().err
    assert "non-finite logits" in error and "post-hoc logit_adjust (tau=1e+308)" in error


def test_a_model_with_non_finite_logits_is_refused_by_predict_and_eval(trained, tmp_path, capsys):
    def overflow(weights):  # finite statistics whose evaluation overflows: (x + 3e38) / std
        name = next(k for k in weights if k.endswith("running_mean"))
        weights[name].fill_(-3e38)

    run = copy_run(trained, tmp_path)
    rewrite_weights(run, overflow)
    output = tmp_path / "out.json"
    assert main(["predict", str(run), str(trained["images"]), "--output", str(output)]) == 2
    error = capsys.readouterr().err
    assert "get non-finite logits" in error and "diverged" in error and not output.exists()
    assert main(["eval", str(run), "--data-root", str(trained["images"]), "--device", "cpu"]) == 2
    assert "get non-finite logits" in capsys.readouterr().err


# ----------------------------------------------------------------------------- item 7: devices


@pytest.mark.parametrize("command", [["eval", "{run}"], ["posthoc", "{run}", "--method", "ncm"],
                                     ["predict", "{run}", "{images}"],
                                     ["eval", "{run}", "--data-root", "{images}"]])
@pytest.mark.parametrize("device", ["bogus", "cuda:x", "cpu:0"])
def test_a_bogus_device_exits_2(trained, capsys, command, device):
    names = dict(run=trained["run"], images=trained["images"])
    assert main([a.format(**names) for a in command] + ["--device", device]) == 2
    error = capsys.readouterr().err
    assert f"device {device!r} is not valid; use auto, cpu, cuda or cuda:N" in error and "Traceback" not in error


@pytest.mark.parametrize("command", [["predict", "{run}", "{images}"], ["eval", "{run}", "--data-root", "{images}"]])
def test_cuda_without_a_gpu_exits_2(trained, capsys, monkeypatch, command):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    names = dict(run=trained["run"], images=trained["images"])
    assert main([a.format(**names) for a in command] + ["--device", "cuda"]) == 2
    assert "no CUDA device is available here" in capsys.readouterr().err


# ----------------------------------------------------------------------------- item 7: altered checkpoints


def test_wrong_shaped_weights_are_refused_by_predict_export_eval_and_load_run(trained, tmp_path, capsys):
    import longtail
    from longtail.engine.evaluation.inference import InferenceError

    def widen(weights):
        name = next(k for k in weights if k.endswith("weight") and weights[k].dim() == 2)
        weights[name] = torch.zeros(weights[name].shape[0] + 1, weights[name].shape[1])

    run = copy_run(trained, tmp_path)
    rewrite_weights(run, widen)
    message = "its weights do not fit the model its own config builds"
    for argv in (["predict", str(run), str(trained["images"])],
                 ["export", str(run), "--format", "torchscript", "--output", str(tmp_path / "m.pt")],
                 ["eval", str(run), "--data-root", str(trained["images"]), "--device", "cpu"]):
        assert main(argv) == 2, argv
        error = capsys.readouterr().err
        assert message in error and "Traceback" not in error, argv
    with pytest.raises(InferenceError, match=message):
        longtail.load_run(run)


# ----------------------------------------------------------------------------- item 6: output paths


@pytest.mark.parametrize("output", ["{dir}", "/proc/x.{ext}", "/proc/self/x.{ext}", "/sys/x.{ext}",
                                    "{file}/x.{ext}"])
@pytest.mark.parametrize("command", [["predict", "{run}", "{images}"], ["export", "{run}", "--format", "torchscript"]])
def test_an_output_that_cannot_be_written_exits_2_before_any_work(trained, tmp_path, capsys, command, output):
    """/proc and /sys pass os.access for root, yet nothing can be created there."""
    ext = "csv" if command[0] == "predict" else "pt"
    (tmp_path / f"out.{ext}").mkdir()
    (tmp_path / "a-file").write_text("x")
    names = dict(run=trained["run"], images=trained["images"], dir=tmp_path / f"out.{ext}",
                 file=tmp_path / "a-file", ext=ext)
    if output.startswith("/sys") and not Path("/sys").is_dir():
        pytest.skip("no /sys here")
    target = output.format(**names)
    assert main([a.format(**names) for a in command] + ["--output", target]) == 2
    error = capsys.readouterr().err
    assert f"--output {target}" in error and ("is a directory" in error or "nothing can be created" in error
                                              or "is a file, not a directory" in error), error


def test_non_utf8_file_names_are_written_to_csv_and_json(trained, tmp_path, capsys):
    import os

    folder = tmp_path / "images"
    folder.mkdir()
    source = next((trained["images"] / "bag").iterdir())
    shutil.copy(source, os.fsencode(folder) + b"/caf\xe9" + os.fsencode(source.suffix))  # Latin-1 bytes
    output = tmp_path / "out.csv"
    assert main(["predict", str(trained["run"]), str(folder), "--output", str(output)]) == 0
    assert f"caf\\xe9{source.suffix}" in output.read_text(encoding="utf-8")  # shown as an escape, valid UTF-8
    assert main(["predict", str(trained["run"]), str(folder), "--output", str(tmp_path / "out.json")]) == 0
    written = json.loads((tmp_path / "out.json").read_text())["predictions"][0]["path"]
    assert os.fsencode(written) == os.fsencode(folder) + b"/caf\xe9" + os.fsencode(source.suffix)  # exact
    assert main(["predict", str(trained["run"]), str(folder)]) == 0  # the table on stdout
    assert f"caf\\xe9{source.suffix}" in capsys.readouterr().out
