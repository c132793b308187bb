"""The data fingerprint of a run: what data it trained and evaluated on, so that a later `eval`,
`--resume`, `model.init_from` or `compare` can refuse to mix a run with data that changed under it.

One place computes it (:func:`data_fingerprint`, called by ``build_data`` for every DataBundle):
- in-memory sets (the embedded Fashion-MNIST-LT, idx, CIFAR pickles): sha256 of the image and label
  arrays as they are used (after the long-tailed cut), with their shape;
- file sets (list files, image folders): one ``[path, label, size, mtime_ns]`` row per file, and the
  sha256 of those rows. One ``stat`` per file (about a second per 100k files) instead of hashing the
  content, which would read the whole dataset (13 GB for ImageNet-LT) at every start, resume and
  eval. Editing, replacing, adding or removing a file changes the rows; so does copying the data
  without keeping modification times (``cp -p`` / ``rsync -t`` keep them);
- the split: train / val / test are fingerprinted as split (a validation set carved from the
  training set apart from the rest), with the long-tailed split's profile / IF / seed / index hash
  and a carved test split's record.

The run directory keeps the full record (``data_fingerprint.json``, file rows included, so a
mismatch can name the files); checkpoints keep the summary (:func:`summary`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch

FINGERPRINT_FILE = "data_fingerprint.json"


class DataChangedError(ValueError):
    """The data a run was made with is not the data found now (the CLI exits with code 2)."""


def _sha256_json(value) -> str:
    return hashlib.sha256(json.dumps(value, separators=(",", ":")).encode()).hexdigest()


def _relative(path: str, root: Optional[str]) -> str:
    if root:
        try:
            return os.path.relpath(path, root)
        except ValueError:  # another drive on Windows
            return str(path)
    return str(path)


def dataset_fingerprint(dataset, root: Optional[str] = None) -> dict:
    """Fingerprint one split's data: its files (``dataset.paths``) or its arrays (``dataset.images``)."""
    labels = [int(label) for label in torch.as_tensor(dataset.labels).tolist()]
    paths = getattr(dataset, "paths", None)
    if paths is not None:
        rows = []
        for path, label in zip(paths, labels):
            try:
                stat = os.stat(path)
            except OSError as error:
                raise FileNotFoundError(f"data file {path} cannot be read ({error.strerror}); the dataset "
                                        f"changed or is incomplete") from error
            rows.append([_relative(str(path), root), label, stat.st_size, stat.st_mtime_ns])
        return {"kind": "files", "count": len(rows), "sha256": _sha256_json(rows), "files": rows}
    images = dataset.images.detach().to("cpu").contiguous()
    digest = hashlib.sha256()
    digest.update(json.dumps([str(images.dtype), list(images.shape)]).encode())
    digest.update(np.ascontiguousarray(images.numpy()).data)
    digest.update(np.asarray(labels, dtype=np.int64).tobytes())
    return {"kind": "arrays", "count": int(images.shape[0]), "shape": list(images.shape),
            "sha256": digest.hexdigest()}


def data_fingerprint(splits: dict, split_info: dict, root: Optional[str] = None) -> dict:
    """The fingerprint of a run's data: ``splits`` maps split name -> dataset (train / val / test, as
    split: a validation set carved from the training set is fingerprinted apart from what remains)."""
    record = {"splits": {name: dataset_fingerprint(dataset, root) for name, dataset in splits.items()
                         if dataset is not None}}
    # How the data was cut (long-tailed split, carved test / validation); not how it is fed ("images":
    # in-memory or files, which may differ between machines for the same data).
    split = json.loads(json.dumps({key: value for key, value in split_info.items() if key not in ("dataset", "images")}))
    record["split"] = split
    record["sha256"] = _sha256_json({"splits": {k: v["sha256"] for k, v in record["splits"].items()},
                                     "split": split})
    return record


def summary(fingerprint: dict) -> dict:
    """The fingerprint without the per-file rows (what checkpoints store)."""
    return {"sha256": fingerprint["sha256"], "split": fingerprint["split"],
            "splits": {name: {k: v for k, v in entry.items() if k != "files"}
                       for name, entry in fingerprint["splits"].items()}}


def _describe_files(old: list, new: list, limit: int = 5) -> str:
    before = {row[0]: row[1:] for row in old}
    after = {row[0]: row[1:] for row in new}
    added = [p for p in after if p not in before]
    removed = [p for p in before if p not in after]
    changed = [p for p in after if p in before and after[p] != before[p]]
    parts = []
    for title, names in (("added", added), ("removed", removed), ("changed (label, size or modification time)",
                                                                   changed)):
        if names:
            shown = ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
            parts.append(f"{len(names)} file(s) {title}: {shown}")
    return "; ".join(parts) or "the file list is in another order"


def differences(recorded: dict, current: dict) -> list[str]:
    """Human-readable differences between a recorded fingerprint (full or summary) and the current one."""
    if recorded.get("sha256") == current.get("sha256"):
        return []
    lines = []
    old_splits, new_splits = recorded.get("splits", {}), current.get("splits", {})
    for name in dict.fromkeys([*old_splits, *new_splits]):
        old, new = old_splits.get(name), new_splits.get(name)
        if old is None or new is None:
            lines.append(f"{name} split: {'now present' if old is None else 'now absent'}")
            continue
        if old["sha256"] == new["sha256"]:
            continue
        if old["kind"] == "files" and new["kind"] == "files" and "files" in old and "files" in new:
            lines.append(f"{name} split: {_describe_files(old['files'], new['files'])}")
        elif old["kind"] == "arrays" and new["kind"] == "arrays":
            lines.append(f"{name} split: the in-memory images / labels differ ({old['count']} images of shape "
                         f"{old.get('shape')} then, {new['count']} of shape {new.get('shape')} now)")
        else:
            lines.append(f"{name} split: {old['count']} {old['kind']} then, {new['count']} {new['kind']} now")
    if recorded.get("split") != current.get("split"):
        before, after = _flat(recorded.get("split") or {}), _flat(current.get("split") or {})
        keys = [k for k in dict.fromkeys([*before, *after]) if before.get(k) != after.get(k)]
        shown = ", ".join(f"{k} {before.get(k)!r} -> {after.get(k)!r}" for k in keys[:4])
        lines.append(f"the split differs ({shown}{' and more' if len(keys) > 4 else ''})")
    return lines or ["the data fingerprint differs"]


def _flat(mapping: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        elif not isinstance(value, list):  # per-class lists are summarised by their scalars (counts, hashes)
            flat[f"{prefix}{key}"] = value
    return flat


def read_recorded(run_dir: Optional[Path], state: Optional[dict]) -> Optional[dict]:
    """The fingerprint a run recorded: the run directory's full record if present, else the
    checkpoint's summary; None for a run made before fingerprints existed."""
    if run_dir is not None:
        path = Path(run_dir) / FINGERPRINT_FILE
        if path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                pass  # fall back on the checkpoint's copy
    return (state or {}).get("data_fingerprint")


def check_same_data(recorded: Optional[dict], current: dict, what: str) -> Optional[str]:
    """Raise DataChangedError naming the differences; return a warning line when nothing was recorded."""
    if recorded is None:
        return (f"note: {what} records no data fingerprint (made by an older longtail); its data cannot be "
                f"checked against the current files")
    problems = differences(recorded, current)
    if problems:
        raise DataChangedError(f"{what} was made with other data than the current dataset gives: "
                               + "; ".join(problems)
                               + ". Restore the original data (or data.root), or start a new run")
    return None
