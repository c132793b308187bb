"""longtail.metrics against independent computations (scikit-learn, hand-computed examples)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import free_port
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn.metrics import accuracy_score, balanced_accuracy_score, log_loss
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from longtail.metrics import LongTailMetrics, confusion_matrix, worst_class_ratio


def _random_predictions(num_samples=600, num_classes=7, seed=0):
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, num_classes, (num_samples,), generator=generator)
    logits = torch.randn(num_samples, num_classes, generator=generator) * 2
    # Make the predictions informative so that per-class recalls differ.
    logits[torch.arange(num_samples), targets] += torch.rand(num_samples, generator=generator) * 3
    return logits, targets


def test_confusion_orientation_is_true_by_pred():
    # One class-0 sample predicted as 2: scikit-learn puts it at [true=0, pred=2].
    counts = confusion_matrix(torch.tensor([2, 1, 1]), torch.tensor([0, 1, 2]), 3)
    assert counts.dtype == torch.int64
    assert counts.tolist() == [[0, 0, 1], [0, 1, 0], [0, 1, 0]]


def test_confusion_matrix_matches_sklearn():
    logits, targets = _random_predictions()
    preds = logits.argmax(1)
    expected = sk_confusion_matrix(targets.numpy(), preds.numpy(), labels=list(range(7)))
    assert np.array_equal(confusion_matrix(preds, targets, 7).numpy(), expected)
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(torch.tensor([7]), torch.tensor([0]), 7)


def test_metrics_match_sklearn_over_several_batches():
    logits, targets = _random_predictions()
    metrics = LongTailMetrics(7, train_counts=[500, 300, 120, 80, 30, 15, 5])
    for logit_batch, target_batch in zip(logits.split(97), targets.split(97)):
        metrics.update(logit_batch, target_batch)
    result = metrics.compute()
    y_true, y_pred = targets.numpy(), logits.argmax(1).numpy()
    probabilities = torch.softmax(logits.double(), 1).numpy()
    assert np.array_equal(metrics.confusion.numpy(), sk_confusion_matrix(y_true, y_pred))
    assert result["num_samples"] == 600
    assert result["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
    assert result["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred), abs=1e-12)
    assert result["nll"] == pytest.approx(log_loss(y_true, probabilities, labels=list(range(7))), rel=1e-5)
    recalls = sk_confusion_matrix(y_true, y_pred).diagonal() / np.bincount(y_true)
    assert result["per_class_accuracy"] == pytest.approx(recalls.tolist(), abs=1e-12)
    assert result["worst_class_accuracy"] == pytest.approx(recalls.min())
    assert result["worst_class"] == int(recalls.argmin())
    assert result["worst_10pct_accuracy"] == pytest.approx(recalls.min())  # ceil(0.7) = 1 class
    assert result["harmonic_mean_recall"] == pytest.approx(len(recalls) / np.sum(1 / recalls))
    json.dumps(result)  # JSON-ready: plain Python numbers and lists


def _hand_ece(confidences, correct, bins=15):
    """Guo et al. 2017, eq. 3, bins (k/B, (k+1)/B], written as a plain loop."""
    total, ece = len(confidences), 0.0
    for k in range(bins):
        low, high = k / bins, (k + 1) / bins
        members = [i for i, c in enumerate(confidences) if (low < c <= high) or (k == 0 and c == 0)]
        if members:
            accuracy = sum(correct[i] for i in members) / len(members)
            confidence = sum(confidences[i] for i in members) / len(members)
            ece += len(members) / total * abs(accuracy - confidence)
    return ece


def test_ece_matches_hand_computation():
    logits, targets = _random_predictions(seed=3)
    metrics = LongTailMetrics(7, train_counts=[10] * 7)
    metrics.update(logits, targets)
    probabilities = torch.softmax(logits.double(), 1)
    confidences = probabilities.max(1).values.tolist()
    correct = (probabilities.argmax(1) == targets).tolist()
    result = metrics.compute()
    assert result["ece"] == pytest.approx(_hand_ece(confidences, correct), abs=1e-6)
    assert sum(result["reliability"]["bin_count"]) == 600
    assert len(result["reliability"]["bin_accuracy"]) == 15


def test_ece_of_a_two_sample_example():
    # Confidences 0.9 (correct) and 0.6 (wrong) fall in different bins: ECE = (0.1 + 0.6) / 2.
    logits = torch.log(torch.tensor([[0.9, 0.1], [0.6, 0.4]]))
    metrics = LongTailMetrics(2, train_counts=[5, 5])
    metrics.update(logits, torch.tensor([0, 1]))
    assert metrics.compute()["ece"] == pytest.approx(0.35, abs=1e-6)


def test_many_medium_few_on_a_hand_example():
    # Train counts: many = {0} (>100), medium = {1, 2, 3} (20..100 inclusive), few = {4, 5} (<20).
    train_counts = [150, 100, 50, 20, 19, 5]
    # Four test samples per class; class j gets correct_per_class[j] of them right.
    correct_per_class = [4, 3, 2, 1, 0, 2]
    targets, preds = [], []
    for label, correct in enumerate(correct_per_class):
        targets += [label] * 4
        preds += [label] * correct + [(label + 1) % 6] * (4 - correct)
    logits = torch.nn.functional.one_hot(torch.tensor(preds), 6).float() * 5
    metrics = LongTailMetrics(6, train_counts=train_counts)
    metrics.update(logits, torch.tensor(targets))
    result = metrics.compute()
    assert result["many_accuracy"] == pytest.approx(1.0)
    assert result["medium_accuracy"] == pytest.approx((0.75 + 0.5 + 0.25) / 3)
    assert result["few_accuracy"] == pytest.approx((0.0 + 0.5) / 2)
    assert (result["num_many_classes"], result["num_medium_classes"], result["num_few_classes"]) == (1, 3, 2)
    assert result["worst_class_accuracy"] == 0.0 and result["worst_class"] == 4
    assert result["harmonic_mean_recall"] == 0.0
    assert result["worst_10pct_accuracy"] == pytest.approx(0.0)  # ceil(0.6) = 1 class

    # Thresholds are configurable; a group without classes is None, not 0.
    no_many = LongTailMetrics(6, train_counts=train_counts, many_threshold=1000, few_threshold=1)
    no_many.update(logits, torch.tensor(targets))
    grouped = no_many.compute()
    assert grouped["many_accuracy"] is None and grouped["few_accuracy"] is None
    assert grouped["medium_accuracy"] == pytest.approx(sum(correct_per_class) / 24)


def test_worst_ten_percent_uses_ceil():
    # 12 classes -> ceil(1.2) = 2 worst classes are averaged.
    recalls = [0.0, 0.5] + [1.0] * 10
    targets = torch.arange(12).repeat_interleave(2)
    preds = targets.clone()
    preds[0:2] = 5  # class 0: 0 / 2
    preds[2] = 7  # class 1: 1 / 2
    metrics = LongTailMetrics(12, train_counts=[50] * 12)
    metrics.update(torch.nn.functional.one_hot(preds, 12).float(), targets)
    result = metrics.compute()
    assert result["per_class_accuracy"] == pytest.approx(recalls)
    assert result["worst_10pct_accuracy"] == pytest.approx(0.25)


def test_class_without_test_samples_is_none_and_ignored():
    metrics = LongTailMetrics(3, train_counts=[100, 50, 10])
    metrics.update(torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [5.0, 0, 0]]), torch.tensor([0, 1, 1]))
    result = metrics.compute()
    assert result["per_class_accuracy"] == [1.0, 0.5, None]
    assert result["few_accuracy"] is None
    y_true, y_pred = [0, 1, 1], [0, 1, 0]
    assert result["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))


def test_bf16_logits_reset_and_errors():
    logits, targets = _random_predictions(num_samples=64)
    metrics = LongTailMetrics(7, train_counts=[10] * 7).to("cpu")
    metrics.update(logits.bfloat16(), targets)
    assert metrics.compute()["num_samples"] == 64
    metrics.reset()
    with pytest.raises(ValueError, match="no samples"):
        metrics.compute()
    with pytest.raises(ValueError, match="soft"):
        metrics.update(logits, torch.softmax(logits, 1))
    with pytest.raises(ValueError, match="classes"):
        metrics.update(logits[:, :5], targets)
    with pytest.raises(ValueError, match="train_counts"):
        LongTailMetrics(7, train_counts=[10] * 6)
    with pytest.raises(ValueError, match="frequency"):
        LongTailMetrics(7, train_counts=[10] * 7, class_weights="inverse")


def test_worst_class_ratio():
    assert worst_class_ratio({"worst_class_accuracy": 0.2}, {"worst_class_accuracy": 0.8}) == pytest.approx(0.25)
    assert worst_class_ratio(0.3, 0.0) is None


def test_confusion_spectral_norm_matches_numpy():
    logits, targets = _random_predictions(seed=5)
    train_counts = np.array([500, 300, 120, 80, 30, 15, 5], dtype=np.float64)
    metrics = LongTailMetrics(7, train_counts=train_counts)
    metrics.update(logits, targets)
    counts = sk_confusion_matrix(targets.numpy(), logits.argmax(1).numpy()).astype(np.float64)
    # Paper orientation: H[pred, true] = counts[true, pred] / n_true, zero diagonal.
    hard = counts.T / counts.sum(axis=1)[None, :]
    np.fill_diagonal(hard, 0.0)
    lambdas = (train_counts / train_counts.sum() + 0.2) ** -0.5
    weights = np.maximum(lambdas / lambdas.mean(), 1e-3)
    expected = np.linalg.svd(hard * weights[None, :], compute_uv=False).max()
    assert metrics.compute()["confusion_spectral_norm"] == pytest.approx(expected, rel=1e-6)
    assert metrics.compute(spectral_norm=False)["confusion_spectral_norm"] is None
    unweighted = LongTailMetrics(7, train_counts=train_counts, class_weights="none")
    unweighted.update(logits, targets)
    assert unweighted.compute()["confusion_spectral_norm"] == pytest.approx(
        np.linalg.svd(hard, compute_uv=False).max(), rel=1e-6
    )



def _distributed_worker(rank, world_size, port, output_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        logits, targets = _random_predictions()
        metrics = LongTailMetrics(7, train_counts=[500, 300, 120, 80, 30, 15, 5])
        # Uneven shards, several updates each: rank 0 gets 250 samples, rank 1 the other 350.
        shard = slice(0, 250) if rank == 0 else slice(250, 600)
        for logit_batch, target_batch in zip(logits[shard].split(64), targets[shard].split(64)):
            metrics.update(logit_batch, target_batch)
        metrics.all_reduce()
        metrics.all_reduce()  # idempotent until the next update
        with open(f"{output_dir}/rank{rank}.json", "w") as handle:
            json.dump(metrics.compute(), handle)
    finally:
        dist.destroy_process_group()


def test_all_reduce_with_two_gloo_processes_equals_one_process(tmp_path):
    mp.spawn(_distributed_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    logits, targets = _random_predictions()
    single = LongTailMetrics(7, train_counts=[500, 300, 120, 80, 30, 15, 5])
    single.update(logits, targets)
    expected = json.loads(json.dumps(single.compute()))
    for rank in range(2):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result.keys() == expected.keys()
        for key, value in expected.items():
            if isinstance(value, float):
                assert math.isclose(result[key], value, rel_tol=1e-9, abs_tol=1e-12), key
            elif key != "reliability":
                assert result[key] == value, key
        assert result["reliability"]["bin_count"] == expected["reliability"]["bin_count"]


def test_all_reduce_without_process_group_is_a_no_op():
    logits, targets = _random_predictions(num_samples=50)
    metrics = LongTailMetrics(7, train_counts=[10] * 7)
    metrics.update(logits, targets)
    metrics.all_reduce()
    assert metrics.compute()["num_samples"] == 50
