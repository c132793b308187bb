"""Validation hold-outs that keep groups whole: frames of one video, images of one patient, one track.

A random per-image hold-out leaks when images come in groups of near-duplicates: GTSRB's training
images are tracks of 30 frames of one physical sign (``TTTTT_FFFFF.png``), so a validation image
usually has a sibling a few frames away in the training set, and validation accuracy measures
memorisation. ``hold_out_groups`` holds out whole groups instead, so no group is on both sides.

Where groups come from (one key per image):

* ``groups_from_pattern(names, pattern)``: a regular expression searched (``re.search``) in each
  image's name; the key is what its capture groups match (joined by "/"), or the whole match if
  it has none. GTSRB: ``(\\d+)_\\d+`` over the file names gives the track number.
* ``groups_from_file(names, path)``: a ``group file``, UTF-8, one ``<name><TAB><group>`` per line
  (blank lines skipped). Every image must be listed; extra lines (images the split does not use,
  e.g. those a long-tailed subset dropped) are allowed.

``scope`` says whether a key names a group within a class or across the dataset: with ``"class"``
(default) the same key in two classes is two groups, as GTSRB's track numbers restart in every
class folder; with ``"dataset"`` a key is one group wherever it appears (a patient with images
in several classes), and the whole group goes to one side.

Counts. Groups rarely add up to exactly N images, so a class gets **at least N** held-out images:
groups are visited in one seeded random order (a permutation of the sorted keys, so the result
does not depend on file order) and a group is held out while one of its classes still has fewer
than N held out; the class therefore ends between N and N + (size of its last group taken) - 1.
Every class first reserves one group for training, its smallest (the earliest in the seeded
order among equals), which is never held out: so every class keeps a training image, and with
``scope="class"`` a class reaches N whenever its other groups hold N images. A class that cannot
(one group only, or too few images) is refused by name. With ``scope="dataset"`` a group taken
for one class may add images to another class beyond N, and a group reserved for one class stays
in training for all its classes.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable, Sequence

import numpy as np

GROUP_SCOPES = ("class", "dataset")
_MAX_REPORTED = 10


class GroupError(ValueError):
    """Groups could not be formed or a grouped hold-out is impossible; ``problems`` lists all."""

    def __init__(self, message: str, problems: Sequence[str] = ()):
        super().__init__(message)
        self.problems = list(problems)


def _listed(problems: Sequence[str]) -> str:
    shown = "\n  ".join(problems[:_MAX_REPORTED])
    more = f"\n  ... and {len(problems) - _MAX_REPORTED} more" if len(problems) > _MAX_REPORTED else ""
    return f"\n  {shown}{more}"


def groups_from_pattern(names: Sequence[str], pattern: str) -> list[str]:
    """The group key of each name: ``re.search(pattern, name)``'s capture groups joined by "/"
    (the whole match when the pattern has no group). Every name must match."""
    try:
        regex = re.compile(pattern)
    except (re.error, TypeError) as error:
        raise GroupError(f"group pattern {pattern!r} is not a valid regular expression: {error}") from None
    keys: list[str] = []
    unmatched: list[str] = []
    for name in names:
        match = regex.search(name)
        if match is None:
            unmatched.append(name)
            continue
        parts = match.groups() if regex.groups else (match.group(0),)
        keys.append("/".join("" if part is None else part for part in parts))
    if unmatched:
        raise GroupError(
            f"group pattern {pattern!r} matches no part of {len(unmatched)} of {len(names)} image name(s):"
            f"{_listed(unmatched)}\nEvery image needs a group: fix the pattern (it is searched in each name, "
            f"e.g. '(\\d+)_\\d+' for GTSRB's TTTTT_FFFFF.png) or use a group file.",
            unmatched,
        )
    return keys


def read_group_file(path: str | os.PathLike) -> dict[str, str]:
    """Parse a group file: ``{image name: group}`` from ``<name><TAB><group>`` lines."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"group file {path} does not exist")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise GroupError(f"{path}: line {line}: not UTF-8 text (byte {error.start}: {error.reason}); save the group "
                         f"file as UTF-8") from None
    groups: dict[str, str] = {}
    lines: dict[str, int] = {}
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = [field.strip() for field in line.split("\t")]
        if len(fields) != 2 or not all(fields):
            problems.append(f"line {number}: expected '<image name><TAB><group>', got {line.strip()[:80]!r}")
            continue
        name, group = fields
        if name in groups:
            problems.append(f"line {number}: {name!r} is already given a group on line {lines[name]}")
            continue
        groups[name] = group
        lines[name] = number
    if not groups and not problems:
        problems.append("the file lists no image")
    if problems:
        raise GroupError(f"{path}: bad group file ({len(problems)} problem(s)):{_listed(problems)}", problems)
    return groups


def groups_from_file(names: Sequence[str], path: str | os.PathLike) -> list[str]:
    """The group of each name, looked up in the group file ``path``; every name must be listed."""
    groups = read_group_file(path)
    unlisted = [name for name in names if name not in groups]
    if unlisted:
        raise GroupError(
            f"{path}: {len(unlisted)} of {len(names)} image(s) have no line:{_listed(unlisted)}\n"
            f"List every image as '<name><TAB><group>' with the same names (paths relative to the class folders' "
            f"parent, '/' separated).",
            unlisted,
        )
    return [groups[name] for name in names]


