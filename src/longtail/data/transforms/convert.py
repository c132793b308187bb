"""Decoded images (PIL, numpy, tensors) as uint8 (C, H, W) tensors in a chosen colour mode: the one
conversion the evaluation preprocessing, the per-file augmentation and the image-file decoder share."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

COLORS = {"L": 1, "RGB": 3}

__all__ = ["COLORS", "convert_channels", "to_uint8_image"]


def to_uint8_image(image: Any, color: str) -> torch.Tensor:
    """A decoded image (PIL image, uint8 tensor (C, H, W) or uint8 array (H, W[, C])) as uint8 (C, H, W) in ``color``."""
    if color not in COLORS:
        raise ValueError(f"color must be one of {sorted(COLORS)}, got {color!r}")
    if hasattr(image, "convert") and hasattr(image, "mode"):  # a PIL image
        image = image.convert(color)
        array = np.asarray(image, dtype=np.uint8)
        array = array[:, :, None] if array.ndim == 2 else array
        return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(f"numpy images must be uint8 (H, W) or (H, W, C), got {image.dtype} {image.shape}")
        array = image[:, :, None] if image.ndim == 2 else image
        image = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
    if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.dim() != 3:
        raise ValueError(
            f"expected a PIL image or a uint8 tensor (C, H, W), got {getattr(image, 'dtype', type(image).__name__)} "
            f"{tuple(getattr(image, 'shape', ()))}")
    return convert_channels(image.unsqueeze(0), color)[0]


def convert_channels(images: torch.Tensor, color: str) -> torch.Tensor:
    """uint8 (N, C, H, W) with C in {1, 3, 4} -> ``color`` channels (alpha dropped, as PIL does for RGB)."""
    channels = images.shape[1]
    if channels == 4:
        images = images[:, :3]
        channels = 3
    if channels not in (1, 3):
        raise ValueError(f"images must have 1, 3 or 4 channels, got {channels}")
    wanted = COLORS[color]
    if channels == wanted:
        return images
    if wanted == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    # PIL's "L" conversion in its fixed-point form (libImaging/Convert.c): ITU-R 601-2 luma,
    # (19595 R + 38470 G + 7471 B + 2**15) >> 16, so tensors and PIL images give the same pixels.
    rgb = images.to(torch.int32)
    grey = (rgb[:, 0:1] * 19595 + rgb[:, 1:2] * 38470 + rgb[:, 2:3] * 7471 + 32768) >> 16
    return grey.to(torch.uint8)
