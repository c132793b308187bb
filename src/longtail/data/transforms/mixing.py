"""Batch-level mixers that return ``(images, soft_targets)``: mixup and CutMix.

* mixup (Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018):
  x = lambda x_i + (1 - lambda) x_j, y = lambda e_{y_i} + (1 - lambda) e_{y_j}, lambda ~ Beta(a, a).
* CutMix (Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers with
  Localizable Features", ICCV 2019, eq. 1-2): a box of relative side sqrt(1 - lambda), centred
  uniformly, is pasted from x_j into x_i; after clipping the box to the image, lambda is
  recomputed as the EXACT kept fraction 1 - box_area / (H W), and y uses that lambda.

The partner j is a random permutation of the batch, one lambda per batch (as in both papers).
The soft targets work with any loss taking (B, K) targets and with CAR (column weights).
:func:`cutmix_box`, :func:`paste_box` and :func:`mix_targets` are the reusable pieces (ConCutMix,
methods.md section 3, pastes a class-balanced foreground into an instance-sampled background with
the same box and exact-area label).

Randomness: pass a ``torch.Generator`` (on any device) for reproducible mixing; all draws come from
a NumPy generator seeded from it, so the result does not depend on the images' device.
"""

from __future__ import annotations

from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import torch

__all__ = [
    "Box",
    "CutMix",
    "Mixup",
    "available_mixers",
    "build_mixer",
    "cutmix_box",
    "mix_targets",
    "one_hot_targets",
    "paste_box",
]


def _numpy_rng(generator: Optional[torch.Generator]) -> np.random.Generator:
    """A NumPy generator seeded by one draw from ``generator`` (or from torch's global RNG)."""
    device = generator.device if generator is not None else "cpu"
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=device).item())
    return np.random.default_rng(seed)


