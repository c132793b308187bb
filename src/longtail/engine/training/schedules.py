"""Learning-rate schedules, evaluated per optimisation step from a continuous epoch position.

Warm-up over the first ``warmup_epochs`` (positions in epochs; iteration-based recipes convert
their ``warmup_iterations`` to epochs with the number of batches per epoch):

- ``warmup_style="linear"``: per step, linearly from ``warmup_start_lr`` (default: 0) to the base lr.
  The Balanced Softmax CIFAR protocol warms up from 0.05 to 0.1 over 800 iterations.
- ``warmup_style="stepwise"``: what LDAM-DRW's ``adjust_learning_rate`` does: constant within an
  epoch, ``base_lr * e / warmup_epochs`` in epochs e = 1 .. warmup_epochs (0.02, 0.04, ..., 0.1 for
  lr 0.1 and 5 epochs), then the schedule. ``warmup_start_lr`` does not apply.

Afterwards a multistep schedule multiplies the base lr by the factor of the last passed milestone
(LDAM-DRW CIFAR-LT: x0.01 from epoch 160, x0.0001 from 180, epochs counted from 0) or a cosine
schedule anneals from the base lr to ``min_lr`` between the end of the warm-up and ``total_epochs``.
"""

from __future__ import annotations

import bisect
import math
from typing import Optional

WARMUP_STYLES = ("linear", "stepwise")


def learning_rate(
    base_lr: float,
    epoch_position: float,
    total_epochs: float,
    schedule: str = "multistep",
    warmup_epochs: float = 0.0,
    milestones: tuple = (),
    milestone_factors: tuple = (),
    min_lr: float = 0.0,
    warmup_style: str = "linear",
    warmup_start_lr: Optional[float] = None,
) -> float:
    """The lr at ``epoch_position`` (epoch index + fraction of the epoch done, starting at 0)."""
    if warmup_style not in WARMUP_STYLES:
        raise ValueError(f"unknown warmup_style {warmup_style!r}; valid: {', '.join(WARMUP_STYLES)}")
    if warmup_epochs > 0 and epoch_position < warmup_epochs:
        if warmup_style == "stepwise":
            return base_lr * min(1.0, (math.floor(epoch_position) + 1) / warmup_epochs)
        start = 0.0 if warmup_start_lr is None else warmup_start_lr
        fraction = min(1.0, (epoch_position + 1e-12) / warmup_epochs)
        return start + (base_lr - start) * fraction
    if schedule == "constant":
        return base_lr
    if schedule == "multistep":
        passed = bisect.bisect_right(list(milestones), epoch_position)
        return base_lr * (milestone_factors[passed - 1] if passed else 1.0)
    if schedule == "cosine":
        span = max(total_epochs - warmup_epochs, 1e-12)
        progress = min(max((epoch_position - warmup_epochs) / span, 0.0), 1.0)
        return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule '{schedule}'; valid: multistep, cosine, constant")
