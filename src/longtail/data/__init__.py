"""Data for long-tailed recognition (methods.md sections 4 and 5).

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

from .analyze import DatasetReport, analyze, gini_coefficient
from .builtin import BuiltinDataError, load_builtin
from .classnames import ClassNamesError, read_class_names
from .groups import GroupError, GroupHoldout, groups_from_file, groups_from_pattern, hold_out_groups
from .cifar import SafeUnpickler, UnsafePickleError, load_cifar, safe_load_pickle
from .idx import IdxFormatError, read_idx, read_idx_pair
from .imagefolder import ImageFolderDataset
from .images import InMemoryImages
from .imbalance import LongTailSplit, index_hash, longtail_counts, make_longtail
from .listfile import FileImageDataset, ListFileDataset, ListFileError, read_list_file
from .imagefiles import BadImagesError, scan_images
from .loader import FileLoader, InMemoryLoader
from .preprocess import Preprocessing
from .mixing import CutMix, Mixup, available_mixers, build_mixer, cutmix_box, paste_box
from .registry import available_datasets, build_dataset, dataset_options, dataset_splits, dataset_test_splits
from .samplers import ClassPowerSampler, ProgressiveSampler, available_samplers, build_sampler
from .transforms import BatchAugment, build_file_transforms

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
