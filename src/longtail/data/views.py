"""ConCutMix / BCL views (spec concutmix.md section 2): a classification view and two contrastive
views of each background image, one classification view of each foreground image.

* ``style="cifar"``: classification = random crop (pad ``crop_padding``) + flip + CIFAR-10
  AutoAugment; contrastive = RandomResizedCrop(scale 0.2-1) + flip + ColorJitter(0.4, 0.4, 0.4,
  0.1) p 0.8 + grayscale p 0.2 + Gaussian blur (sigma 0.1-2) p 0.5.
* ``style="imagenet"``: classification = RandomResizedCrop(scale 0.08-1) + flip + ColorJitter(0.4,
  0.4, 0.4, 0) + RandAugment(2, 10); contrastive = RandomResizedCrop + flip + ColorJitter(0.4, 0.4,
  0.4, 0.1) p 0.8 + grayscale p 0.2.

Two implementations of the same recipe:

* :class:`BatchViews` for in-memory uint8 batches on the training device: the geometric and colour
  ops are kornia's batched augmentations (random parameters per sample, one call per batch); the
  crop + flip of the CIFAR classification view is the library's own batched op; CIFAR AutoAugment
  draws per image and applies torchvision v2's operations to groups of images sharing an
  (operation, magnitude) (:func:`batched_autoaugment`); RandAugment (ImageNet-style views of
  in-memory data, rare) is torchvision v2 per image. All randomness comes from the seed given per call.
* :func:`file_view_transforms`: the same recipe as per-image torchvision v2 pipelines for file
  datasets (PIL images in DataLoader workers).

Single-channel images (Fashion-MNIST, MNIST) keep brightness and contrast jitter only: hue,
saturation and grayscale have no meaning on one channel.
The Gaussian blur kernel spans +-3 sigma of the largest sigma (13 x 13), so sigma is not truncated.
"""

from __future__ import annotations

import contextlib
import math
from typing import Optional, Sequence

import torch

from .transforms import crop_flip, normalize, sample_crop_flip

__all__ = ["BatchViews", "file_view_transforms", "VIEW_STYLES"]

