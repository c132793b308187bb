"""Image augmentation: batched tensor ops for in-memory data, torchvision-v2 pipelines for files.

Batched ops (used by :class:`longtail.data.loading.loader.InMemoryLoader`) follow the airbench /
hlb-CIFAR10 pattern: the whole batch is augmented with a handful of tensor ops on the training
device, no Python loop over samples. The standard CIFAR-LT protocol (methods.md section 5, after
He et al. 2016 and LDAM-DRW) is "random crop 32 with padding 4 + horizontal flip"; Cutout is
DeVries & Taylor, "Improved Regularization of Convolutional Neural Networks with Cutout" (2017).

Each random op is split into a parameter draw and a deterministic application. The loaders draw
each sample's parameters from (seed, epoch, the sample's global position in the epoch's draw)
(:func:`sample_uniforms`, :func:`sample_seed`), so resumed runs and runs on any number of
processes reproduce every batch exactly; ``sample_crop_flip`` / ``sample_cutout`` draw from an
explicit ``torch.Generator`` for use outside the loaders.

File pipelines (:func:`build_file_transforms`) are per-image transforms for a ``DataLoader`` with
workers: the run's :class:`~longtail.data.transforms.preprocess.Preprocessing` for evaluation, and
:class:`FileAugment` around it for training (ImageNet-LT / Places-LT / iNat protocol:
RandomResizedCrop 224 + flip; or resize + random crop with padding + flip; optional RandAugment /
AutoAugment, Cutout).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from longtail.data.seeds import derive_seed
from longtail.data.transforms.convert import to_uint8_image

__all__ = [
    "BatchAugment",
    "random_resized_crop",
    "uniforms_to_resized_crop",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "apply_cutout",
    "FileAugment",
    "augment_policy",
    "build_file_transforms",
    "sample_seed",
    "sample_uniforms",
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
        policy: ``none`` | ``randaugment`` | ``autoaugment`` (CIFAR-10 policy), applied per image
            after crop + flip (torchvision v2 on uint8, as in the Balanced Softmax CIFAR pipeline).
        crop_scale_min: RandomResizedCrop with area scale in [crop_scale_min, 1] (aspect ratio 3/4
            to 4/3) back to the image size, instead of the padded crop (needs crop_padding=0);
            see :func:`uniforms_to_resized_crop` and :func:`random_resized_crop`.
    """

    crop_padding: int = 4
    flip: bool = True
    flip_probability: float = 0.5
    padding_mode: str = "constant"
    cutout_size: int = 0
    policy: str = "none"
    crop_scale_min: Optional[float] = None

    def __post_init__(self) -> None:
        augment_policy(self.policy)  # validates the name
        if self.crop_scale_min is not None:
            if not 0.0 < self.crop_scale_min <= 1.0:
                raise ValueError(f"crop_scale_min must be in (0, 1], got {self.crop_scale_min}")
            if self.crop_padding:
                raise ValueError("crop_scale_min (random resized crop) replaces the padded crop: set crop_padding=0")
        if self.crop_padding < 0 or self.cutout_size < 0:
            raise ValueError("crop_padding and cutout_size must be >= 0")
        if self.padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {self.padding_mode!r}")
        if not 0.0 <= self.flip_probability <= 1.0:
            raise ValueError(f"flip_probability must be in [0, 1], got {self.flip_probability}")


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
    # Centres may be drawn on the CPU for images on a GPU (file pipelines on the device).
    center_y, center_x = center_y.to(images.device), center_x.to(images.device)
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


# -- per-sample randomness ----------------------------------------------------------------------
#
# Every random number of a sample's augmentation is a function of (seed, epoch, global position of
# the sample in the epoch's draw) only. So the batches of a run do not depend on how the draw is
# split into processes (rank r of R holds global positions r, r + R, ...), on DataLoader workers,
# or on where a resumed run restarts: N processes see exactly the augmentations of one process
# with the same global batch.