def one_hot_targets(labels: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B,) class indices -> (B, K) one-hot rows; (B, K) soft targets are returned as they are."""
    if labels.dim() == 2:
        if labels.shape[1] != num_classes:
            raise ValueError(f"soft targets have {labels.shape[1]} classes, expected {num_classes}")
        return labels.to(dtype)
    if labels.dim() != 1:
        raise ValueError(f"labels must be (B,) class indices or (B, K) soft targets, got {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got range {int(labels.min())}..{int(labels.max())}")
    return torch.nn.functional.one_hot(labels.long(), num_classes).to(dtype)


def mix_targets(labels_a: torch.Tensor, labels_b: torch.Tensor, lam, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """lambda * onehot(y_a) + (1 - lambda) * onehot(y_b); ``lam`` a number or a (B,) tensor."""
    targets_a = one_hot_targets(labels_a, num_classes, dtype)
    targets_b = one_hot_targets(labels_b, num_classes, dtype)
    lam = torch.as_tensor(lam, dtype=dtype, device=targets_a.device)
    if lam.dim() == 1:
        lam = lam[:, None]
    return lam * targets_a + (1 - lam) * targets_b


class Box(NamedTuple):
    """A pixel box: rows [top, bottom), columns [left, right)."""

    top: int
    left: int
    bottom: int
    right: int

    @property
    def area(self) -> int:
        return (self.bottom - self.top) * (self.right - self.left)


def cutmix_box(
    height: int,
    width: int,
    lam: float,
    generator: Optional[torch.Generator] = None,
    rng: Optional[np.random.Generator] = None,
) -> Tuple[Box, float]:
    """The CutMix box for target kept fraction ``lam`` and the exact kept fraction after clipping.

    Yun et al. 2019: cut size (H sqrt(1 - lam), W sqrt(1 - lam)) (truncated to integers, as in the
    reference code), centre uniform over the image, box clipped to the image. Returns
    ``(box, 1 - box.area / (H * W))``, the lambda the labels must use.
    Randomness from ``rng`` if given, else from ``generator`` (see module docstring).
    """
    if not 0.0 <= float(lam) <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    rng = rng if rng is not None else _numpy_rng(generator)
    cut_ratio = float(np.sqrt(1.0 - float(lam)))
    cut_height, cut_width = int(height * cut_ratio), int(width * cut_ratio)
    center_y, center_x = int(rng.integers(height)), int(rng.integers(width))
    top = min(max(center_y - cut_height // 2, 0), height)
    bottom = min(max(center_y + cut_height // 2, 0), height)
    left = min(max(center_x - cut_width // 2, 0), width)
    right = min(max(center_x + cut_width // 2, 0), width)
    box = Box(top, left, bottom, right)
    return box, 1.0 - box.area / float(height * width)


def paste_box(background: torch.Tensor, foreground: torch.Tensor, box: Box) -> torch.Tensor:
    """A copy of ``background`` (..., H, W) with ``box`` replaced by the same region of ``foreground``."""
    if background.shape != foreground.shape:
        raise ValueError(f"background and foreground must have the same shape, got {tuple(background.shape)} and {tuple(foreground.shape)}")
    mixed = background.clone()
    mixed[..., box.top : box.bottom, box.left : box.right] = foreground[..., box.top : box.bottom, box.left : box.right]
    return mixed


class _BatchMixer:
    """Shared part of the mixers: lambda ~ Beta(alpha, alpha), a batch permutation, probability."""

    def __init__(self, alpha: float = 1.0, probability: float = 1.0) -> None:
        if not float(alpha) > 0:
            raise ValueError(f"alpha must be positive (lambda ~ Beta(alpha, alpha)), got {alpha}")
        if not 0.0 <= float(probability) <= 1.0:
            raise ValueError(f"probability must be in [0, 1], got {probability}")
        self.alpha = float(alpha)
        self.probability = float(probability)

    def _mix(self, images, labels, num_classes, lam, permutation, rng) -> Tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, num_classes: int, generator: Optional[torch.Generator] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mix a batch; returns ``(images, soft_targets)`` with (B, K) rows summing to 1.

        ``labels`` are (B,) class indices or (B, K) soft targets (so mixers can be chained).
        Unmixed batches (``probability`` < 1) return the images and one-hot targets.
        """
        rng = _numpy_rng(generator)
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        dtype = images.dtype if images.dtype.is_floating_point else torch.float32
        if self.probability < 1.0 and rng.random() >= self.probability:
            return images, one_hot_targets(labels, num_classes, dtype)
        lam = float(rng.beta(self.alpha, self.alpha))
        permutation = torch.from_numpy(rng.permutation(images.shape[0])).to(images.device)
        return self._mix(images, labels, num_classes, lam, permutation, rng)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(alpha={self.alpha:g}, probability={self.probability:g})"


class Mixup(_BatchMixer):
    """mixup (Zhang et al. 2018): convex combination of the batch with a permutation of itself."""

    def _mix(self, images, labels, num_classes, lam, permutation, rng):
        dtype = images.dtype if images.dtype.is_floating_point else torch.float32
        mixed = images.to(dtype) * lam + images.index_select(0, permutation).to(dtype) * (1.0 - lam)
        return mixed, mix_targets(labels, labels.index_select(0, permutation), lam, num_classes, dtype)


class CutMix(_BatchMixer):
    """CutMix (Yun et al. 2019) with the exact-area lambda: one box per batch, from a permuted partner."""

    def _mix(self, images, labels, num_classes, lam, permutation, rng):
        dtype = images.dtype if images.dtype.is_floating_point else torch.float32
        box, exact_lam = cutmix_box(images.shape[-2], images.shape[-1], lam, rng=rng)
        mixed = paste_box(images, images.index_select(0, permutation), box)
        return mixed, mix_targets(labels, labels.index_select(0, permutation), exact_lam, num_classes, dtype)


_MIXERS: Dict[str, Callable[..., _BatchMixer]] = {"mixup": Mixup, "cutmix": CutMix}


def available_mixers() -> List[str]:
    """Names accepted by :func:`build_mixer`."""
    return sorted(_MIXERS)


def build_mixer(name: str, **options) -> _BatchMixer:
    """``build_mixer("mixup" | "cutmix", alpha=1.0, probability=1.0)``."""
    key = str(name).lower()
    if key not in _MIXERS:
        raise ValueError(f"unknown mixer {name!r}; valid mixers: {', '.join(available_mixers())}")
    return _MIXERS[key](**options)
