"""ConCutMix's mixer with the area and rectified labels (spec concutmix.md sections 3-4). The pair
sampler is :mod:`longtail.data.sampling.pair_sampler`; the views are :mod:`longtail.data.transforms.views`.

* :class:`ConCutMix`: per batch, with probability ``probability`` (0.5): lambda ~ U(0, 1), a
  random permutation of the foregrounds, the CutMix box of area ~(1 - lambda) pasted from B's
  classification view into A's, lambda recomputed as the exact kept fraction; area label
  y_area = lambda onehot(y_A) + (1 - lambda) onehot(y_B). The rectified label (section 3.4),
  from the detached, unnormalised projection g of the mixed image and prototypes c_k:
  s_k = 1 / ||g - c_k||, top-k kept and normalised to s_hat,
  rho = log(lambda N_{y_A} + (1 - lambda) N_{y_B}) / sum_c log N_c,
  y_rect = omega_s rho s_hat + (1 - omega_s rho) y_area.
  Every random draw of a batch comes from a seed derived from (seed, epoch, batch index), so the
  mixing decision is known before the batch's views are made (unmixed batches never compute the
  foreground's view) and a resumed run replays it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from longtail._checks import as_class_counts
from longtail.data.transforms.mixing import cutmix_box, mix_targets, one_hot_targets, paste_box
from longtail.data.seeds import derive_seed

__all__ = ["ConCutMix", "MixedBatch", "rectified_targets"]

_DECISION_STREAM = 12
_MIX_STREAM = 13



@dataclass
class MixedBatch:
    """The classification view after mixing and what the labels need."""

    images: torch.Tensor          # (B, C, H, W) mixed (or plain A) classification view
    labels_a: torch.Tensor        # (B,)
    labels_b: torch.Tensor        # (B,) the permuted foregrounds' labels (= labels_a when unmixed)
    lam: float                    # exact kept fraction of A (1.0 when unmixed)
    mixed: bool
    area_targets: torch.Tensor    # (B, K) y_area (one-hot y_A when unmixed)


def rectified_targets(projection: torch.Tensor, prototypes: torch.Tensor, area_targets: torch.Tensor,
                      labels_a: torch.Tensor, labels_b: torch.Tensor, lam: float, class_counts,
                      topk: int, omega_s: float) -> torch.Tensor:
    """y_rect of spec section 3.4 (float32, detached); ``projection`` (B, F) and ``prototypes`` (K, F)
    are the UNnormalised projection of the mixed images and the raw prototypes."""
    counts = as_class_counts(class_counts).to(projection.device)
    with torch.no_grad():
        distances = torch.cdist(projection.detach().float(), prototypes.detach().float())  # (B, K)
        similarity = 1.0 / distances.clamp_min(1e-12)
        k = min(int(topk), similarity.shape[1])
        top = similarity.topk(k, dim=1)
        kept = torch.zeros_like(similarity).scatter_(1, top.indices, top.values)
        s_hat = kept / kept.sum(dim=1, keepdim=True)
        mixed_count = lam * counts[labels_a] + (1.0 - lam) * counts[labels_b]
        rho = (mixed_count.log() / counts.log().sum()).float()[:, None]
        weight = float(omega_s) * rho
        return weight * s_hat + (1.0 - weight) * area_targets.float()


class ConCutMix:
    """The ConCutMix mixer and label rule (spec concutmix.md sections 3.1 and 3.4).

    Args:
        class_counts: N_c of the training set (rho and K).
        probability: chance that a batch is mixed (0.5 in every released script).
        topk: classes kept in s_hat (30; 3 on CIFAR-10).
        omega_s: the rectification scale (released: K / 1275).
        rectify_from_epoch: batches of (0-based) epochs <= this use the area label, later ones the
            rectified label, as in the released loop; ``None`` never rectifies (CutMix with the area label).
    """

    def __init__(self, class_counts: Sequence[int], probability: float = 0.5, topk: int = 30,
                 omega_s: Optional[float] = None, rectify_from_epoch: Optional[int] = None) -> None:
        self.class_counts = as_class_counts(class_counts)
        self.num_classes = int(self.class_counts.numel())
        if not 0.0 <= float(probability) <= 1.0:
            raise ValueError(f"cutmix probability must be in [0, 1], got {probability}")
        if int(topk) < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        self.probability = float(probability)
        self.topk = int(topk)
        self.omega_s = self.num_classes / 1275.0 if omega_s is None else float(omega_s)
        if not 0.0 <= self.omega_s:
            raise ValueError(f"omega_s must be >= 0, got {omega_s}")
        self.rectify_from_epoch = None if rectify_from_epoch is None else int(rectify_from_epoch)

    def mixes(self, seed: int, epoch: int, batch_index: int, rank: int = 0) -> bool:
        """Whether this batch is mixed: a pure function of (seed, epoch, batch index, rank)."""
        if self.probability <= 0.0:
            return False
        rng = np.random.default_rng(derive_seed(seed, epoch, batch_index, rank, _DECISION_STREAM))
        return bool(rng.random() < self.probability)

    def rectifies(self, epoch: int) -> bool:
        return self.rectify_from_epoch is not None and epoch > self.rectify_from_epoch

    def mix(self, background: torch.Tensor, labels_a: torch.Tensor, foreground: Optional[torch.Tensor],
            labels_b: Optional[torch.Tensor], seed: int, epoch: int, batch_index: int, rank: int = 0) -> MixedBatch:
        """Mix one batch. ``foreground`` may be None when :meth:`mixes` is False for it."""
        if not self.mixes(seed, epoch, batch_index, rank):
            targets = one_hot_targets(labels_a, self.num_classes)
            return MixedBatch(background, labels_a, labels_a, 1.0, False, targets)
        if foreground is None or labels_b is None:
            raise ValueError("this batch is mixed: the foreground view and labels are needed")
        rng = np.random.default_rng(derive_seed(seed, epoch, batch_index, rank, _MIX_STREAM))
        lam = float(rng.uniform(0.0, 1.0))
        permutation = torch.from_numpy(rng.permutation(background.shape[0])).to(background.device)
        box, exact_lam = cutmix_box(background.shape[-2], background.shape[-1], lam, rng=rng)
        partner_labels = labels_b.index_select(0, permutation)
        images = paste_box(background, foreground.index_select(0, permutation), box)
        targets = mix_targets(labels_a, partner_labels, exact_lam, self.num_classes)
        return MixedBatch(images, labels_a, partner_labels, exact_lam, True, targets)

    def targets(self, batch: MixedBatch, epoch: int, projection: Optional[torch.Tensor] = None,
                prototypes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The label the classification loss uses in ``epoch`` (section 3.3)."""
        if not batch.mixed or not self.rectifies(epoch):
            return batch.area_targets
        return rectified_targets(projection, prototypes, batch.area_targets, batch.labels_a, batch.labels_b,
                                 batch.lam, self.class_counts, self.topk, self.omega_s)

    def __repr__(self) -> str:
        return (f"ConCutMix(probability={self.probability:g}, topk={self.topk}, omega_s={self.omega_s:.6g}, "
                f"rectify_from_epoch={self.rectify_from_epoch})")
