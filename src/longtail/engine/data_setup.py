"""Turn a config's ``data`` section into training / evaluation loaders on the right device and rank.

Datasets that fit in memory (``InMemoryImages``) go through the batched on-device pipeline;
file datasets (ImageNet-LT, Places-LT, iNat, image folders) through torchvision-v2 transforms in
a DataLoader with workers. Both expose ``set_epoch(epoch, start_batch)`` and ``len()``, so the
trainer does not care which one it has.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.utils.data import DataLoader

from longtail.data import InMemoryImages, build_dataset, dataset_options, dataset_splits
from longtail.data.loader import InMemoryLoader
from longtail.data.mixing import build_mixer
from longtail.data.samplers import build_sampler, derive_seed
from longtail.data.transforms import BatchAugment, build_file_transforms
from longtail.engine.config import ConfigError, RunConfig

# A separate stream of seeds for batch mixing, so mixing never shares random numbers with augmentation.
_MIXING_STREAM = 7


@dataclass
class DataBundle:
    train_loader: object
    steps_per_epoch: int
    eval_loaders: dict
    class_counts: list
    classes: list
    in_channels: int
    split_info: dict
    mix: Callable = field(default=lambda images, targets, epoch, batch: (images, targets))
    metric_options: dict = field(default_factory=dict)
    fingerprint: dict = field(default_factory=dict)  # engine.fingerprint.data_fingerprint of the data used


def _dataset_kwargs(config: RunConfig) -> dict:
    spec = config.data
    valid = dataset_options(spec.name)
    options = {}
    if "imbalance_factor" in valid:
        if spec.imbalance_factor is not None:
            options["imbalance_factor"] = spec.imbalance_factor
        options["profile"] = spec.profile
        options["seed"] = spec.split_seed
    elif spec.imbalance_factor is not None:
        raise ConfigError(
            f"data.imbalance_factor is set but dataset '{spec.name}' takes no imbalance factor "
            f"(it is naturally long-tailed or balanced); its options: {', '.join(valid) or 'none'}")
    return options


def carve_validation(labels: torch.Tensor, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split training positions into (train, validation) with ``per_class`` validation images per class.

    Deterministic in ``seed``; every class must keep at least one training image.
    """
    num_classes = int(labels.max()) + 1
    counts = torch.bincount(labels, minlength=num_classes)
    too_small = (counts <= per_class).nonzero().flatten()
    if too_small.numel():
        j = int(too_small[0])
        raise ConfigError(
            f"data.validation_per_class={per_class} would leave class {j} ({int(counts[j])} training images) "
            f"with none; lower it to at most {int(counts.min()) - 1}")
    generator = torch.Generator().manual_seed(derive_seed(seed, 1_000_003))
    order = torch.randperm(labels.numel(), generator=generator)
    # Stable sort by label keeps the random order inside each class; the first per_class of each go to validation.
    shuffled_labels = labels[order]
    by_class = order[torch.argsort(shuffled_labels, stable=True)]
    starts = torch.cumsum(counts, 0) - counts
    rank_in_class = torch.arange(labels.numel()) - starts.repeat_interleave(counts)
    is_validation = rank_in_class < per_class
    return by_class[~is_validation].sort().values, by_class[is_validation].sort().values


def _rank_share(size: int, rank: int, world_size: int) -> list:
    """Strided evaluation shard; the metrics' all-reduce sums the shards back into the full set."""
    return list(range(rank, size, world_size))


def _per_rank_batch(config: RunConfig, world_size: int) -> int:
    batch = config.data.batch_size
    if batch % world_size:
        raise ConfigError(f"data.batch_size={batch} must be divisible by the number of processes ({world_size})")
    return batch // world_size


