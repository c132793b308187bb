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
