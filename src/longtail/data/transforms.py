"""Image augmentation: batched tensor ops for in-memory data, torchvision-v2 pipelines for files.

Batched ops (used by :class:`longtail.data.loader.InMemoryLoader`) follow the airbench /
hlb-CIFAR10 pattern: the whole batch is augmented with a handful of tensor ops on the training
device, no Python loop over samples. The standard CIFAR-LT protocol (methods.md section 5, after
He et al. 2016 and LDAM-DRW) is "random crop 32 with padding 4 + horizontal flip"; Cutout is
DeVries & Taylor, "Improved Regularization of Convolutional Neural Networks with Cutout" (2017).

Each random op is split into a parameter draw (``sample_*``, from an explicit ``torch.Generator``)
and a deterministic application, so tests and resumed runs can reproduce any batch exactly.

File pipelines (:func:`build_file_transforms`) are per-image torchvision ``transforms.v2``
compositions for a standard ``DataLoader`` with workers (ImageNet-LT / Places-LT / iNat protocol:
RandomResizedCrop 224 + flip; optional RandAugment / AutoAugment).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "BatchAugment",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "apply_cutout",
    "autoaugment_batch",
    "random_resized_crop",
    "build_file_transforms",
    "crop_flip",
    "normalize",
    "resize_images",
    "sample_crop_flip",
    "sample_cutout",
]

# Statistics used by the reference code bases (ImageNet: torchvision; CIFAR: LDAM-DRW / BS).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)

PADDING_MODES = ("constant", "reflect", "edge")


@dataclass(frozen=True)
class BatchAugment:
    """Options of the batched training augmentation (what ``InMemoryLoader(augment=...)`` takes).

    Args:
        crop_padding: pad by this many pixels and crop back to the original size at a random
            offset per sample (4 for CIFAR); 0 disables the crop.
        flip: horizontal flip with probability ``flip_probability`` per sample.
        padding_mode: ``constant`` (zeros, like torchvision ``RandomCrop(padding=4)``),
            ``reflect`` or ``edge``.
        cutout_size: side of the Cutout square (16 on CIFAR-10, 8 on CIFAR-100 in DeVries &
            Taylor); 0 disables it.
        autoaugment: the AutoAugment CIFAR-10 policy on each image after crop + flip, before
            normalisation (the Balanced Softmax CIFAR pipeline); see :func:`autoaugment_batch`.
        crop_scale_min: RandomResizedCrop with area scale in [crop_scale_min, 1] (aspect ratio 3/4 to
            4/3) back to the image size, instead of the padded crop (which needs crop_padding=0);
            see :func:`random_resized_crop`.
    """

    crop_padding: int = 4
    flip: bool = True
    flip_probability: float = 0.5
    padding_mode: str = "constant"
    cutout_size: int = 0
    autoaugment: bool = False
    crop_scale_min: Optional[float] = None

    def __post_init__(self) -> None:
        if self.crop_padding < 0 or self.cutout_size < 0:
            raise ValueError("crop_padding and cutout_size must be >= 0")
        if self.padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {self.padding_mode!r}")
        if not 0.0 <= self.flip_probability <= 1.0:
            raise ValueError(f"flip_probability must be in [0, 1], got {self.flip_probability}")
        if self.crop_scale_min is not None:
            if not 0.0 < self.crop_scale_min <= 1.0:
                raise ValueError(f"crop_scale_min must be in (0, 1], got {self.crop_scale_min}")
            if self.crop_padding:
                raise ValueError("crop_scale_min (random resized crop) replaces the padded crop: set crop_padding=0")


# -- random crop with padding + horizontal flip, as one gather ---------------------------------


def sample_crop_flip(
    batch_size: int,
    padding: int,
    flip_probability: float = 0.5,
    generator: Optional[torch.Generator] = None,
    device: Optional[torch.device] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample crop offsets in the padded image, ``top, left`` in [0, 2 * padding], and flip flags."""
    device = generator.device if generator is not None else device
    top = torch.randint(0, 2 * padding + 1, (batch_size,), generator=generator, device=device)
    left = torch.randint(0, 2 * padding + 1, (batch_size,), generator=generator, device=device)
    flipped = torch.rand(batch_size, generator=generator, device=device) < flip_probability
    return top, left, flipped


