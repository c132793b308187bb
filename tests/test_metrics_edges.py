"""Input checks and edge cases of the metric helpers that the mutation sample found untested
(docs/mutation.md); expected values written out by hand."""

from __future__ import annotations

import pytest
import torch

from longtail.metrics.confusion import confusion_matrix, worst_fraction_mean


@pytest.mark.parametrize("preds, targets", [
    (torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2, 0])),  # 1-D, different lengths
    (torch.tensor([[0, 1], [1, 0]]), torch.tensor([[0, 1], [1, 0]])),  # equal shapes, but 2-D
])
def test_confusion_matrix_refuses_mismatched_or_non_flat_inputs(preds, targets):
    with pytest.raises(ValueError, match="1-D of equal length"):
        confusion_matrix(preds, targets, 3)


def test_worst_fraction_mean_takes_at_least_one_value():
    values = torch.tensor([0.9, 0.2, 0.5, 0.7], dtype=torch.float64)
    assert worst_fraction_mean(values, 0.0) == pytest.approx(0.2)  # "at least one": the minimum
    assert worst_fraction_mean(values, 0.1) == pytest.approx(0.2)  # ceil(0.4) = 1
    assert worst_fraction_mean(values, 0.5) == pytest.approx(0.35)  # the two smallest


@pytest.mark.parametrize("num_classes", [0, -1, 2.0])
def test_long_tail_metrics_refuses_a_class_count_that_is_not_a_positive_int(num_classes):
    from longtail.metrics import LongTailMetrics

    with pytest.raises(ValueError, match="num_classes"):
        LongTailMetrics(num_classes, [5, 3])


def test_long_tail_metrics_to_moves_its_state():
    from longtail.metrics import LongTailMetrics

    metrics = LongTailMetrics(3, [5, 3, 1]).to("meta")  # a device every machine has
    state = metrics._state()
    assert state and all(value.device.type == "meta" for value in state.values())


def test_reliability_bin_edges_split_zero_to_one_evenly():
    from longtail.metrics import LongTailMetrics

    metrics = LongTailMetrics(3, [5, 3, 1], ece_bins=4)
    metrics.update(torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), torch.tensor([0, 2]))
    assert metrics.compute()["reliability"]["bin_edges"] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])


@pytest.mark.parametrize("preds, targets", [
    (torch.tensor([0.0, 1.0]), torch.tensor([0, 1])),  # float predictions (logits not argmaxed)
    (torch.tensor([0, 1]), torch.tensor([0.0, 1.0])),  # float targets
])
def test_confusion_matrix_refuses_float_inputs_on_either_side(preds, targets):
    with pytest.raises(ValueError, match="integer class indices"):
        confusion_matrix(preds, targets, 2)
