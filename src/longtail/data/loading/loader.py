"""In-memory batched data pipeline: the whole dataset as one uint8 tensor on the training device.

The airbench / hlb-CIFAR10 pattern (design.md): for datasets that fit in memory (CIFAR,
MNIST-type, the embedded default) there is no per-image Python work at all. Each batch is an
index into the resident uint8 tensor, augmented with batched tensor ops
(:mod:`longtail.data.transforms.augment`), converted to float and normalised on the device. On a GPU this
removes the data loader from the critical path; on a CPU it is still several times faster than
PIL transforms in worker processes (benchmarks/pipeline.md). On an oversubscribed CPU (more busy
processes than cores) use ``torch.set_num_threads(1)``: the batch ops are small, and two OpenMP
threads waiting on each other at barriers were measured ~10x slower than one thread.

Determinism and resumption: the order comes from the sampler, whose draw depends only on
(seed, epoch); each sample's augmentation depends only on (seed, epoch, the sample's global
position in the epoch's draw) (:func:`longtail.data.transforms.augment.sample_uniforms`). So
``set_epoch(epoch, start_batch=k)`` skips the first k batches without computing them, the batches
that follow are bit-identical to those of an uninterrupted run on the same device, and R
processes with batch B / R each see exactly the augmented samples of one process with batch B.
"""

from __future__ import annotations

import math
import warnings
from typing import Iterator, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from longtail.data.sampling.samplers import ClassPowerSampler
from longtail.data.transforms.augment import (
    BatchAugment,
    apply_cutout,
    RESIZED_CROP_COLUMNS,
    crop_flip,
    augment_policy,
    random_resized_crop,
    uniforms_to_resized_crop,
    normalize,
    resize_images,
    sample_seed,
    sample_uniforms,
    uniforms_to_crop_flip,
    uniforms_to_cutout,
)

__all__ = ["FileLoader", "InMemoryLoader"]


