"""List-file datasets (classifier-balancing format), image folders and analyze()."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from longtail.data import (
    ImageFolderDataset,
    ListFileDataset,
    ListFileError,
    analyze,
    build_dataset,
    gini_coefficient,
    make_longtail,
    read_list_file,
)

SHARED = Path(os.environ.get("LONGTAIL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
PLACES_TRAIN = SHARED / "lt-lists" / "Places_LT_train.txt"


@pytest.fixture(scope="module")
def places_train():
    if not PLACES_TRAIN.is_file():
        pytest.skip(f"{PLACES_TRAIN} not available")
    return read_list_file(PLACES_TRAIN, num_classes=365)


def test_places_lt_list_is_read_byte_compatibly(places_train):
    paths, labels = places_train
    # classifier-balancing: img_path = line.split()[0], label = int(line.split()[1]), file order.
    lines = PLACES_TRAIN.read_text().splitlines()
    assert paths == [line.split()[0] for line in lines]
    assert labels.tolist() == [int(line.split()[1]) for line in lines]
    assert len(paths) == 62_500 and labels.dtype == np.int64


def test_places_lt_statistics_match_an_independent_count(places_train):
    _, labels = places_train
    counts = Counter(int(line.split()[1]) for line in PLACES_TRAIN.read_text().splitlines())
    many = sum(1 for n in counts.values() if n > 100)
    few = sum(1 for n in counts.values() if n < 20)
    medium = len(counts) - many - few
    report = analyze(labels, num_classes=365)
    assert (report.num_classes, report.max_count, report.min_count) == (365, 4980, 5)
    assert report.imbalance_factor == pytest.approx(4980 / 5)
    assert (report.num_many, report.num_medium, report.num_few) == (many, medium, few)
    assert many + medium + few == 365 and few > 0 and medium > 0  # the split is non-trivial
    # Gini via the O(K^2) definition.
    x = np.array([counts[c] for c in range(365)], dtype=float)
    assert report.gini == pytest.approx(np.abs(x[:, None] - x[None, :]).sum() / (2 * 365**2 * x.mean()))
    assert analyze(class_counts=report.class_counts).to_dict() == report.to_dict()
    assert "Many (>100)" in str(report)


def test_analyze_thresholds_are_configurable_and_inputs_explicit():
    report = analyze(class_counts=[500, 100, 50, 20, 19, 0], many_threshold=50, few_threshold=10)
    assert report.many_classes == [0, 1] and report.medium_classes == [2, 3, 4] and report.few_classes == [5]
    assert report.empty_classes == [5] and report.imbalance_factor == float("inf")
    default = analyze(class_counts=[500, 101, 100, 20, 19])
    assert (default.many_classes, default.medium_classes, default.few_classes) == ([0, 1], [2, 3], [4])
    assert gini_coefficient(np.array([5, 5, 5])) == 0.0
    with pytest.raises(ValueError, match="exactly one"):
        analyze([1, 2], class_counts=[1, 2])
    with pytest.raises(ValueError, match="non-negative whole"):
        analyze(class_counts=[1.5, 2])


def make_tree(root: Path, per_class=(3, 2, 1), fmt="PNG") -> list[tuple[str, int]]:
    """Real images on disk: root/train/<class>/<n>.png|jpg, returns (relative path, label) pairs."""
    entries = []
    rng = np.random.RandomState(0)
    for label, count in enumerate(per_class):
        folder = root / "train" / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            name = f"{i:03d}.{'png' if fmt == 'PNG' else 'jpg'}"
            pixels = rng.randint(0, 256, size=(8 + label, 10, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / name, format=fmt)
            entries.append((f"train/class{label}/{name}", label))
    return entries


def write_list(path: Path, entries) -> Path:
    path.write_text("".join(f"{p} {l}\n" for p, l in entries))
    return path


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_list_file_dataset_opens_images_and_applies_transform(tmp_path, fmt):
    entries = make_tree(tmp_path, fmt=fmt)
    list_file = write_list(tmp_path / "my_train.txt", entries)
    seen = []

    def transform(image):
        seen.append(image.mode)
        return torch.as_tensor(np.array(image)).permute(2, 0, 1)

    dataset = ListFileDataset(tmp_path, list_file, transform=transform)
    assert len(dataset) == 6 and dataset.labels.tolist() == [0, 0, 0, 1, 1, 2]
    assert dataset.classes == ["class0", "class1", "class2"] and dataset.class_counts() == [3, 2, 1]
    image, label = dataset[4]
    assert label == 1 and image.shape == (3, 9, 10) and seen == ["RGB"]
    small = dataset.subset([5, 0])
    assert small.labels.tolist() == [2, 0] and small.relative_paths == [entries[5][0], entries[0][0]]
    assert len(dataset.list_sha256) == 64


def test_list_file_problems_are_reported_together_with_line_numbers(tmp_path):
    lines = [
        "train/a/1.jpg 0",
        "",  # blank lines are harmless
        "train/a/2.jpg",
        "train/a/3.jpg one",
        "train/a/4.jpg 7",
        "../outside.jpg 1",
        "/etc/passwd 1",
        "train/../../x.jpg 1",
        "train/a/5.jpg 1 extra",
        "train/a/6.jpg -1",
    ]
    list_file = tmp_path / "bad.txt"
    list_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(ListFileError) as error:
        read_list_file(list_file, num_classes=5)
    message = str(error.value)
    for fragment in ("line 3: expected 'path label'", "line 4: label 'one'", "line 5: label 7 out of range (valid 0..4)",
                     "line 6: '..' component", "line 7: absolute path", "line 8: '..' component", "line 9: expected",
                     "line 10: label '-1'"):
        assert fragment in message
    assert len(error.value.problems) == 8 and "(8 problem(s))" in message


def test_missing_images_are_reported_together_or_deferred(tmp_path):
    entries = make_tree(tmp_path)
    list_file = write_list(tmp_path / "l.txt", entries + [(f"train/class0/gone{i}.png", 0) for i in range(12)])
    with pytest.raises(ListFileError, match=r"12 of 18 image files are missing") as error:
        ListFileDataset(tmp_path, list_file)
    assert len(error.value.problems) == 12 and "... and 2 more" in str(error.value)
    deferred = ListFileDataset(tmp_path, list_file, check_files=False)
    assert deferred[0][1] == 0
    with pytest.raises(FileNotFoundError, match="gone0.png"):
        deferred[6]
    with pytest.raises(FileNotFoundError, match="list file"):
        ListFileDataset(tmp_path, tmp_path / "nope.txt")


def test_registry_places_lt_over_an_image_tree(tmp_path):
    entries = make_tree(tmp_path / "images", per_class=(2, 1, 1))
    lists = tmp_path / "lists"
    lists.mkdir()
    write_list(lists / "Places_LT_val.txt", entries)
    with pytest.warns(UserWarning, match="not byte-identical to the published"):
        dataset = build_dataset("places-lt", "val", root=tmp_path / "images", list_dir=lists)
    assert len(dataset) == 4 and dataset.num_classes == 365 and dataset.class_counts()[:3] == [2, 1, 1]
    with pytest.raises(FileNotFoundError, match="classifier-balancing.*list_dir="):
        build_dataset("places-lt", "train", root=tmp_path / "images", list_dir=lists)
    with pytest.raises(ValueError, match="needs root="):
        build_dataset("imagenet-lt", "train")
    write_list(lists / "my_inat_val.txt", entries)  # an unknown name: no byte check
    inat = build_dataset("inat2018", "test", root=tmp_path / "images", list_file=lists / "my_inat_val.txt")
    assert inat.num_classes == 8142  # iNat's "test" is its val list


def test_real_published_list_passes_the_byte_check(places_train, tmp_path):
    # The real Places-LT train list is accepted without a warning (files themselves deferred).
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset = build_dataset("places-lt", "train", root=tmp_path, list_dir=PLACES_TRAIN.parent, check_files=False)
    assert len(dataset) == 62_500 and dataset.classes[0] == "airfield"


def test_image_folder_dataset_long_tail_and_analyze(tmp_path):
    make_tree(tmp_path, per_class=(4, 4, 4))
    (tmp_path / "train" / "class1" / "notes.txt").write_text("not an image")
    dataset = ImageFolderDataset(tmp_path / "train")
    assert dataset.classes == ["class0", "class1", "class2"] and dataset.class_counts() == [4, 4, 4]
    assert dataset.paths == sorted(dataset.paths)
    split = make_longtail(dataset.labels, 4)
    lt = dataset.subset(split.indices, longtail_split=split)
    assert lt.class_counts() == [4, 2, 1] and lt.longtail_split.index_hash == split.index_hash
    image, label = lt[0]
    assert label == 0 and image.size == (10, 8)
    assert analyze(lt).class_counts == [4, 2, 1]
    via_registry = build_dataset("imagefolder", "train", root=tmp_path, imbalance_factor=4)
    assert via_registry.class_counts() == [4, 2, 1]
    assert via_registry.longtail_split.index_hash == split.index_hash
    with pytest.raises(FileNotFoundError, match="split='all'"):
        build_dataset("imagefolder", "val", root=tmp_path)
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(ValueError, match="no images.*empty"):
        ImageFolderDataset(tmp_path / "train")
