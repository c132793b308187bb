"""File datasets decoded and augmented on the training device (GPU JPEG decoding).

The classic file pipeline (:func:`longtail.data.transforms.build_file_transforms` in DataLoader
workers) decodes with PIL and augments on the CPU, one image at a time; on a GPU that is the
bottleneck (a few thousand images/s from a handful of cores). Here the workers only read the
files' bytes; the main process decodes a whole batch of JPEGs in one call of
``torchvision.io.decode_jpeg(..., device="cuda")`` (nvJPEG), then crops, resizes, flips and
normalises on the device.

It computes the same function as the file pipeline, with the same geometric parameters and the
same ``transforms.v2.functional`` ops (tests/test_device_decode.py pins it):
- ``imagenet`` style: train RandomResizedCrop(size, scale=(min_scale, 1), ratio=(3/4, 4/3)) +
  horizontal flip; eval Resize(size / resize_ratio) + CenterCrop(size);
- ``cifar`` style: train RandomCrop(size, padding) + flip; eval unchanged;
- then optional RandAugment / AutoAugment per image, and Normalize(mean, std).
Randomness comes from a generator seeded by (seed, epoch, batch index), so a resumed epoch
replays its augmentation exactly (the worker pipeline cannot).

Fallbacks: on a CPU device the JPEGs are decoded with ``decode_jpeg`` on the CPU (libjpeg-turbo,
the library PIL uses, so the pixels match PIL's); if nvJPEG refuses a batch (a CMYK or corrupt
file, a torchvision built without it) that batch is decoded on the CPU and moved, with one
warning. Files that are not JPEG (PNG, BMP, ...) are decoded with PIL, exactly as the file
pipeline does.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from .samplers import derive_seed
from .transforms import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD, crop_flip, normalize

__all__ = ["DeviceFileTransform", "DeviceDecodedLoader", "RawFiles", "decode_images", "is_jpeg"]

_JPEG_MAGIC = b"\xff\xd8\xff"


@contextlib.contextmanager
def _quiet_io():
    """torchvision >= 0.29 warns on every image-I/O call that TorchCodec will take it over; the
    functions still work (and are what nvJPEG is reached through), so the warning is noise here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                                category=DeprecationWarning)
        yield


def is_jpeg(data: torch.Tensor) -> bool:
    return data.numel() >= 3 and bytes(data[:3].tolist()) == _JPEG_MAGIC


