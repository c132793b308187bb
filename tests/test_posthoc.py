"""`longtail posthoc`: tau-norm, post-hoc logit adjustment and NCM on a trained run, tau chosen on
validation; every reported test accuracy recomputed here with numpy from the model's features."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import tiny_run_overrides
from longtail.cli import main
from longtail.engine.rundir.checkpoint import load_checkpoint
from longtail.engine.evaluation.evaluate import evaluate_checkpoint, load_trained


@pytest.fixture(scope="module")
def trained(tiny_idx_root, tmp_path_factory):
    output = tmp_path_factory.mktemp("posthoc")
    # fp32: the post-hoc features are then the float32 ones recomputed below (bf16 autocast would put
    # a 0.1 % difference into the NLL that the temperature test compares)
    assert main(["train", *tiny_run_overrides(tiny_idx_root, output, epochs=3), "data.validation_per_class=2",
                 "train.run_name=run", "train.precision=fp32"]) == 0
    return output / "run"


@pytest.fixture(scope="module")
def features(trained):
    """float64 numpy features and labels of every split, and the classifier weights."""
    model, data, _, _ = load_trained(trained, "cpu", with_train_split=True)
    out = {}
    with torch.no_grad():
        for split, loader in data.eval_loaders.items():
            pairs = [(model.features(images), labels) for images, labels in loader]
            out[split] = (torch.cat([f for f, _ in pairs]).double().numpy(), torch.cat([y for _, y in pairs]).numpy())
    out["weight"] = model.head.weight.detach().double().numpy()
    out["bias"] = model.head.bias.detach().double().numpy()
    out["counts"] = np.asarray(data.class_counts, dtype=np.float64)
    return out


def run(trained, method, *extra) -> dict:
    assert main(["posthoc", str(trained), "--method", method, *extra]) == 0
    return json.loads((trained / f"posthoc_{method}.json").read_text())


def accuracy(logits, labels) -> float:
    return float((logits.argmax(axis=1) == labels).mean())


def check_choice(result, taus):
    curve = [entry["val"]["balanced_accuracy"] for entry in result["sweep"]]
    assert [entry["tau"] for entry in result["sweep"]] == taus
    assert result["tau"] == taus[curve.index(max(curve))]


def test_logit_adjustment(trained, features):
    taus = [0.0, 0.5, 1.0, 2.0]
    result = run(trained, "logit_adjust", "--taus", ",".join(map(str, taus)))
    check_choice(result, taus)
    # tau = 0 is the model itself: the plain evaluation of the validation split.
    plain = evaluate_checkpoint(trained, "val", "cpu")
    assert result["sweep"][0]["val"]["balanced_accuracy"] == pytest.approx(plain["balanced_accuracy"], abs=1e-12)
    x, y = features["test"]
    log_prior = np.log(features["counts"] / features["counts"].sum())
    logits = x @ features["weight"].T + features["bias"] - result["tau"] * log_prior
    assert result["test"]["accuracy"] == pytest.approx(accuracy(logits, y), abs=1e-12)


def test_tau_normalisation(trained, features):
    taus = [0.0, 0.5, 1.0, 1.5]
    result = run(trained, "tau_norm", "--taus", ",".join(map(str, taus)))
    check_choice(result, taus)
    w = features["weight"]
    for entry in result["sweep"]:  # rows w_j / ||w_j|| ** tau, no bias
        x, y = features["val"]
        logits = x @ (w / np.linalg.norm(w, axis=1, keepdims=True) ** entry["tau"]).T
        assert entry["val"]["accuracy"] == pytest.approx(accuracy(logits, y), abs=1e-12)
    x, y = features["test"]
    logits = x @ (w / np.linalg.norm(w, axis=1, keepdims=True) ** result["tau"]).T
    assert result["test"]["accuracy"] == pytest.approx(accuracy(logits, y), abs=1e-12)


def test_nearest_class_mean(trained, features):
    result = run(trained, "ncm")
    assert result["tau"] is None and result["sweep"] == []
    x_train, y_train = features["train"]
    means = np.stack([x_train[y_train == j].mean(axis=0) for j in range(len(features["counts"]))])
    x, y = features["test"]
    cosine = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (means / np.linalg.norm(means, axis=1, keepdims=True)).T
    assert result["test"]["accuracy"] == pytest.approx(accuracy(cosine, y), abs=1e-12)


def test_choosing_tau_needs_a_validation_split(tiny_idx_root, tmp_path, capsys):
    assert main(["train", *tiny_run_overrides(tiny_idx_root, tmp_path, epochs=1), "train.run_name=run",
                 "model.head=cosine"]) == 0
    capsys.readouterr()
    assert main(["posthoc", str(tmp_path / "run"), "--method", "logit_adjust"]) == 2
    assert "data.validation_per_class" in capsys.readouterr().err
    assert not (tmp_path / "run" / "posthoc_logit_adjust.json").exists()
    assert main(["posthoc", str(tmp_path / "run"), "--method", "logit_adjust", "--taus", "1"]) == 0  # no choice
    assert main(["posthoc", str(tmp_path / "run"), "--method", "tau_norm", "--taus", "1"]) == 2
    assert "CosineHead" in capsys.readouterr().err


# --------------------------------------------------------------------------- heads where tau matters


def constructed_run(trained, tmp_path, features, weight, bias):
    """A copy of the trained run whose classifier is ``weight`` / ``bias`` (float64 numpy)."""
    import shutil

    from longtail.engine.rundir.checkpoint import save_checkpoint

    run = tmp_path / "constructed"
    shutil.copytree(trained, run)
    path = run / "checkpoints" / "last.pt"
    state = load_checkpoint(path)
    assert state.get("best_model") is None  # the run reports its last weights, which we replace
    state["model"]["head.weight"] = torch.tensor(weight, dtype=torch.float32)
    state["model"]["head.bias"] = torch.tensor(bias, dtype=torch.float32)
    save_checkpoint(path, state)
    return run


def unit_class_means(features):
    x, y = features["train"]
    means = np.stack([x[y == j].mean(axis=0) for j in range(len(features["counts"]))])
    return means / np.linalg.norm(means, axis=1, keepdims=True)


def balanced_accuracy(logits, labels) -> float:
    predictions = logits.argmax(axis=1)
    return float(np.mean([(predictions[labels == j] == j).mean() for j in np.unique(labels)]))


def test_tau_norm_picks_the_tau_that_equalises_row_norms(trained, features, tmp_path):
    """Rows w_j = a_j u_j with unit u_j (class-mean directions) and norms a_j = 100 ** j: the
    tau-normalised logits are a_j ** (1 - tau) u_j . x, so tau = 1 gives the cosine classifier
    u_j . x exactly, while any other tau lets one class's factor (10x per class at |1 - tau| = 0.5)
    swamp the others. The features are non-negative (ReLU then pooling), so every u_j . x > 0."""
    units = unit_class_means(features)
    norms = 100.0 ** np.arange(len(units))
    run = constructed_run(trained, tmp_path, features, units * norms[:, None], np.zeros(len(units)))
    taus = [0.0, 0.5, 1.0, 1.5, 2.0]
    x, y = features["val"]
    assert (x >= 0).all()
    curve = [balanced_accuracy(x @ (units * norms[:, None] ** (1 - tau)).T, y) for tau in taus]
    assert curve.index(max(curve)) == 2 and curve.count(max(curve)) == 1  # the construction works
    result = run_on(run, "tau_norm", taus)
    assert result["tau"] == 1.0
    assert [e["val"]["balanced_accuracy"] for e in result["sweep"]] == pytest.approx(curve, abs=1e-12)


def test_logit_adjustment_picks_the_tau_that_removes_the_built_in_prior(trained, features, tmp_path):
    """Bias b_j = 1.5 log pi_j on a head whose feature part is tiny (|W x| < 1e-3): the adjusted
    logits W x + (1.5 - tau) log pi_j are the feature classifier exactly at tau = 1.5 and a
    constant ranking of the classes by prior (one predicted class) at every other tau of the grid."""
    counts = features["counts"]
    log_prior = np.log(counts / counts.sum())
    x, y = features["val"]
    units = unit_class_means(features) * 1e-3 / np.linalg.norm(x, axis=1).max()
    run = constructed_run(trained, tmp_path, features, units, 1.5 * log_prior)
    taus = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    curve = [balanced_accuracy(x @ units.T + (1.5 - tau) * log_prior, y) for tau in taus]
    assert curve.index(max(curve)) == 3 and curve.count(max(curve)) == 1
    result = run_on(run, "logit_adjust", taus)
    assert result["tau"] == 1.5
    assert [e["val"]["balanced_accuracy"] for e in result["sweep"]] == pytest.approx(curve, abs=1e-9)


def run_on(run_dir, method, taus) -> dict:
    assert main(["posthoc", str(run_dir), "--method", method, "--taus", ",".join(map(str, taus))]) == 0
    return json.loads((run_dir / f"posthoc_{method}.json").read_text())


# --------------------------------------------------------------------------- temperature scaling


def numpy_nll(logits, labels, temperature) -> float:
    scaled = logits / temperature
    top = scaled.max(axis=1, keepdims=True)
    log_normaliser = top[:, 0] + np.log(np.exp(scaled - top).sum(axis=1))
    return float(np.mean(log_normaliser - scaled[np.arange(len(labels)), labels]))


def test_temperature_is_chosen_on_the_validation_nll_and_changes_no_prediction(trained, features):
    from scipy.optimize import minimize_scalar

    from longtail.engine.evaluation.posthoc import DEFAULT_TEMPERATURES

    result = run(trained, "temperature")
    assert result["select_on"] == "val/nll"
    temperatures = [entry["tau"] for entry in result["sweep"]]
    assert temperatures == list(DEFAULT_TEMPERATURES) and min(temperatures) == 0.25 and max(temperatures) == 8
    x, y = features["val"]
    logits = x @ features["weight"].T + features["bias"]
    curve = [numpy_nll(logits, y, t) for t in temperatures]
    for entry, expected in zip(result["sweep"], curve):
        assert entry["val"]["nll"] == pytest.approx(expected, rel=1e-5)
        # dividing the logits by T > 0 changes no prediction: every accuracy equals T = 1's
        assert entry["val"]["balanced_accuracy"] == result["sweep"][20]["val"]["balanced_accuracy"]
    assert result["tau"] == temperatures[int(np.argmin(curve))]
    # the grid's choice is within one grid step (2 ** 0.1) of the continuous optimum, found by scipy
    best = minimize_scalar(lambda log_t: numpy_nll(logits, y, np.exp(log_t)), bounds=(np.log(0.25), np.log(8)),
                           method="bounded", options={"xatol": 1e-6})
    assert abs(np.log2(result["tau"]) - best.x / np.log(2)) <= 0.1 + 1e-6
    x, y = features["test"]
    logits = x @ features["weight"].T + features["bias"]
    assert result["test"]["accuracy"] == pytest.approx(accuracy(logits, y), abs=1e-12)
    assert result["test"]["nll"] == pytest.approx(numpy_nll(logits, y, result["tau"]), rel=1e-5)


def test_temperature_refuses_an_accuracy_to_choose_it_and_non_positive_values(trained, capsys):
    assert main(["posthoc", str(trained), "--method", "temperature", "--select-on", "balanced_accuracy"]) == 2
    assert "changes no prediction" in capsys.readouterr().err
    for bad in ("0", "-1", "1,0"):
        assert main(["posthoc", str(trained), "--method", "temperature", "--taus", bad]) == 2
        assert "must be positive" in capsys.readouterr().err
    assert main(["posthoc", str(trained), "--method", "temperature", "--taus", "2"]) == 0  # one value: applied
    assert json.loads((trained / "posthoc_temperature.json").read_text())["tau"] == 2.0