def _source_positions(offset: torch.Tensor, padding: int, size: int, padding_mode: str) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Map output position i of each sample to a source position in the unpadded image.

    Output i reads padded position ``offset + i``, i.e. unpadded ``offset + i - padding``.
    Returns (positions clipped into range, mask of in-range positions or None when every
    position is valid after reflection / clamping).
    """
    position = offset[:, None] + torch.arange(size, device=offset.device) - padding
    if padding_mode == "reflect":  # torch / numpy "reflect": -1 -> 1, size -> size - 2
        position = position.abs()
        position = torch.where(position >= size, 2 * (size - 1) - position, position)
        return position, None
    valid = (position >= 0) & (position < size)
    position = position.clamp(0, size - 1)
    return position, (valid if padding_mode == "constant" else None)


def crop_flip(
    images: torch.Tensor,
    padding: int,
    top: torch.Tensor,
    left: torch.Tensor,
    flipped: Optional[torch.Tensor] = None,
    padding_mode: str = "constant",
) -> torch.Tensor:
    """Crop every image of a (B, C, H, W) batch from its padded version at (top, left), then flip.

    Equivalent to ``F.pad(images, [padding] * 4)[b, :, top[b]:top[b] + H, left[b]:left[b] + W]``
    followed by ``flip(-1)`` where ``flipped[b]``, for each sample b; done as a single gather of
    precomputed source indices (the flip is just reversed column indices, so it costs nothing).
    Constant padding fills with 0. Any dtype; no padding copy of the batch is made.
    """
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    batch, channels, height, width = images.shape
    if padding_mode == "reflect" and padding >= min(height, width):
        raise ValueError(f"reflect padding {padding} needs images larger than the padding, got {height}x{width}")
    rows, row_valid = _source_positions(top, padding, height, padding_mode)
    cols, col_valid = _source_positions(left, padding, width, padding_mode)
    if flipped is not None:
        # Flipping the crop only reverses the order in which its source columns are read.
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
        if col_valid is not None:
            col_valid = torch.where(flipped[:, None], col_valid.flip(1), col_valid)

    source = (rows[:, :, None] * width + cols[:, None, :]).reshape(batch, 1, height * width)
    flat = images.reshape(batch, channels, height * width)
    out = flat.gather(2, source.expand(batch, channels, height * width)).view(batch, channels, height, width)
    if row_valid is not None:
        # Zero the padding. Built as a product in the output dtype: the boolean broadcast AND
        # was measured ~4x slower on CPU than this whole masking step.
        inside = row_valid.to(out.dtype)[:, :, None] * col_valid.to(out.dtype)[:, None, :]
        out.mul_(inside[:, None])
    return out


# -- Cutout --------------------------------------------------------------------------------------


def sample_cutout(
    batch_size: int, height: int, width: int, generator: Optional[torch.Generator] = None, device: Optional[torch.device] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cutout centres, uniform over the image (the square may stick out; it is clipped)."""
    device = generator.device if generator is not None else device
    center_y = torch.randint(0, height, (batch_size,), generator=generator, device=device)
    center_x = torch.randint(0, width, (batch_size,), generator=generator, device=device)
    return center_y, center_x


def apply_cutout(images: torch.Tensor, size: int, center_y: torch.Tensor, center_x: torch.Tensor) -> torch.Tensor:
    """Zero the square rows [cy - size//2, cy + size//2) x cols [cx - size//2, cx + size//2), clipped.

    The box convention is DeVries & Taylor's reference code. They apply Cutout after
    normalisation, so zero means "the dataset mean colour"; the loader does the same.
    """
    batch, _, height, width = images.shape
    half = size // 2
    rows = torch.arange(height, device=images.device)
    cols = torch.arange(width, device=images.device)
    in_rows = (rows >= center_y[:, None] - half) & (rows < center_y[:, None] + half)
    in_cols = (cols >= center_x[:, None] - half) & (cols < center_x[:, None] + half)
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
    return images * keep[:, None].to(images.dtype)


# -- conversion ----------------------------------------------------------------------------------


