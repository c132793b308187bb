"""Grouped validation hold-out (data/splits/groups.py): no group on both sides, the documented counts
(at least N per class, whole groups in one seeded order), clear refusals, and real GTSRB tracks."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import GTSRB_ZIP, gtsrb_train_listing

from longtail.data.splits.groups import GroupError, groups_from_file, groups_from_pattern, hold_out_groups


def synthetic(seed: int = 0, num_classes: int = 5):
    """Classes of 4..12 groups of 1..9 images each, shuffled; names 'gGGG_fFF.png' (GTSRB-like,
    group numbers restarting in every class)."""
    rng = np.random.RandomState(seed)
    labels, names = [], []
    for c in range(num_classes):
        for g in range(rng.randint(4, 13)):
            for f in range(rng.randint(1, 10)):
                labels.append(c)
                names.append(f"{g:03d}_{f:02d}.png")
    order = rng.permutation(len(labels))
    return np.array(labels)[order], [names[i] for i in order]


def reference_class_scope(labels, keys, per_class, seed):
    """Independent computation of the documented rule for scope='class': visit (class, key) groups
    in default_rng(seed).permutation of their sorted order; each class keeps its smallest group (the
    first visited among equals) and holds out the shortest prefix of the others reaching N (numpy
    cumsum + searchsorted)."""
    unique = sorted(set(zip(labels.tolist(), keys)))
    visit = np.random.default_rng(seed).permutation(len(unique))
    held = set()
    for c in sorted(set(labels.tolist())):
        in_class = [unique[g] for g in visit if unique[g][0] == c]
        sizes = np.array([sum(1 for l, k in zip(labels.tolist(), keys) if (l, k) == group) for group in in_class])
        reserve = int(np.argmin(sizes))  # argmin returns the first of equal minima
        in_class = in_class[:reserve] + in_class[reserve + 1:]
        sizes = np.delete(sizes, reserve)
        taken = int(np.searchsorted(np.cumsum(sizes), per_class) + 1)  # first prefix reaching N
        assert taken <= len(in_class)
        held |= set(in_class[:taken])
    return np.array([i for i, group in enumerate(zip(labels.tolist(), keys)) if group in held])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("per_class", [1, 5, 9])
def test_class_scope_matches_the_documented_rule_and_never_leaks(seed, per_class):
    labels, names = synthetic(seed)
    keys = groups_from_pattern(names, r"(\d+)_\d+")
    split = hold_out_groups(labels, keys, per_class, seed)
    np.testing.assert_array_equal(split.held_out, reference_class_scope(labels, keys, per_class, seed))
    assert np.array_equal(np.sort(np.concatenate([split.train, split.held_out])), np.arange(len(labels)))
    groups = list(zip(labels.tolist(), keys))
    assert not {groups[i] for i in split.train} & {groups[i] for i in split.held_out}
    held = np.bincount(labels[split.held_out], minlength=labels.max() + 1)
    assert split.held_per_class == tuple(held.tolist()) and (held >= per_class).all()
    assert (np.bincount(labels[split.train], minlength=labels.max() + 1) > 0).all()


def test_same_key_in_two_classes_is_two_groups_unless_scope_dataset():
    labels = np.array([0] * 6 + [1] * 6)
    keys = ["a", "a", "b", "b", "c", "c"] * 2  # a / b / c in both classes
    by_class = hold_out_groups(labels, keys, 2, seed=4)
    assert by_class.groups_total == 6 and by_class.held_per_class == (2, 2)
    across = hold_out_groups(labels, keys, 2, seed=4, scope="dataset")
    assert across.groups_total == 3 and across.groups_held_out == 1 and across.held_per_class == (2, 2)
    held_keys = {keys[i] for i in across.held_out}
    assert held_keys.isdisjoint({keys[i] for i in across.train})


def test_dataset_scope_group_spanning_classes_moves_whole_and_may_exceed_n():
    # Patient 'p' has images of both classes: held out, it brings 4 of class 1 although 1 was asked.
    labels = np.array([0, 0, 1, 1, 1, 1, 0, 1, 1])
    keys = ["p", "p", "p", "p", "p", "p", "q", "r", "r"]
    for seed in range(6):
        split = hold_out_groups(labels, keys, 1, seed, scope="dataset")
        held_keys = {keys[i] for i in split.held_out}
        assert held_keys.isdisjoint({keys[i] for i in split.train}) and min(split.held_per_class) >= 1
    with_p = [s for s in (hold_out_groups(labels, keys, 1, seed, scope="dataset") for seed in range(20))
              if "p" in {keys[i] for i in s.held_out}]
    assert with_p and all(s.held_per_class == (2, 4) for s in with_p)


def test_exact_multiples_give_exact_counts_and_the_result_ignores_file_order():
    labels = np.repeat([0, 1, 2], 90)
    keys = [f"{t}" for t in np.repeat(np.arange(9), 30)]  # 3 groups of 30 per class
    split = hold_out_groups(labels, keys, 30, seed=7)
    assert split.held_per_class == (30, 30, 30) and split.groups_held_out == 3
    order = np.random.RandomState(0).permutation(len(labels))
    shuffled = hold_out_groups(labels[order], [keys[i] for i in order], 30, seed=7)
    assert sorted(order[shuffled.held_out].tolist()) == split.held_out.tolist()
    drawn = {tuple(hold_out_groups(labels, keys, 30, seed=seed).held_out.tolist()) for seed in range(10)}
    assert len(drawn) > 1  # the seed matters (27 possible draws)


def test_smallest_group_stays_for_training_and_impossible_classes_are_refused_by_name():
    # Class 1 has groups of 5 and 1: N = 2 can only be met by holding out the 5-group and keeping
    # the 1-group for training, whatever the seed.
    labels = np.array([0] * 4 + [1] * 6)
    keys = ["a", "b", "c", "d"] + ["x"] * 5 + ["y"]
    for seed in range(8):
        split = hold_out_groups(labels, keys, 2, seed)
        assert split.held_per_class == (2, 5) and {keys[i] for i in split.train if labels[i] == 1} == {"y"}
    with pytest.raises(GroupError, match=r"class 1 'trucks': 6 image\(s\) in 2 group\(s\), 5 could be held out whole "
                                         r"\(its smallest group, 1 image\(s\), stays for training\)"):
        hold_out_groups(labels, keys, 6, seed=0, class_names=["cars", "trucks"])
    with pytest.raises(GroupError, match=r"class 0 'cars': 3 image\(s\) in 1 group"):
        hold_out_groups(np.array([0, 0, 0, 1, 1]), ["t", "t", "t", "u", "v"], 1, 0, class_names=["cars", "trucks"])


@pytest.mark.parametrize("kwargs, message", [
    ({"per_class": 0}, "per_class must be a positive integer"),
    ({"per_class": 2.5}, "per_class must be a positive integer"),
    ({"seed": -1}, "seed must be a non-negative integer"),
    ({"scope": "patient"}, "unknown group scope 'patient'"),
])
def test_bad_arguments(kwargs, message):
    arguments = {"labels": [0, 0, 1, 1], "groups": ["a", "b", "c", "d"], "per_class": 1, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        hold_out_groups(**arguments)


def test_pattern_errors_name_the_files():
    assert groups_from_pattern(["v1/f001.jpg", "v2/f001.jpg"], r"^([^/]+)/") == ["v1", "v2"]
    assert groups_from_pattern(["s3-p7.png"], r"s(\d+)-p(\d+)") == ["3/7"]
    assert groups_from_pattern(["abc123.png"], r"\d+") == ["123"]  # no capture group: the whole match
    with pytest.raises(GroupError, match=r"(?s)matches no part of 1 of 2.*readme\.png"):
        groups_from_pattern(["00001_00002.png", "readme.png"], r"(\d+)_\d+")
    with pytest.raises(GroupError, match="not a valid regular expression"):
        groups_from_pattern(["a.png"], r"(\d+")


def test_group_file(tmp_path):
    path = tmp_path / "groups.tsv"
    path.write_text("c0/a.png\tpatient1\nc0/b.png\tpatient1\n\nc1/c.png\tpatient2\nc1/unused.png\tpatient3\n",
                    encoding="utf-8")
    assert groups_from_file(["c0/a.png", "c1/c.png", "c0/b.png"], path) == ["patient1", "patient2", "patient1"]
    with pytest.raises(GroupError, match=r"(?s)1 of 2 image\(s\) have no line.*c1/d\.png"):
        groups_from_file(["c0/a.png", "c1/d.png"], path)
    for text, message in [
        ("c0/a.png\tp1\nc0/b.png\n", r"line 2: expected '<image name><TAB><group>'"),
        ("c0/a.png\tp1\tx\n", r"line 1: expected"),
        ("c0/a.png\tp1\nc0/a.png\tp2\n", r"line 2: 'c0/a.png' is already given a group on line 1"),
        ("\n", "lists no image"),
    ]:
        path.write_text(text, encoding="utf-8")
        with pytest.raises(GroupError, match=message) as caught:
            groups_from_file(["c0/a.png"], path)
        assert str(path) in str(caught.value)
    path.write_bytes("c0/a.png\tp1\nc0/b.png\tPatientin Müller\n".encode("latin-1"))
    with pytest.raises(GroupError, match=r"groups.tsv: line 2: not UTF-8"):
        groups_from_file(["c0/a.png"], path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        groups_from_file(["c0/a.png"], tmp_path / "nowhere.tsv")


@pytest.mark.skipif(not GTSRB_ZIP.is_file(), reason="shared GTSRB zip not available")
def test_gtsrb_tracks_are_held_out_whole():
    folders, names, labels, _ = gtsrb_train_listing()
    keys = groups_from_pattern(names, r"(\d+)_\d+")
    split = hold_out_groups(labels, keys, 30, seed=0)
    # 1,307 tracks of 30 frames except track 00019 of class 33 (29 frames): that one is its class's
    # smallest group, kept for training, so N = 30 is exactly one whole track in every class.
    assert split.groups_total == 1307 and split.groups_held_out == 43
    assert split.held_per_class == (30,) * 43 and split.held_out.size == 1290
    tracks = list(zip(labels.tolist(), keys))
    assert (33, "00019") in {tracks[i] for i in split.train}
    assert not {tracks[i] for i in split.train} & {tracks[i] for i in split.held_out}
