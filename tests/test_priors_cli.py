"""`longtail eval --test-priors` and `longtail predict --adapt-prior` on real small trained runs.

Independent references: the run's own metrics.json (per-class test accuracies computed by the
trainer while training), SADE's class-count formula written out here, and the plain predictions of
`longtail predict` (the model's softmax over image files, another data path than eval's loader),
shifted here in NumPy by the prior the loss encodes.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import image_run_overrides, write_image_folder
from longtail.cli import main

TRAIN_COUNTS = [40, 20, 10, 5]
TEST_PER_CLASS = 12
NAMES = ["forward-50", "forward-25", "forward-10", "forward-5", "forward-2", "uniform",
         "backward-2", "backward-5", "backward-10", "backward-25", "backward-50"]


def run_cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A CE and a Balanced Softmax run (3 epochs, seconds) on a 4-class long-tailed PNG folder with a
    balanced test split, and CE's post-hoc tau = 1 logit adjustment."""
    base = tmp_path_factory.mktemp("priors-cli")
    data = base / "data"
    write_image_folder(data, TRAIN_COUNTS, split="train", seed=1)
    write_image_folder(data, [TEST_PER_CLASS] * 4, split="test", seed=1)
    result = {"base": base, "test_images": data / "test"}
    for loss in ("ce", "bs"):
        code, _, _ = run_cli("train", *image_run_overrides(data, base / "runs", epochs=3), "optim.lr=0.05",
                             f"loss.name={loss}", f"train.run_name={loss}")
        assert code == 0
        result[loss] = base / "runs" / loss
    assert run_cli("posthoc", result["ce"], "--method", "logit_adjust", "--taus", "1.0", "--device", "cpu")[0] == 0
    return result


def sade_counts(train_counts, n_max, rho, direction):
    """SADE's get_img_num_per_cls with ranks by training count (written out independently)."""
    k = len(train_counts)
    order = sorted(range(k), key=lambda c: -train_counts[c])
    rank = {c: r for r, c in enumerate(order)}
    if direction == "uniform":
        return [n_max] * k
    return [int(n_max * (1 / rho) ** ((rank[c] if direction == "forward" else k - 1 - rank[c]) / (k - 1)))
            for c in range(k)]


def full_probabilities(run: Path, images: Path, *extra) -> tuple[list, np.ndarray, dict]:
    """(paths, probabilities (N, K) in the run's class order, JSON header) from `longtail predict`."""
    output = run.parent / f"predict-{run.name}-{abs(hash(extra))}.json"
    code, _, err = run_cli("predict", run, images, "--top-k", 4, "--device", "cpu", "--output", output, *extra)
    assert code == 0, err
    result = json.loads(output.read_text())
    classes = json.loads((run / "metrics.json").read_text())["classes"]
    probs = np.array([[{t["class"]: t["probability"] for t in p["top_k"]}[c] for c in classes]
                      for p in result["predictions"]])
    return [p["path"] for p in result["predictions"]], probs, result


@pytest.fixture(scope="module")
def reports(runs):
    found = {}
    for loss in ("ce", "bs"):
        code, out, err = run_cli("eval", runs[loss], "--test-priors", "--draws", 3, "--device", "cpu")
        assert code == 0, err
        found[loss] = (json.loads((runs[loss] / "test_priors.json").read_text()), out)
    return found