@dataclass(frozen=True, eq=False)
class GroupHoldout:
    """The outcome of ``hold_out_groups``: positions (sorted int64) and what was held out."""

    train: np.ndarray
    held_out: np.ndarray
    per_class: int
    held_per_class: tuple[int, ...]
    groups_held_out: int
    groups_total: int
    scope: str
    seed: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record for run directories."""
        return {
            "per_class": self.per_class,
            "held_per_class": list(self.held_per_class),
            "size": int(self.held_out.size),
            "groups_held_out": self.groups_held_out,
            "groups_total": self.groups_total,
            "scope": self.scope,
            "seed": self.seed,
        }


def hold_out_groups(
    labels: Any,
    groups: Sequence[Hashable],
    per_class: int,
    seed: int,
    scope: str = "class",
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
) -> GroupHoldout:
    """Hold out at least ``per_class`` images of every class as whole groups (module docstring).

    ``labels``: class index per image; ``groups``: group key per image (``groups_from_pattern`` /
    ``groups_from_file``; compared as text). Returns sorted positions for training and for the held-out split; no
    group has images on both sides and every class keeps at least one training image.
    """
    if scope not in GROUP_SCOPES:
        raise ValueError(f"unknown group scope {scope!r}; valid: class (a key names a group within its class), "
                         f"dataset (a key is one group across classes)")
    if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) or per_class < 1:
        raise ValueError(f"per_class must be a positive integer, got {per_class!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    label_array = np.asarray(labels.detach().cpu().numpy() if hasattr(labels, "detach") else labels, dtype=np.int64)
    if label_array.ndim != 1 or label_array.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D sequence of class indices, got shape {label_array.shape}")
    if len(groups) != label_array.size:
        raise ValueError(f"{len(groups)} group keys for {label_array.size} labels; give one key per image")
    num_classes = int(label_array.max()) + 1 if num_classes is None else int(num_classes)
    texts = [str(g) for g in groups]  # keys compare as text, so their order never depends on type or file order
    keys = list(zip(label_array.tolist(), texts)) if scope == "class" else texts
    unique = sorted(set(keys))
    group_of = {key: index for index, key in enumerate(unique)}
    group_index = np.fromiter((group_of[k] for k in keys), dtype=np.int64, count=len(keys))
    # Images per (group, class), sparse: one (classes, counts) pair per group.
    pairs, pair_counts = np.unique(group_index * num_classes + label_array, return_counts=True)
    starts = np.searchsorted(pairs // num_classes, np.arange(len(unique) + 1))
    members = [(pairs[a:b] % num_classes, pair_counts[a:b]) for a, b in zip(starts[:-1], starts[1:])]
    visit = np.random.default_rng(int(seed)).permutation(len(unique))
    position = np.empty(len(unique), dtype=np.int64)
    position[visit] = np.arange(len(unique))
    # Each class's training reserve: its smallest group, the earliest visited among equals.
    pair_group, pair_class = pairs // num_classes, pairs % num_classes
    by_class = np.lexsort((position[pair_group], pair_counts, pair_class))
    first = np.r_[True, pair_class[by_class][1:] != pair_class[by_class][:-1]]
    reserved = np.zeros(len(unique), dtype=bool)
    reserved[pair_group[by_class][first]] = True
    reserve_size = np.zeros(num_classes, dtype=np.int64)
    reserve_size[pair_class[by_class][first]] = pair_counts[by_class][first]
    totals = np.bincount(label_array, minlength=num_classes)
    held = np.zeros(num_classes, dtype=np.int64)
    taken = np.zeros(len(unique), dtype=bool)
    for g in visit:
        classes, counts = members[g]
        if reserved[g] or not (held[classes] < per_class).any():
            continue  # kept for training, or every class in it already has enough held out
        taken[g] = True
        held[classes] += counts
        if (held >= per_class).all():
            break
    short = np.flatnonzero(held < per_class)
    if short.size:
        groups_per_class = np.bincount(pair_class, minlength=num_classes)

        def name(c: int) -> str:
            return f"class {c} '{class_names[c]}'" if class_names is not None and c < len(class_names) else f"class {c}"

        problems = [
            f"{name(c)}: {int(totals[c])} image(s) in {int(groups_per_class[c])} group(s), {int(held[c])} could be "
            f"held out whole (its smallest group, {int(reserve_size[c])} image(s), stays for training)"
            for c in short.tolist()
        ]
        raise GroupError(
            f"cannot hold out {per_class} images per class as whole groups for {short.size} class(es):"
            f"{_listed(problems)}\nLower the number per class, or check the group pattern / file (a pattern that "
            f"matches too much makes a class one group).",
            problems,
        )
    is_held = taken[group_index]
    return GroupHoldout(
        train=np.flatnonzero(~is_held).astype(np.int64),
        held_out=np.flatnonzero(is_held).astype(np.int64),
        per_class=int(per_class),
        held_per_class=tuple(int(n) for n in held),
        groups_held_out=int(taken.sum()),
        groups_total=len(unique),
        scope=scope,
        seed=int(seed),
    )
