"""Balanced supervised contrastive loss (BalSCL; Zhu et al., "Balanced Contrastive Learning for
Long-Tailed Visual Recognition", CVPR 2022), the contrastive branch of ConCutMix
(spec concutmix.md section 3.5).

Keys are the B * V normalised view features plus the K normalised class prototypes (prototype k
has label k). For an anchor a (one of the B * V views), with s_aq = f_a . f_q / T:

    P(a) = keys q != a with label y_a            (other views, same-class views, its prototype)
    n_k  = number of keys with label k           (V x batch count of k, + 1 for the prototype)
    D_a  = sum_{q != a} exp(s_aq) / (n_{y_q} - [y_q = y_a])           (class-averaged denominator)
    loss_a = -(1 / |P(a)|) sum_{q in P(a)} (s_aq - log D_a)

and the loss is the mean over the B * V anchors. Vectorised: one (A, Q) similarity matrix.

Under DDP, :func:`global_keys` makes anchors and keys span the global batch (remote features
detached, the local part differentiable, its gradient scaled by the world size): every rank then
evaluates the same global loss, and DDP's gradient averaging yields exactly the gradient of the
global loss, whatever the number of processes (the device CAR's regularizer uses, methods.md
section 2). The prototypes are computed identically on every rank and need no scaling.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.distributed as dist
from torch import nn

from .base import compute_dtype

__all__ = ["BalancedContrastiveLoss", "balanced_contrastive_loss", "gather_keys", "global_keys"]


def balanced_contrastive_loss(features: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor,
                              temperature: float = 0.1) -> torch.Tensor:
    """The functional form of :class:`BalancedContrastiveLoss` (see the module docstring)."""
    if features.dim() != 3:
        raise ValueError(f"features must be (B, V, D) normalised views, got shape {tuple(features.shape)}")
    batch, views, dim = features.shape
    num_classes = prototypes.shape[0]
    if prototypes.dim() != 2 or prototypes.shape[1] != dim:
        raise ValueError(f"prototypes must be (K, {dim}), got shape {tuple(prototypes.shape)}")
    if labels.shape != (batch,):
        raise ValueError(f"labels must have shape ({batch},), got {tuple(labels.shape)}")
    if batch and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}")
    # float32 for half-precision and float32 inputs, float64 when either input is float64 (the
    # library's convention, as in CCAR and CAR): a float64 caller gets a float64 loss.
    dtype = torch.promote_types(compute_dtype(features), compute_dtype(prototypes))
    # Anchors in view-major order, as in the BCL code (torch.cat(torch.unbind(features, 1))).
    anchors = features.transpose(0, 1).reshape(batch * views, dim).to(dtype)
    anchor_labels = labels.repeat(views)
    keys = torch.cat([anchors, prototypes.to(dtype)], dim=0)
    key_labels = torch.cat([anchor_labels, torch.arange(num_classes, device=labels.device)])
    num_anchors = anchors.shape[0]

    counts = torch.bincount(key_labels, minlength=num_classes).to(keys.dtype)  # n_k
    logits = anchors @ keys.t() / temperature  # (A, Q)
    same = anchor_labels[:, None] == key_labels[None, :]
    not_self = torch.ones_like(same)
    not_self[:, :num_anchors].fill_diagonal_(False)
    positives = same & not_self
    # Each key's weight 1 / (n_{y_q} - [y_q = y_a]); the anchor itself drops out through not_self.
    per_key = counts[key_labels][None, :] - same.to(keys.dtype)
    # log D_a = logsumexp over q != a of (s_aq - log per_key); stable and exact.
    masked = (logits - per_key.clamp_min(1).log()).masked_fill(~not_self, float("-inf"))
    log_denominator = torch.logsumexp(masked, dim=1, keepdim=True)
    log_prob = logits - log_denominator
    positive_count = positives.sum(1).to(keys.dtype)  # >= 1: the class prototype is always a positive
    per_anchor = -(log_prob * positives).sum(1) / positive_count
    return per_anchor.mean()


class BalancedContrastiveLoss(nn.Module):
    """``loss(features, labels, prototypes)``: BalSCL (spec concutmix.md section 3.5).

    Args:
        num_classes: K, the number of prototypes expected.
        temperature: T (0.1 on CIFAR, 0.07 on ImageNet-LT / iNat in the released scripts).

    ``features`` (B, V, D) L2-normalised views (V = 2 in ConCutMix), ``labels`` (B,),
    ``prototypes`` (K, D) L2-normalised. Returns the mean over the B * V anchors, in float32
    (float64 when the features or prototypes are float64; half-precision inputs are scored in float32).
    """

    def __init__(self, num_classes: int, temperature: float = 0.1) -> None:
        super().__init__()
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not float(temperature) > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.num_classes = int(num_classes)
        self.temperature = float(temperature)

    def forward(self, features: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        if prototypes.shape[0] != self.num_classes:
            raise ValueError(f"expected {self.num_classes} prototypes, got {prototypes.shape[0]}")
        return balanced_contrastive_loss(features, labels, prototypes, self.temperature)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, temperature={self.temperature}"


def gather_keys(features: torch.Tensor, labels: torch.Tensor,
                process_group=None) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """All-gather (B, V, D) features and (B,) labels across ranks; this rank's slice keeps its
    gradient, the others are detached. Returns (global features, global labels, world size).
    Every rank must hold the same B (the library splits the global batch evenly)."""
    if not (dist.is_available() and dist.is_initialized()):
        return features, labels, 1
    world = dist.get_world_size(process_group)
    if world == 1:
        return features, labels, 1
    rank = dist.get_rank(process_group)
    gathered = [torch.empty_like(features) for _ in range(world)]
    dist.all_gather(gathered, features.detach().contiguous(), group=process_group)
    gathered[rank] = features
    gathered_labels = [torch.empty_like(labels) for _ in range(world)]
    dist.all_gather(gathered_labels, labels.contiguous(), group=process_group)
    return torch.cat(gathered), torch.cat(gathered_labels), world


def global_keys(features: torch.Tensor, labels: torch.Tensor, process_group=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`gather_keys` with the local features' gradient multiplied by the world size (their
    value unchanged), for a loss that every rank evaluates over the whole global batch under DDP."""
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size(process_group)
        if world > 1:
            features = features * world - features.detach() * (world - 1)
    gathered, gathered_labels, _ = gather_keys(features, labels, process_group)
    return gathered, gathered_labels
