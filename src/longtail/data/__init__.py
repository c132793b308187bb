"""Data for long-tailed recognition (methods.md sections 4 and 5).

Sub-packages, by concern (docs/architecture.md):

- ``datasets``: readers and the dataset registry (CIFAR pickles, idx files, the embedded
  Fashion-MNIST-LT, list files, image folders, the bad-image scan).
- ``splits``: long-tailed splits (the LDAM-DRW generator) and the imbalance report.
- ``transforms``: the evaluation ``Preprocessing``, batched and per-file augmentation, ConCutMix
  views, Mixup / CutMix / ConCutMix mixing.
- ``sampling``: class-aware samplers and ConCutMix's pair sampler.
- ``loading``: in-memory and per-file loaders (and the GPU-decoding one), the pair loader.
- ``seeds``: the seed derivation every random stream uses.

Datasets half (this file's exports): long-tailed splits with the LDAM-DRW generator
(``longtail_counts``, ``make_longtail`` -> ``LongTailSplit``), in-memory image sets
(``InMemoryImages``: CIFAR, MNIST-type, the embedded ``fashion-mnist-lt``), file datasets
(``ListFileDataset`` for ImageNet-LT / Places-LT / iNaturalist lists, ``ImageFolderDataset`` with
display names from ``classes.tsv``), validation hold-outs that keep groups whole (``hold_out_groups``),
``analyze`` for any labelled set, and the registry ``available_datasets`` / ``build_dataset``.

Batch half: DDP-correct samplers (``build_sampler``), the in-memory batched pipeline
(``InMemoryLoader`` with ``BatchAugment``), per-image file pipelines (``FileLoader`` with
``build_file_transforms``), batch mixers (``Mixup``, ``CutMix``, ``build_mixer``), the evaluation
``Preprocessing`` every pipeline shares, and ``scan_images`` (bad files before training).
"""

from .datasets.builtin import BuiltinDataError, load_builtin
from .datasets.classnames import ClassNamesError, read_class_names
from .datasets.cifar import SafeUnpickler, UnsafePickleError, load_cifar, safe_load_pickle
from .datasets.idx import IdxFormatError, read_idx, read_idx_pair
from .datasets.imagefiles import BadImagesError, scan_images
from .datasets.imagefolder import ImageFolderDataset
from .datasets.images import InMemoryImages
from .datasets.listfile import FileImageDataset, ListFileDataset, ListFileError, read_list_file
from .datasets.registry import (available_datasets, build_dataset, dataset_options, dataset_splits,
                                dataset_test_splits)
from .loading.loader import FileLoader, InMemoryLoader
from .sampling.samplers import ClassPowerSampler, ProgressiveSampler, available_samplers, build_sampler
from .splits.analyze import DatasetReport, analyze, gini_coefficient
from .splits.groups import GroupError, GroupHoldout, groups_from_file, groups_from_pattern, hold_out_groups
from .splits.imbalance import LongTailSplit, index_hash, longtail_counts, make_longtail
from .transforms.augment import BatchAugment, build_file_transforms
from .transforms.mixing import CutMix, Mixup, available_mixers, build_mixer, cutmix_box, paste_box
from .transforms.preprocess import Preprocessing

__all__ = [
    "BatchAugment",
    "ClassPowerSampler",
    "CutMix",
    "BadImagesError",
    "FileLoader",
    "InMemoryLoader",
    "scan_images",
    "Mixup",
    "Preprocessing",
    "ProgressiveSampler",
    "available_mixers",
    "available_samplers",
    "build_file_transforms",
    "build_mixer",
    "build_sampler",
    "cutmix_box",
    "paste_box",
    "BuiltinDataError",
    "ClassNamesError",
    "GroupError",
    "GroupHoldout",
    "groups_from_file",
    "groups_from_pattern",
    "hold_out_groups",
    "read_class_names",
    "DatasetReport",
    "FileImageDataset",
    "IdxFormatError",
    "ImageFolderDataset",
    "InMemoryImages",
    "ListFileDataset",
    "ListFileError",
    "LongTailSplit",
    "SafeUnpickler",
    "UnsafePickleError",
    "analyze",
    "available_datasets",
    "build_dataset",
    "dataset_options",
    "dataset_splits",
    "dataset_test_splits",
    "gini_coefficient",
    "index_hash",
    "load_builtin",
    "load_cifar",
    "longtail_counts",
    "make_longtail",
    "read_idx",
    "read_idx_pair",
    "read_list_file",
    "safe_load_pickle",
]
