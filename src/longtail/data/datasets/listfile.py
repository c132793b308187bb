"""List-file datasets: ImageNet-LT, Places-LT, iNaturalist 2018, or any ``path label`` list.

The contract is classifier-balancing's (Kang et al., facebookresearch/classifier-balancing,
``data/ClassAwareSampler`` / ``LT_Dataset``), which every long-tail codebase reuses byte for
byte: one image per line, ``relative/path label``, whitespace separated, path relative to an
image root. Parsing here accepts exactly the files that code accepts (``line.split()[0]``,
``int(line.split()[1])``), in the same order, and is stricter about everything it would
silently mis-read: every malformed line, out-of-range label, path escaping the root (``..``,
absolute) and missing image is collected and reported together with line numbers, so one run
shows every problem in a list instead of one per attempt.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

_MAX_REPORTED = 10  # problems quoted in an error message; the total is always given
_LABEL = re.compile(r"[0-9]+")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")


class ListFileError(ValueError):
    """A list file (or the image tree it points into) has problems; ``problems`` lists them all."""

    def __init__(self, message: str, problems: Sequence[str] = ()):
        super().__init__(message)
        self.problems = list(problems)


def _summarise(header: str, problems: Sequence[str], remedy: str) -> str:
    shown = "\n  ".join(problems[:_MAX_REPORTED])
    more = f"\n  ... and {len(problems) - _MAX_REPORTED} more" if len(problems) > _MAX_REPORTED else ""
    return f"{header} ({len(problems)} problem(s)):\n  {shown}{more}\n{remedy}"


def _unsafe_path_reason(path: str) -> str | None:
    """Why ``path`` could leave the image root (None if it cannot)."""
    if path.startswith(("/", "\\")) or PureWindowsPath(path).drive:
        return "absolute path"
    parts = PurePosixPath(path.replace("\\", "/")).parts
    if ".." in parts:
        return "'..' component"
    return None


def read_list_file(
    list_file: str | os.PathLike, num_classes: int | None = None
) -> tuple[list[str], np.ndarray]:
    """Parse a ``relative/path label`` list into (paths, int64 labels), in file order.

    Blank lines are skipped. Every other line must have exactly two whitespace-separated fields:
    a relative path without ``..`` components and a non-negative decimal label (< ``num_classes``
    when given). All problems are raised together in one ``ListFileError`` with line numbers.
    """
    list_file = Path(list_file)
    if not list_file.is_file():
        raise FileNotFoundError(
            f"list file {list_file} does not exist. The ImageNet-LT / Places-LT / iNaturalist lists come "
            f"from facebookresearch/classifier-balancing (download them with the images) ; pass list_file= its path."
        )
    try:
        text = list_file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ListFileError(f"{list_file}: not UTF-8 text ({error}); is this really a list file?") from error
    paths: list[str] = []
    labels: list[int] = []
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            problems.append(f"line {number}: expected 'path label', got {len(fields)} field(s): {line.strip()[:80]!r}")
            continue
        path, label_text = fields
        if not _LABEL.fullmatch(label_text):
            problems.append(f"line {number}: label {label_text!r} is not a non-negative integer")
            continue
        label = int(label_text)
        if num_classes is not None and label >= num_classes:
            problems.append(f"line {number}: label {label} out of range (valid 0..{num_classes - 1})")
            continue
        reason = _unsafe_path_reason(path)
        if reason:
            problems.append(f"line {number}: {reason} {path!r} escapes the image root; paths must be relative")
            continue
        paths.append(path)
        labels.append(label)
    if problems:
        raise ListFileError(
            _summarise(
                f"{list_file}: malformed list file",
                problems,
                "Each line must be '<relative/path> <label>' (classifier-balancing format); fix or regenerate the list.",
            ),
            problems,
        )
    if not paths:
        raise ListFileError(f"{list_file}: contains no entries")
    return paths, np.asarray(labels, dtype=np.int64)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pil_loader(path: str) -> Any:
    """Open an image as RGB with PIL (the classifier-balancing / torchvision default)."""
    from PIL import Image

    with open(path, "rb") as stream:
        image = Image.open(stream)
        return image.convert("RGB")


class FileImageDataset(Dataset):
    """Images on disk with known labels: ``dataset[i] -> (transform(PIL image), label)``.

    ``labels`` is an int64 tensor (what samplers and ``make_longtail`` take); ``paths`` are
    absolute file paths; ``classes`` has one name per label. ``subset(indices)`` returns the same
    kind of dataset restricted to those samples (e.g. a ``make_longtail`` split).
    """

    def __init__(
        self,
        paths: Sequence[str],
        labels: Any,
        classes: Sequence[str],
        transform: Callable | None = None,
        loader: Callable[[str], Any] = pil_loader,
        name: str = "files",
    ):
        self.paths = list(paths)
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        if len(self.paths) != self.labels.shape[0]:
            raise ValueError(f"{name}: {len(self.paths)} paths but {self.labels.shape[0]} labels")
        self.classes = list(classes)
        self.transform = transform
        self.loader = loader
        self.name = name
        self.longtail_split = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.paths)

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path = self.paths[index]
        try:
            image = self.loader(path)
        except FileNotFoundError as error:
            raise FileNotFoundError(
                f"{self.name}: image {path} (sample {index}) is missing; the image root does not match the "
                f"list file. Check the root, or build the dataset with check_files=True to list every missing file."
            ) from error
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def subset(self, indices: Any, longtail_split: Any = None) -> "FileImageDataset":
        index = np.asarray(indices, dtype=np.int64)
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.paths = [self.paths[i] for i in index.tolist()]
        new.labels = self.labels[torch.as_tensor(index)].clone()
        new.longtail_split = longtail_split
        return new

    def missing_files(self) -> list[str]:
        """Paths that do not exist as regular files (one stat per file)."""
        return [path for path in self.paths if not os.path.isfile(path)]

    def check_files(self) -> None:
        """Raise one ``ListFileError`` naming every missing image (count + the first few)."""
        missing = self.missing_files()
        if missing:
            raise ListFileError(
                _summarise(
                    f"{self.name}: {len(missing)} of {len(self)} image files are missing",
                    missing,
                    "Check that root= points at the folder the list paths are relative to (e.g. the one holding "
                    "train/ and val/), and that the download is complete. Pass check_files=False to defer the check.",
                ),
                missing,
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, n={len(self)}, classes={self.num_classes})"


def _class_names_from_paths(paths: Sequence[str], labels: np.ndarray, num_classes: int) -> list[str]:
    """Parent-folder name per label when it is unambiguous (ImageNet wnids, Places categories, iNat ids)."""
    names: dict[int, set[str]] = {}
    for path, label in zip(paths, labels.tolist()):
        names.setdefault(label, set()).add(PurePosixPath(path.replace("\\", "/")).parent.name)
    chosen = {label: next(iter(found)) for label, found in names.items() if len(found) == 1}
    if len(chosen) == len(names) and len(set(chosen.values())) == len(chosen):
        return [chosen.get(label, str(label)) for label in range(num_classes)]
    return [str(label) for label in range(num_classes)]


class ListFileDataset(FileImageDataset):
    """A ``path label`` list (classifier-balancing format) over an image ``root``.

    ``num_classes`` bounds the labels (default: max label + 1). ``check_files=True`` stats every
    image up front and reports all missing ones together; ``False`` defers to load time (useful
    on slow network storage). ``list_sha256`` identifies the exact list used.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        list_file: str | os.PathLike,
        transform: Callable | None = None,
        num_classes: int | None = None,
        check_files: bool = True,
        loader: Callable[[str], Any] = pil_loader,
        name: str | None = None,
    ):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image root {root} is not a directory; pass root= the folder the list paths are relative to")
        relative, labels = read_list_file(list_file, num_classes)
        if num_classes is None:
            num_classes = int(labels.max()) + 1
        super().__init__(
            [os.path.join(root, path) for path in relative],
            labels,
            _class_names_from_paths(relative, labels, num_classes),
            transform=transform,
            loader=loader,
            name=name or Path(list_file).stem,
        )
        self.root = root
        self.list_file = Path(list_file)
        self.relative_paths = relative
        self.list_sha256 = file_sha256(list_file)
        if check_files:
            self.check_files()

    def subset(self, indices: Any, longtail_split: Any = None) -> "ListFileDataset":
        new = super().subset(indices, longtail_split)
        new.relative_paths = [self.relative_paths[i] for i in np.asarray(indices, dtype=np.int64).tolist()]
        return new