_M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9
AUGMENT_STREAM = 11  # separates augmentation keys from the sampler's and the mixer's seeds


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """(x * constant) mod 2**32 for int64 tensors holding uint32 values, without int64 overflow."""
    low = (x & 0xFFFF) * constant
    high = (((x >> 16) * constant) & 0xFFFF) << 16
    return (low + high) & _M32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """The 'lowbias32' integer hash (C. Wellons, hash-prospector) on uint32 values in int64 tensors."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def sample_uniforms(seed: int, epoch: int, positions: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` uniform numbers in [0, 1) per sample, float64 (len(positions), count).

    Sample at global epoch position p gets u_j = mix(mix(mix(p_lo ^ k0) ^ p_hi ^ k1) ^ (j + 1) * golden)
    / 2**32, where (k0, k1) are the halves of ``derive_seed(seed, epoch, AUGMENT_STREAM)`` and ``mix``
    is lowbias32. Vectorised (no Python loop over samples) and identical on every device.
    """

    key = derive_seed(seed, epoch, AUGMENT_STREAM)
    positions = torch.as_tensor(positions, dtype=torch.int64)
    if positions.numel() and int(positions.min()) < 0:
        raise ValueError("sample positions must be non-negative")
    base = _mix32(_mix32((positions & _M32) ^ (key & _M32)) ^ ((positions >> 32) & _M32) ^ ((key >> 32) & _M32))
    draws = torch.arange(1, count + 1, dtype=torch.int64, device=positions.device)
    words = _mix32(base[:, None] ^ ((draws * _GOLDEN) & _M32)[None, :])
    return words.to(torch.float64) / 2.0**32


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """The torch seed of one sample's per-image augmentation (file pipelines, AutoAugment / RandAugment)."""

    return derive_seed(seed, epoch, int(position), AUGMENT_STREAM)


def uniforms_to_crop_flip(
    uniforms: torch.Tensor, padding: int, flip_probability: float
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Crop offsets in [0, 2 * padding] and flip flags from per-sample uniforms (columns 0, 1, 2)."""
    span = 2 * padding + 1
    top = (uniforms[:, 0] * span).long().clamp_(max=span - 1)
    left = (uniforms[:, 1] * span).long().clamp_(max=span - 1)
    flipped = uniforms[:, 2] < flip_probability
    return top, left, flipped


def uniforms_to_cutout(uniforms: torch.Tensor, height: int, width: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cutout centres uniform over the image from per-sample uniforms (columns 3, 4)."""
    center_y = (uniforms[:, 3] * height).long().clamp_(max=height - 1)
    center_x = (uniforms[:, 4] * width).long().clamp_(max=width - 1)
    return center_y, center_x


# Uniform columns of the random resized crop: after crop / flip (0-2) and Cutout (3-4), 2 per attempt + 2.
RESIZED_CROP_COLUMNS = slice(5, 5 + 2 * 10 + 2)


def uniforms_to_resized_crop(
    uniforms: torch.Tensor, height: int, width: int, scale: Tuple[float, float] = (0.08, 1.0),
    ratio: Tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """(B, 4) boxes ``top, left, box_height, box_width`` drawn as torchvision's
    ``RandomResizedCrop.get_params`` does, from per-sample uniforms (``RESIZED_CROP_COLUMNS``): up to 10
    draws of area fraction ~ U(scale) and log aspect ratio ~ U(log ratio), the first that fits wins;
    none fits -> the whole image."""
    u = uniforms[:, RESIZED_CROP_COLUMNS].to(torch.float64)
    attempts = (u.shape[1] - 2) // 2
    fractions = scale[0] + (scale[1] - scale[0]) * u[:, 0:2 * attempts:2]
    aspect = torch.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1:2 * attempts:2])
    area = height * width
    box_w = torch.sqrt(area * fractions * aspect).round()
    box_h = torch.sqrt(area * fractions / aspect).round()
    fits = (box_w > 0) & (box_w <= width) & (box_h > 0) & (box_h <= height)
    chosen = fits.to(torch.int64).argmax(1, keepdim=True)  # first attempt that fits
    any_fit = fits.any(1)
    box_w = torch.where(any_fit, box_w.gather(1, chosen).squeeze(1), torch.full_like(box_w[:, 0], width))
    box_h = torch.where(any_fit, box_h.gather(1, chosen).squeeze(1), torch.full_like(box_h[:, 0], height))
    top = (u[:, -2] * (height - box_h + 1)).floor().clamp_(max=height - box_h)
    left = (u[:, -1] * (width - box_w + 1)).floor().clamp_(max=width - box_w)
    return torch.stack([top, left, box_h, box_w], dim=1)


