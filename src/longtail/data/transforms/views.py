"""ConCutMix / BCL views (spec concutmix.md section 2): a classification view and two contrastive
views of each background image, one classification view of each foreground image.

* ``style="cifar"``: classification = random crop (pad ``crop_padding``) + flip + CIFAR-10
  AutoAugment; contrastive = RandomResizedCrop(scale 0.2-1) + flip + ColorJitter(0.4, 0.4, 0.4,
  0.1) p 0.8 + grayscale p 0.2 + Gaussian blur (sigma 0.1-2) p 0.5.
* ``style="imagenet"``: classification = RandomResizedCrop(scale 0.08-1) + flip + ColorJitter(0.4,
  0.4, 0.4, 0) + RandAugment(2, 10); contrastive = RandomResizedCrop + flip + ColorJitter(0.4, 0.4,
  0.4, 0.1) p 0.8 + grayscale p 0.2.

Two implementations of the same recipe:

* :class:`BatchViews` for in-memory uint8 batches on the training device, random parameters per
  sample and one call per batch: the flip and grayscale are kornia's batched augmentations; the
  colour jitter, the blur, the RandomResizedCrop (boxes drawn as torchvision draws them, one
  ``grid_sample``, on uint8 like PIL) and the crop + flip of the CIFAR classification view are the
  library's own batched ops; CIFAR AutoAugment
  draws per image and applies torchvision v2's operations to groups of images sharing an
  (operation, magnitude) (:func:`batched_autoaugment`); RandAugment (ImageNet-style views of
  in-memory data, rare) is torchvision v2 per image. All randomness comes from the seed given per call.
* :func:`file_view_transforms`: the same recipe as per-image torchvision v2 pipelines for file
  datasets (PIL images in DataLoader workers).

Single-channel images (Fashion-MNIST, MNIST) keep brightness and contrast jitter only: hue,
saturation and grayscale have no meaning on one channel.
The Gaussian blur kernel spans +-3 sigma of the largest sigma (13 x 13), so sigma is not truncated.

Speed (benchmarks/bench_concutmix.py): the contrastive views' colour jitter and blur are the
library's own batched ops (:func:`color_jitter_batched` with the branch-free hue rotation
:func:`adjust_hue_batched`, and :func:`gaussian_blur_batched` as two bmm), each pinned against
torchvision / kornia / numpy in tests/test_concutmix_data.py: kornia's ColorJitter spent most of
its time in an RGB -> HSV -> RGB round trip of many ``torch.where``, and its blur is a grouped
convolution with B * C groups; both were several times slower at 32 px, as was the per-call
bookkeeping of ``AugmentationSequential``.
"""

from __future__ import annotations

import contextlib
import math
from typing import Optional, Sequence

import torch

from longtail.data.transforms.augment import (RESIZED_CROP_COLUMNS, crop_flip, normalize, random_resized_crop, sample_crop_flip,
                         uniforms_to_resized_crop)

__all__ = ["BatchViews", "adjust_hue_batched", "color_jitter_batched", "gaussian_blur_batched", "file_view_transforms",
           "VIEW_STYLES"]

