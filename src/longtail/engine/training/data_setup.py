"""Turn a config's ``data`` section into training / evaluation loaders on the right device and rank.

Datasets that fit in memory (``InMemoryImages``, and image files decoded into memory once) go
through the batched on-device pipeline; other image files through per-image transforms in a
DataLoader with workers (``FileLoader``). Both expose ``set_epoch(epoch, start_batch)`` and
``len()``, so the trainer does not care which one it has; both evaluate through the run's one
``Preprocessing`` (written to the run directory as preprocessing.json).

Image files (image folders, list files) are scanned before anything else: every bad file is
reported together (or skipped with data.bad_images=skip), and the scan's sizes choose the
geometry (native size unless asked otherwise or the images are large) and whether the decoded
images fit in memory. Every choice made for the user is printed in one line and recorded in the
run directory (class_counts.json, "split").
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from longtail.data import InMemoryImages, build_dataset, dataset_options, dataset_splits, dataset_test_splits
from longtail.data.loading.device_decode import DeviceDecodedLoader
from longtail.data.datasets.imagefiles import BadImagesError, decode_images, scan_images
from longtail.data.splits.groups import groups_from_file, groups_from_pattern, hold_out_groups
from longtail.data.splits.imbalance import index_hash, make_longtail
from longtail.data.loading.loader import FileLoader, InMemoryLoader, _channel_statistics
from longtail.data.transforms.mixing import build_mixer
from longtail.data.transforms.preprocess import Preprocessing
from longtail.data.sampling.samplers import build_sampler
from longtail.data.seeds import derive_seed
from longtail.data.transforms.augment import (CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, BatchAugment,
                                             build_file_transforms)
from longtail.engine.config import ConfigError, RunConfig
from longtail.engine.methods import plan_for

# A separate stream of seeds for batch mixing, so mixing never shares random numbers with augmentation.
_MIXING_STREAM = 7
_TEST_STREAM = 1_000_033  # seed stream of a single folder's test split
LARGE_IMAGE_SIDE = 128  # median shorter side above which image files are trained ImageNet-style by default
IN_MEMORY_LIMIT = 2 << 30  # decoded bytes up to which image files are held in memory by default
STATISTICS_SAMPLE = 2000  # training images the mean / std of image files are computed from
DEFAULT_TEST_FRACTION = 0.2  # of each class, held out from a single folder as its test split
RESIZE_MODES = ("auto", "native", "resize", "imagenet")
_GREY_IMAGENET = ((0.449,), (0.226,))  # ImageNet's statistics averaged over channels, for grey images


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
    preprocessing: Preprocessing = None  # what every evaluation loader applies (preprocessing.json)
    fingerprint: dict = field(default_factory=dict)  # engine.fingerprint.data_fingerprint of the data used
    # Image folders: the class folder names in label order (``classes`` are their classes.tsv display
    # names); None for other datasets. Checkpoints keep both, so `eval --data-root` matches folders.
    folders: list = None


@dataclass
class _Sets:
    train: object
    test: object
    val: object = None
    split_info: dict = field(default_factory=dict)


def _say(context, message: str) -> None:
    if context.is_main:
        print(message, flush=True)


def _dataset_kwargs(config: RunConfig) -> dict:
    spec = config.data
    valid = dataset_options(spec.name)
    options = {}
    shaped = [key for key, given in (("data.n_max", spec.n_max is not None),
                                     ("data.class_order", spec.class_order != "index")) if given]
    if "imbalance_factor" in valid:
        if spec.imbalance_factor is not None:
            options["imbalance_factor"] = spec.imbalance_factor
        elif shaped and valid["imbalance_factor"] is None:
            keys = " and ".join(shaped)
            raise ConfigError(f"{keys} only {'shapes' if len(shaped) == 1 else 'shape'} a long-tailed split, and "
                              f"'{spec.name}' is made long-tailed only when data.imbalance_factor is set: set "
                              f"data.imbalance_factor (e.g. 100), or unset {keys}")
        options["profile"] = spec.profile
        options["seed"] = spec.split_seed
        options["class_order"] = spec.class_order
        if spec.n_max is not None:
            options["max_per_class"] = spec.n_max
    elif spec.imbalance_factor is not None or shaped:
        given = ["data.imbalance_factor"] * (spec.imbalance_factor is not None) + shaped
        raise ConfigError(
            f"{' and '.join(given)} set, but dataset '{spec.name}' takes no imbalance factor "
            f"(it is naturally long-tailed or balanced); its options: {', '.join(valid) or 'none'}")
    return options


def _longtail_options(options: dict) -> dict:
    """The make_longtail keyword arguments among a dataset's options (data.n_max -> max_per_class)."""
    return {"profile": options["profile"], "seed": options["seed"], "class_order": options["class_order"],
            "max_per_class": options.get("max_per_class")}


