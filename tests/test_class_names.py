"""classes.tsv: display names for image-folder classes (data/datasets/classnames.py), on every layout,
with every malformed file refused by file and line; and the real GTSRB classes.tsv."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import GTSRB_ZIP, gtsrb_train_listing

from longtail.data import ImageFolderDataset, build_dataset, make_longtail
from longtail.data.datasets.classnames import ClassNamesError, display_names, read_class_names


FOLDERS = {"00-speed-limit-20": "Speed limit 20", "01-stop": "Stop and give way", "02-yield": "Yield"}
TSV = "".join(f"{folder}\t{name}\n" for folder, name in FOLDERS.items())


def make_folder(root: Path, counts=(3, 2, 1), split: str | None = "train") -> Path:
    """root[/split]/<folder>/<n>.png (empty files: the dataset only lists them)."""
    base = root / split if split else root
    for folder, count in zip(FOLDERS, counts):
        (base / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            (base / folder / f"{i:03d}.png").write_bytes(b"")
    return base


def test_split_layout_reads_root_classes_tsv_for_every_split(tmp_path):
    make_folder(tmp_path, split="train")
    make_folder(tmp_path, counts=(1, 1, 1), split="test")
    (tmp_path / "classes.tsv").write_text(TSV, encoding="utf-8")
    train = build_dataset("imagefolder", "train", root=tmp_path)
    test = build_dataset("imagefolder", "test", root=tmp_path)
    assert train.classes == list(FOLDERS.values()) and train.folders == list(FOLDERS)
    # The test split keeps the training class list (label j = the same class) and its names.
    assert test.classes == train.classes and test.folders == train.folders and test.class_counts() == [1, 1, 1]
    # The names survive subsetting (a long-tailed split) and name the class a refusal is about.
    lt = build_dataset("imagefolder", "train", root=tmp_path, imbalance_factor=3)
    assert lt.classes == list(FOLDERS.values())
    with pytest.raises(ValueError, match="class 0 'Speed limit 20' needs 5 images"):
        make_longtail(train, 2, max_per_class=5)
    # names_file=None keeps the folder names.
    assert build_dataset("imagefolder", "train", root=tmp_path, names_file=None).classes == list(FOLDERS)


def test_single_folder_layout_and_direct_dataset(tmp_path):
    base = make_folder(tmp_path, split=None)
    (base / "classes.tsv").write_text(TSV, encoding="utf-8")
    everything = build_dataset("imagefolder", "all", root=tmp_path)
    assert everything.classes == list(FOLDERS.values()) and len(everything) == 6  # classes.tsv is not a class
    direct = ImageFolderDataset(base)
    assert direct.classes == list(FOLDERS.values()) and direct.names_file == base / "classes.tsv"
    assert ImageFolderDataset(base, names_file=None).classes == list(FOLDERS)
    # A subset of the class folders takes the names of those folders only.
    assert ImageFolderDataset(base, classes=["02-yield", "00-speed-limit-20"]).classes == ["Yield", "Speed limit 20"]
    with pytest.raises(FileNotFoundError, match="nowhere.tsv"):
        ImageFolderDataset(base, names_file=tmp_path / "nowhere.tsv")


def test_byte_order_mark_crlf_blank_lines_and_spaces_are_accepted(tmp_path):
    path = tmp_path / "classes.tsv"
    path.write_bytes(b"\xef\xbb\xbf00-speed-limit-20\t Speed limit 20 \r\n\r\n01-stop\tStop and give way\r\n02-yield\tYield")
    assert display_names(path, list(FOLDERS)) == list(FOLDERS.values())


BAD_FILES = [
    ("00-speed-limit-20\tSpeed limit 20\n01-stop\n02-yield\tYield\n", r"line 2: expected 2 tab-separated fields.*got 1"),
    ("00-speed-limit-20\tSpeed\tlimit\n01-stop\tStop\n02-yield\tYield\n", r"line 1: expected 2 .*got 3"),
    ("00-speed-limit-20  Speed limit 20\n01-stop\tStop\n02-yield\tYield\n", r"line 1: expected 2 .*got 1"),  # spaces, no tab
    ("00-speed-limit-20\t\n01-stop\tStop\n02-yield\tYield\n", r"line 1: empty display name"),
    (TSV + "01-stop\tStop again\n", r"line 4: folder '01-stop' is already named on line 2"),
    (TSV + "03-new\tYield\n", r"line 4: display name 'Yield' is already used on line 3"),
    (TSV + "99-typo\tSomething\n", r"line 4: folder '99-typo' does not exist"),
    ("00-speed-limit-20\tSpeed limit 20\n01-stop\tStop\n", r"1 class folder\(s\) have no line: 02-yield"),
    ("\n\n", r"names no class"),
]


@pytest.mark.parametrize("text, message", BAD_FILES)
def test_malformed_files_are_refused_naming_file_and_line(tmp_path, text, message):
    base = make_folder(tmp_path, split=None)
    (base / "classes.tsv").write_text(text, encoding="utf-8")
    with pytest.raises(ClassNamesError, match=message) as caught:
        ImageFolderDataset(base)
    assert str(base / "classes.tsv") in str(caught.value)
    with pytest.raises(ClassNamesError):  # the registry path refuses it too, before any training
        build_dataset("imagefolder", "all", root=tmp_path)


def test_non_utf8_file_is_refused(tmp_path):
    base = make_folder(tmp_path, split=None)
    (base / "classes.tsv").write_bytes("00-speed-limit-20\tSpeed\n01-stop\tStraße\n".encode("latin-1"))
    with pytest.raises(ClassNamesError, match=r"(?s)classes.tsv.*line 2: not UTF-8 text.*save the file as UTF-8"):
        ImageFolderDataset(base)


def test_all_problems_are_listed_together(tmp_path):
    path = tmp_path / "classes.tsv"
    path.write_text("a\n" + "b\tB\n" + "b\tC\n" + "c\tB\n", encoding="utf-8")
    with pytest.raises(ClassNamesError) as caught:
        read_class_names(path)
    assert [p.split(":")[0] for p in caught.value.problems] == ["line 1", "line 3", "line 4"]


@pytest.mark.skipif(not GTSRB_ZIP.is_file(), reason="shared GTSRB zip not available")
def test_real_gtsrb_classes_tsv_names_every_folder(tmp_path):
    folders, _, _, names_file = gtsrb_train_listing()
    (tmp_path / "classes.tsv").write_bytes(names_file)
    names = display_names(tmp_path / "classes.tsv", folders)
    assert len(names) == len(set(names)) == 43
    assert folders[14] == "14-stop-and-give-way" and names[14] == "Stop and give way"