VIEW_STYLES = ("cifar", "imagenet")
_BLUR_SIGMA = (0.1, 2.0)
_BLUR_KERNEL = 2 * math.ceil(3 * _BLUR_SIGMA[1]) + 1


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device):
    """Run torch's global RNG (what kornia and torchvision draw from) from ``seed``, then restore it."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        if devices:
            torch.manual_seed(seed)
        else:  # torch.manual_seed would also queue a lazy CUDA seeding (a stack capture) on every call
            torch.default_generator.manual_seed(seed)
        yield


def adjust_hue_batched(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of float RGB ``images`` (B, 3, H, W) in [0, 1] by ``shift`` (B,) turns.

    The HSV round trip of torchvision's ``adjust_hue`` in closed form: hue from the max channel,
    then each output channel n in (R, G, B) = V - (V - min) * clamp(min(k, 4 - k), 0, 1) with
    k = (5, 3, 1)[n] + 6 * hue (mod 6). Grey pixels (max == min) are unchanged, as there.
    Masks enter as arithmetic, not ``torch.where``, which is ~30x slower than a subtraction on CPU."""
    red, green, blue = images.unbind(1)
    top = images.amax(dim=1)
    chroma = top - images.amin(dim=1)
    safe = chroma + (chroma == 0)  # grey pixels: any hue (chroma 0 zeroes it below)
    red_max = (red == top).to(images.dtype)
    green_max = (green == top).to(images.dtype) * (1 - red_max)
    blue_max = 1 - red_max - green_max
    sextant = (red_max * (green - blue) + green_max * (blue - red) + blue_max * (red - green)) / safe \
        + 2 * green_max + 4 * blue_max + (6 * shift.to(images.dtype)).view(-1, 1, 1)
    sextant = sextant - 6 * torch.floor(sextant / 6)  # in [0, 6)
    offsets = torch.tensor([5.0, 3.0, 1.0], device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    k = offsets + sextant.unsqueeze(1)  # in [1, 11)
    k = k - 6 * (k >= 6)
    return top.unsqueeze(1) - chroma.unsqueeze(1) * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def gaussian_blur_batched(images: torch.Tensor, sigma: torch.Tensor, kernel_size: int = _BLUR_KERNEL) -> torch.Tensor:
    """Gaussian blur of (B, C, H, W) float ``images`` with a per-sample ``sigma`` (B,), reflect border.

    The separable blur as two batched matrix products with each sample's (size x size) blur
    matrix (the taps, reflection folded in): one bmm per axis instead of a grouped convolution with
    B * C groups, which is several times slower on CPU. Same result as kornia's ``gaussian_blur2d``."""
    half = kernel_size // 2
    taps = torch.arange(-half, half + 1, device=images.device, dtype=images.dtype)
    weights = torch.exp(-(taps[None] ** 2) / (2 * sigma.to(images.dtype)[:, None] ** 2))
    weights = weights / weights.sum(dim=1, keepdim=True)

    def blur_matrix(size: int) -> torch.Tensor:
        index = torch.arange(size, device=images.device)[:, None] + taps.long()[None]
        index = torch.where(index < 0, -index, torch.where(index > size - 1, 2 * (size - 1) - index, index))
        if size <= half:  # tiny images: reflect more than once, as padding would
            index = index.remainder(2 * (size - 1)) if size > 1 else torch.zeros_like(index)
            index = torch.where(index > size - 1, 2 * (size - 1) - index, index)
        count = weights.shape[0]
        matrix = torch.zeros(count, size, size, device=images.device, dtype=images.dtype)
        return matrix.scatter_add_(2, index[None].expand(count, -1, -1), weights[:, None, :].expand(-1, size, -1))

    rows, columns = blur_matrix(images.shape[-2]), blur_matrix(images.shape[-1])
    return rows[:, None] @ (images @ columns.transpose(1, 2)[:, None])


def _on_chosen(images: torch.Tensor, chosen: torch.Tensor, transform) -> torch.Tensor:
    """``transform`` applied to the samples ``chosen`` (indices) only; the others pass unchanged."""
    if chosen.numel() == 0:
        return images
    out = images.clone()
    on_device = chosen.to(images.device)
    out[on_device] = transform(images[on_device])
    return out


class _RandomGaussianBlur:
    """Blur each sample with probability ``p``, sigma uniform in ``sigma`` (global RNG, like kornia)."""

    def __init__(self, sigma=_BLUR_SIGMA, p: float = 0.5) -> None:
        self.sigma, self.p = sigma, p

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        count = images.shape[0]
        chosen = (torch.rand(count) < self.p).nonzero().flatten()
        sigma = torch.empty(count).uniform_(*self.sigma)
        return _on_chosen(images, chosen, lambda subset: gaussian_blur_batched(subset, sigma[chosen].to(images.device)))


_GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale


def color_jitter_batched(images: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor,
                         saturation: torch.Tensor, hue: torch.Tensor, order: Sequence[int]) -> torch.Tensor:
    """torchvision's ColorJitter steps on float (B, C, H, W) ``images`` in [0, 1], per-sample factors (B,).

    ``order`` lists the steps (0 brightness, 1 contrast, 2 saturation, 3 hue) in the order to apply
    them; each step is torchvision's ``adjust_*`` (brightness: scale; contrast: blend with the
    image's mean grey level; saturation: blend with its grey image; hue: :func:`adjust_hue_batched`),
    clamped to [0, 1]. Single-channel images take brightness and contrast only."""

    def factor(values: torch.Tensor) -> torch.Tensor:
        return values.to(device=images.device, dtype=images.dtype).view(-1, 1, 1, 1)

    grey_weights = torch.tensor(_GREY_WEIGHTS, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)

    def grey(batch: torch.Tensor) -> torch.Tensor:
        return batch if batch.shape[1] == 1 else (batch * grey_weights).sum(dim=1, keepdim=True)

    def blend(batch: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        ratio = factor(ratio)
        return (batch * ratio + other * (1 - ratio)).clamp_(0, 1)

    for step in order:
        if step == 0:
            images = (images * factor(brightness)).clamp_(0, 1)
        elif step == 1:
            images = blend(images, grey(images).mean(dim=(1, 2, 3), keepdim=True), contrast)
        elif images.shape[1] == 3 and step == 2:
            images = blend(images, grey(images), saturation)
        elif images.shape[1] == 3 and step == 3:
            images = adjust_hue_batched(images, hue)
    return images


class _RandomColorJitter:
    """ColorJitter(brightness, contrast, saturation, hue) applied to each sample with probability
    ``p``: per-sample factors (uniform in [1 - x, 1 + x], hue in [-hue, hue] turns), one random
    order of the steps per batch (as kornia; torchvision draws one per image). Global RNG."""

    def __init__(self, brightness: float, contrast: float, saturation: float, hue: float, p: float) -> None:
        self.ranges = (brightness, contrast, saturation)
        self.hue, self.p = hue, p

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        count = images.shape[0]
        chosen = (torch.rand(count) < self.p).nonzero().flatten()
        factors = [torch.empty(count).uniform_(1 - spread, 1 + spread) for spread in self.ranges]
        hue = torch.empty(count).uniform_(-self.hue, self.hue)
        used = [step for step, spread in enumerate((*self.ranges, self.hue)) if spread]
        order = [used[i] for i in torch.randperm(len(used)).tolist()]
        return _on_chosen(images, chosen, lambda subset: color_jitter_batched(
            subset, *(values[chosen] for values in (*factors, hue)), order))


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
        flip: the random horizontal flips of both views (the released recipe's); False for data whose
            mirror image is another class (traffic signs: ``data.flip=false``).
    """

    def __init__(self, style: str, mean: Sequence[float], std: Sequence[float], crop_padding: int = 4,
                 policy: str = "auto", repeat_channels: Optional[int] = None, dtype: torch.dtype = torch.float32,
                 channels_last: bool = False, flip: bool = True) -> None:
        import kornia.augmentation as K

        self.style = _check_style(style)
        if policy not in ("auto", "none"):
            raise ValueError(f"policy must be 'auto' or 'none', got {policy!r}")
        self.mean, self.std = list(mean), list(std)
        self.channels = len(self.mean)
        self.crop_padding = int(crop_padding)
        self.flip = bool(flip)
        self.policy = policy
        self.repeat_channels = repeat_channels
        self.dtype = dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        colour = self.channels == 3
        jitter = _RandomColorJitter(0.4, 0.4, 0.4 if colour else 0.0, 0.1 if colour else 0.0, p=0.8)
        self._contrastive_scale = (0.2 if style == "cifar" else 0.08, 1.0)
        flips = [K.RandomHorizontalFlip()] if self.flip else []
        contrastive = [*flips, jitter]
        if colour:
            contrastive.append(K.RandomGrayscale(p=0.2))
        if style == "cifar":
            contrastive.append(_RandomGaussianBlur(_BLUR_SIGMA, p=0.5))
        self._contrastive_ops = contrastive
        self._classification_ops = None
        if style == "imagenet":  # after a RandomResizedCrop of scale 0.08-1
            self._classification_ops = [*flips,
                                        _RandomColorJitter(0.4, 0.4, 0.4 if colour else 0.0, 0.0, p=1.0)]

    @staticmethod
    def _crop_then(ops, images: torch.Tensor, scale) -> torch.Tensor:
        """RandomResizedCrop of the uint8 ``images`` (as PIL crops them; one grid_sample for the batch,
        boxes drawn like torchvision's), then ``ops`` (flip, jitter, ...) on floats in [0, 1]."""
        uniforms = torch.rand(images.shape[0], RESIZED_CROP_COLUMNS.stop)
        boxes = uniforms_to_resized_crop(uniforms, images.shape[2], images.shape[3], scale)
        floats = random_resized_crop(images, boxes).float() / 255.0
        for op in ops:
            floats = op(floats)
        return floats.clamp(0, 1)

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
            top, left, flipped = sample_crop_flip(images.shape[0], self.crop_padding, 0.5 if self.flip else 0.0,
                                                  generator)
            images = crop_flip(images, self.crop_padding, top, left, flipped)
            with _seeded(seed, images.device):
                return self._finish(self._policy(images, seed))
        with _seeded(seed, images.device):
            floats = self._crop_then(self._classification_ops, images, (0.08, 1.0))
            return self._finish(self._policy(floats, seed))

    def contrastive(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        """One contrastive view of uint8 ``images`` (call twice with two seeds for the pair)."""
        if images.shape[0] == 0:
            return self._finish(images)
        with _seeded(seed, images.device):
            return self._finish(self._crop_then(self._contrastive_ops, images, self._contrastive_scale))


_AUTOAUGMENT = None
_MAGNITUDES: dict = {}  # (operation, height, width) -> the operation's 10 magnitude bins (or None)


def batched_autoaugment(images: torch.Tensor, generator: torch.Generator):
    """CIFAR-10 AutoAugment with per-image draws, applied to the batch in groups.

    Each image draws its own sub-policy, and for each of the sub-policy's two operations whether it
    applies and its sign: the same distribution as torchvision v2's ``AutoAugment`` draws per call
    (all draws are made at once, up front). The images that share an (operation, magnitude) are
    then transformed together by torchvision's own operation, instead of one call per image.
    Returns (images, plan), where plan[i] lists the (operation, magnitude) pairs applied to image
    i, in order."""
    from torchvision.transforms import v2

    global _AUTOAUGMENT
    if _AUTOAUGMENT is None:
        _AUTOAUGMENT = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)
    augment = _AUTOAUGMENT
    count, height, width = images.shape[0], images.shape[-2], images.shape[-1]
    chosen = torch.randint(len(augment._policies), (count,), generator=generator)
    apply_draws = torch.rand(count, 2, generator=generator)
    sign_draws = torch.rand(count, 2, generator=generator) <= 0.5
    plan = [[] for _ in range(count)]
    out = images.clone()
    for index, policy in enumerate(augment._policies):
        members = (chosen == index).nonzero().flatten()
        if members.numel() == 0:
            continue
        for slot, (transform_id, probability, magnitude_index) in enumerate(policy):
            applies = apply_draws[members, slot] <= probability
            magnitudes_fn, signed = augment._AUGMENTATION_SPACE[transform_id]
            key = (transform_id, height, width)
            if key not in _MAGNITUDES:
                _MAGNITUDES[key] = magnitudes_fn(10, height, width)
            magnitudes = _MAGNITUDES[key]
            negative = sign_draws[members, slot]
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
                         repeat_channels: Optional[int] = None, flip: bool = True):
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
    flips = [v2.RandomHorizontalFlip()] if flip else []  # flip=False: data whose mirror is another class
    if style == "cifar":
        classification = [v2.RandomCrop(size, padding=crop_padding), *flips]
        if policy == "auto":
            classification.append(v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10))
        contrastive = [v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True), *flips,
                       v2.RandomApply([jitter], p=0.8), *colour,
                       v2.RandomApply([v2.GaussianBlur(_BLUR_KERNEL, _BLUR_SIGMA)], p=0.5)]
    else:
        classification = [v2.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True), *flips,
                          v2.ColorJitter(0.4, 0.4, 0.0 if grey else 0.4, 0.0)]
        if policy == "auto":
            classification.append(v2.RandAugment(num_ops=2, magnitude=10))
        contrastive = [v2.RandomResizedCrop(size, antialias=True), *flips,
                       v2.RandomApply([jitter], p=0.8), *colour]
    return v2.Compose(head + classification + tail), v2.Compose(head + contrastive + tail)
