"""Test-time augmentation: average a model's logits over flipped / cropped copies of a batch.

Modes: ``none`` (the model itself), ``flip`` (image + horizontal mirror), ``five_crop`` (four
corners + centre of side ``crop_size``), ``ten_crop`` (five crops of the image and five of its mirror). LIFT
(Shi et al. 2024, ``test_ensemble``) resizes to ``size + 24`` and averages the logits of the five
crops; the crops must have the size the network expects (e.g. 224 for a ViT), so give the batch
at ``crop_size + margin`` for the crop modes, or let :class:`TTAModel` enlarge a batch of the
network's size by LIFT's ratio (224 + 24) / 224 first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TTA_MODES", "TTAModel", "tta_views", "tta_logits"]

TTA_MODES = ("none", "flip", "five_crop", "ten_crop")


def _five_crops(images: torch.Tensor, size: int) -> list[torch.Tensor]:
    height, width = images.shape[-2:]
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"crop_size must be a positive integer, got {size!r}")
    if size > height or size > width:
        raise ValueError(f"crop_size {size} is larger than the images ({height}x{width})")
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return [
        images[..., :size, :size],  # top-left
        images[..., :size, width - size:],  # top-right
        images[..., height - size:, :size],  # bottom-left
        images[..., height - size:, width - size:],  # bottom-right
        images[..., top:top + size, left:left + size],  # centre
    ]


def tta_views(images: torch.Tensor, mode: str = "none", crop_size: int | None = None) -> list[torch.Tensor]:
    """The copies of ``images`` (B, C, H, W) that ``mode`` averages over."""
    if mode not in TTA_MODES:
        raise ValueError(f"unknown test-time augmentation {mode!r}; valid: {', '.join(TTA_MODES)}")
    if images.dim() != 4:
        raise ValueError(f"test-time augmentation expects a batch (B, C, H, W), got shape {tuple(images.shape)}")
    if mode == "none":
        return [images]
    if mode == "flip":
        return [images, images.flip(-1)]
    if crop_size is None:
        raise ValueError(f"test-time augmentation {mode!r} needs crop_size (the network's input size)")
    crops = _five_crops(images, crop_size)
    # ten_crop as torchvision's TenCrop: the five crops of the image, then those of its mirror.
    return crops if mode == "five_crop" else crops + _five_crops(images.flip(-1), crop_size)


@torch.no_grad()
def tta_logits(model: nn.Module, images: torch.Tensor, mode: str = "none", crop_size: int | None = None) -> torch.Tensor:
    """Mean of ``model(view)`` over the views of ``mode`` (logits, as LIFT averages them)."""
    views = tta_views(images, mode, crop_size)
    total = None
    for view in views:
        logits = model(view.contiguous()).float()
        total = logits if total is None else total + logits
    return total / len(views)


class TTAModel(nn.Module):
    """``forward(images)`` = the mean logits of ``model`` over the views of ``mode`` of a batch already at
    the network's input size: the crop modes first enlarge it bilinearly by LIFT's (224 + 24) / 224
    (at least 2 pixels) and crop back to the input size. For evaluation and prediction (no gradient)."""

    def __init__(self, model: nn.Module, mode: str) -> None:
        super().__init__()
        if mode not in TTA_MODES:
            raise ValueError(f"unknown test-time augmentation {mode!r}; valid: {', '.join(TTA_MODES)}")
        self.model, self.mode = model, mode

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.mode in ("none", "flip"):
            return tta_logits(self.model, images, self.mode)
        height, width = images.shape[-2:]
        margin = max(2, round(min(height, width) * 24 / 224))
        larger = F.interpolate(images.float(), size=(height + margin, width + margin), mode="bilinear",
                               align_corners=False).to(images.dtype)
        return tta_logits(self.model, larger, self.mode, crop_size=min(height, width))
