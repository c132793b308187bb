"""File datasets decoded and transformed on the training device (GPU JPEG decoding).

The per-image file pipeline (:class:`longtail.data.loading.loader.FileLoader`) decodes with PIL and runs
each image's transform in DataLoader workers on the CPU; on a GPU that is the bottleneck (a few
hundred images/s per core for photo-sized JPEGs). :class:`DeviceDecodedLoader` is a
``FileLoader`` whose workers only read the files' bytes. The main process decodes a whole batch
of JPEGs in one ``torchvision.io.decode_jpeg(..., device="cuda")`` call (nvJPEG), then applies
the dataset's own transform (``FileAugment`` for training, ``Preprocessing`` for evaluation) to
each decoded image on the device, seeded per sample exactly as ``FileLoader`` seeds it: from
(seed, epoch, position in the epoch's draw). The crop, resize, flip, policy and normalisation
are the same functions on the same parameters, so the batches are the file pipeline's up to the
JPEG decoder's rounding (nvJPEG differs from libjpeg by a few levels) and float rounding of the
GPU's interpolation. The ops run image by image (images differ in size until cropped); every one
runs on the device, so nothing goes back to the host.

Fallbacks: on a CPU device JPEGs are decoded with ``decode_jpeg`` on the CPU (libjpeg-turbo, the
library behind PIL, so the pixels are PIL's; tests/test_device_decode.py pins this). If nvJPEG
refuses a batch (a CMYK or corrupt file, a torchvision built without it) that batch is decoded on
the CPU and moved, with one warning. Files that are not JPEG (PNG, BMP, ...) are decoded with
PIL, exactly as the file pipeline does.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Iterator, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset

from longtail.data.loading.loader import FileLoader
from longtail.data.transforms.augment import sample_seed

__all__ = ["DeviceDecodedLoader", "RawFiles", "decode_files", "is_jpeg"]

_JPEG_MAGIC = b"\xff\xd8\xff"
_warned_gpu_fallback = False


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


def decode_files(datas: Sequence[torch.Tensor], device) -> list[torch.Tensor]:
    """Encoded files (1-D uint8 tensors) -> RGB uint8 (3, H, W) tensors on ``device``, in order.

    JPEGs are decoded in one batched ``decode_jpeg`` call, on the GPU when ``device`` is CUDA;
    everything else with PIL (converted to RGB, as ``pil_loader`` does).
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


class RawFiles(Dataset):
    """Item ``(index, epoch, position)`` (a ``FileLoader`` key) -> ``(key, the file's bytes as a 1-D
    uint8 tensor, label)``: all a worker does here."""

    def __init__(self, dataset):
        self.paths, self.labels = list(dataset.paths), dataset.labels
        self.name = getattr(dataset, "name", "files")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key):
        from torchvision.io import read_file

        index = key[0]
        path = self.paths[index]
        try:
            with _quiet_io():
                data = read_file(path)
        except (FileNotFoundError, RuntimeError) as error:
            raise FileNotFoundError(f"{self.name}: cannot read image {path} (sample {index}): {error}") from error
        return key, data, int(self.labels[index])


def _collate_raw(batch):
    keys, datas, labels = zip(*batch)
    return list(keys), list(datas), torch.tensor(labels, dtype=torch.long)


class DeviceDecodedLoader(FileLoader):
    """A :class:`FileLoader` (same arguments, keys, seeds and batches) that decodes and transforms
    on ``device``; the dataset needs ``paths``, ``labels`` and a ``transform`` that takes a uint8
    (C, H, W) tensor (``FileAugment``, ``Preprocessing``)."""

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        transform = self.dataset.transform
        loader = DataLoader(RawFiles(self.dataset), batch_size=self.batch_size, sampler=self.keys(),
                            num_workers=self.workers, collate_fn=_collate_raw, drop_last=self.drop_last,
                            pin_memory=self.device.type == "cuda", persistent_workers=False)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        for keys, datas, labels in loader:
            images = []
            for (_, epoch, position), image in zip(keys, decode_files(datas, self.device)):
                if epoch is None:  # evaluation: deterministic
                    images.append(transform(image))
                    continue
                with torch.random.fork_rng(devices=[]):  # the draws FileLoader's _SeededSamples makes
                    torch.manual_seed(sample_seed(self.seed, epoch, position))
                    images.append(transform(image))
            yield (torch.stack(images).contiguous(memory_format=memory_format),
                   labels.to(self.device, non_blocking=True))
