"""Batch norm folded into the convolution before it, for evaluation (issue 20).

In eval mode a batch norm is a per-channel affine map, ``y = (x - mean) / sqrt(var + eps) * gamma
+ beta``, so a convolution followed by it equals one convolution with scaled weights and a bias.
Folding removes a full read and write of every activation the network's batch norms touch; on a
CPU, where ResNet-32's batch norms run at memory speed, a test pass got 1.22-1.24x faster
(BENCHMARKS.md, ``benchmarks/bench_speed.py --sections eval``).

The fold is :func:`torch.fx.experimental.optimization.fuse` (PyTorch's own conv + batch-norm
fusion, ``torch.nn.utils.fusion.fuse_conv_bn_eval``) on a deep copy: the given model is never
changed. Models that ``torch.fx`` cannot trace are returned as an unfolded eval-mode copy, with the
reason, so evaluation always works.
"""

from __future__ import annotations

import copy

from torch import nn

__all__ = ["fold_batchnorm"]


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, str]:
    """``(eval-mode copy of model with conv -> batch-norm pairs folded, description)``.

    The copy computes the same function as ``model.eval()`` (up to floating-point rounding) and is
    for inference only: it has no batch-norm layers left to train. ``description`` says how many
    pairs were folded, or why nothing was.
    """
    from torch.fx.experimental.optimization import fuse

    copied = copy.deepcopy(model).eval()
    before = _count_batchnorms(copied)
    if before == 0:
        return copied, "no batch norm to fold"
    try:
        folded = fuse(copied, inplace=True)
    except Exception as error:  # torch.fx cannot trace every model (data-dependent control flow)
        return copied, f"not folded: torch.fx could not trace the model ({type(error).__name__}: {error})"
    folded.eval()
    done = before - _count_batchnorms(folded)
    return folded, f"folded {done} of {before} batch norms into their convolutions"


def _count_batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
