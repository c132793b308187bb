"""Display names for image-folder classes: an optional ``classes.tsv`` (folder -> name).

Class folders are named for machines (``14-stop-and-give-way``: a sort key, no spaces); tables,
plots and predictions should say "Stop and give way". A ``classes.tsv`` next to the class folders
(single-folder layout ``root/<class>/*``) or next to ``train/`` and ``test/`` (``root/<split>/<class>/*``)
maps each folder to its display name::

    00-speed-limit-to-20<TAB>Speed limit to 20
    14-stop-and-give-way<TAB>Stop and give way

Format: UTF-8 text (a leading byte-order mark is accepted), one class per line, exactly two
tab-separated fields (folder name, display name; surrounding spaces are stripped), blank lines
skipped. Every class folder in use must be listed, each folder and each display name at most
once, and every listed folder must exist: a file that silently named only some classes, or named
two classes alike, would make per-class tables ambiguous. All problems are reported together with
the file and line numbers (``ClassNamesError``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

CLASS_NAMES_FILE = "classes.tsv"
_MAX_REPORTED = 10


class ClassNamesError(ValueError):
    """A ``classes.tsv`` is malformed or does not match the class folders; ``problems`` lists all."""

    def __init__(self, message: str, problems: Sequence[str] = ()):
        super().__init__(message)
        self.problems = list(problems)


def _raise(path: Path, problems: list[str]) -> None:
    shown = "\n  ".join(problems[:_MAX_REPORTED])
    more = f"\n  ... and {len(problems) - _MAX_REPORTED} more" if len(problems) > _MAX_REPORTED else ""
    raise ClassNamesError(
        f"{path}: bad class-names file ({len(problems)} problem(s)):\n  {shown}{more}\n"
        f"Each line must be '<class folder name><TAB><display name>', one line per class folder; fix the file "
        f"or remove it to use the folder names.",
        problems,
    )


def read_class_names(path: str | os.PathLike) -> dict[str, tuple[str, int]]:
    """Parse a ``classes.tsv``: ``{folder name: (display name, line number)}`` in file order.

    Raises ``ClassNamesError`` naming the file and every bad line (wrong number of fields, empty
    field, a folder or display name given twice), or if the file is not UTF-8 or lists nothing.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise FileNotFoundError(f"class-names file {path} cannot be read: {error}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        _raise(path, [f"line {line}: not UTF-8 text (byte {error.start}: {error.reason}); save the file as UTF-8"])
    names: dict[str, tuple[str, int]] = {}
    display_lines: dict[str, int] = {}
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = [field.strip() for field in line.split("\t")]
        if len(fields) != 2:
            problems.append(
                f"line {number}: expected 2 tab-separated fields (folder, display name), got {len(fields)}: "
                f"{line.strip()[:80]!r}"
            )
            continue
        folder, display = fields
        if not folder or not display:
            problems.append(f"line {number}: empty {'folder name' if not folder else 'display name'}: {line.strip()[:80]!r}")
            continue
        if folder in names:
            problems.append(f"line {number}: folder {folder!r} is already named on line {names[folder][1]}")
            continue
        if display in display_lines:
            problems.append(
                f"line {number}: display name {display!r} is already used on line {display_lines[display]}; "
                f"two classes with one name would be indistinguishable in tables and predictions"
            )
            continue
        names[folder] = (display, number)
        display_lines[display] = number
    if not names and not problems:
        problems.append("the file names no class")
    if problems:
        _raise(path, problems)
    return names


def display_names(path: str | os.PathLike, classes: Sequence[str], folders_present: Iterable[str] = ()) -> list[str]:
    """The display name of each class folder in ``classes`` (label order), read from ``path``.

    Every folder in ``classes`` must be listed. A listed folder must be one of ``classes`` or of
    ``folders_present`` (the sub-folders actually on disk: an evaluation split may use fewer
    classes than exist); anything else is a typo or a stale file, and is refused with its line.
    """
    path = Path(path)
    names = read_class_names(path)
    known = set(classes) | set(folders_present)
    problems = [
        f"line {line}: folder {folder!r} does not exist (class folders: {', '.join(sorted(known)[:8])}"
        f"{' ...' if len(known) > 8 else ''})"
        for folder, (_, line) in names.items()
        if folder not in known
    ]
    missing = [folder for folder in classes if folder not in names]
    if missing:
        problems.append(
            f"{len(missing)} class folder(s) have no line: {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}"
        )
    if problems:
        _raise(path, problems)
    return [names[folder][0] for folder in classes]