def _holdout(labels: torch.Tensor, per_class: torch.Tensor, seed: int, stream: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split positions into (kept, held out) with ``per_class[j]`` random images of class j held out."""
    num_classes = per_class.numel()
    counts = torch.bincount(labels, minlength=num_classes)
    generator = torch.Generator().manual_seed(derive_seed(seed, stream))
    order = torch.randperm(labels.numel(), generator=generator)
    # Stable sort by label keeps the random order inside each class; the first per_class[j] of each are held out.
    by_class = order[torch.argsort(labels[order], stable=True)]
    starts = torch.cumsum(counts, 0) - counts
    rank_in_class = torch.arange(labels.numel()) - starts.repeat_interleave(counts)
    held = rank_in_class < per_class.repeat_interleave(counts)
    return by_class[~held].sort().values, by_class[held].sort().values


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
    return _holdout(labels, torch.full((num_classes,), per_class), seed, 1_000_003)


def carve_test(labels: torch.Tensor, fraction: float, seed: int, classes: list) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) positions of a single-folder layout: round(fraction * N_j) test images of class j
    (at least one, and at least one left for training); seeded, per class."""
    counts = torch.bincount(labels, minlength=len(classes))
    too_small = [classes[j] for j in (counts < 2).nonzero().flatten().tolist()]
    if too_small:
        raise ConfigError(
            f"single-folder layout: class(es) {too_small[:10]} have fewer than 2 images, so none can be held out "
            f"for testing. Add images, or lay the data out as root/train/<class>/* and root/test/<class>/*")
    per_class = torch.round(counts.double() * fraction).long().clamp(min=1)
    per_class = torch.minimum(per_class, counts - 1)
    return _holdout(labels, per_class, seed, _TEST_STREAM)


def _rank_share(size: int, rank: int, world_size: int) -> list:
    """Strided evaluation shard; the metrics' all-reduce sums the shards back into the full set."""
    return list(range(rank, size, world_size))


def _per_rank_batch(config: RunConfig, world_size: int) -> int:
    batch = config.data.batch_size
    if batch % world_size:
        raise ConfigError(f"data.batch_size={batch} must be divisible by the number of processes ({world_size})")
    return batch // world_size


def _check_data_options(config: RunConfig) -> None:
    spec = config.data
    choices = {"resize": RESIZE_MODES, "check_images": ("header", "decode"), "bad_images": ("error", "skip")}
    for key, valid in choices.items():
        if getattr(spec, key) not in valid:
            raise ConfigError(f"data.{key}={getattr(spec, key)!r} is not valid; choose one of: {' | '.join(valid)}")
    if spec.test_fraction is not None and not 0.0 < spec.test_fraction < 1.0:
        raise ConfigError(f"data.test_fraction={spec.test_fraction} must be in (0, 1), e.g. 0.2")
    if spec.test_fraction is not None and not _single_folder(config):
        raise ConfigError(f"data.test_fraction={spec.test_fraction} holds out a test split from a single folder "
                          f"root/<class>/*; '{spec.name}' at {spec.root} has its own test split. Unset it")
    if spec.image_size is not None and spec.image_size < 1:
        raise ConfigError(f"data.image_size={spec.image_size} must be a positive number of pixels (or null for native)")
    if spec.channels is not None and spec.channels not in (1, 3):
        raise ConfigError(f"data.channels={spec.channels} must be 1 or 3 (or null: as the images are)")
    if spec.randaugment and spec.autoaugment:
        raise ConfigError("data.randaugment and data.autoaugment are both set; choose at most one")
    if spec.crop_padding < 0 or spec.cutout < 0:
        raise ConfigError("data.crop_padding and data.cutout must be >= 0")


def build_data(config: RunConfig, device: torch.device, context) -> DataBundle:
    spec = config.data
    _check_data_options(config)
    sets = _build_sets(config, context)
    fingerprint = _fingerprint(sets, spec.root, spec.fingerprint)  # before files are decoded: file rows keep their paths
    folders = getattr(sets.train, "folders", None)  # decoding into memory keeps the display names only
    preprocessing = None
    if not isinstance(sets.train, InMemoryImages):
        sets, preprocessing = _prepare_files(config, sets, context)
    elif spec.check_images != "header" or spec.bad_images != "error":
        raise ConfigError(f"data.check_images / data.bad_images apply to image files; '{spec.name}' is held in "
                          f"memory as arrays (already validated when loaded). Unset them")
    elif spec.resize == "imagenet" or (spec.resize == "native" and spec.image_size) or spec.in_memory is False:
        raise ConfigError(f"dataset '{spec.name}' is held in memory as arrays: data.resize={spec.resize} / "
                          f"data.in_memory=false apply to image files only (arrays train at their native size, "
                          f"or at data.image_size)")
    train_set = sets.train
    in_memory = isinstance(train_set, InMemoryImages)
    labels = torch.as_tensor(train_set.labels)
    num_classes = len(train_set.classes)
    if num_classes < 2:  # one class: every prediction right, 100 % accuracy that means nothing
        raise ConfigError(f"dataset '{spec.name}' has {num_classes} class{'' if num_classes == 1 else 'es'} "
                          f"({', '.join(map(str, train_set.classes))}); a classifier needs at least 2. An image "
                          f"folder needs one sub-folder per class: root/<class>/<images> (or root/train/<class>/...)")
    class_counts = torch.bincount(labels, minlength=num_classes)
    empty = (class_counts == 0).nonzero().flatten()
    if empty.numel():
        raise ConfigError(
            f"dataset '{spec.name}' has {empty.numel()} class(es) with no training images (first: class "
            f"{int(empty[0])} '{train_set.classes[int(empty[0])]}'); every class needs at least one")
    sampler_options = {"q": spec.sampler_q} if spec.sampler_q is not None else {}
    method = plan_for(config).loss
    sampler = method.sampler(config, labels, num_classes, context.world_size, context.rank)
    if sampler is None:
        sampler = build_sampler(spec.sampler, labels, num_replicas=context.world_size, rank=context.rank,
                                seed=config.train.seed, total_epochs=config.optim.epochs, **sampler_options)
    batch = _per_rank_batch(config, context.world_size)
    build_loaders = _in_memory if in_memory else _from_files
    train_loader, eval_loaders, preprocessing = build_loaders(config, sets, sampler, batch, device, context,
                                                              preprocessing)
    _check_augment_fits(spec, preprocessing.size)
    train_loader = method.train_loader(config, train_loader, sets.train, sampler, batch, device, context.rank,
                                       class_counts.tolist(), preprocessing)
    if config.train.select_on != "final" and "val" not in eval_loaders:
        raise ConfigError(f"train.select_on={config.train.select_on} selects on the validation split, and "
                          f"'{spec.name}' has none here; set data.validation_per_class (e.g. 20) to hold out "
                          f"training images for it")
    return DataBundle(train_loader, len(train_loader), eval_loaders, class_counts.tolist(), list(train_set.classes),
                      preprocessing.channels, sets.split_info, mix=_mixing(config, num_classes),
                      preprocessing=preprocessing, fingerprint=fingerprint,
                      folders=None if folders is None else list(folders))


def _check_augment_fits(spec, size) -> None:
    """Refuse a crop padding or Cutout square as large as the model input: every training image
    (or most of them) would come out blank, and the run would train at chance without a word."""
    side = min(size)
    for key in ("crop_padding", "cutout"):
        value = getattr(spec, key)
        if value >= side:
            raise ConfigError(f"data.{key}={value} is at or above the image side ({size[0]}x{size[1]} px model "
                              f"input): training images would come out blank. Use less than {side} (e.g. "
                              f"{max(1, side // 8)}), or 0 for none")


def data_fingerprint_of(config: RunConfig) -> dict:
    """The fingerprint build_data would give, without decoding images or building loaders (compare
    checks every cell's data with it before the first cell trains)."""
    from longtail.engine.runtime.distributed import DistributedContext

    _check_data_options(config)
    return _fingerprint(_build_sets(config, DistributedContext()), config.data.root, config.data.fingerprint)


def _fingerprint(sets, root, mode: str = "auto") -> dict:
    """The data fingerprint (engine.fingerprint) of the train / val / test sets as split."""
    from longtail.engine.rundir.fingerprint import data_fingerprint

    return data_fingerprint(_named_sets(sets), sets.split_info, root=root, mode=mode)


# ----------------------------------------------------------------------------- datasets and splits


def _single_folder(config: RunConfig) -> bool:
    """An image folder laid out as root/<class>/* (no train/ split folder)."""
    spec = config.data
    return spec.name == "imagefolder" and spec.root is not None and Path(spec.root).is_dir() \
        and not (Path(spec.root) / "train").is_dir()


def _build_sets(config: RunConfig, context) -> _Sets:
    spec = config.data
    options = _dataset_kwargs(config)
    split_info: dict = {"dataset": spec.name}
    val_set = None
    grouped = bool(spec.validation_per_class) and _group_source(spec) is not None
    if grouped and not (spec.name == "imagefolder" or "list_file" in dataset_options(spec.name)):
        raise ConfigError(f"data.validation_group_pattern / data.validation_group_file group image files by name; "
                          f"'{spec.name}' is held as arrays without file names. Unset them (data.validation_per_class "
                          f"then holds out single images)")
    if _single_folder(config):
        everything = build_dataset(spec.name, "all", root=spec.root)
        fraction = DEFAULT_TEST_FRACTION if spec.test_fraction is None else spec.test_fraction
        train_positions, test_positions = carve_test(everything.labels, fraction, spec.split_seed,
                                                     everything.classes)
        train_set, test_set = everything.subset(train_positions), everything.subset(test_positions)
        test_set.name = f"{everything.name}-test"
        split_info["layout"] = {
            "kind": "single folder root/<class>/*", "test_fraction": fraction, "seed": spec.split_seed,
            "test_per_class": torch.bincount(test_set.labels, minlength=len(everything.classes)).tolist(),
            "test_index_hash": index_hash(test_positions.numpy())}
        _say(context, f"data: {spec.root} has no train/ folder: holding out {fraction:g} of each class "
                      f"as the test split ({len(test_set)} images, seed {spec.split_seed}; data.test_fraction / "
                      f"data.split_seed)")
        longtail_later = spec.imbalance_factor is not None
    else:
        # Grouped validation is carved from the full training split, before the long-tail generator: a
        # tail class of 10 images cannot give up a whole 30-frame track and keep one.
        longtail_later = grouped and options.get("imbalance_factor") is not None
        train_options = {**options, "imbalance_factor": None} if longtail_later else options
        train_set = build_dataset(spec.name, "train", root=spec.root, **train_options)
        test_set = build_dataset(spec.name, "test", root=spec.root, **options)
        val_set = _own_validation_set(config)
    if spec.validation_per_class and val_set is not None:
        raise ConfigError(f"data.validation_per_class={spec.validation_per_class}: '{spec.name}' has its own "
                          f"validation split here (val/ or a val list), which selection already uses; unset it")
    if grouped:
        train_set, val_set = _grouped_validation(config, train_set, longtail_later, split_info, context)
    if longtail_later:
        lt = make_longtail(train_set.labels, spec.imbalance_factor, num_classes=len(train_set.classes),
                           class_names=train_set.classes, **_longtail_options(options))
        train_set = train_set.subset(lt.indices, longtail_split=lt)
    if getattr(train_set, "longtail_split", None) is not None:
        split_info["longtail"] = train_set.longtail_split.to_dict()
        split_info["longtail"].pop("indices", None)
    if spec.validation_per_class and not grouped:
        labels = torch.as_tensor(train_set.labels)
        train_positions, validation_positions = carve_validation(labels, spec.validation_per_class, spec.split_seed)
        val_set = _subset(train_set, validation_positions, f"{train_set.name}-validation")
        train_set = _subset(train_set, train_positions, train_set.name, keep_longtail=True)
        split_info["validation_per_class"] = spec.validation_per_class
        # Recorded so the split can be rebuilt and audited: per class, seeded, carved from the training list.
        split_info["validation"] = {"from": "train", "per_class": spec.validation_per_class,
                                    "seed": spec.split_seed, "size": int(validation_positions.numel())}
    return _Sets(train_set, test_set, val_set, split_info)


def _group_source(spec) -> tuple[str, str] | None:
    """("pattern" | "file", value) of the validation groups, or None (single images are held out)."""
    if spec.validation_group_pattern is not None:
        return "pattern", spec.validation_group_pattern
    if spec.validation_group_file is not None:
        return "file", spec.validation_group_file
    return None


def image_names(dataset) -> list[str]:
    """What group patterns and group files name an image by: '<class folder>/<file>' relative to the class
    folders' parent for image folders ('/'-separated on every system), the listed path for list files."""
    if hasattr(dataset, "relative_paths"):
        return list(dataset.relative_paths)
    root = str(dataset.root)
    return [os.path.relpath(path, root).replace(os.sep, "/") for path in dataset.paths]


def _grouped_validation(config: RunConfig, train_set, before_longtail: bool, split_info: dict, context):
    """(train, validation) with at least data.validation_per_class images per class held out as whole groups."""
    spec = config.data
    kind, source = _group_source(spec)
    names = image_names(train_set)
    groups = groups_from_pattern(names, source) if kind == "pattern" else groups_from_file(names, source)
    holdout = hold_out_groups(train_set.labels, groups, spec.validation_per_class, spec.split_seed,
                              scope=spec.validation_group_scope, class_names=train_set.classes,
                              num_classes=len(train_set.classes))
    val_set = _subset(train_set, holdout.held_out, f"{train_set.name}-validation")
    kept = _subset(train_set, holdout.train, train_set.name, keep_longtail=True)
    where = "full train, before the long-tail generator" if before_longtail else "train"
    split_info["validation_per_class"] = spec.validation_per_class
    # Recorded so the split can be rebuilt and audited: whole groups, seeded, and from which training split.
    split_info["validation"] = {"from": where, f"group_{kind}": source, **holdout.to_dict()}
    _say(context, f"data: validation split of {holdout.held_out.size} images in {holdout.groups_held_out} whole "
                  f"groups of {holdout.groups_total} (at least {spec.validation_per_class} per class, groups by "
                  f"{kind} {source!r}), carved from the {where}")
    return kept, val_set


def _subset(dataset, positions, name: str, keep_longtail: bool = False):
    split = getattr(dataset, "longtail_split", None) if keep_longtail else None
    if isinstance(dataset, InMemoryImages):
        return dataset.subset(positions, name=name, longtail_split=split)
    subset = dataset.subset(positions, longtail_split=split)
    subset.name = name
    return subset


def _own_validation_set(config: RunConfig):
    """The dataset's own validation split (ImageNet-LT / Places-LT lists, an image folder's val/), or
    None when it has none. Optional unless train.select_on needs it: a missing one is then an error."""
    spec = config.data
    if "val" not in dataset_splits(spec.name) or "val" in dataset_test_splits(spec.name):
        return None  # none, or it is the test set (iNaturalist 2018): never a validation split
    try:
        return build_dataset(spec.name, "val", root=spec.root, **_dataset_kwargs(config))
    except FileNotFoundError:
        if config.train.select_on != "final" and not spec.validation_per_class:
            raise  # selection needs a validation split, and none will be carved from train
        return None


# ----------------------------------------------------------------------------- image files


def _named_sets(sets: _Sets) -> dict:
    return {name: data for name, data in (("train", sets.train), ("val", sets.val), ("test", sets.test))
            if data is not None}


def _prepare_files(config: RunConfig, sets: _Sets, context) -> tuple[_Sets, Preprocessing]:
    """Scan the files, drop or refuse bad ones, choose geometry and pipeline; decode into memory if chosen."""
    spec = config.data
    named = _named_sets(sets)
    threads = max(1, min(spec.workers, os.cpu_count() or 1))
    scans = {}
    problems = []
    for name, data in named.items():
        scans[name] = scan_images(data.paths, decode=spec.check_images == "decode", threads=threads)
        problems += scans[name].problems
    if problems and spec.bad_images == "error":
        raise BadImagesError(problems, "Remove or replace these files, or set data.bad_images=skip to train "
                                       "without them (the skipped files are then recorded in the run directory). "
                                       "data.check_images=decode also decodes every file fully.")
    if problems:
        _say(context, f"data: skipping {len(problems)} unreadable image file(s) (data.bad_images=skip); "
                      f"they are listed in class_counts.json")
        sets.split_info["skipped_images"] = [{"path": path, "reason": reason} for path, reason in problems]
        for name, data in list(named.items()):
            good = scans[name].good_positions
            if len(good) != len(data):
                kept = data.subset(good, longtail_split=data.longtail_split)
                kept.name = data.name
                named[name], scans[name] = kept, scans[name].select(good)
        sets = _Sets(named["train"], named["test"], named.get("val"), sets.split_info)
        for name, data in named.items():
            counts = torch.bincount(torch.as_tensor(data.labels), minlength=len(data.classes))
            if (name == "train" and bool((counts == 0).any())) or len(data) == 0:
                empty = [data.classes[j] for j in (counts == 0).nonzero().flatten().tolist()]
                raise ConfigError(f"after skipping the unreadable files, the {name} split has no images of "
                                  f"class(es) {empty[:10]}; training needs at least one per class. Replace the files")
    all_sizes = [size for scan in scans.values() for size in scan.sizes if size is not None]
    grey = all(scan.all_grey for scan in scans.values())
    train_sizes = [size for size in scans["train"].sizes if size is not None]
    policy, size = _choose_geometry(config, train_sizes, all_sizes, context)
    color = "L" if grey else "RGB"
    if spec.channels == 1 and not grey:
        raise ConfigError("data.channels=1: these images are in colour; data.channels only repeats grey images "
                          "(to 3 for RGB backbones). Unset it to train on the colour images")
    decoded_bytes = sum(len(data) for data in named.values()) * (1 if grey else 3) * size[0] * size[1]
    in_memory = spec.in_memory
    if in_memory is None:
        in_memory = policy != "imagenet" and decoded_bytes <= _memory_limit()
    elif in_memory and policy == "imagenet":
        raise ConfigError("data.in_memory=true keeps images at the model's input size, but ImageNet-style training "
                          "(data.resize=imagenet, or large images) crops from the full image. Set "
                          "data.resize=resize to resize once and train in memory, or data.in_memory=false")
    geometry = {"native": "none", "resize": "resize", "imagenet": "resize_center_crop"}[policy]
    if spec.normalization != "dataset" and grey:
        raise ConfigError(f"data.normalization={spec.normalization} needs colour images; these are grey")
    if spec.normalization == "clip":
        mean, std = CLIP_MEAN, CLIP_STD
        preprocessing = Preprocessing(size=size, mean=mean, std=std, resize=geometry, color=color,
                                      channels=spec.channels)
    elif policy == "imagenet" or spec.normalization == "imagenet":
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if not grey else _GREY_IMAGENET
        preprocessing = Preprocessing(size=size, mean=mean, std=std, resize=geometry, color=color,
                                      channels=spec.channels)
    else:
        unnormalised = Preprocessing(size=size, mean=(0.0,) * (1 if grey else 3), std=(1.0,) * (1 if grey else 3),
                                     resize=geometry, color=color)
        mean, std = _file_statistics(sets.train, unnormalised, spec.split_seed, threads)
        preprocessing = Preprocessing(size=size, mean=mean, std=std, resize=geometry, color=color,
                                      channels=spec.channels)
    sets.split_info["images"] = {
        "pipeline": "in-memory" if in_memory else "files", "resize": policy, "size": list(size), "color": color,
        "sizes_found": {f"{h}x{w}": n for (h, w), n in _size_counts(all_sizes).most_common(5)},
        "check": spec.check_images}
    if in_memory:
        _say(context, f"data: decoding {sum(len(d) for d in named.values())} images into memory "
                      f"({decoded_bytes / 2**20:.0f} MiB at {size[0]}x{size[1]}; data.in_memory=false reads them "
                      f"per batch instead)")
        decoded = {name: _decode(data, preprocessing, threads) for name, data in _named_sets(sets).items()}
        sets = _Sets(decoded["train"], decoded["test"], decoded.get("val"), sets.split_info)
    return sets, preprocessing


def _size_counts(sizes):
    from collections import Counter

    return Counter(sizes)


def _memory_limit() -> int:
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return IN_MEMORY_LIMIT
    return min(IN_MEMORY_LIMIT, physical // 4)


def _choose_geometry(config: RunConfig, train_sizes: list, all_sizes: list, context) -> tuple[str, tuple[int, int]]:
    """(native | resize | imagenet, (H, W) of the model input) from data.resize / data.image_size and the
    sizes found. The choices look at the training images only; evaluation images only have to fit them."""
    spec = config.data
    counts = _size_counts(all_sizes)
    train_counts = _size_counts(train_sizes)
    # The most common training size; ties go to the larger image (less information thrown away).
    common = max(train_counts.items(), key=lambda item: (item[1], item[0][0] * item[0][1]))[0]
    requested = (spec.image_size, spec.image_size) if spec.image_size else None
    mode = spec.resize
    median_side = statistics.median(min(size) for size in train_sizes)
    if mode == "auto":
        if spec.image_size:
            mode = "imagenet" if spec.image_size > 64 else "resize"
        elif median_side > LARGE_IMAGE_SIDE:
            mode = "imagenet"
            _say(context, f"data: images are large (median shorter side {median_side:g} px > {LARGE_IMAGE_SIDE}): "
                          f"training ImageNet-style at 224 (RandomResizedCrop; resize + centre crop for evaluation). "
                          f"Set data.image_size / data.resize=native|resize to choose otherwise")
        elif len(counts) == 1:
            mode = "native"
        else:
            mode = "resize"
            shown = ", ".join(f"{h}x{w} ({n})" for (h, w), n in counts.most_common(4))
            _say(context, f"data: the images have {len(counts)} different sizes ({shown}{', ...' if len(counts) > 4 else ''}); "
                          f"all are resized to {common[0]}x{common[1]}, the most common training size "
                          f"(data.image_size to choose)")
    if mode == "native":
        if len(counts) > 1:
            shown = ", ".join(f"{h}x{w} ({n} images)" for (h, w), n in counts.most_common(5))
            raise ConfigError(f"data.resize=native but the images have {len(counts)} different sizes: {shown}. "
                              f"Set data.resize=resize (to data.image_size or the most common size) or resize the files")
        if requested and requested != common:
            raise ConfigError(f"data.resize=native keeps the images' {common[0]}x{common[1]} size, but "
                              f"data.image_size={spec.image_size}; set data.resize=resize or unset data.image_size")
        return "native", common
    if mode == "resize":
        return "resize", requested or common
    return "imagenet", requested or (224, 224)


def _file_statistics(train_set, unnormalised: Preprocessing, seed: int, threads: int):
    """Per-channel mean / std of up to STATISTICS_SAMPLE training images (seeded choice), at the model size.

    The same sample is used whether the images are then held in memory or read per batch, so both
    pipelines normalise identically."""
    generator = torch.Generator().manual_seed(derive_seed(seed, 1_000_037))
    chosen = torch.randperm(len(train_set), generator=generator)[:STATISTICS_SAMPLE].sort().values.tolist()
    images = decode_images([train_set.paths[i] for i in chosen], unnormalised, threads)
    mean, std = _channel_statistics(images)
    return tuple(mean.tolist()), tuple(std.clamp(min=1e-3).tolist())


def _decode(dataset, preprocessing: Preprocessing, threads: int) -> InMemoryImages:
    images = decode_images(dataset.paths, preprocessing, threads)
    return InMemoryImages(images, torch.as_tensor(dataset.labels), list(dataset.classes), preprocessing.mean,
                          preprocessing.std, name=dataset.name, longtail_split=getattr(dataset, "longtail_split", None))


# ----------------------------------------------------------------------------- loaders


def _in_memory(config, sets: _Sets, sampler, batch, device, context, preprocessing):
    spec = config.data
    train_set = sets.train
    if preprocessing is None:  # arrays (CIFAR, MNIST-type): native size unless data.image_size asks
        channels = train_set.images.shape[1]
        if spec.channels == 1 and channels != 1:
            raise ConfigError(f"data.channels=1: '{spec.name}' has {channels}-channel images; data.channels only "
                              f"repeats single-channel images (to 3 for RGB backbones)")
        mean, std = train_set.mean, train_set.std
        if spec.normalization != "dataset":
            if channels != 3:
                raise ConfigError(f"data.normalization={spec.normalization} needs RGB images; '{spec.name}' has "
                                  f"{channels} channel(s)")
            mean, std = (CLIP_MEAN, CLIP_STD) if spec.normalization == "clip" else (IMAGENET_MEAN, IMAGENET_STD)
        preprocessing = Preprocessing(
            size=(spec.image_size, spec.image_size) if spec.image_size else tuple(train_set.images.shape[-2:]),
            mean=mean, std=std, resize="resize" if spec.image_size else "none",
            color="L" if channels == 1 else "RGB", channels=spec.channels)
    common = dict(device=device, channels_last=config.model.channels_last, preprocessing=preprocessing)
    policy = "randaugment" if spec.randaugment else "autoaugment" if spec.autoaugment else "none"
    try:
        augment = BatchAugment(crop_padding=spec.crop_padding, flip=spec.flip, cutout_size=spec.cutout, policy=policy,
                               crop_scale_min=spec.crop_scale_min)
    except ValueError as error:
        raise ConfigError(f"data: {error}") from None
    # One sample left over would make a batch-norm batch of size 1, which cannot train: drop it then.
    drop_last = len(sampler) % batch == 1
    train_loader = InMemoryLoader(train_set, batch_size=batch, sampler=sampler, augment=augment, drop_last=drop_last,
                                  seed=config.train.seed, **common)

    def evaluation(dataset):
        return InMemoryLoader(dataset, batch_size=spec.eval_batch_size,
                              sampler=_rank_share(len(dataset), context.rank, context.world_size), **common)

    eval_loaders = {"test": evaluation(sets.test), "train": evaluation(train_set)}
    if sets.val is not None:
        eval_loaders["val"] = evaluation(sets.val)
    return train_loader, eval_loaders, preprocessing


def _with_transform(dataset, transform):
    copy = dataset.subset(range(len(dataset)), longtail_split=getattr(dataset, "longtail_split", None))
    copy.name, copy.transform = dataset.name, transform
    return copy


def _from_files(config, sets: _Sets, sampler, batch, device, context, preprocessing):
    spec = config.data
    if spec.crop_scale_min is not None and preprocessing.resize != "resize_center_crop":
        raise ConfigError("data.crop_scale_min sets the RandomResizedCrop of ImageNet-style image files "
                          "(data.resize=imagenet or large images); these use the padded crop (data.crop_padding)")
    scale = {} if spec.crop_scale_min is None else {"min_scale": spec.crop_scale_min}
    train_transform = build_file_transforms(preprocessing, train=True, crop_padding=spec.crop_padding, flip=spec.flip,
                                            cutout=spec.cutout, randaugment=spec.randaugment,
                                            autoaugment=spec.autoaugment, **scale)
    drop_last = len(sampler) % batch == 1
    # On a GPU the files are decoded (nvJPEG) and transformed there, with the same per-sample seeds.
    loader_class = DeviceDecodedLoader if device.type == "cuda" else FileLoader
    train_loader = loader_class(_with_transform(sets.train, train_transform), batch, sampler, device,
                                config.model.channels_last, spec.workers, drop_last, seed=config.train.seed,
                                augment=True)

    def evaluation(dataset):
        share = _rank_share(len(dataset), context.rank, context.world_size)
        return loader_class(_with_transform(dataset, preprocessing), spec.eval_batch_size, share, device,
                            config.model.channels_last, spec.workers, False)

    eval_loaders = {"test": evaluation(sets.test)}
    if sets.val is not None:
        eval_loaders["val"] = evaluation(sets.val)
    # Always built (it reads nothing until iterated): the final evaluation uses it only with
    # train.eval_train, the feature cache and class-mean initialisation read the training set through it.
    eval_loaders["train"] = evaluation(sets.train)
    return train_loader, eval_loaders, preprocessing


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
