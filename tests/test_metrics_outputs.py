"""Every output of the metrics and every refusal's message, against hand / numpy computations
(written for the mutmut survivors of issue 22, docs/mutation.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from longtail.metrics import LongTailMetrics
from longtail.metrics.confusion import confusion_matrix, harmonic_mean, shot_group_masks, worst_fraction_mean


def hand_example():
    """Six samples of 3 classes: logits chosen so the max-softmax confidences are known."""
    logits = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0],
                           [1.0, 0.0, 0.0], [0.0, 0.0, 4.0], [2.0, 0.0, 0.0]])
    targets = torch.tensor([0, 1, 2, 1, 2, 0])
    return logits, targets


def test_every_reported_value_of_a_hand_example():
    logits, targets = hand_example()
    metrics = LongTailMetrics(3, [150, 50, 10], ece_bins=15)
    metrics.reset()  # the default device is the CPU
    assert metrics.confusion.device.type == "cpu" and metrics.bin_count.dtype == torch.int64
    metrics.update(logits[:4], targets[:4])
    metrics.update(logits[4:], targets[4:])
    out = metrics.compute()
    assert out["num_classes"] == 3 and out["num_samples"] == 6
    assert out["per_class_support"] == [2, 2, 2]  # test samples per true class
    confidence = torch.softmax(logits.double(), dim=1).max(dim=1).values.numpy()
    correct = (logits.argmax(1) == targets).numpy().astype(float)
    bins = np.minimum((confidence * 15).astype(int), 14)
    expected_count = np.bincount(bins, minlength=15)
    reliability = out["reliability"]
    # float64 edges: a float32 linspace is off by ~1e-8
    assert reliability["bin_edges"] == pytest.approx([i / 15 for i in range(16)], rel=1e-15, abs=1e-15)
    assert reliability["bin_count"] == expected_count.tolist()
    assert reliability["num_nonempty_bins"] == int((expected_count > 0).sum()) == len(set(bins.tolist()))
    for b in range(15):
        if expected_count[b] == 0:
            assert reliability["bin_confidence"][b] is None and reliability["bin_accuracy"][b] is None
        else:
            assert reliability["bin_confidence"][b] == pytest.approx(confidence[bins == b].mean(), rel=1e-6)
            assert reliability["bin_accuracy"][b] == pytest.approx(correct[bins == b].mean(), rel=1e-12)
    assert 1 in expected_count  # a bin with a single sample (a "count > 1" rule would drop it)


def test_many_medium_few_boundaries_and_defaults():
    counts = torch.tensor([101, 100, 20, 19])
    many, medium, few = (shot_group_masks(counts)[name].tolist() for name in ("many", "medium", "few"))
    assert many == [True, False, False, False]  # > 100
    assert medium == [False, True, True, False]  # 20 .. 100
    assert few == [False, False, False, True]  # < 20
    shot_group_masks(counts, many_threshold=50, few_threshold=50)  # equal thresholds are allowed
    with pytest.raises(ValueError, match=r"few_threshold \(60\) must not exceed many_threshold \(50\)"):
        shot_group_masks(counts, many_threshold=50, few_threshold=60)


def test_worst_fraction_default_is_ten_percent_rounded_up():
    values = torch.tensor([0.9, 0.1, 0.5, 0.3, 0.8, 0.7, 0.6, 0.2, 0.4, 1.0, 0.95])  # 11 values
    assert worst_fraction_mean(values) == pytest.approx((0.1 + 0.2) / 2)  # ceil(1.1) = 2 lowest
    metrics = LongTailMetrics(11, [5] * 11)
    preds = torch.arange(11)
    metrics.update(torch.nn.functional.one_hot(preds, 11).float(), preds)
    assert metrics.compute()["worst_10pct_accuracy"] == 1.0


def test_harmonic_mean_is_zero_with_a_zero_recall():
    assert harmonic_mean(torch.tensor([0.5, 0.0, 1.0])) == 0.0
    assert harmonic_mean(torch.tensor([0.5, 0.25])) == pytest.approx(2 / (2 + 4))


@pytest.mark.parametrize("preds, targets, message", [
    ([0, -1, 2], [0, 1, 2], r"^preds contain label -1, outside 0\.\.2$"),
    ([0, 1, 3], [0, 1, 2], r"^preds contain label 3, outside 0\.\.2$"),      # low = 0: the high one is named
    ([0, 1, 2], [0, 5, 1], r"^targets contain label 5, outside 0\.\.2$"),
])
def test_out_of_range_labels_are_named_with_their_side_and_value(preds, targets, message):
    with pytest.raises(ValueError, match=message):
        confusion_matrix(torch.tensor(preds), torch.tensor(targets), 3)


def test_refusal_messages_say_what_to_do():
    with pytest.raises(ValueError, match=r"^preds and targets must be integer class indices \(take argmax"):
        confusion_matrix(torch.tensor([0.0, 1.0]), torch.tensor([0, 1]), 2)
    with pytest.raises(ValueError, match=r"^LongTailMetrics.compute\(\) called before any update"):
        LongTailMetrics(2, [3, 1]).compute()


def test_explicit_class_weights_are_used_for_the_spectral_norm():
    logits, targets = hand_example()
    # Weights float32 cannot hold exactly (1/3, 3.1, 0.7), compared at 1e-12: they must be used in float64.
    weights = np.array([1.0 / 3.0, 3.1, 0.7])
    metrics = LongTailMetrics(3, [150, 50, 10], class_weights=weights.tolist())
    metrics.update(logits, targets)
    counts = np.zeros((3, 3))
    for t, p in zip(targets.tolist(), logits.argmax(1).tolist()):
        counts[t, p] += 1
    hard = counts.T / counts.sum(axis=1)[None, :]  # pred x true, column j over class j's samples
    np.fill_diagonal(hard, 0.0)
    expected = np.linalg.svd(hard * weights[None, :], compute_uv=False).max()
    assert metrics.compute()["confusion_spectral_norm"] == pytest.approx(expected, rel=1e-12)
    assert not math.isclose(expected, np.linalg.svd(hard, compute_uv=False).max())


def test_long_tail_metrics_defaults_and_refusals():
    preds = torch.arange(4)
    metrics = LongTailMetrics(4, [101, 100, 20, 19])  # default thresholds 100 / 20
    metrics.update(torch.nn.functional.one_hot(preds, 4).float(), preds)
    out = metrics.compute()
    assert (out["num_many_classes"], out["num_medium_classes"], out["num_few_classes"]) == (1, 2, 1)
    LongTailMetrics(1, [5])  # one class and one ECE bin are valid
    LongTailMetrics(3, [5, 3, 1], ece_bins=1)
    with pytest.raises(ValueError, match=r"^ece_bins must be >= 1, got 0$"):
        LongTailMetrics(3, [5, 3, 1], ece_bins=0)
    with pytest.raises(ValueError, match=r"^class_weights has 2 entries, expected 3$"):
        LongTailMetrics(3, [5, 3, 1], class_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"valid: frequency, count, none or a list of K weights"):
        LongTailMetrics(3, [5, 3, 1], class_weights="balanced")
    with pytest.raises(ValueError, match="train_counts"):
        LongTailMetrics(2, [-1, 3])


def test_all_reduce_sums_every_state_tensor_once_per_update(tmp_path, monkeypatch):
    """all_reduce sums each state tensor over the given group (op SUM), once per update: a second call
    is a no-op, and a rank that has seen nothing still takes part (the other ranks wait for it).
    In-process (mutmut maps only in-process calls), with a one-process gloo group whose all_reduce is
    replaced by a second rank holding the same state (value * 2): the result must be the metrics of the
    batch seen twice."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        group = dist.new_group([0])
        calls = []

        def two_identical_ranks(value, op=None, group=None, async_op=False):
            calls.append((op, group))
            value.mul_(2)

        monkeypatch.setattr(dist, "all_reduce", two_identical_ranks)
        metrics = LongTailMetrics(3, [150, 50, 10])
        metrics.all_reduce(group)  # nothing seen yet: still one call per state tensor
        per_reduce = len(calls)
        assert per_reduce == 5  # confusion, ECE bin count / confidence / correct, NLL sum
        logits, targets = hand_example()
        metrics.update(logits, targets)
        metrics.all_reduce(group)
        metrics.all_reduce(group)  # no update in between: must not double-count
        assert len(calls) == 2 * per_reduce
        assert all(op == dist.ReduceOp.SUM and used is group for op, used in calls)
    finally:
        dist.destroy_process_group()
    twice = LongTailMetrics(3, [150, 50, 10])
    twice.update(logits, targets)
    twice.update(logits, targets)
    got, expected = metrics.compute(), twice.compute()
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == (pytest.approx(value, rel=1e-12, nan_ok=True) if isinstance(value, float) else value), key