def _channel_statistics(images: torch.Tensor, chunk_size: int = 8192) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of a uint8 (N, C, H, W) tensor on the 0..1 scale (float64 sums, chunked)."""
    total = torch.zeros(images.shape[1], dtype=torch.float64, device=images.device)
    total_sq = torch.zeros_like(total)
    for start in range(0, images.shape[0], chunk_size):
        chunk = images[start : start + chunk_size].to(torch.float64) / 255.0
        total += chunk.sum(dim=(0, 2, 3))
        total_sq += chunk.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp(min=1e-12).sqrt()
    return mean.float().cpu(), std.float().cpu()


class InMemoryLoader:
    """Batches ``(normalised float images, int64 labels)`` from a resident uint8 image tensor.

    Args:
        data: an ``InMemoryImages`` (anything with uint8 ``images`` (N, C, H, W), int64 ``labels``
            (N,) and optionally ``mean`` / ``std``), or a uint8 image tensor with ``labels=`` given.
        batch_size: samples per batch.
        sampler: a torch ``Sampler`` over dataset indices (e.g. from
            :func:`longtail.data.sampling.samplers.build_sampler`; its ``len`` is this rank's share).
            ``None``: sequential order, or a seeded permutation per epoch when ``shuffle=True``.
        augment: ``True`` for the CIFAR protocol (random crop with padding 4 + horizontal flip),
            a :class:`~longtail.data.transforms.augment.BatchAugment` for other options, ``False``/``None``
            for none (evaluation).
        device: where the images live and batches are produced (default: where ``images`` are).
        channels_last: return batches in ``torch.channels_last`` memory format (faster convs on GPU).
        drop_last: drop the last partial batch (training); kept by default (evaluation).
        seed: base seed of the augmentation (and of ``shuffle``).
        labels, mean, std: for a plain image tensor. ``mean`` / ``std`` are per channel on the 0..1
            scale; when neither the data nor the call gives them they are computed from the images.
        shuffle: without a sampler, draw a fresh permutation per epoch from (seed, epoch).
        resize_to: (H, W) to resize the stored images to, once, at construction (e.g. (32, 32)
            for 28x28 Fashion-MNIST into a CIFAR ResNet).
        repeat_channels: repeat single-channel images to this many channels per batch (3 for
            ImageNet-style backbones); the statistics are repeated with them.
        dtype: floating dtype of the produced images.
        preprocessing: a :class:`~longtail.data.transforms.preprocess.Preprocessing` instead of ``resize_to`` /
            ``mean`` / ``std`` / ``repeat_channels``: its colour conversion and geometry are applied
            once to the stored images, its normalisation per batch, so an evaluation batch is
            exactly ``preprocessing(images)``.

    The defaults (no sampler, no augmentation, keep the last batch) are evaluation mode. Call
    ``set_epoch(epoch)`` before each training epoch; ``len(loader)`` is the number of batches in
    a full epoch (also after ``set_epoch(epoch, start_batch=k)``, so LR schedules keep their length).
    """

    def __init__(
        self,
        data,
        batch_size: int = 128,
        sampler: Optional[Sampler] = None,
        augment: Union[bool, BatchAugment, None] = False,
        device: Union[str, torch.device, None] = None,
        channels_last: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        *,
        labels: Optional[torch.Tensor] = None,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        shuffle: bool = False,
        resize_to: Optional[Tuple[int, int]] = None,
        repeat_channels: Optional[int] = None,
        dtype: torch.dtype = torch.float32,
        preprocessing=None,
    ) -> None:
        if isinstance(data, torch.Tensor):
            images = data
            if labels is None:
                raise ValueError("InMemoryLoader(images_tensor, ...) needs labels=...")
        else:
            images = data.images
            labels = data.labels if labels is None else labels
            mean = getattr(data, "mean", None) if mean is None else mean
            std = getattr(data, "std", None) if std is None else std
        labels = torch.as_tensor(labels)
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be a uint8 tensor (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels must have shape ({images.shape[0]},) to match the images, got {tuple(labels.shape)}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")

        self.device = torch.device(device) if device is not None else images.device
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.images = images.to(self.device)
        if preprocessing is not None:
            if resize_to is not None or repeat_channels is not None:
                raise ValueError("give either preprocessing= or resize_to / repeat_channels, not both")
            self.images = preprocessing.prepare(self.images)
            mean, std, repeat_channels = preprocessing.mean, preprocessing.std, preprocessing.channels
        elif resize_to is not None:
            # Once here rather than per batch: resizing is deterministic, and the per-batch crop
            # should happen at the network's input size.
            self.images = resize_images(self.images, resize_to)
        self.labels = labels.to(self.device, dtype=torch.long)
        channels = self.images.shape[1]

        if mean is None or std is None:
            computed_mean, computed_std = _channel_statistics(self.images)
            mean = computed_mean if mean is None else mean
            std = computed_std if std is None else std
        self.mean = torch.as_tensor(mean, dtype=torch.float32).flatten().tolist()
        self.std = torch.as_tensor(std, dtype=torch.float32).flatten().tolist()
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"mean / std need one value per channel ({channels}), got {self.mean} / {self.std}")
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std}")

        if repeat_channels is not None and int(repeat_channels) != channels:
            if channels != 1:
                raise ValueError(f"repeat_channels only applies to single-channel images, these have {channels}")
        self.repeat_channels = int(repeat_channels) if repeat_channels is not None else None

        if augment is True:
            augment = BatchAugment()
        elif augment is False:
            augment = None
        if augment is not None and not isinstance(augment, BatchAugment):
            raise ValueError(f"augment must be a bool or a BatchAugment, got {augment!r}")
        self.augment: Optional[BatchAugment] = augment
        self._policy = None  # the torchvision policy module, built on first use

        if sampler is None and shuffle:
            sampler = ClassPowerSampler(self.labels.cpu(), q=1.0, seed=seed)
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.channels_last = bool(channels_last)
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        self.dtype = dtype
        self.epoch = 0
        self.start_batch = 0
        self._iterations_this_epoch = 0
        self._warned_same_epoch = False

    # -- epoch control -------------------------------------------------------------------------
    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch (passed on to the sampler) and the batch to start from when resuming."""
        if not 0 <= int(start_batch) <= len(self):
            raise ValueError(f"start_batch must be in [0, {len(self)}], got {start_batch}")
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)
        self._iterations_this_epoch = 0
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(self.epoch)

    def _num_indices(self) -> int:
        return len(self.sampler) if self.sampler is not None else self.images.shape[0]

    def __len__(self) -> int:
        count = self._num_indices()
        return count // self.batch_size if self.drop_last else math.ceil(count / self.batch_size)

    def _epoch_indices(self) -> torch.Tensor:
        if self.sampler is None:
            return torch.arange(self.images.shape[0], device=self.device)
        if isinstance(self.sampler, ClassPowerSampler):
            indices = self.sampler.rank_indices()  # skips a round trip through a Python list
        else:
            indices = torch.as_tensor(list(iter(self.sampler)), dtype=torch.long)
        return indices.to(self.device, non_blocking=True)

    # -- batches -------------------------------------------------------------------------------
    def global_positions(self, batch_index: int, batch_size: int) -> torch.Tensor:
        """Positions in the epoch's global draw of this rank's batch ``batch_index``.

        A distributed sampler (``num_replicas`` R, ``rank`` r, e.g. ``ClassPowerSampler``) gives
        rank r the draw's positions r, r + R, ...; any other sampler is one process's whole order.
        """
        local = torch.arange(batch_index * self.batch_size, batch_index * self.batch_size + batch_size, device=self.device)
        replicas = int(getattr(self.sampler, "num_replicas", 1))
        return local * replicas + int(getattr(self.sampler, "rank", 0))

    def make_batch(self, indices: torch.Tensor, batch_index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Gather, augment and normalise the images at ``indices`` (dataset positions, on the device)."""
        images = self.images.index_select(0, indices)
        labels = self.labels.index_select(0, indices)
        augment = self.augment
        if augment is not None:
            positions = self.global_positions(batch_index, images.shape[0])
            resized_crop = augment.crop_scale_min is not None
            uniforms = sample_uniforms(self.seed, self.epoch, positions,
                                       RESIZED_CROP_COLUMNS.stop if resized_crop else 5)
            if resized_crop:
                boxes = uniforms_to_resized_crop(uniforms, images.shape[2], images.shape[3],
                                                 (augment.crop_scale_min, 1.0))
                images = random_resized_crop(images, boxes)
        if augment is not None and (augment.crop_padding > 0 or augment.flip):
            top, left, flipped = uniforms_to_crop_flip(
                uniforms, augment.crop_padding, augment.flip_probability if augment.flip else 0.0)
            images = crop_flip(images, augment.crop_padding, top, left, flipped if augment.flip else None, augment.padding_mode)
        if augment is not None and augment.policy != "none":
            images = self._apply_policy(images, positions)
        batch = normalize(images, self.mean, self.std, self.dtype)
        if augment is not None and augment.cutout_size > 0:
            # After normalisation, as in DeVries & Taylor: the hole is the dataset mean colour.
            center_y, center_x = uniforms_to_cutout(uniforms, batch.shape[2], batch.shape[3])
            batch = apply_cutout(batch, augment.cutout_size, center_y, center_x)
        if self.repeat_channels is not None and self.repeat_channels != batch.shape[1]:
            batch = batch.expand(-1, self.repeat_channels, -1, -1)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        return batch.contiguous(memory_format=memory_format), labels

    def _apply_policy(self, images: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """RandAugment / AutoAugment image by image (their ops differ per image), each seeded from its position."""
        if self._policy is None:
            self._policy = augment_policy(self.augment.policy)
        out = torch.empty_like(images)
        with torch.random.fork_rng(devices=[]):
            for i, position in enumerate(positions.tolist()):
                torch.manual_seed(sample_seed(self.seed, self.epoch, position))
                out[i] = self._policy(images[i])
        return out

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        # A fixed index list (e.g. an evaluation shard) is not random: re-iterating it is expected.
        randomised = self.augment is not None or hasattr(self.sampler, "set_epoch")
        if randomised and self._iterations_this_epoch > 0 and not self._warned_same_epoch:
            warnings.warn(
                "InMemoryLoader iterated again without set_epoch(): this repeats the previous epoch's "
                "order and augmentation exactly. Call loader.set_epoch(epoch) before every epoch.",
                stacklevel=2,
            )
            self._warned_same_epoch = True
        self._iterations_this_epoch += 1
        indices = self._epoch_indices()
        for batch_index in range(self.start_batch, len(self)):
            batch_indices = indices[batch_index * self.batch_size : (batch_index + 1) * self.batch_size]
            yield self.make_batch(batch_indices, batch_index)

    def __repr__(self) -> str:
        return (
            f"InMemoryLoader(images={tuple(self.images.shape)}, batch_size={self.batch_size}, "
            f"sampler={self.sampler!r}, augment={self.augment!r}, device={self.device}, "
            f"channels_last={self.channels_last}, drop_last={self.drop_last}, seed={self.seed}, epoch={self.epoch})"
        )


class _SeededSamples(Dataset):
    """Wraps a file dataset: item ``(index, epoch, position)`` is ``dataset[index]`` transformed with torch's
    generator seeded from (seed, epoch, position); ``epoch=None`` (evaluation) draws nothing."""

    def __init__(self, dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, epoch, position = key
        if epoch is None:
            return self.dataset[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, epoch, position))
            return self.dataset[index]


class SampledBatches:
    """What every sampler-driven loader shares: ``set_epoch(epoch, start_batch)`` (passed on to the
    sampler; ``start_batch`` resumes mid-epoch) and ``len`` = batches per epoch of ``self.sampler``."""

    sampler = None
    batch_size = 1
    drop_last = False

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if not 0 <= int(start_batch) <= len(self):
            raise ValueError(f"start_batch must be in [0, {len(self)}], got {start_batch}")
        self.epoch, self.start_batch = int(epoch), int(start_batch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(self.epoch)

    def __len__(self) -> int:
        count = len(self.sampler)
        return count // self.batch_size if self.drop_last else math.ceil(count / self.batch_size)


class FileLoader(SampledBatches):
    """Batches of a file dataset (``dataset[i] -> (transformed image, label)``) through a ``DataLoader``
    with ``workers`` processes, with the in-memory loader's ``set_epoch(epoch, start_batch)`` and ``len``.

    Training (``augment=True``): every sample's transform runs with torch's generator seeded from
    (seed, epoch, the sample's global position in the epoch's draw), the numbers
    :class:`InMemoryLoader` uses. So the augmented batches do not depend on the number of workers
    or processes, and a resumed run (``start_batch=k`` skips k batches without loading them) gets
    exactly the batches an uninterrupted one would have.
    """

    def __init__(self, dataset, batch_size: int, sampler, device, channels_last: bool = False, workers: int = 0,
                 drop_last: bool = False, seed: int = 0, augment: bool = False) -> None:
        self.dataset = dataset
        self.batch_size, self.sampler = int(batch_size), sampler
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.channels_last, self.workers, self.drop_last = bool(channels_last), int(workers), bool(drop_last)
        self.seed, self.augment = int(seed), bool(augment)
        self.epoch = 0
        self.start_batch = 0

    def keys(self) -> list:
        """``(dataset index, epoch or None, global position)`` of every sample from ``start_batch`` on."""
        indices = list(iter(self.sampler))
        replicas = int(getattr(self.sampler, "num_replicas", 1))
        rank = int(getattr(self.sampler, "rank", 0))
        epoch = self.epoch if self.augment else None
        first = self.start_batch * self.batch_size
        end = len(self) * self.batch_size
        return [(index, epoch, local * replicas + rank) for local, index in enumerate(indices) if first <= local < end]

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        loader = DataLoader(_SeededSamples(self.dataset, self.seed), batch_size=self.batch_size, sampler=self.keys(),
                            num_workers=self.workers, pin_memory=self.device.type == "cuda", drop_last=self.drop_last,
                            persistent_workers=False)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        for images, labels in loader:
            yield (images.to(self.device, non_blocking=True).contiguous(memory_format=memory_format),
                   torch.as_tensor(labels).to(self.device, non_blocking=True))

    def __repr__(self) -> str:
        return (f"FileLoader(n={len(self.dataset)}, batch_size={self.batch_size}, sampler={self.sampler!r}, "
                f"workers={self.workers}, augment={self.augment}, seed={self.seed}, epoch={self.epoch})")