def _pil_decode(data: torch.Tensor) -> torch.Tensor:
    """(3, H, W) uint8 through PIL, converted to RGB like ``listfile.pil_loader``."""
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data.numpy().tobytes())) as image:
        array = np.asarray(image.convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


_warned_gpu_fallback = False


def decode_images(datas: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Decode encoded files (1-D uint8 tensors) into RGB uint8 (3, H, W) tensors on ``device``.

    JPEGs are decoded in one batched ``decode_jpeg`` call, on the GPU when ``device`` is CUDA;
    everything else with PIL. The order of ``datas`` is kept.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    global _warned_gpu_fallback
    device = torch.device(device)
    out: list[Optional[torch.Tensor]] = [None] * len(datas)
    jpeg_positions = [i for i, data in enumerate(datas) if is_jpeg(data)]
    jpegs = [datas[i] for i in jpeg_positions]
    decoded: list[torch.Tensor] = []
    with _quiet_io():
        if jpegs and device.type == "cuda":
            try:
                decoded = decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device)
            except RuntimeError as error:
                if not _warned_gpu_fallback:
                    warnings.warn(f"GPU JPEG decoding failed ({error}); decoding such batches on the CPU instead",
                                  stacklevel=2)
                    _warned_gpu_fallback = True
                decoded = []
        if jpegs and not decoded:
            decoded = [image.to(device, non_blocking=True) for image in decode_jpeg(jpegs, mode=ImageReadMode.RGB)]
    for position, image in zip(jpeg_positions, decoded):
        out[position] = image
    for i, image in enumerate(out):
        if image is None:
            out[i] = _pil_decode(datas[i]).to(device, non_blocking=True)
    return out  # type: ignore[return-value]


@dataclass(frozen=True)
class DeviceFileTransform:
    """The file pipeline of :func:`~longtail.data.transforms.build_file_transforms` (same
    arguments, same meaning), applied to a batch of decoded images on their device."""

    style: str = "imagenet"
    train: bool = True
    image_size: Optional[int] = None
    randaugment: bool = False
    autoaugment: bool = False
    mean: Optional[Sequence[float]] = None
    std: Optional[Sequence[float]] = None
    crop_padding: int = 4
    resize_ratio: float = 0.875
    randaugment_num_ops: int = 2
    randaugment_magnitude: int = 9
    min_scale: float = 0.08

    def __post_init__(self):
        if self.style not in ("imagenet", "cifar"):
            raise ValueError(f"style must be 'imagenet' or 'cifar', got {self.style!r}")
        if self.randaugment and self.autoaugment:
            raise ValueError("choose at most one of randaugment and autoaugment")

    @property
    def size(self) -> int:
        return int(self.image_size or (224 if self.style == "imagenet" else 32))

    def _statistics(self):
        imagenet = self.style == "imagenet"
        return (tuple(self.mean or (IMAGENET_MEAN if imagenet else CIFAR_MEAN)),
                tuple(self.std or (IMAGENET_STD if imagenet else CIFAR_STD)))

    # -- parameters (torchvision's algorithms, drawn from an explicit generator) ------------------

    def resized_crop_params(self, height: int, width: int, generator: torch.Generator) -> tuple[int, int, int, int]:
        """(top, left, h, w) of RandomResizedCrop: torchvision v2's algorithm (10 tries, then a
        central crop at the nearest allowed aspect ratio)."""
        scale, ratio = (self.min_scale, 1.0), (3 / 4, 4 / 3)
        area = height * width
        log_ratio = torch.log(torch.tensor(ratio))  # float32, as torchvision computes it
        for _ in range(10):
            target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
            aspect = torch.exp(torch.empty(1).uniform_(float(log_ratio[0]), float(log_ratio[1]),
                                                       generator=generator)).item()
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
                left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
                return top, left, h, w
        in_ratio = width / height
        if in_ratio < ratio[0]:
            w, h = width, int(round(width / ratio[0]))
        elif in_ratio > ratio[1]:
            h, w = height, int(round(height * ratio[1]))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    # -- application ------------------------------------------------------------------------

    def __call__(self, images: Sequence[torch.Tensor], generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """uint8 (3, H_i, W_i) images on one device -> normalised float32 (B, 3, size, size).
        ``generator`` (a CPU generator) draws the random parameters; required when training."""
        from torchvision.transforms.v2 import functional as TF

        if self.train and generator is None:
            raise ValueError("a training transform needs a generator")
        size = self.size
        if self.style == "imagenet":
            if self.train:
                crops = []
                for image in images:
                    top, left, h, w = self.resized_crop_params(image.shape[-2], image.shape[-1], generator)
                    crops.append(TF.resized_crop(image, top, left, h, w, [size, size], antialias=True))
                batch = torch.stack(crops)
            else:
                short = int(round(size / self.resize_ratio))
                batch = torch.stack([TF.center_crop(TF.resize(image, [short], antialias=True), [size, size])
                                     for image in images])
        else:
            shapes = {tuple(image.shape[-2:]) for image in images}
            if self.train and shapes != {(size, size)}:
                raise ValueError(f"the cifar-style pipeline crops {size}x{size} images, got sizes {sorted(shapes)[:5]}; "
                                 f"set data.image_size to the images' size")
            if len(shapes) > 1:
                raise ValueError(f"images of different sizes {sorted(shapes)[:5]} cannot form an evaluation batch "
                                 f"without resizing; use the imagenet-style pipeline (data.image_size > 64)")
            batch = torch.stack(list(images))
            if self.train and self.crop_padding > 0:
                top = torch.randint(0, 2 * self.crop_padding + 1, (len(images),), generator=generator)
                left = torch.randint(0, 2 * self.crop_padding + 1, (len(images),), generator=generator)
                batch = crop_flip(batch, self.crop_padding, top.to(batch.device), left.to(batch.device))
        if self.train:
            flipped = (torch.rand(len(images), generator=generator) < 0.5).to(batch.device)
            batch = torch.where(flipped[:, None, None, None], batch.flip(-1), batch)
            policy = self._policy()
            if policy is not None:
                # Per image, as the worker pipeline does (a v2 policy given a batch applies one op to all).
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(int(torch.randint(0, 2 ** 62, (1,), generator=generator)))
                    batch = torch.stack([policy(image) for image in batch])
        mean, std = self._statistics()
        return normalize(batch, mean, std)

    def _policy(self):
        from torchvision.transforms import v2

        if self.randaugment:
            return v2.RandAugment(num_ops=self.randaugment_num_ops, magnitude=self.randaugment_magnitude)
        if self.autoaugment:
            return v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET if self.style == "imagenet"
                                  else v2.AutoAugmentPolicy.CIFAR10)
        return None


class RawFiles(Dataset):
    """``dataset[i] -> (the file's bytes as a 1-D uint8 tensor, label)`` for a file dataset
    (anything with ``paths`` and ``labels``, e.g. ``FileImageDataset``): what workers do here."""

    def __init__(self, dataset):
        self.paths, self.labels, self.name = list(dataset.paths), dataset.labels, getattr(dataset, "name", "files")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        from torchvision.io import read_file

        path = self.paths[index]
        try:
            with _quiet_io():
                return read_file(path), int(self.labels[index])
        except (FileNotFoundError, RuntimeError) as error:
            raise FileNotFoundError(f"{self.name}: cannot read image {path} (sample {index}): {error}") from error


def _collate_raw(batch):
    datas, labels = zip(*batch)
    return list(datas), torch.tensor(labels, dtype=torch.long)


class DeviceDecodedLoader:
    """Batches of a file dataset decoded and augmented on ``device``; the interface of the
    engine's file loader (``set_epoch(epoch, start_batch)``, ``len()``, iteration yields
    ``(images, labels)`` on the device)."""

    def __init__(self, dataset, batch_size: int, sampler, device, transform: DeviceFileTransform,
                 seed: int = 0, workers: int = 2, drop_last: bool = False, channels_last: bool = True):
        self.raw = RawFiles(dataset)
        self.batch_size, self.sampler, self.device = int(batch_size), sampler, torch.device(device)
        self.transform, self.seed, self.workers = transform, int(seed), int(workers)
        self.drop_last, self.channels_last = bool(drop_last), bool(channels_last)
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def __len__(self) -> int:
        count = len(self.sampler)
        return count // self.batch_size if self.drop_last else -(-count // self.batch_size)

    def __iter__(self):
        indices = list(iter(self.sampler))[self.start_batch * self.batch_size:]
        loader = DataLoader(self.raw, batch_size=self.batch_size, sampler=indices, num_workers=self.workers,
                            collate_fn=_collate_raw, drop_last=self.drop_last,
                            pin_memory=self.device.type == "cuda")
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        for offset, (datas, labels) in enumerate(loader):
            batch_index = self.start_batch + offset
            generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, batch_index))
            images = self.transform(decode_images(datas, self.device), generator if self.transform.train else None)
            yield images.contiguous(memory_format=memory_format), labels.to(self.device, non_blocking=True)