def build_data(config: RunConfig, device: torch.device, context) -> DataBundle:
    spec = config.data
    options = _dataset_kwargs(config)
    train_set = build_dataset(spec.name, "train", root=spec.root, **_file_options(config, spec.name, train=True), **options)
    test_set = build_dataset(spec.name, "test", root=spec.root, **_file_options(config, spec.name, train=False), **options)
    in_memory = isinstance(train_set, InMemoryImages)
    labels = train_set.labels if in_memory else torch.as_tensor(train_set.labels)
    split_info = {"dataset": spec.name}
    if in_memory and train_set.longtail_split is not None:
        split_info["longtail"] = train_set.longtail_split.to_dict()
        split_info["longtail"].pop("indices", None)
    validation_positions = None
    if spec.validation_per_class:
        train_positions, validation_positions = carve_validation(labels, spec.validation_per_class, spec.split_seed)
        split_info["validation_per_class"] = spec.validation_per_class
        labels = labels[train_positions]
    num_classes = len(train_set.classes)
    class_counts = torch.bincount(labels, minlength=num_classes)
    empty = (class_counts == 0).nonzero().flatten()
    if empty.numel():
        raise ConfigError(
            f"dataset '{spec.name}' has {empty.numel()} class(es) with no training images (first: class "
            f"{int(empty[0])} '{train_set.classes[int(empty[0])]}'); every class needs at least one")
    sampler_options = {"q": spec.sampler_q} if spec.sampler_q is not None else {}
    sampler = build_sampler(spec.sampler, labels, num_replicas=context.world_size, rank=context.rank,
                            seed=config.train.seed, total_epochs=config.optim.epochs, **sampler_options)
    batch = _per_rank_batch(config, context.world_size)
    build_loaders = _in_memory if in_memory else _from_files
    train_loader, eval_loaders, in_channels = build_loaders(
        config, train_set, test_set, sampler, batch, device, context, validation_positions,
        None if validation_positions is None else train_positions)
    if config.train.select_on != "final" and "val" not in eval_loaders:
        raise ConfigError(f"train.select_on={config.train.select_on} selects on the validation split, and "
                          f"'{spec.name}' has none here; set data.validation_per_class (e.g. 20) to hold out "
                          f"training images for it")
    return DataBundle(train_loader, len(train_loader), eval_loaders, class_counts.tolist(), list(train_set.classes),
                      in_channels, split_info, mix=_mixing(config, num_classes),
                      fingerprint=_fingerprint(train_set, test_set, eval_loaders, validation_positions, split_info,
                                               spec.root))


def _fingerprint(train_set, test_set, eval_loaders, validation_positions, split_info, root) -> dict:
    """The data fingerprint (see engine.fingerprint): train and test sets, a validation set of its own
    (one carved from the training set is covered by the train set and the carved positions)."""
    from longtail.engine.fingerprint import data_fingerprint

    splits = {"train": train_set, "test": test_set}
    if validation_positions is None and "val" in eval_loaders:
        loader = eval_loaders["val"]
        splits["val"] = getattr(loader, "dataset", loader)  # FileBatches wrap a dataset; InMemoryLoader is one
    return data_fingerprint(splits, split_info, validation_positions, root)


def _file_options(config: RunConfig, name: str, train: bool) -> dict:
    if "transform" not in dataset_options(name):
        return {}
    spec = config.data
    style = "cifar" if (spec.image_size or 224) <= 64 else "imagenet"
    return {"transform": build_file_transforms(style, train=train, image_size=spec.image_size,
                                               randaugment=spec.randaugment and train,
                                               autoaugment=spec.autoaugment and train, crop_padding=spec.crop_padding)}


def _in_memory(config, train_set, test_set, sampler, batch, device, context, validation_positions, train_positions):
    spec = config.data
    if train_positions is not None:
        validation_set = train_set.subset(validation_positions, name=f"{train_set.name}-validation")
        train_set = train_set.subset(train_positions, name=train_set.name, longtail_split=train_set.longtail_split)
    resize = (spec.image_size, spec.image_size) if spec.image_size else None
    common = dict(device=device, channels_last=config.model.channels_last, resize_to=resize,
                  mean=train_set.mean, std=train_set.std, repeat_channels=spec.channels)
    augment = BatchAugment(crop_padding=spec.crop_padding, flip=spec.flip, cutout_size=spec.cutout)
    # One sample left over would make a batch-norm batch of size 1, which cannot train: drop it then.
    drop_last = len(sampler) % batch == 1
    train_loader = InMemoryLoader(train_set, batch_size=batch, sampler=sampler, augment=augment, drop_last=drop_last,
                                  seed=config.train.seed, **common)

    def evaluation(dataset):
        return InMemoryLoader(dataset, batch_size=spec.eval_batch_size,
                              sampler=_rank_share(len(dataset), context.rank, context.world_size), **common)

    eval_loaders = {"test": evaluation(test_set), "train": evaluation(train_set)}
    if train_positions is not None:
        eval_loaders["val"] = evaluation(validation_set)
    return train_loader, eval_loaders, spec.channels or train_set.images.shape[1]


