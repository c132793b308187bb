"""The data keys of issue 19 in the engine: data.class_order / data.n_max reach the long-tail
generator, grouped validation (data.validation_group_*) is carved whole from the full training split
before the generator and recorded, and bad values are refused before any work (exit 2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from longtail.cli import main
from longtail.engine.config import ConfigError
from longtail.engine.config.recipes import build_config
from longtail.engine.runtime.distributed import DistributedContext
from longtail.engine.training.data_setup import _build_sets, image_names

# Tracks (groups) per class folder and frames per track: class c1 has the most images, c0 the fewest,
# so frequency order differs from index order.
TRACKS = {"c0": [4, 4, 4, 4], "c1": [5] * 8, "c2": [3, 3, 3, 3, 3, 3], "c3": [6, 6, 6, 6, 6]}


def write_tracks(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for folder, tracks in TRACKS.items():
            (root / split / folder).mkdir(parents=True)
            for track, frames in enumerate(tracks if split == "train" else [2]):
                for frame in range(frames):
                    pixels = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
                    Image.fromarray(pixels).save(root / split / folder / f"{track:05d}_{frame:05d}.png")


@pytest.fixture(scope="module")
def track_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tracks")
    write_tracks(root)
    return root


def sets_for(root: Path, *overrides: str):
    config, _ = build_config(overrides=["data.name=imagefolder", f"data.root={root}", *overrides])
    return _build_sets(config, DistributedContext())


def expected_longtail(counts: list[int], factor: float, n_max: int) -> list[int]:
    """LDAM-DRW's rule written out: the class with the i-th most images (ties: lower index first) gets
    int(n_max * (1 / factor) ** (i / (K - 1)))."""
    k = len(counts)
    ranked = sorted(range(k), key=lambda j: (-counts[j], j))
    target = [0] * k
    for i, j in enumerate(ranked):
        target[j] = int(n_max * (1 / factor) ** (i / (k - 1)))
    return target


def track_of(path: str) -> tuple[str, str]:
    return Path(path).parent.name, Path(path).name.split("_")[0]


def test_class_order_and_n_max_reach_the_generator(track_root):
    full = [sum(t) for t in TRACKS.values()]  # 16, 40, 18, 30
    sets = sets_for(track_root, "data.imbalance_factor=4", "data.class_order=frequency", "data.n_max=16")
    counts = np.bincount(sets.train.labels.numpy(), minlength=4).tolist()
    assert counts == expected_longtail(full, 4, 16) == [4, 16, 6, 10]
    record = sets.split_info["longtail"]
    assert record["class_order"] == "frequency" and record["max_per_class"] == 16
    # Index order with the same n_max would ask class 0 (16 images) for 16 and class 3 for 4: a different split.
    index = sets_for(track_root, "data.imbalance_factor=4", "data.n_max=16")
    assert np.bincount(index.train.labels.numpy(), minlength=4).tolist() == [16, 10, 6, 4]


def test_a_class_short_of_its_target_is_refused_by_name(track_root):
    with pytest.raises(ValueError, match="c0"):
        sets_for(track_root, "data.imbalance_factor=4", "data.n_max=17")  # index order: class 0 (16) must give 17


@pytest.mark.parametrize("source", ["pattern", "file"])
def test_grouped_validation_is_whole_tracks_carved_before_the_generator(track_root, tmp_path, source):
    if source == "pattern":
        group = [r"data.validation_group_pattern=(\d+)_\d+\.png$"]
    else:
        lines = [f"{folder}/{track:05d}_{frame:05d}.png\t{folder}-{track}"
                 for folder, tracks in TRACKS.items() for track, frames in enumerate(tracks) for frame in range(frames)]
        (tmp_path / "groups.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        group = [f"data.validation_group_file={tmp_path / 'groups.tsv'}"]
    sets = sets_for(track_root, "data.imbalance_factor=4", "data.class_order=frequency", "data.n_max=12",
                    "data.validation_per_class=6", *group)
    train_tracks = {track_of(p) for p in sets.train.paths}
    val_tracks = {track_of(p) for p in sets.val.paths}
    assert not train_tracks & val_tracks
    # Whole tracks: every held-out track has all its frames in validation.
    for folder, track in val_tracks:
        frames = TRACKS[folder][int(track)]
        assert sum(track_of(p) == (folder, track) for p in sets.val.paths) == frames
    val_counts = np.bincount(sets.val.labels.numpy(), minlength=4)
    assert (val_counts >= 6).all()
    # Carved from the full split first: the generator then ranks and samples what is left.
    remaining = [sum(t) - int(v) for t, v in zip(TRACKS.values(), val_counts)]
    assert np.bincount(sets.train.labels.numpy(), minlength=4).tolist() == expected_longtail(remaining, 4, 12)
    record = sets.split_info["validation"]
    assert record["from"] == "full train, before the long-tail generator"
    assert record["held_per_class"] == val_counts.tolist() and record["size"] == len(sets.val)
    assert record[f"group_{source}"] and record["scope"] == "class"


def test_pattern_and_file_naming_the_same_groups_give_the_same_split(track_root, tmp_path):
    lines = [f"{folder}/{track:05d}_{frame:05d}.png\t{track}"
             for folder, tracks in TRACKS.items() for track, frames in enumerate(tracks) for frame in range(frames)]
    (tmp_path / "groups.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    by_pattern = sets_for(track_root, "data.validation_per_class=5", r"data.validation_group_pattern=(\d+)_")
    by_file = sets_for(track_root, "data.validation_per_class=5", f"data.validation_group_file={tmp_path / 'groups.tsv'}")
    assert by_pattern.val.paths == by_file.val.paths and by_pattern.train.paths == by_file.train.paths
    assert by_pattern.split_info["validation"]["from"] == "train"  # no long-tail generator here


def test_image_names_are_class_folder_and_file(track_root):
    sets = sets_for(track_root)
    assert image_names(sets.train)[:2] == ["c0/00000_00000.png", "c0/00000_00001.png"]


def test_without_validation_per_class_the_group_pattern_changes_nothing(track_root):
    shape = ["data.imbalance_factor=4", "data.class_order=frequency", "data.n_max=16"]
    plain = sets_for(track_root, *shape)
    grouped = sets_for(track_root, *shape, r"data.validation_group_pattern=(\d+)_")
    assert plain.train.paths == grouped.train.paths and grouped.val is None


@pytest.mark.parametrize("override, message", [
    ("data.class_order=size", "data.class_order='size' is not valid; choose one of: index, frequency"),
    ("data.n_max=0", "data.n_max=0 is out of range; valid: >= 1"),
    ("data.validation_group_scope=patient", "data.validation_group_scope='patient' is not valid"),
    ("data.validation_group_pattern=(unclosed", "is not a valid regular expression"),
    ("data.validation_group_file=/nonexistent/groups.tsv", "does not exist"),
])
def test_bad_values_are_refused_before_any_work(override, message, tmp_path, capsys):
    with pytest.raises(ConfigError, match=None) as error:
        build_config(overrides=[override])
    assert message in str(error.value)
    assert main(["train", override, f"train.output_dir={tmp_path}"]) == 2
    assert message in capsys.readouterr().err and not any(tmp_path.iterdir())


def test_pattern_and_file_together_are_refused(tmp_path):
    (tmp_path / "g.tsv").write_text("a\tb\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="alternatives"):
        build_config(overrides=[r"data.validation_group_pattern=(\d+)_", f"data.validation_group_file={tmp_path / 'g.tsv'}"])


def test_shaping_keys_without_a_long_tail_are_refused(track_root):
    with pytest.raises(ConfigError, match="set data.imbalance_factor"):
        sets_for(track_root, "data.n_max=10")
    with pytest.raises(ConfigError, match="takes no imbalance factor"):
        _build_sets(build_config(overrides=["data.name=mnist", "data.root=/nonexistent", "data.class_order=frequency"])[0],
                    DistributedContext())


def test_groups_need_file_names(track_root):
    config, _ = build_config(overrides=["data.validation_per_class=5", r"data.validation_group_pattern=(\d+)_"])
    with pytest.raises(ConfigError, match="without file names"):
        _build_sets(config, DistributedContext())
