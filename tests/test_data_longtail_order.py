"""The LDAM-DRW generator on naturally imbalanced sources: class_order='frequency', explicit n_max,
refusals by class name; pinned against a numpy transcription and the real GTSRB counts."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import GTSRB_ZIP, gtsrb_train_listing

from longtail.data import make_longtail
from longtail.data.splits.imbalance import frequency_rank


def reference_frequency_split(labels: np.ndarray, imbalance_factor: float, n_max: float, seed: int):
    """Independent transcription: rank by count (descending, ties by index) with numpy's stable
    argsort, LDAM-DRW's count formula per rank, then LDAM-DRW's global-seed per-class shuffle in
    class-index order keeping each class's target."""
    state = np.random.get_state()
    try:
        num_classes = int(labels.max()) + 1
        available = np.bincount(labels, minlength=num_classes)
        ranked = np.argsort(-available, kind="stable")
        per_rank = [int(n_max * ((1.0 / imbalance_factor) ** (r / (num_classes - 1.0)))) for r in range(num_classes)]
        target = np.empty(num_classes, dtype=np.int64)
        target[ranked] = per_rank
        np.random.seed(seed)
        selected = []
        for the_class in range(num_classes):
            idx = np.where(labels == the_class)[0]
            np.random.shuffle(idx)
            selected.append(idx[: target[the_class]])
        return np.concatenate(selected), target.tolist()
    finally:
        np.random.set_state(state)


def natural_labels(counts, seed: int = 3) -> np.ndarray:
    return np.random.RandomState(seed).permutation(np.repeat(np.arange(len(counts)), counts))


@pytest.mark.parametrize("seed", [0, 11])
@pytest.mark.parametrize("counts, imbalance_factor, n_max", [
    ((30, 90, 60, 90, 45, 200, 30), 10, 80),  # ties at 90 and at 30: index order breaks them
    ((500, 120, 340, 75, 75, 900), 50, 300.5),
])
def test_frequency_order_matches_numpy_transcription(counts, imbalance_factor, n_max, seed):
    labels = natural_labels(counts)
    split = make_longtail(labels, imbalance_factor, seed=seed, max_per_class=n_max, class_order="frequency")
    reference, target = reference_frequency_split(labels, imbalance_factor, n_max, seed)
    np.testing.assert_array_equal(split.indices, reference)
    assert list(split.counts) == target and np.bincount(labels[split.indices]).tolist() == target
    assert split.to_dict()["class_order"] == "frequency"


def test_frequency_rank_breaks_ties_by_index():
    assert frequency_rank([5, 9, 5, 9, 1]).tolist() == [1, 3, 0, 2, 4]


def test_default_stays_ldam_drw_and_its_record_unchanged():
    # Index order with the default n_max is the published generator (tests/test_data_longtail.py pins
    # it against LDAM-DRW); the record keeps its keys so old runs' data fingerprints still match.
    labels = natural_labels((40,) * 6)
    default = make_longtail(labels, 10, seed=2)
    explicit = make_longtail(labels, 10, seed=2, class_order="index", max_per_class=len(labels) / 6)
    np.testing.assert_array_equal(default.indices, explicit.indices)
    assert "class_order" not in default.to_dict()
    # On a balanced source every class ties, so frequency order is index order.
    np.testing.assert_array_equal(make_longtail(labels, 10, seed=2, class_order="frequency").indices, default.indices)


def test_refusal_names_the_short_class_and_a_safe_n_max():
    labels = natural_labels((100, 20, 100, 100))
    names = ["cars", "trucks", "bikes", "buses"]
    with pytest.raises(ValueError, match=r"class 1 'trucks' needs 46 images \(class order 'index', n_max 100\) but has only 20"
                       r".*Pass max_per_class <= 45 .*class_order='frequency'"):
        make_longtail(labels, 10, max_per_class=100, class_names=names)
    # The suggested bound is the largest integer n_max that works in this order:
    # int(45 * 0.1 ** (1/3)) = int(20.89) = 20 fits, int(46 * 0.4642) = int(21.35) = 21 does not.
    assert make_longtail(labels, 10, max_per_class=45).counts[1] == 20
    with pytest.raises(ValueError, match="trucks"):
        make_longtail(labels, 10, max_per_class=46, class_names=names)
    # Frequency order gives the small class the smallest target: 100 * 0.1 = 10 <= 20.
    assert make_longtail(labels, 10, max_per_class=100, class_order="frequency").counts[1] == 10
    with pytest.raises(ValueError, match="unknown class order 'size'"):
        make_longtail(labels, 10, class_order="size")


@pytest.mark.skipif(not GTSRB_ZIP.is_file(), reason="shared GTSRB zip not available")
def test_gtsrb_lt_protocol_has_9523_images_from_1000_to_10():
    folders, names, labels, _ = gtsrb_train_listing()
    assert len(labels) == 39_209 and len(folders) == 43
    split = make_longtail(labels, 100, seed=0, max_per_class=1000, class_order="frequency")
    reference, target = reference_frequency_split(labels, 100, 1000, 0)
    np.testing.assert_array_equal(split.indices, reference)
    assert len(split) == sum(target) == 9_523
    assert max(split.counts) == 1000 and min(split.counts) == 10
    # The largest class (2,250 images) gets 1000; class 0 (210 images, tied smallest) gets a tail count.
    available = np.bincount(labels)
    assert split.counts[int(np.argmax(available))] == 1000 and split.counts[0] <= 13
    with pytest.raises(ValueError, match="class 0 .*needs 1000 images .* but has only 210"):
        make_longtail(labels, 100, max_per_class=1000)  # index order cannot serve GTSRB
