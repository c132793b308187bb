"""Generated bad input for the list-file and image-folder readers (Hypothesis).

Whatever the lines, labels, paths, encodings or file contents, the readers either succeed with
exactly the valid entries or raise their one documented error type, naming every problem (line
numbers, file paths); never a traceback of another type, never a bad file found mid-training.
"""

from __future__ import annotations

import io
import shutil
import tempfile
from pathlib import Path, PureWindowsPath

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from longtail.data import ImageFolderDataset, ListFileDataset, ListFileError, read_list_file
from longtail.data.datasets.imagefiles import BadImagesError, scan_images
from longtail.engine.config import ConfigError, build_config
from longtail.engine.training.data_setup import build_data
from longtail.engine.runtime.distributed import DistributedContext

NUM_CLASSES = 5
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FILES = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Path pieces without whitespace or line breaks, including non-ASCII names.
NAME = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp"), blacklist_characters="/\\\x85"),
               min_size=1, max_size=12)
GOOD_PATH = st.lists(NAME.filter(lambda s: s not in (".", "..")), min_size=1, max_size=3).map("/".join).filter(
    lambda path: not PureWindowsPath(path).drive)  # "A:x" is drive-qualified: refused as escaping the root
GOOD_LINE = st.tuples(GOOD_PATH, st.integers(0, NUM_CLASSES - 1)).map(lambda e: (f"{e[0]} {e[1]}", True))
BAD_LINE = st.one_of(
    GOOD_PATH.map(lambda p: p),                                                     # no label
    st.tuples(GOOD_PATH, st.integers(0, 4), st.integers(0, 4)).map(lambda e: f"{e[0]} {e[1]} {e[2]}"),
    st.tuples(GOOD_PATH, st.integers(-99, -1)).map(lambda e: f"{e[0]} {e[1]}"),    # negative
    st.tuples(GOOD_PATH, st.integers(NUM_CLASSES, 10**30)).map(lambda e: f"{e[0]} {e[1]}"),  # out of range
    st.tuples(GOOD_PATH, st.sampled_from(["1.5", "x", "1e3", "٣", "0x1", "+1"])).map(lambda e: f"{e[0]} {e[1]}"),
    st.tuples(GOOD_PATH, st.integers(0, 4)).map(lambda e: f"/abs/{e[0]} {e[1]}"),   # absolute
    st.tuples(GOOD_PATH, st.integers(0, 4)).map(lambda e: f"a/../../{e[0]} {e[1]}"),  # escapes the root
    st.tuples(GOOD_PATH, st.integers(0, 4)).map(lambda e: f"C:\\{e[0]} {e[1]}"),    # Windows drive
).map(lambda line: (line, False))
LINES = st.lists(st.one_of(GOOD_LINE, BAD_LINE, st.just(("", None)), st.just(("   ", None))), max_size=25)


def scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="longtail-fuzz-"))


@FAST
@given(LINES)
def test_list_file_lines_give_the_entries_or_one_error_naming_every_bad_line(lines):
    folder = scratch()
    try:
        path = folder / "list.txt"
        path.write_text("\n".join(text for text, _ in lines) + "\n", encoding="utf-8")
        bad_numbers = [number for number, (_, good) in enumerate(lines, start=1) if good is False]
        good_lines = [text for text, good in lines if good]
        if bad_numbers:
            with pytest.raises(ListFileError) as raised:
                read_list_file(path, NUM_CLASSES)
            assert len(raised.value.problems) == len(bad_numbers)
            assert [int(p.split(":")[0].split()[1]) for p in raised.value.problems] == bad_numbers
            assert f"({len(bad_numbers)} problem(s))" in str(raised.value)
        elif not good_lines:
            with pytest.raises(ListFileError, match="no entries"):
                read_list_file(path, NUM_CLASSES)
        else:
            paths, labels = read_list_file(path, NUM_CLASSES)
            assert paths == [text.split()[0] for text in good_lines]
            assert labels.tolist() == [int(text.split()[1]) for text in good_lines]
    finally:
        shutil.rmtree(folder)


@FAST
@given(st.binary(max_size=300))
def test_any_bytes_as_a_list_file_give_entries_or_a_list_file_error(content):
    folder = scratch()
    try:
        path = folder / "list.txt"
        path.write_bytes(content)
        try:
            paths, labels = read_list_file(path, NUM_CLASSES)
        except ListFileError as error:
            assert str(path) in str(error)
        else:
            assert len(paths) == len(labels) > 0 and all(0 <= label < NUM_CLASSES for label in labels.tolist())
    finally:
        shutil.rmtree(folder)


