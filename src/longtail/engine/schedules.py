"""Learning-rate schedules, evaluated per optimisation step from a continuous epoch position.

Warm-up is linear from lr / steps to lr over ``warmup_epochs`` (the LDAM-DRW / BS CIFAR
protocol: 5 epochs); afterwards a multistep schedule multiplies the base lr by the factor of the
last passed milestone (CIFAR-LT: x0.01 from 160, x0.0001 from 180; LDAM: x0.1, x0.01) or a cosine
schedule anneals to ``min_lr``.
"""

from __future__ import annotations

import bisect
import math


def learning_rate(
    base_lr: float,
    epoch_position: float,
    total_epochs: int,
    schedule: str = "multistep",
    warmup_epochs: float = 0.0,
    milestones: tuple = (),
    milestone_factors: tuple = (),
    min_lr: float = 0.0,
) -> float:
    """The lr at ``epoch_position`` (epoch index + fraction of the epoch done, starting at 0)."""
    if warmup_epochs > 0 and epoch_position < warmup_epochs:
        return base_lr * min(1.0, (epoch_position + 1e-12) / warmup_epochs)
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
