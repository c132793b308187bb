"""Dataset registry: ``available_datasets()`` and ``build_dataset(name, split, root=None, **options)``.

A plain dict of name -> entry (docs/architecture.md "Registries"). In-memory datasets (MNIST-type,
CIFAR and their LT versions, the embedded default) come back as ``InMemoryImages``; file datasets
(ImageNet-LT, Places-LT, iNaturalist 2018, image folders) as a torch ``Dataset`` with ``labels``.
LT versions apply ``make_longtail`` (methods.md section 5) to the training split only; test sets
stay balanced. Unknown names, splits or options raise ``ValueError`` listing the valid ones;
missing data raises ``FileNotFoundError`` saying what to download and which option to set.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from longtail.data.datasets import builtin
from longtail.data.datasets.cifar import load_cifar
from longtail.data.datasets.idx import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    MNIST_CLASSES,
    MNIST_MEAN,
    MNIST_STD,
    load_idx_dataset,
)
from longtail.data.datasets.classnames import CLASS_NAMES_FILE
from longtail.data.datasets.imagefolder import ImageFolderDataset
from longtail.data.datasets.images import InMemoryImages
from longtail.data.splits.imbalance import check_class_order, longtail_counts, make_longtail
from longtail.data.datasets.listfile import ListFileDataset

_LT_OPTIONS = {"imbalance_factor": 100, "profile": "exp", "seed": 0, "max_per_class": None, "class_order": "index"}

# sha256 of the published classifier-balancing lists we could verify (shared/data/SHA256SUMS);
# a list with a known name but other bytes is not the split the literature reports on.
KNOWN_LIST_SHA256 = {
    "ImageNet_LT_val.txt": "9af7ba688acf9532ff5845a8fb14a1e97fdc4c51ac48bc72c08ea9c3f7ff142e",
    "ImageNet_LT_test.txt": "d1590191cf8a71fada7b1aaedaa2d139a2aea93ff2f1b755319d0bd8dbaa55d5",
    "Places_LT_train.txt": "726c4871dcbf07ce2f857703bfe32e9a83ffbf52d704239f6d95c4f4f4c247f7",
    "Places_LT_val.txt": "719e3cf3766c09134ea28f56f1036c78def511ac1ed2c2532a6beef78f2439ba",
    "Places_LT_test.txt": "44eee8441c8098c59195465abede425721bc35525d75209f9433b161a6eb37bc",
    "iNaturalist18_val.txt": "efaeff65f80641b60864470e6f255aa69453406ef5717eec8c6681748f3a61f3",
}


@dataclass(frozen=True)
class DatasetEntry:
    builder: Callable[..., Any]
    splits: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)  # name -> default
    description: str = ""
    # Splits that read the test data (iNaturalist 2018's "val" is its test set): never for selection.
    same_as_test: tuple[str, ...] = ()


# ---------------------------------------------------------------- MNIST-type (idx files)

_IDX = {
    "fashion-mnist": {
        "classes": FASHION_MNIST_CLASSES, "mean": FASHION_MNIST_MEAN, "std": FASHION_MNIST_STD,
        "torchvision": "FashionMNIST", "default_roots": ("/usr/share/datasets/fashion-mnist",),
        "get": "install the Debian package dataset-fashion-mnist, or download the four idx .gz files from "
               "https://github.com/zalandoresearch/fashion-mnist (torchvision.datasets.FashionMNIST(root, download=True) "
               "also works)",
    },
    "mnist": {
        "classes": MNIST_CLASSES, "mean": MNIST_MEAN, "std": MNIST_STD,
        "torchvision": "MNIST", "default_roots": ("/usr/share/datasets/mnist",),
        "get": "download the four idx .gz files (torchvision.datasets.MNIST(root, download=True) does it)",
    },
}


def _idx_root(kind: str, root: Any) -> Path:
    if root is not None:
        return Path(root)
    for candidate in _IDX[kind]["default_roots"]:
        if Path(candidate).is_dir():
            return Path(candidate)
    raise FileNotFoundError(
        f"{kind}: no root= given and none of the default locations {list(_IDX[kind]['default_roots'])} exists. "
        f"Pass root= the folder with the idx files; to get them, {_IDX[kind]['get']}."
    )


def _load_idx(kind: str, split: str, root: Any) -> InMemoryImages:
    info = _IDX[kind]
    return load_idx_dataset(
        _idx_root(kind, root), split, info["classes"], info["mean"], info["std"], kind, info["torchvision"]
    )


def _check_lt_options(imbalance_factor: Any, profile: Any, seed: Any, class_order: Any = "index") -> None:
    """Reject bad LT options before any file is read (same messages as make_longtail)."""
    longtail_counts(2, 2, imbalance_factor, profile)
    check_class_order(class_order)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")


def _apply_longtail(
    data: InMemoryImages, name: str, imbalance_factor: Any, profile: str, seed: int, max_per_class: Any,
    class_order: str = "index",
) -> InMemoryImages:
    split = make_longtail(
        data.labels, imbalance_factor, profile=profile, seed=seed, num_classes=data.num_classes, max_per_class=max_per_class,
        class_order=class_order, class_names=data.classes,
    )
    return data.subset(split.indices, name=name, longtail_split=split)


def _build_idx(kind: str) -> Callable[..., InMemoryImages]:
    def build(split: str, root: Any) -> InMemoryImages:
        return _load_idx(kind, split, root)

    return build


def _build_idx_lt(kind: str) -> Callable[..., InMemoryImages]:
    def build(
        split: str, root: Any, imbalance_factor: Any, profile: str, seed: int, max_per_class: Any, class_order: str
    ) -> InMemoryImages:
        _check_lt_options(imbalance_factor, profile, seed, class_order)
        # Only the exact embedded configuration may skip the idx files (IF given as 100 or 100.0 alike).
        is_default = (imbalance_factor in (100, 100.0), profile, seed, max_per_class, class_order) == (
            True, "exp", 0, None, "index")
        if kind == "fashion-mnist" and root is None and is_default:
            return builtin.load_builtin(split)  # the embedded copy: no download
        if kind == "fashion-mnist" and root is None:
            try:
                source_root = _idx_root(kind, None)
            except FileNotFoundError as error:
                raise FileNotFoundError(
                    f"the embedded fashion-mnist-lt is only IF 100 / exp / seed 0; other options need the full "
                    f"Fashion-MNIST: {error}"
                ) from None
        else:
            source_root = _idx_root(kind, root)
        data = _load_idx(kind, split, source_root)
        if split != "train":
            return data  # test sets stay balanced (methods.md section 5)
        if max_per_class is None and kind == "mnist":
            # MNIST's classes hold 5421..6742 images, so LDAM's n_max = 60000 / 10 would ask some
            # classes for more than they have (the original silently takes fewer). Use the smallest
            # class instead, so every class gets exactly its n_i.
            max_per_class = min(data.class_counts())
        return _apply_longtail(data, f"{kind}-lt-train", imbalance_factor, profile, seed, max_per_class, class_order)

    return build


# ---------------------------------------------------------------- CIFAR


def _build_cifar(kind: str, longtail: bool) -> Callable[..., InMemoryImages]:
    def build(split: str, root: Any, download: bool = False, **lt: Any) -> InMemoryImages:
        if longtail:
            _check_lt_options(lt["imbalance_factor"], lt["profile"], lt["seed"], lt["class_order"])
        data = load_cifar(root, kind, split, download=download)
        if not longtail or split != "train":
            return data
        return _apply_longtail(
            data, f"{kind}-lt-train", lt["imbalance_factor"], lt["profile"], lt["seed"], lt["max_per_class"],
            lt["class_order"],
        )

    return build


# ---------------------------------------------------------------- list files

_LISTS = {
    "imagenet-lt": ("ImageNet_LT_{split}.txt", 1000, {"train": "train", "val": "val", "test": "test"}),
    "places-lt": ("Places_LT_{split}.txt", 365, {"train": "train", "val": "val", "test": "test"}),
    # iNaturalist 2018 has no public test labels; its val set is the test set of every paper.
    "inat2018": ("iNaturalist18_{split}.txt", 8142, {"train": "train", "val": "val", "test": "val"}),
}


def _build_list(kind: str) -> Callable[..., ListFileDataset]:
    pattern, num_classes, split_files = _LISTS[kind]

    def build(split: str, root: Any, list_file: Any, list_dir: Any, transform: Any, check_files: bool) -> ListFileDataset:
        if root is None:
            raise ValueError(
                f"{kind} needs root= the image folder the list paths are relative to (the one containing "
                f"{'train/ and val/' if kind != 'inat2018' else 'train_val2018/'}); the images are not redistributable."
            )
        file_name = pattern.format(split=split_files[split])
        path = Path(list_file) if list_file is not None else Path(list_dir if list_dir is not None else root) / file_name
        if not path.is_file():
            raise FileNotFoundError(
                f"{kind} {split}: list file {path} not found. Get {file_name} from facebookresearch/classifier-balancing "
                f"(the lists every long-tail codebase uses) and pass list_dir= its folder or list_file= its path."
            )
        dataset = ListFileDataset(
            root, path, transform=transform, num_classes=num_classes, check_files=check_files, name=f"{kind}-{split}"
        )
        known = KNOWN_LIST_SHA256.get(path.name)
        if known is not None and dataset.list_sha256 != known:
            warnings.warn(
                f"{path} is not byte-identical to the published {path.name} (sha256 {dataset.list_sha256[:16]}..., "
                f"published {known[:16]}...); results on it are not comparable with the literature.",
                stacklevel=3,
            )
        return dataset

    return build


# ---------------------------------------------------------------- image folder


def _build_imagefolder(
    split: str, root: Any, transform: Any, extensions: Any, classes: Any, imbalance_factor: Any, profile: str, seed: int,
    max_per_class: Any, class_order: str, names_file: Any,
) -> ImageFolderDataset:
    if imbalance_factor is not None:
        _check_lt_options(imbalance_factor, profile, seed, class_order)
    if root is None:
        raise ValueError("imagefolder needs root= a folder laid out as root/<split>/<class>/<images> (or split='all')")
    root = Path(root)
    folder = root if split == "all" else root / split
    if not folder.is_dir():
        raise FileNotFoundError(
            f"imagefolder: {folder} does not exist. Lay data out as {root}/<train|val|test>/<class>/<images>, "
            f"or use split='all' for {root}/<class>/<images>."
        )
    options = {} if extensions is None else {"extensions": extensions}
    if isinstance(names_file, str) and names_file == "auto":
        # One classes.tsv for every split, next to train/ and test/ (or next to the class folders).
        names_file = root / CLASS_NAMES_FILE if (root / CLASS_NAMES_FILE).is_file() else None
    if classes is None and split not in ("train", "all") and (root / "train").is_dir():
        # Evaluation splits take the training class list, so label j means the same class even if
        # some class folder is missing from val/test.
        classes = ImageFolderDataset(root / "train", names_file=None, **options).folders
        # A class folder training does not have would silently leave every metric: refuse it.
        unknown = sorted(e.name for e in os.scandir(folder)
                         if e.is_dir() and not e.name.startswith(".") and e.name not in classes)
        if unknown:
            raise ValueError(
                f"imagefolder: {folder} has class folders that {root / 'train'} does not: {unknown[:20]}"
                f"{' ...' if len(unknown) > 20 else ''}. The model cannot predict them, so their images would be "
                f"left out of every metric; add them (with images) to {root / 'train'} or move them out of {folder}."
            )
    dataset = ImageFolderDataset(
        folder, transform=transform, classes=classes, name=f"{root.name}-{split}", names_file=names_file, **options
    )
    if imbalance_factor is None or split not in ("train", "all"):
        return dataset
    split_info = make_longtail(
        dataset.labels, imbalance_factor, profile=profile, seed=seed, num_classes=dataset.num_classes,
        max_per_class=max_per_class, class_order=class_order, class_names=dataset.classes,
    )
    return dataset.subset(split_info.indices, longtail_split=split_info)


# ---------------------------------------------------------------- the registry

_FILE_OPTIONS = {"list_file": None, "list_dir": None, "transform": None, "check_files": True}

_DATASETS: dict[str, DatasetEntry] = {
    "fashion-mnist-lt": DatasetEntry(
        _build_idx_lt("fashion-mnist"), ("train", "test"), dict(_LT_OPTIONS),
        "embedded Fashion-MNIST-LT (IF 100, exp, seed 0; 14,886 train / 10,000 test); other options or root= use the idx files",
    ),
    "fashion-mnist": DatasetEntry(_build_idx("fashion-mnist"), ("train", "test"), {}, "Fashion-MNIST idx files (60,000 / 10,000)"),
    "mnist": DatasetEntry(_build_idx("mnist"), ("train", "test"), {}, "MNIST idx files (60,000 / 10,000)"),
    "mnist-lt": DatasetEntry(
        _build_idx_lt("mnist"), ("train", "test"), dict(_LT_OPTIONS),
        "MNIST made long-tailed; n_max defaults to the smallest class (5421), MNIST being slightly unbalanced",
    ),
    "cifar10": DatasetEntry(_build_cifar("cifar10", False), ("train", "test"), {"download": False}, "CIFAR-10 python pickles"),
    "cifar100": DatasetEntry(_build_cifar("cifar100", False), ("train", "test"), {"download": False}, "CIFAR-100 python pickles"),
    "cifar10-lt": DatasetEntry(
        _build_cifar("cifar10", True), ("train", "test"), {"download": False, **_LT_OPTIONS}, "CIFAR-10-LT (LDAM-DRW generator)"
    ),
    "cifar100-lt": DatasetEntry(
        _build_cifar("cifar100", True), ("train", "test"), {"download": False, **_LT_OPTIONS}, "CIFAR-100-LT (LDAM-DRW generator)"
    ),
    "imagenet-lt": DatasetEntry(_build_list("imagenet-lt"), ("train", "val", "test"), dict(_FILE_OPTIONS), "ImageNet-LT list files, 1000 classes"),
    "places-lt": DatasetEntry(_build_list("places-lt"), ("train", "val", "test"), dict(_FILE_OPTIONS), "Places-LT list files, 365 classes"),
    "inat2018": DatasetEntry(
        _build_list("inat2018"), ("train", "val", "test"), dict(_FILE_OPTIONS),
        "iNaturalist 2018 list files, 8142 classes (test = val)", same_as_test=("val",),
    ),
    "imagefolder": DatasetEntry(
        _build_imagefolder,
        ("train", "val", "test", "all"),
        {"transform": None, "extensions": None, "classes": None, "imbalance_factor": None, "profile": "exp", "seed": 0,
         "max_per_class": None, "class_order": "index", "names_file": "auto"},
        "root/<split>/<class>/<images> (root/classes.tsv: display names); imbalance_factor= makes the training split "
        "long-tailed",
    ),
}


def available_datasets() -> list[str]:
    """Names accepted by ``build_dataset``."""
    return sorted(_DATASETS)


def dataset_splits(name: str) -> tuple[str, ...]:
    """The splits ``name`` has (``build_dataset(name, split)``)."""
    return tuple(_entry(name).splits)


def dataset_test_splits(name: str) -> tuple[str, ...]:
    """The splits of ``name`` that hold its test data: ``"test"`` and any split that reads the same
    files (iNaturalist 2018's ``"val"``). Checkpoint selection and tuning must use none of them."""
    return ("test",) + tuple(_entry(name).same_as_test)


def dataset_options(name: str) -> dict[str, Any]:
    """The options ``name`` accepts, with their defaults."""
    return dict(_entry(name).options)


def _entry(name: str) -> DatasetEntry:
    try:
        return _DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(available_datasets())}") from None


def build_dataset(name: str, split: str = "train", root: Any = None, **options: Any) -> Any:
    """Build dataset ``name``'s ``split``: ``InMemoryImages`` or a file ``Dataset`` with ``labels``.

    ``root``: where the data lives (not needed for the embedded ``fashion-mnist-lt``).
    ``options``: per dataset, see ``dataset_options(name)``; e.g. ``imbalance_factor``, ``profile``,
    ``seed`` for the ``-lt`` sets, ``download`` for CIFAR, ``list_file`` / ``list_dir`` /
    ``transform`` / ``check_files`` for list-file sets.
    """
    entry = _entry(name)
    if split not in entry.splits:
        raise ValueError(f"{name} has no split {split!r}; valid splits: {', '.join(entry.splits)}")
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        valid = ", ".join(f"{key}={value!r}" for key, value in entry.options.items()) or "none"
        raise ValueError(f"unknown option(s) {unknown} for dataset {name!r}; valid options (defaults): {valid}")
    return entry.builder(split=split, root=root, **{**entry.options, **options})