def random_resized_crop(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Crop each image of a uint8 (B, C, H, W) batch to its box and resize it back to (H, W), bilinear
    (one ``grid_sample`` for the batch; no antialiasing, which matters little for scales near 1)."""
    batch, channels, height, width = images.shape
    boxes = boxes.to(device=images.device, dtype=torch.float32)
    top, left, box_h, box_w = boxes.unbind(1)
    theta = torch.zeros(batch, 2, 3, device=images.device)
    # Output coordinate u in [-1, 1] reads input pixel x = left + (u + 1) / 2 * box_w - 1 / 2, i.e.
    # normalised x' = (2 * left + box_w) / W - 1 + u * box_w / W (align_corners=False convention).
    theta[:, 0, 0] = box_w / width
    theta[:, 0, 2] = (2 * left + box_w) / width - 1
    theta[:, 1, 1] = box_h / height
    theta[:, 1, 2] = (2 * top + box_h) / height - 1
    grid = F.affine_grid(theta, [batch, channels, height, width], align_corners=False)
    resized = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def augment_policy(name: str, imagenet: bool = False, randaugment_num_ops: int = 2, randaugment_magnitude: int = 9):
    """The per-image policy step: ``none`` -> None, ``randaugment`` or ``autoaugment`` (ImageNet or CIFAR-10 policy)."""
    from torchvision.transforms import v2

    if name == "none":
        return None
    if name == "randaugment":
        return v2.RandAugment(num_ops=randaugment_num_ops, magnitude=randaugment_magnitude)
    if name == "autoaugment":
        return v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET if imagenet else v2.AutoAugmentPolicy.CIFAR10)
    raise ValueError(f"augmentation policy must be none | randaugment | autoaugment, got {name!r}")


# -- file pipelines (per image, in DataLoader workers) --------------------------------------------


class FileAugment:
    """Training transform of a file pipeline: decoded image -> augmented, normalised float (C, H, W).

    Steps: colour conversion (``preprocessing.color``); geometry: ImageNet-style
    (``preprocessing.resize == 'resize_center_crop'``) RandomResizedCrop(size, scale=(min_scale, 1)),
    or the deterministic resize of ``preprocessing`` then RandomCrop(size, padding=crop_padding,
    zero fill); horizontal flip; RandAugment / AutoAugment; ``preprocessing.normalize``; Cutout
    (after normalisation, as in the in-memory loader). ``crop_padding=0`` turns the random crop off
    (ImageNet style then uses the evaluation resize + centre crop). Randomness comes from torch's
    global generator: the file loader seeds it per sample from (seed, epoch, position).
    """

    def __init__(self, preprocessing, crop_padding: int = 4, flip: bool = True, cutout: int = 0,
                 policy: str = "none", min_scale: float = 0.08, randaugment_num_ops: int = 2,
                 randaugment_magnitude: int = 9):
        if crop_padding < 0 or cutout < 0:
            raise ValueError("crop_padding and cutout must be >= 0")
        self.preprocessing = preprocessing
        self.crop_padding = int(crop_padding)
        self.flip = bool(flip)
        self.cutout = int(cutout)
        self.imagenet = preprocessing.resize == "resize_center_crop"
        self.min_scale = float(min_scale)
        self.policy = augment_policy(policy, self.imagenet, randaugment_num_ops, randaugment_magnitude)

    def __call__(self, image) -> torch.Tensor:
        from torchvision.transforms import v2


        p = self.preprocessing
        image = to_uint8_image(image, p.color)
        if self.imagenet and self.crop_padding > 0:
            image = v2.RandomResizedCrop(p.size, scale=(self.min_scale, 1.0), antialias=True)(image)
        else:
            image = p.geometry(image.unsqueeze(0))[0]
            if self.crop_padding > 0:
                image = v2.RandomCrop(p.size, padding=self.crop_padding, fill=0)(image)
        if self.flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        if self.policy is not None:
            image = self.policy(image)
        batch = p.normalize(image.unsqueeze(0))
        if self.cutout > 0:
            height, width = batch.shape[-2:]
            center_y = torch.randint(0, height, (1,))
            center_x = torch.randint(0, width, (1,))
            batch = apply_cutout(batch, self.cutout, center_y, center_x)
        return batch[0]

    def __repr__(self) -> str:
        return (f"FileAugment({self.preprocessing!r}, crop_padding={self.crop_padding}, flip={self.flip}, "
                f"cutout={self.cutout}, policy={self.policy!r}, min_scale={self.min_scale})")


def build_file_transforms(
    preprocessing,
    train: bool = True,
    crop_padding: int = 4,
    flip: bool = True,
    cutout: int = 0,
    randaugment: bool = False,
    autoaugment: bool = False,
    min_scale: float = 0.08,
    randaugment_num_ops: int = 2,
    randaugment_magnitude: int = 9,
):
    """The per-image transform of a file dataset: ``preprocessing`` itself for evaluation, a
    :class:`FileAugment` around it for training (see there for the steps)."""
    if randaugment and autoaugment:
        raise ValueError("choose at most one of randaugment and autoaugment")
    if not train:
        return preprocessing
    policy = "randaugment" if randaugment else "autoaugment" if autoaugment else "none"
    return FileAugment(preprocessing, crop_padding=crop_padding, flip=flip, cutout=cutout, policy=policy,
                       min_scale=min_scale, randaugment_num_ops=randaugment_num_ops,
                       randaugment_magnitude=randaugment_magnitude)