def normalize(images: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (B, C, H, W) in 0..255 -> ``(x / 255 - mean) / std`` per channel, in ``dtype``.

    ``mean`` / ``std`` are on the 0..1 scale (torchvision convention). Computed as one
    multiply-subtract with folded constants: ``x * (1 / (255 std)) - mean / std``.
    """
    mean = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    scale = 1.0 / (255.0 * std)
    shift = mean / std
    # In-place multiply then subtract: measured ~4x faster on CPU than one torch.addcmul, whose
    # broadcast path is not vectorised.
    out = images.to(torch.float32).mul_(scale).sub_(shift)
    return out if dtype == torch.float32 else out.to(dtype)


def resize_images(images: torch.Tensor, size: Tuple[int, int], chunk_size: int = 4096) -> torch.Tensor:
    """Resize a uint8 (N, C, H, W) tensor to ``size`` (bilinear, antialiased), returning uint8.

    Meant to run once on a whole in-memory dataset (e.g. 28x28 Fashion-MNIST -> 32x32 for the
    CIFAR ResNet-32), so the per-batch crop works at the network's input size. Chunked to bound
    the float32 working memory.
    """
    size = (int(size[0]), int(size[1]))
    if tuple(images.shape[-2:]) == size:
        return images
    pieces = []
    for start in range(0, images.shape[0], chunk_size):
        chunk = images[start : start + chunk_size].to(torch.float32)
        chunk = F.interpolate(chunk, size=size, mode="bilinear", align_corners=False, antialias=True)
        pieces.append(chunk.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(pieces)


# -- file pipelines (torchvision transforms.v2) --------------------------------------------------


def build_file_transforms(
    style: str = "imagenet",
    train: bool = True,
    image_size: Optional[int] = None,
    randaugment: bool = False,
    autoaugment: bool = False,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    crop_padding: int = 4,
    resize_ratio: float = 0.875,
    randaugment_num_ops: int = 2,
    randaugment_magnitude: int = 9,
    min_scale: float = 0.08,
):
    """A per-image ``torchvision.transforms.v2.Compose`` for a file dataset + ``DataLoader``.

    ``style="imagenet"`` (ImageNet-LT / Places-LT / iNat protocol, methods.md section 5):
        train: RandomResizedCrop(image_size, scale=(min_scale, 1)) + horizontal flip
        [+ RandAugment(num_ops, magnitude) | AutoAugment(IMAGENET policy)];
        eval: Resize(image_size / resize_ratio) (256 for 224) + CenterCrop(image_size).
    ``style="cifar"`` (CIFAR-sized images stored as files):
        train: RandomCrop(image_size, padding=crop_padding) + horizontal flip
        [+ RandAugment | AutoAugment(CIFAR10 policy)]; eval: no geometric change.
    Both end with ToImage -> ToDtype(float32, scale=True) -> Normalize(mean, std). Defaults for
    ``image_size``: 224 / 32; for ``mean`` / ``std``: ImageNet's / CIFAR's (LDAM-DRW values).
    Images are converted to RGB first, so greyscale or palette files work.
    """
    from torchvision.transforms import v2

    style = style.lower()
    if style not in ("imagenet", "cifar"):
        raise ValueError(f"style must be 'imagenet' or 'cifar', got {style!r}")
    if randaugment and autoaugment:
        raise ValueError("choose at most one of randaugment and autoaugment")
    is_imagenet = style == "imagenet"
    image_size = int(image_size or (224 if is_imagenet else 32))
    mean = tuple(mean or (IMAGENET_MEAN if is_imagenet else CIFAR_MEAN))
    std = tuple(std or (IMAGENET_STD if is_imagenet else CIFAR_STD))

    # Work on uint8 tensors from the start: v2 geometric ops and the auto-augment policies are
    # faster on tensors than on PIL, and the policies expect uint8.
    steps = [v2.ToImage(), v2.RGB()]
    if train:
        if is_imagenet:
            steps.append(v2.RandomResizedCrop(image_size, scale=(min_scale, 1.0), antialias=True))
        else:
            steps.append(v2.RandomCrop(image_size, padding=crop_padding))
        steps.append(v2.RandomHorizontalFlip())
        if randaugment:
            steps.append(v2.RandAugment(num_ops=randaugment_num_ops, magnitude=randaugment_magnitude))
        elif autoaugment:
            policy = v2.AutoAugmentPolicy.IMAGENET if is_imagenet else v2.AutoAugmentPolicy.CIFAR10
            steps.append(v2.AutoAugment(policy))
    elif is_imagenet:
        steps += [v2.Resize(int(round(image_size / resize_ratio)), antialias=True), v2.CenterCrop(image_size)]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
    return v2.Compose(steps)


# -- AutoAugment on a resident uint8 batch -------------------------------------------------------


def autoaugment_batch(images: torch.Tensor, generator: torch.Generator, policy: str = "cifar10") -> torch.Tensor:
    """torchvision-v2 ``AutoAugment`` applied to each image of a uint8 (B, C, H, W) batch independently.

    AutoAugment's ops (shear, posterize, solarize, ...) are per-image and data dependent, so this is
    the one batched op that loops over samples (about 0.3 ms per 32-pixel image on one CPU thread).
    torchvision draws its random numbers from the global torch RNG; the draws here come from a
    forked RNG seeded from ``generator``, so a batch is a function of its generator alone and the
    caller's global RNG is left untouched.
    """
    from torchvision.transforms import v2

    policies = {"cifar10": v2.AutoAugmentPolicy.CIFAR10, "imagenet": v2.AutoAugmentPolicy.IMAGENET,
                "svhn": v2.AutoAugmentPolicy.SVHN}
    if policy not in policies:
        raise ValueError(f"unknown AutoAugment policy {policy!r}; valid: {', '.join(policies)}")
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"autoaugment_batch needs a uint8 (B, C, H, W) batch, got {images.dtype} {tuple(images.shape)}")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    transform = v2.AutoAugment(policies[policy])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.stack([transform(image) for image in images])


# -- RandomResizedCrop on a resident uint8 batch -------------------------------------------------


def sample_resized_crop_boxes(
    batch_size: int, height: int, width: int, scale: Tuple[float, float] = (0.08, 1.0),
    ratio: Tuple[float, float] = (3 / 4, 4 / 3), generator: Optional[torch.Generator] = None, attempts: int = 10,
) -> torch.Tensor:
    """(B, 4) float boxes ``top, left, box_height, box_width`` drawn as torchvision's
    ``RandomResizedCrop.get_params`` does: up to ``attempts`` draws of area fraction ~ U(scale) and
    log aspect ratio ~ U(log ratio), the first that fits wins; none fits -> the whole image."""
    device = generator.device if generator is not None else None
    area = height * width
    fractions = torch.empty(batch_size, attempts, device=device).uniform_(scale[0], scale[1], generator=generator)
    log_ratio = torch.empty(batch_size, attempts, device=device).uniform_(
        math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = log_ratio.exp()
    box_w = torch.sqrt(area * fractions * aspect).round()
    box_h = torch.sqrt(area * fractions / aspect).round()
    fits = (box_w > 0) & (box_w <= width) & (box_h > 0) & (box_h <= height)
    first = torch.where(fits.any(1), fits.float().argmax(1), torch.full((batch_size,), -1, device=device))
    chosen = first.clamp_min(0)[:, None]
    box_w = torch.where(first >= 0, box_w.gather(1, chosen).squeeze(1), torch.full_like(first, width, dtype=box_w.dtype))
    box_h = torch.where(first >= 0, box_h.gather(1, chosen).squeeze(1), torch.full_like(first, height, dtype=box_h.dtype))
    top = (torch.rand(batch_size, device=device, generator=generator) * (height - box_h + 1)).floor()
    left = (torch.rand(batch_size, device=device, generator=generator) * (width - box_w + 1)).floor()
    return torch.stack([top, left, box_h, box_w], dim=1)


def random_resized_crop(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Crop each image of a uint8 (B, C, H, W) batch to its box and resize it back to (H, W), bilinear
    (one ``grid_sample`` for the batch; no antialiasing, which matters little for scales near 1)."""
    batch, _, height, width = images.shape
    boxes = boxes.to(device=images.device, dtype=torch.float32)
    top, left, box_h, box_w = boxes.unbind(1)
    theta = torch.zeros(batch, 2, 3, device=images.device)
    # Output coordinate u in [-1, 1] reads input x = left + (u + 1) / 2 * box_w (in pixels), i.e.
    # normalised x' = (2 * left + box_w) / W - 1 + u * box_w / W (align_corners=False convention).
    theta[:, 0, 0] = box_w / width
    theta[:, 0, 2] = (2 * left + box_w) / width - 1
    theta[:, 1, 1] = box_h / height
    theta[:, 1, 2] = (2 * top + box_h) / height - 1
    grid = F.affine_grid(theta, [batch, images.shape[1], height, width], align_corners=False)
    resized = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return resized.round_().clamp_(0, 255).to(torch.uint8)
