"""``Preprocessing``: the one description of how a decoded image becomes the model's input.

Training-time evaluation of every pipeline (in-memory arrays, image folders decoded into memory,
image folders and list files read per image) goes through the same ``Preprocessing`` object, and
the trainer writes it to the run directory as ``preprocessing.json``, so inference on new images
(``longtail predict``, ``load_run``) reproduces evaluation exactly without the training data.

The steps, in order:

1. **colour**: decode to ``"L"`` (1 channel) or ``"RGB"`` (3 channels). PIL images are converted
   with PIL's ``convert``; uint8 tensors with 3 channels become grey exactly as PIL does it (ITU-R
   601-2 luma, L = 0.299 R + 0.587 G + 0.114 B in PIL's fixed point), 1-channel ones are repeated.
2. **geometry** (``resize``):
   ``none``: images must already be ``size`` (H, W); any other size is an error (nothing is
   resized behind the user's back). ``resize``: bilinear, antialiased resize to ``size``.
   ``resize_center_crop`` (ImageNet-style evaluation): resize the shorter side to
   ``int(min(size) / crop_ratio)`` (256 for 224) keeping the aspect ratio, then centre-crop ``size``.
   All resizing is :func:`longtail.data.transforms.augment.resize_images` (float32 interpolation, rounded
   back to uint8), the function the in-memory loader uses, so every path gives the same pixels.
3. **normalise**: ``(x / 255 - mean) / std`` per decoded channel, then repeat a single channel to
   ``channels`` when the model takes more (grey images into an RGB backbone).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch

from longtail.data.transforms.augment import normalize, resize_images
from longtail.data.transforms.convert import COLORS, convert_channels, to_uint8_image

__all__ = ["Preprocessing", "RESIZE_POLICIES", "to_uint8_image"]

RESIZE_POLICIES = ("none", "resize", "resize_center_crop")
FORMAT = "longtail-preprocessing/1"




@dataclass(frozen=True)
class Preprocessing:
    """How decoded images become the normalised float tensor the model takes (see the module doc).

    Args:
        size: (H, W) of the model input.
        mean, std: per decoded channel (``len == 1`` for ``color="L"``, 3 for ``"RGB"``), 0..1 scale.
        resize: ``none`` | ``resize`` | ``resize_center_crop``.
        color: ``"L"`` or ``"RGB"``: what images are decoded / converted to.
        channels: channels the model takes (a single decoded channel is repeated); default: as decoded.
        crop_ratio: ``resize_center_crop`` only: crop side / resized shorter side (0.875: 224 of 256).
    """

    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: str = "none"
    color: str = "RGB"
    channels: Optional[int] = None
    crop_ratio: float = 0.875

    def __post_init__(self) -> None:
        size = tuple(int(s) for s in (self.size if isinstance(self.size, (tuple, list)) else (self.size, self.size)))
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"size must be (height, width) with positive sides, got {self.size!r}")
        object.__setattr__(self, "size", size)
        if self.resize not in RESIZE_POLICIES:
            raise ValueError(f"resize must be one of {RESIZE_POLICIES}, got {self.resize!r}")
        if self.color not in COLORS:
            raise ValueError(f"color must be one of {sorted(COLORS)}, got {self.color!r}")
        decoded = COLORS[self.color]
        mean = tuple(float(m) for m in self.mean)
        std = tuple(float(s) for s in self.std)
        if len(mean) != decoded or len(std) != decoded:
            raise ValueError(f"mean / std need {decoded} value(s) for color {self.color!r}, got {mean} / {std}")
        if not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
            raise ValueError(f"mean must be finite and std finite and positive, got {mean} / {std}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        channels = decoded if self.channels is None else int(self.channels)
        if channels != decoded and decoded != 1:
            raise ValueError(f"channels={channels}: only single-channel (color 'L') images can be repeated to more channels")
        object.__setattr__(self, "channels", channels)
        if not 0.0 < float(self.crop_ratio) <= 1.0:
            raise ValueError(f"crop_ratio must be in (0, 1], got {self.crop_ratio}")
        object.__setattr__(self, "crop_ratio", float(self.crop_ratio))

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-ready description (``preprocessing.json`` in a run directory)."""
        data = asdict(self)
        data["size"] = list(self.size)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        return {"format": FORMAT, **data}

    @classmethod
    def from_dict(cls, data: Any) -> "Preprocessing":
        """Rebuild from ``to_dict()`` output; a clear ``ValueError`` for anything else."""
        if not isinstance(data, dict):
            raise ValueError(f"preprocessing description must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        version = data.pop("format", FORMAT)
        if version != FORMAT:
            raise ValueError(f"preprocessing format {version!r} is not supported (expected {FORMAT!r})")
        fields = {"size", "mean", "std", "resize", "color", "channels", "crop_ratio"}
        unknown = sorted(set(data) - fields)
        missing = sorted({"size", "mean", "std"} - set(data))
        if unknown or missing:
            raise ValueError(f"preprocessing description: unknown keys {unknown}, missing keys {missing}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as error:
            raise ValueError(f"invalid preprocessing description: {error}") from None

    def input_size(self) -> tuple[int, int, int]:
        """(channels, height, width) of the model input."""
        return (self.channels, *self.size)

    # -- the steps -----------------------------------------------------------------------------
    def geometry(self, images: torch.Tensor) -> torch.Tensor:
        """Step 2 on uint8 (N, C, H, W) images of one size: uint8 (N, C, *size)."""
        height, width = images.shape[-2:]
        if self.resize == "none":
            if (height, width) != self.size:
                raise ValueError(
                    f"image is {height}x{width} but this model takes {self.size[0]}x{self.size[1]} images at their "
                    f"native size (resize policy 'none'); resize the images to {self.size[0]}x{self.size[1]} first")
            return images
        if self.resize == "resize":
            return resize_images(images, self.size)
        # resize_center_crop: torchvision Resize(int) + CenterCrop semantics.
        short = int(min(self.size) / self.crop_ratio)
        if height <= width:
            new_h, new_w = short, int(short * width / height)
        else:
            new_h, new_w = int(short * height / width), short
        images = resize_images(images, (new_h, new_w))
        crop_h, crop_w = self.size
        if crop_h > new_h or crop_w > new_w:  # only for crop_ratio == 1 and extreme aspect ratios
            images = resize_images(images, (max(crop_h, new_h), max(crop_w, new_w)))
            new_h, new_w = images.shape[-2:]
        top = int(round((new_h - crop_h) / 2.0))
        left = int(round((new_w - crop_w) / 2.0))
        return images[..., top : top + crop_h, left : left + crop_w].contiguous()

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Steps 1 and 2 on uint8 (N, C, H, W) images of one size: uint8 (N, decoded channels, *size)."""
        return self.geometry(convert_channels(images, self.color))

    def normalize(self, images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Step 3 on uint8 (N, C, H, W) at the model size: float (N, channels, H, W)."""
        batch = normalize(images, self.mean, self.std, dtype)
        if self.channels != batch.shape[1]:
            batch = batch.expand(-1, self.channels, -1, -1)
        return batch

    def __call__(self, images: Any) -> torch.Tensor:
        """Decoded image(s) -> normalised float tensor.

        One image (PIL image, uint8 (C, H, W) tensor or (H, W[, C]) array) gives (channels, H, W);
        a uint8 (N, C, H, W) tensor or a list of images gives (N, channels, H, W). Images of a
        list may differ in size (each is resized on its own).
        """
        if isinstance(images, torch.Tensor) and images.dim() == 4:
            if images.dtype != torch.uint8:
                raise ValueError(f"image batches must be uint8 (N, C, H, W), got {images.dtype}")
            return self.normalize(self.prepare(images))
        if isinstance(images, (list, tuple)):
            if not images:
                raise ValueError("no images given")
            return torch.cat([self(image).unsqueeze(0) for image in images])
        image = to_uint8_image(images, self.color)
        return self.normalize(self.geometry(image.unsqueeze(0)))[0]