def test_report_structure_and_counts_follow_sade(runs, reports):
    report, printed = reports["bs"]
    assert [s["name"] for s in report["sets"]] == NAMES
    assert report["train_counts"] == TRAIN_COUNTS and report["n_max"] == TEST_PER_CLASS and report["draws"] == 3
    assert report["encoded_prior"] == [0.25] * 4 and report["encoded_prior_source"].startswith("uniform")
    for entry in report["sets"]:
        expected = sade_counts(TRAIN_COUNTS, TEST_PER_CLASS, entry["rho"], entry["direction"])
        assert entry["class_counts"] == expected and entry["images"] == sum(expected)
        for column in ("none", "oracle", "em"):
            assert set(entry[column]["drawn"]) == {"accuracy", "many_accuracy", "medium_accuracy", "few_accuracy",
                                                   "worst_class_accuracy"}
        em = entry["em"]
        assert em["expected"] is None and len(em["iterations"]) == 3 and all(em["converged"])
        assert math.isclose(sum(em["estimated_prior"]["mean"]), 1.0, abs_tol=1e-9)
        assert 0 <= em["total_variation_to_true_prior"]["mean"] <= 1
    for name in NAMES:
        assert f"| {name} |" in printed
    assert (runs["bs"] / "plots" / "test_priors.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("loss", ["ce", "bs"])
def test_expectations_equal_a_recomputation_from_the_runs_per_class_accuracies(runs, reports, loss):
    report, _ = reports[loss]
    metrics = json.loads((runs[loss] / "metrics.json").read_text())
    accuracy = np.array(metrics["test"]["per_class_accuracy"])  # the trainer's, computed while training
    for entry in report["sets"]:
        counts = np.array(sade_counts(TRAIN_COUNTS, TEST_PER_CLASS, entry["rho"], entry["direction"]), dtype=float)
        expected = entry["none"]["expected"]
        assert math.isclose(expected["accuracy"], float((counts * accuracy).sum() / counts.sum()), abs_tol=1e-12)
        # Many > 100 training images: none here; Medium 20..100: classes 0 and 1; Few < 20: classes 2 and 3.
        for key, members in (("medium_accuracy", [0, 1]), ("few_accuracy", [2, 3])):
            mass = counts[members].sum()
            want = None if mass == 0 else float((counts[members] * accuracy[members]).sum() / mass)
            assert (expected[key] is None) if want is None else math.isclose(expected[key], want, abs_tol=1e-12)
        assert expected["worst_class_accuracy"] == float(accuracy[counts > 0].min())
    uniform = report["sets"][NAMES.index("uniform")]
    # The uniform set takes all 12 images of every class: each draw is the whole split.
    assert math.isclose(uniform["none"]["drawn"]["accuracy"]["mean"], metrics["test"]["accuracy"], abs_tol=1e-12)
    assert uniform["none"]["drawn"]["accuracy"]["std"] == 0


def test_oracle_column_equals_the_shift_applied_to_predicts_probabilities(runs, reports):
    """CE encodes the training prior: the oracle's per-class accuracies are those of
    argmax(log p + log pi_test - log pi_train), p the plain softmax from `longtail predict`."""
    report, _ = reports["ce"]
    paths, probs, _ = full_probabilities(runs["ce"], runs["test_images"])
    classes = json.loads((runs["ce"] / "metrics.json").read_text())["classes"]
    labels = np.array([classes.index(Path(p).parent.name) for p in paths])
    pi_train = np.array(TRAIN_COUNTS) / sum(TRAIN_COUNTS)
    for entry in report["sets"]:
        counts = np.array(entry["class_counts"], dtype=float)
        with np.errstate(divide="ignore"):
            decisions = (np.log(probs) + np.log(counts / counts.sum()) - np.log(pi_train)).argmax(axis=1)
        per_class = np.array([(decisions[labels == c] == c).mean() for c in range(4)])
        assert entry["oracle"]["per_class_accuracy"] == pytest.approx(per_class.tolist(), abs=1e-12)
        assert math.isclose(entry["oracle"]["expected"]["accuracy"], float((counts * per_class).sum() / counts.sum()),
                            abs_tol=1e-12)
    # Balanced Softmax encodes the uniform prior: on the uniform set the oracle shift is 0.
    uniform = reports["bs"][0]["sets"][NAMES.index("uniform")]
    assert uniform["oracle"]["per_class_accuracy"] == uniform["none"]["per_class_accuracy"]


def test_adapt_prior_uniform_changes_nothing_on_bs_and_shifts_ce_by_log_pi(runs):
    _, plain, _ = full_probabilities(runs["bs"], runs["test_images"])
    _, adapted, header = full_probabilities(runs["bs"], runs["test_images"], "--adapt-prior", "uniform")
    np.testing.assert_array_equal(adapted, plain)  # shift log(1/K) - log(1/K) = 0, exactly
    assert header["adapt_prior"]["target_prior"] == {f"c{j}": 0.25 for j in range(4)}

    _, plain, _ = full_probabilities(runs["ce"], runs["test_images"])
    _, adapted, header = full_probabilities(runs["ce"], runs["test_images"], "--adapt-prior", "uniform")
    shift = np.log(0.25) - np.log(np.array(TRAIN_COUNTS) / sum(TRAIN_COUNTS))
    # log-odds of every class pair move by the shift's difference; float32 softmax underflows for
    # confident images, so only pairs whose four probabilities are resolved are compared.
    compared = 0
    for row_plain, row_adapted in zip(plain, adapted):
        for i in range(4):
            for j in range(i + 1, 4):
                if min(row_plain[i], row_plain[j], row_adapted[i], row_adapted[j]) > 1e-6:
                    moved = np.log(row_adapted[i] / row_adapted[j]) - np.log(row_plain[i] / row_plain[j])
                    assert moved == pytest.approx(shift[i] - shift[j], abs=1e-4)
                    compared += 1
    assert compared >= 20
    assert header["adapt_prior"]["encoded_prior"] == pytest.approx(
        {f"c{j}": n / sum(TRAIN_COUNTS) for j, n in enumerate(TRAIN_COUNTS)}, abs=1e-15)


def test_adapt_prior_file_and_em(runs, tmp_path):
    counts = {"c3": 6, "c1": 2, "c0": 1, "c2": 0}  # any order; a zero excludes the class
    prior_file = tmp_path / "prior.json"
    prior_file.write_text(json.dumps(counts))
    _, plain, _ = full_probabilities(runs["ce"], runs["test_images"])
    _, adapted, header = full_probabilities(runs["ce"], runs["test_images"], "--adapt-prior", prior_file)
    assert header["adapt_prior"]["target_prior"] == pytest.approx({k: v / 9 for k, v in counts.items()})
    assert (adapted[:, 2] == 0).all()
    text_file = tmp_path / "prior.txt"
    text_file.write_text("# c0..c3\n1\n2\n\n0\n6  # tail-heavy\n")
    _, from_text, _ = full_probabilities(runs["ce"], runs["test_images"], "--adapt-prior", text_file)
    np.testing.assert_array_equal(from_text, adapted)

    _, probs, header = full_probabilities(runs["ce"], runs["test_images"], "--adapt-prior", "em")
    summary = header["adapt_prior"]
    assert summary["mode"] == "em" and summary["em"]["converged"]
    estimated = np.array(list(summary["target_prior"].values()))
    assert math.isclose(estimated.sum(), 1.0, abs_tol=1e-9)
    # EM's fixed point: the mean adapted posterior over the predicted images is the estimated prior.
    np.testing.assert_allclose(probs.mean(axis=0), estimated, atol=1e-5)
    code, out, err = run_cli("predict", runs["ce"], runs["test_images"], "--adapt-prior", "em", "--device", "cpu")
    assert code == 0 and "target prior (EM over the 48 predicted images" in err


def test_encoded_prior_override(runs, tmp_path):
    # Saying the CE run's logits encode the uniform prior makes --adapt-prior uniform a zero shift.
    encoded = tmp_path / "encoded.json"
    encoded.write_text(json.dumps({f"c{j}": 1 for j in range(4)}))
    _, plain, _ = full_probabilities(runs["ce"], runs["test_images"])
    _, adapted, header = full_probabilities(runs["ce"], runs["test_images"], "--adapt-prior", "uniform",
                                            "--encoded-prior", encoded)
    np.testing.assert_array_equal(adapted, plain)
    assert header["adapt_prior"]["encoded_prior_source"] == f"from {encoded} (given)"
    code, _, err = run_cli("eval", runs["bs"], "--test-priors", "--draws", 1, "--rhos", 10,
                           "--encoded-prior", "train", "--device", "cpu")
    assert code == 0, err
    report = json.loads((runs["bs"] / "test_priors.json").read_text())
    assert report["encoded_prior_source"] == "train (given)" and report["draws"] == 1
    assert report["encoded_prior"] == pytest.approx([n / sum(TRAIN_COUNTS) for n in TRAIN_COUNTS], abs=1e-15)
    assert [s["name"] for s in report["sets"]] == ["forward-10", "uniform", "backward-10"]
    assert report["sets"][0]["none"]["drawn"]["accuracy"]["std"] is None


def test_posthoc_logit_adjust_composes_and_tau_norm_is_refused(runs):
    # CE + post-hoc logit adjustment with tau = 1 encodes pi_train * pi_train ** -1 = uniform.
    _, posthoc, _ = full_probabilities(runs["ce"], runs["test_images"], "--posthoc", "logit_adjust")
    _, both, header = full_probabilities(runs["ce"], runs["test_images"], "--posthoc", "logit_adjust",
                                         "--adapt-prior", "uniform")
    np.testing.assert_allclose(both, posthoc, atol=1e-6)
    assert header["adapt_prior"]["encoded_prior"] == pytest.approx({f"c{j}": 0.25 for j in range(4)}, abs=1e-12)
    assert run_cli("posthoc", runs["ce"], "--method", "tau_norm", "--taus", "1.0", "--device", "cpu")[0] == 0
    code, _, err = run_cli("predict", runs["ce"], runs["test_images"], "--posthoc", "tau_norm",
                           "--adapt-prior", "uniform", "--device", "cpu")
    assert code == 2 and "cannot be combined with --posthoc tau_norm" in err


@pytest.mark.parametrize("content, message", [
    ('{"c0": 1, "c1": 1, "c2": 1, "cX": 1}', "names the run does not have: ['cX']; misses the run's classes: ['c3']"),
    ('{"c0": 1, "c1": 1, "c2": 1, "c3": -1}', "'c3' has -1"),
    ('{"c0": 1, "c1": 1, "c2": 1, "c3": "a lot"}', "the frequency of 'c3' must be a number"),
    ('{"c0": 0, "c1": 0, "c2": 0, "c3": 0}', "sum to 0"),
    ("[1, 2, 3, 4]", "must be an object {class name: frequency}"),
    ('{"c0": 1,', "is not valid JSON"),
    ("1\n2\n3\n", "has 3 frequencies, the run has 4 classes"),
    ("1\n2\nnan\n4\n", "'c2' has nan"),
    ("1\n2\ninf\n4\n", "'c2' has inf"),
    ("1\ntwo\n3\n4\n", "line 2: 'two' is not a number"),
])
def test_bad_prior_files_exit_2_with_a_clear_message(runs, tmp_path, content, message):
    path = tmp_path / "prior.txt"
    path.write_text(content)
    code, out, err = run_cli("predict", runs["ce"], runs["test_images"], "--adapt-prior", path, "--device", "cpu")
    assert code == 2 and message in err and "Traceback" not in err and out == ""


@pytest.mark.parametrize("argv, message", [
    (["predict", "{ce}", "{images}", "--adapt-prior", "no-such-file.json"], "prior file no-such-file.json not found"),
    (["predict", "{ce}", "{images}", "--encoded-prior", "uniform"], "--encoded-prior only matters with --adapt-prior"),
    (["eval", "{ce}", "--test-priors", "--rhos", "50,1"], "--rhos must be comma-separated numbers > 1"),
    (["eval", "{ce}", "--test-priors", "--rhos", "ten"], "--rhos must be comma-separated numbers > 1"),
    (["eval", "{ce}", "--test-priors", "--draws", "0"], "--draws must be at least 1"),
    (["eval", "{ce}", "--test-priors", "--data-root", "{images}"], "does not take --data-root"),
    (["eval", "{ce}", "--draws", "3"], "--draws only apply with --test-priors"),
])
def test_usage_errors_exit_2(runs, argv, message):
    argv = [a.format(ce=runs["ce"], images=runs["test_images"]) for a in argv]
    code, _, err = run_cli(*argv, "--device", "cpu")
    assert code == 2 and message in err and "Traceback" not in err


def test_encoded_prior_of_a_run_config():
    from longtail.engine.config import build_config
    from longtail.engine.evaluation.priors import PriorError, run_encoded_prior

    counts = np.array([800.0, 150.0, 50.0])
    pi = counts / counts.sum()

    def encoded(*overrides, override=None):
        config, _ = build_config(None, None, ["data.name=fashion-mnist-lt", *overrides], None)
        return run_encoded_prior(config, counts, override)

    np.testing.assert_allclose(encoded("loss.name=ce")[0], pi, rtol=1e-14)
    np.testing.assert_allclose(encoded("loss.name=ccar_bs")[0], np.full(3, 1 / 3), rtol=1e-14)
    np.testing.assert_allclose(encoded("loss.name=la", "loss.tau=0.5")[0], np.sqrt(pi) / np.sqrt(pi).sum(), rtol=1e-14)
    # cRT-style class-balanced sampling: CE sees a uniform prior; BS then encodes 1 / pi_train.
    np.testing.assert_allclose(encoded("loss.name=ce", "data.sampler=class_balanced")[0], np.full(3, 1 / 3), rtol=1e-14)
    np.testing.assert_allclose(encoded("loss.name=bs", "data.sampler=class_balanced")[0], (1 / pi) / (1 / pi).sum(),
                               rtol=1e-14)
    np.testing.assert_allclose(encoded("loss.name=ce", "data.sampler=power", "data.sampler_q=0.25")[0],
                               pi**0.25 / (pi**0.25).sum(), rtol=1e-14)
    with pytest.raises(PriorError, match="encoded prior of loss 'cb_ce' is not known.*--encoded-prior"):
        encoded("loss.name=cb_ce")
    with pytest.raises(PriorError, match="'progressive' sampler"):
        encoded("loss.name=ce", "data.sampler=progressive")
    np.testing.assert_allclose(encoded("loss.name=cb_ce", override="train")[0], pi, rtol=1e-14)