@FAST
@given(st.lists(st.tuples(GOOD_PATH, st.booleans()), min_size=1, max_size=8, unique_by=lambda e: e[0]))
def test_missing_images_of_a_list_are_all_named(entries):
    folder = scratch()
    try:
        root = folder / "root"
        root.mkdir()
        created = set()
        for relative, exists in entries:
            target = root / relative
            if exists and not any(str(target).startswith(str(root / c) + "/") or root / c == target for c in created):
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    Image.new("RGB", (4, 4)).save(target, format="PNG")
                    created.add(relative)
                except (OSError, ValueError):
                    pass  # a name the file system refuses (too long, a prefix that is now a file): missing
        list_file = folder / "list.txt"
        list_file.write_text("".join(f"{relative} 0\n" for relative, _ in entries), encoding="utf-8")
        missing = [relative for relative, _ in entries if not (root / relative).is_file()]
        if missing:
            with pytest.raises(ListFileError) as raised:
                ListFileDataset(root, list_file, num_classes=1)
            assert sorted(raised.value.problems) == sorted(str(root / m) for m in missing)
        else:
            assert len(ListFileDataset(root, list_file, num_classes=1)) == len(entries)
    finally:
        shutil.rmtree(folder)


def png_bytes(seed: int, size=(6, 6)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
        buffer, format="JPEG", quality=90)
    return buffer.getvalue()


# A file's content: good, or bad in one of the ways users meet (kind, bytes).
GOOD_FILE = st.integers(0, 1000).map(lambda s: ("good", png_bytes(s)))
BAD_FILE = st.one_of(
    st.just(("bad", b"")),
    st.binary(min_size=1, max_size=200).filter(lambda b: not b.startswith((b"\x89PNG", b"\xff\xd8", b"GIF", b"BM",
                                                                           b"II", b"MM", b"RIFF", b"P"))).map(
        lambda b: ("bad", b)),
    st.text(max_size=50).map(lambda t: ("bad", ("not an image " + t).encode("utf-8"))),
    st.tuples(st.integers(0, 1000), st.integers(13, 400)).map(lambda e: ("bad", png_bytes(e[0])[: -e[1]])),
    st.tuples(st.integers(0, 1000), st.integers(3, 200)).map(lambda e: ("bad", jpeg_bytes(e[0])[: -e[1]])),
)
FOLDER = st.lists(st.lists(st.one_of(GOOD_FILE, BAD_FILE), min_size=1, max_size=4), min_size=1, max_size=3)


def write_folder(root: Path, classes) -> dict:
    kinds = {}
    for label, files in enumerate(classes):
        (root / f"class{label}").mkdir(parents=True)
        for n, (kind, content) in enumerate(files):
            path = root / f"class{label}" / f"{n}.png"
            path.write_bytes(content)
            kinds[str(path)] = kind
    return kinds


@FILES
@given(FOLDER)
def test_folder_scan_finds_exactly_the_bad_files_and_never_raises(classes):
    folder = scratch()
    try:
        kinds = write_folder(folder, classes)
        dataset = ImageFolderDataset(folder)
        for decode in (False, True):
            scan = scan_images(dataset.paths, decode=decode)
            assert sorted(path for path, _ in scan.problems) == sorted(p for p, k in kinds.items() if k == "bad")
            assert all(reason for _, reason in scan.problems)
    finally:
        shutil.rmtree(folder)


@FILES
@given(FOLDER, st.sampled_from(["error", "skip"]))
def test_training_data_from_a_generated_folder_is_built_or_refused_with_every_bad_file_named(classes, policy):
    folder = scratch()
    try:
        kinds = write_folder(folder / "train", classes)
        write_folder(folder / "test", [[("good", png_bytes(1))] for _ in classes])
        config, _ = build_config(None, None, ["data.name=imagefolder", f"data.root={folder}", "data.workers=0",
                                              f"data.bad_images={policy}"])
        bad = sorted(path for path, kind in kinds.items() if kind == "bad")
        class_has_good = all(any(kind == "good" for kind, _ in files) for files in classes)
        try:
            data = build_data(config, __import__("torch").device("cpu"), DistributedContext())
        except BadImagesError as error:
            assert policy == "error" and bad and sorted(path for path, _ in error.problems) == bad
        except ConfigError as error:
            assert policy == "skip" and not class_has_good and "no images of class" in str(error)
        else:
            assert not bad or policy == "skip"
            assert sorted(entry["path"] for entry in data.split_info.get("skipped_images", [])) == bad
            assert sum(data.class_counts) == sum(kind == "good" for kind in kinds.values())
    finally:
        shutil.rmtree(folder)