class FileBatches:
    """A DataLoader over a file dataset with the in-memory loader's ``set_epoch(epoch, start_batch)``.

    Resuming mid-epoch skips the first ``start_batch`` batches' indices without loading them.
    (Per-image augmentation in worker processes is not replayed bit for bit; resumption from epoch
    boundaries is exact in data order.)
    """

    def __init__(self, dataset, batch_size, sampler, device, channels_last, workers, drop_last):
        self.dataset, self.batch_size, self.sampler = dataset, batch_size, sampler
        self.device, self.channels_last, self.workers, self.drop_last = device, channels_last, workers, drop_last
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        self.start_batch = start_batch

    def __len__(self) -> int:
        count = len(self.sampler)
        return count // self.batch_size if self.drop_last else -(-count // self.batch_size)

    def __iter__(self):
        indices = list(iter(self.sampler))[self.start_batch * self.batch_size:]
        loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=indices, num_workers=self.workers,
                            pin_memory=self.device.type == "cuda", drop_last=self.drop_last,
                            persistent_workers=False)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        for images, labels in loader:
            yield (images.to(self.device, non_blocking=True).contiguous(memory_format=memory_format),
                   torch.as_tensor(labels).to(self.device, non_blocking=True))


def _from_files(config, train_set, test_set, sampler, batch, device, context, validation_positions, train_positions):

    spec = config.data
    if train_positions is not None:
        raise ConfigError("data.validation_per_class is for in-memory datasets; file datasets ship a val split "
                          "(evaluate it with `longtail eval RUN --split val`)")
    drop_last = len(sampler) % batch == 1
    train_loader = FileBatches(train_set, batch, sampler, device, config.model.channels_last, spec.workers, drop_last)

    def evaluation(dataset):
        share = _rank_share(len(dataset), context.rank, context.world_size)
        return FileBatches(dataset, spec.eval_batch_size, share, device, config.model.channels_last,
                           spec.workers, False)

    eval_loaders = {"test": evaluation(test_set)}
    validation_set = _file_validation_set(config)
    if validation_set is not None:
        eval_loaders["val"] = evaluation(validation_set)
    if config.train.eval_train:
        train_eval = build_dataset(spec.name, "train", root=spec.root, **_file_options(config, spec.name, train=False))
        eval_loaders["train"] = evaluation(train_eval)
    return train_loader, eval_loaders, 3  # file images are decoded as RGB


def _file_validation_set(config: RunConfig):
    """The dataset's own validation split (ImageNet-LT / Places-LT lists, an image folder's val/), or
    None when it has none. Optional unless train.select_on needs it: a missing one is then an error."""
    spec = config.data
    if "val" not in dataset_splits(spec.name):
        return None
    try:
        return build_dataset(spec.name, "val", root=spec.root, **_file_options(config, spec.name, train=False),
                             **_dataset_kwargs(config))
    except FileNotFoundError:
        if config.train.select_on != "final":
            raise
        return None


def _mixing(config: RunConfig, num_classes: int) -> Callable:
    spec = config.data
    if spec.mixing == "none":
        return lambda images, targets, epoch, batch: (images, targets)
    mixer = build_mixer(spec.mixing, alpha=spec.mixing_alpha, probability=spec.mixing_prob)
    seed = config.train.seed

    def mix(images, targets, epoch, batch_index):
        if spec.mixing_until_epoch is not None and epoch >= spec.mixing_until_epoch:
            return images, targets
        generator = torch.Generator().manual_seed(derive_seed(seed, epoch, batch_index, _MIXING_STREAM))
        return mixer(images, targets, num_classes, generator)

    return mix