VIEW_STYLES = ("cifar", "imagenet")
_BLUR_SIGMA = (0.1, 2.0)
_BLUR_KERNEL = 2 * math.ceil(3 * _BLUR_SIGMA[1]) + 1


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device):
    """Run torch's global RNG (what kornia and torchvision draw from) from ``seed``, then restore it."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _check_style(style: str) -> str:
    if style not in VIEW_STYLES:
        raise ValueError(f"view style must be one of {', '.join(VIEW_STYLES)}, got {style!r}")
    return style


class BatchViews:
    """Batched on-device views of uint8 (B, C, H, W) images; outputs are normalised float batches.

    Args:
        style: ``cifar`` or ``imagenet`` (see the module docstring).
        mean, std: per-channel normalisation (0..1 scale).
        crop_padding: padding of the CIFAR classification crop (4 at 32 px).
        policy: ``auto`` (the style's: CIFAR-10 AutoAugment / RandAugment(2, 10)) or ``none``.
        repeat_channels: repeat single-channel outputs to this many channels.
        dtype, channels_last: of the produced batches.
    """

    def __init__(self, style: str, mean: Sequence[float], std: Sequence[float], crop_padding: int = 4,
                 policy: str = "auto", repeat_channels: Optional[int] = None, dtype: torch.dtype = torch.float32,
                 channels_last: bool = False) -> None:
        import kornia.augmentation as K

        self.style = _check_style(style)
        if policy not in ("auto", "none"):
            raise ValueError(f"policy must be 'auto' or 'none', got {policy!r}")
        self.mean, self.std = list(mean), list(std)
        self.channels = len(self.mean)
        self.crop_padding = int(crop_padding)
        self.policy = policy
        self.repeat_channels = repeat_channels
        self.dtype = dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        colour = self.channels == 3
        jitter = K.ColorJitter(0.4, 0.4, 0.4 if colour else 0.0, 0.1 if colour else 0.0, p=0.8)
        contrastive = [K.RandomResizedCrop((1, 1), scale=(0.2 if style == "cifar" else 0.08, 1.0)),
                       K.RandomHorizontalFlip(), jitter]
        if colour:
            contrastive.append(K.RandomGrayscale(p=0.2))
        if style == "cifar":
            contrastive.append(K.RandomGaussianBlur((_BLUR_KERNEL, _BLUR_KERNEL), _BLUR_SIGMA, p=0.5, separable=True))
        self._contrastive_ops = contrastive
        self._classification_ops = None
        self._pipelines = {}
        if style == "imagenet":
            self._classification_ops = [K.RandomResizedCrop((1, 1), scale=(0.08, 1.0)), K.RandomHorizontalFlip(),
                                        K.ColorJitter(0.4, 0.4, 0.4 if colour else 0.0, 0.0, p=1.0)]

    def _kornia(self, ops, images: torch.Tensor) -> torch.Tensor:
        import kornia.augmentation as K

        size = tuple(images.shape[-2:])
        key = (id(ops), size)
        pipeline = self._pipelines.get(key)
        if pipeline is None:  # built once per (recipe, image size): construction costs as much as a batch
            ops[0].size = size  # RandomResizedCrop to the stored size
            ops[0].flags["size"] = size
            pipeline = self._pipelines[key] = K.AugmentationSequential(*ops, data_keys=["input"])
        return pipeline(images)

    def _policy(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        from torchvision.transforms import v2

        if self.policy == "none":
            return images
        if self.style == "cifar":
            return batched_autoaugment(images, torch.Generator().manual_seed(seed))[0]
        transform = v2.RandAugment(num_ops=2, magnitude=10)
        return torch.stack([transform(image) for image in images])

    def _finish(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:
            batch = normalize(images, self.mean, self.std, self.dtype)
        else:
            mean = torch.tensor(self.mean, device=images.device, dtype=self.dtype)[None, :, None, None]
            std = torch.tensor(self.std, device=images.device, dtype=self.dtype)[None, :, None, None]
            batch = (images.to(self.dtype) - mean) / std
        if self.repeat_channels is not None and self.repeat_channels != batch.shape[1]:
            batch = batch.expand(-1, self.repeat_channels, -1, -1)
        return batch.contiguous(memory_format=self.memory_format)

    def classification(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        """The classification view of uint8 ``images`` (all randomness from ``seed``)."""
        if images.shape[0] == 0:
            return self._finish(images)
        if self.style == "cifar":
            generator = torch.Generator(device=images.device).manual_seed(seed)
            top, left, flipped = sample_crop_flip(images.shape[0], self.crop_padding, 0.5, generator)
            images = crop_flip(images, self.crop_padding, top, left, flipped)
            with _seeded(seed, images.device):
                return self._finish(self._policy(images, seed))
        with _seeded(seed, images.device):
            floats = self._kornia(self._classification_ops, images.float() / 255.0)
            return self._finish(self._policy(floats.clamp(0, 1), seed))

    def contrastive(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        """One contrastive view of uint8 ``images`` (call twice with two seeds for the pair)."""
        if images.shape[0] == 0:
            return self._finish(images)
        with _seeded(seed, images.device):
            return self._finish(self._kornia(self._contrastive_ops, images.float() / 255.0).clamp(0, 1))


_AUTOAUGMENT = None


def batched_autoaugment(images: torch.Tensor, generator: torch.Generator):
    """CIFAR-10 AutoAugment with per-image draws, applied to the batch in groups.

    Each image draws its own sub-policy, and for each of the sub-policy's two operations whether it
    applies and its sign: the same draws as torchvision v2's ``AutoAugment`` makes per call. The
    images that share an (operation, magnitude) are then transformed together by torchvision's own
    operation, instead of one call per image. Returns (images, plan), where plan[i] lists the
    (operation, magnitude) pairs applied to image i, in order."""
    from torchvision.transforms import v2

    global _AUTOAUGMENT
    if _AUTOAUGMENT is None:
        _AUTOAUGMENT = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)
    augment = _AUTOAUGMENT
    count, height, width = images.shape[0], images.shape[-2], images.shape[-1]
    chosen = torch.randint(len(augment._policies), (count,), generator=generator)
    plan = [[] for _ in range(count)]
    out = images.clone()
    for index, policy in enumerate(augment._policies):
        members = (chosen == index).nonzero().flatten()
        if members.numel() == 0:
            continue
        for transform_id, probability, magnitude_index in policy:
            applies = torch.rand(members.numel(), generator=generator) <= probability
            magnitudes_fn, signed = augment._AUGMENTATION_SPACE[transform_id]
            magnitudes = magnitudes_fn(10, height, width)
            negative = torch.rand(members.numel(), generator=generator) <= 0.5
            base = float(magnitudes[magnitude_index]) if magnitudes is not None else 0.0
            flips = (False, True) if signed and magnitudes is not None else (None,)
            for flip in flips:
                selected = applies if flip is None else applies & (negative == flip)
                group = members[selected]
                if group.numel() == 0:
                    continue
                magnitude = -base if flip else base
                on_device = group.to(out.device)
                out[on_device] = augment._apply_image_or_video_transform(
                    out[on_device], transform_id, magnitude, interpolation=augment.interpolation, fill=augment._fill)
                for i in group.tolist():
                    plan[i].append((transform_id, magnitude))
    return out, plan


def file_view_transforms(style: str, size, mean: Sequence[float], std: Sequence[float], crop_padding: int = 4,
                         policy: str = "auto", resize_first: bool = False, grey: bool = False,
                         repeat_channels: Optional[int] = None):
    """(classification, contrastive) per-image torchvision v2 transforms of PIL images (file datasets).

    ``size``: (H, W) of the model input; ``resize_first``: resize the file to it before the views
    (the run's preprocessing resizes); ``grey``: decode as one channel (brightness / contrast jitter
    only), repeated to ``repeat_channels`` if given."""
    from torchvision.transforms import v2

    _check_style(style)
    size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
    head = [v2.ToImage(), v2.Grayscale() if grey else v2.RGB()]
    if resize_first:
        head.append(v2.Resize(size, antialias=True))
    tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
    if grey and repeat_channels and repeat_channels != 1:
        tail.append(v2.Lambda(lambda x: x.expand(repeat_channels, -1, -1)))
    jitter = v2.ColorJitter(0.4, 0.4, 0.0, 0.0) if grey else v2.ColorJitter(0.4, 0.4, 0.4, 0.1)
    colour = [] if grey else [v2.RandomGrayscale(p=0.2)]
    if style == "cifar":
        classification = [v2.RandomCrop(size, padding=crop_padding), v2.RandomHorizontalFlip()]
        if policy == "auto":
            classification.append(v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10))
        contrastive = [v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True), v2.RandomHorizontalFlip(),
                       v2.RandomApply([jitter], p=0.8), *colour,
                       v2.RandomApply([v2.GaussianBlur(_BLUR_KERNEL, _BLUR_SIGMA)], p=0.5)]
    else:
        classification = [v2.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True), v2.RandomHorizontalFlip(),
                          v2.ColorJitter(0.4, 0.4, 0.0 if grey else 0.4, 0.0)]
        if policy == "auto":
            classification.append(v2.RandAugment(num_ops=2, magnitude=10))
        contrastive = [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(),
                       v2.RandomApply([jitter], p=0.8), *colour]
    return v2.Compose(head + classification + tail), v2.Compose(head + contrastive + tail)
