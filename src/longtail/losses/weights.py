"""Per-class weights from training counts: the one place weighted CE, class-balanced losses and
DRW get their weights from (spec section 4).

* ``"inverse"``:           w_j ∝ 1 / N_j
* ``"sqrt"``:              w_j ∝ 1 / sqrt(N_j)
* ``"effective_number"``:  w_j ∝ (1 - beta) / (1 - beta ** N_j)   (Cui et al. 2019, beta = 0.9999)
* ``"none"``:              w_j = 1

All are normalised to sum to K (mean weight 1), as spec section 4 prescribes for the class-balanced
weights; doing the same for inverse / sqrt keeps every weighted loss on the scale of plain CE, so
learning rates transfer between them.
"""

from __future__ import annotations

import torch

from .._checks import ClassCounts, as_class_counts

WEIGHTINGS = ("inverse", "sqrt", "effective_number", "none")


def class_weights(
    class_counts: ClassCounts, weighting: str = "inverse", beta: float = 0.9999
) -> torch.Tensor:
    """Per-class weights (float64, shape (K,), summing to K) for ``weighting`` in :data:`WEIGHTINGS`.

    ``beta`` is only used by ``"effective_number"`` (Cui et al., eq. "E_n = (1 - beta^n) / (1 - beta)";
    weight = 1 / E_n). beta = 0 gives uniform weights (the DRW "before" phase of LDAM-DRW).
    """
    counts = as_class_counts(class_counts)
    if weighting == "inverse":
        raw = 1.0 / counts
    elif weighting == "sqrt":
        raw = counts.rsqrt()
    elif weighting == "effective_number":
        if not (0.0 <= beta < 1.0):
            raise ValueError(f"beta for effective-number weights must be in [0, 1), got {beta}")
        # 1 - beta ** N computed as -expm1(N log beta): exact for beta close to 1 and small N.
        effective_number = -torch.expm1(counts * torch.log(torch.tensor(beta, dtype=torch.float64)))
        raw = (1.0 - beta) / effective_number if beta > 0 else torch.ones_like(counts)
    elif weighting == "none":
        raw = torch.ones_like(counts)
    else:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    return raw * (counts.numel() / raw.sum())
