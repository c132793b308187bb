"""Custom data: one sub-folder per class (the torchvision ``ImageFolder`` layout).

``root/<class name>/<image>``; classes are the sub-folder names sorted (label = position), files
are taken sorted by name so the sample order, and hence any ``make_longtail`` split of it, is
the same on every machine. A ``root/classes.tsv`` (folder -> display name, ``classnames.py``)
gives the classes readable names: ``folders`` keeps the folder names, ``classes`` the names shown
in tables, plots and predictions. Make it long-tailed with
``ds.subset(make_longtail(ds.labels, 100).indices)``; report it with ``analyze(ds)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

from longtail.data.datasets.classnames import CLASS_NAMES_FILE, display_names
from longtail.data.datasets.listfile import IMAGE_EXTENSIONS, FileImageDataset, pil_loader


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


class ImageFolderDataset(FileImageDataset):
    """Images in ``root/<class>/...`` (recursing into sub-folders of each class folder).

    Only files whose extension (case-insensitive) is in ``extensions`` are used. ``classes`` may
    fix the list of class folders (and so the label of each folder); by default all sub-folders,
    sorted. Hidden files and folders (starting with '.') are ignored.

    ``names_file``: the ``classes.tsv`` giving display names. ``"auto"`` (default) reads
    ``root/classes.tsv`` when there is one; a path reads that file (it must exist); ``None`` keeps
    the folder names. After construction ``folders`` are the class folder names and ``classes``
    the display names (the folder names when there is no file), both in label order.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable | None = None,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        classes: Sequence[str] | None = None,
        loader: Callable[[str], Any] = pil_loader,
        name: str | None = None,
        names_file: str | os.PathLike | None = "auto",
    ):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder root {root} does not exist; pass root= a folder with one sub-folder per class")
        found = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))
        if classes is None:
            classes = found
        else:
            classes = list(classes)
            absent = [c for c in classes if c not in found]
            if absent:
                raise FileNotFoundError(f"class folders {absent} not found under {root} (found: {found[:20]})")
        if not classes:
            raise ValueError(f"{root} has no class sub-folders; expected root/<class name>/<image files>")
        # A class name is written to results, tables and plots as text: bytes that are not UTF-8 (which
        # Python keeps as lone surrogates) cannot be, so such a folder is refused before any training.
        undecodable = [c for c in classes if not _is_utf8(c)]
        if undecodable:
            shown = [os.fsencode(c) for c in undecodable[:5]]
            raise ValueError(f"class folder name(s) {shown} under {root} are not valid UTF-8 (a class name is "
                             f"written to results, tables and plots as text); rename them, e.g. with "
                             f"`convmv -f latin1 -t utf8 --notest`")
        suffixes = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
        paths: list[str] = []
        labels: list[int] = []
        empty: list[str] = []
        for label, class_name in enumerate(classes):
            class_files = []
            for directory, subdirs, files in os.walk(root / class_name, followlinks=False):
                subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))  # deterministic walk order
                class_files += [
                    os.path.join(directory, f) for f in files if not f.startswith(".") and f.lower().endswith(suffixes)
                ]
            if not class_files:
                empty.append(class_name)
            class_files.sort()
            paths += class_files
            labels += [label] * len(class_files)
        if empty:
            # An empty class would be a class with N_j = 0: every long-tail loss takes log N_j or 1/N_j.
            raise ValueError(
                f"class folders with no images ({', '.join(suffixes)}): {empty[:20]}"
                f"{' ...' if len(empty) > 20 else ''} under {root}. Remove them or add images."
            )
        if isinstance(names_file, str) and names_file == "auto":
            names_file = root / CLASS_NAMES_FILE if (root / CLASS_NAMES_FILE).is_file() else None
        elif names_file is not None and not Path(names_file).is_file():
            raise FileNotFoundError(f"class-names file {names_file} does not exist; pass names_file=None to use folder names")
        shown = classes if names_file is None else display_names(names_file, classes, found)
        super().__init__(paths, labels, shown, transform=transform, loader=loader, name=name or root.name)
        self.root = root
        self.folders = list(classes)
        self.names_file = None if names_file is None else Path(names_file)
