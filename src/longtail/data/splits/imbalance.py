"""Long-tailed splits of a labelled set: the LDAM-DRW generator (methods.md section 5).

Every CIFAR-LT number in the literature comes from one generator (Cao et al., LDAM-DRW,
``imbalance_cifar.py``), reused unchanged by Balanced Softmax, LA, MiSLAS, CCAR, CAR, ...:

* counts: ``n_i = int(n_max * imb ** (i / (K - 1.0)))`` with ``imb = 1 / IF`` for class index i
  (exponential profile), or ``int(n_max)`` for the first ``K // 2`` classes and
  ``int(n_max * imb)`` for the rest (step profile); ``n_max = len(labels) / K``;
* selection: ``np.random.seed(seed)``; then for each class in index order, take its indices
  (``np.where(labels == c)``), ``np.random.shuffle`` them and keep the first ``n_i``;
  the kept indices are concatenated class by class in that order.

We evaluate the same float expression in the same order (``imb ** (i / (K - 1.0))`` rather
than ``IF ** (-i / (K - 1))``), so the ``int()`` truncations agree for every IF, not just the
published ones. Splits must match the generator exactly or results are not comparable with the
literature: CIFAR-100 (500 / class) gives 10,847 / 12,608 / 19,573 images for IF 100 / 50 / 10,
CIFAR-10 IF 100 gives 12,406, Fashion-MNIST (6,000 / class) IF 100 gives 14,886.

Naturally imbalanced sources (GTSRB: 210 to 2,250 images per class) need two additions, neither of
which changes the default split by a bit:

* ``class_order="frequency"``: the i-th count goes to the class ranked i-th by its own number of
  images (most first, ties by class index) instead of to class i, so the long tail follows the
  natural one and the smallest classes are asked for the fewest images. The per-class shuffles
  still run in class-index order from the one seeded generator, so a class's kept images depend
  only on the seed and its own count.
* an explicit ``max_per_class`` (n_max): ``len(labels) / K`` exceeds what a small class holds.

A class with fewer images than its target is refused by name rather than silently shortened.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

PROFILES = ("exp", "step")
CLASS_ORDERS = ("index", "frequency")


def check_class_order(class_order: str) -> str:
    if class_order not in CLASS_ORDERS:
        raise ValueError(
            f"unknown class order {class_order!r}; valid: index (class i gets the i-th count, as LDAM-DRW), "
            f"frequency (the class with the i-th most images gets it)"
        )
    return class_order


def frequency_rank(available: Any) -> np.ndarray:
    """Class indices from most to fewest images; ties keep the smaller class index first."""
    available = np.asarray(available, dtype=np.int64)
    return np.lexsort((np.arange(available.size), -available))


def _check_imbalance_factor(imbalance_factor: float) -> float:
    try:
        value = float(imbalance_factor)
    except (TypeError, ValueError) as error:
        raise ValueError(f"imbalance_factor must be a number >= 1, got {imbalance_factor!r}") from error
    if not np.isfinite(value) or value < 1:
        raise ValueError(
            f"imbalance_factor is the ratio n_max / n_min and must be >= 1 (e.g. 100), got {imbalance_factor!r}. "
            f"LDAM-DRW's --imb_factor 0.01 is imbalance_factor=100 here."
        )
    return value


def longtail_counts(
    num_classes: int, max_per_class: float, imbalance_factor: float, profile: str = "exp"
) -> list[int]:
    """Per-class image counts n_i of the LDAM-DRW generator (methods.md section 5).

    ``profile="exp"``: ``n_i = int(max_per_class * (1/IF) ** (i / (K - 1)))``.
    ``profile="step"``: ``int(max_per_class)`` for the first ``K // 2`` classes, ``int(max_per_class / IF)``
    for the rest. (For odd K the original code returns only ``2 * (K // 2)`` counts and so drops the
    last class; here the last ``K - K // 2`` classes all get the minority count.)
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not np.isfinite(float(max_per_class)) or float(max_per_class) < 1:
        raise ValueError(f"max_per_class must be >= 1, got {max_per_class!r}")
    imbalance_factor = _check_imbalance_factor(imbalance_factor)
    if profile not in PROFILES:
        raise ValueError(f"unknown imbalance profile {profile!r}; valid profiles: {', '.join(PROFILES)}")
    num_classes = int(num_classes)
    img_max = float(max_per_class)
    imb = 1.0 / imbalance_factor  # LDAM-DRW's imb_factor (0.01 for IF 100)
    if profile == "exp":
        if num_classes == 1:
            return [int(img_max)]
        return [int(img_max * (imb ** (i / (num_classes - 1.0)))) for i in range(num_classes)]
    half = num_classes // 2
    return [int(img_max)] * half + [int(img_max * imb)] * (num_classes - half)


def index_hash(indices: np.ndarray) -> str:
    """sha256 of the indices as little-endian int64 bytes, in selection order."""
    return hashlib.sha256(np.ascontiguousarray(indices, dtype="<i8").tobytes()).hexdigest()


@dataclass(frozen=True, eq=False)
class LongTailSplit:
    """The outcome of ``make_longtail``: which images were kept, and how to prove it.

    ``indices`` (int64, selection order: class 0's kept indices in shuffle order, then class 1's,
    ...), ``counts`` (n_c kept of class c, by class index whatever the order), ``profile``,
    ``imbalance_factor``, ``seed``, ``max_per_class``, ``index_hash`` (sha256 of the int64 index
    bytes) and ``class_order``. Two runs used the same split iff their ``index_hash`` agree (given
    the same source dataset order).
    """

    indices: np.ndarray
    counts: tuple[int, ...]
    profile: str
    imbalance_factor: float
    seed: int
    max_per_class: float
    index_hash: str
    class_order: str = "index"

    @property
    def num_classes(self) -> int:
        return len(self.counts)

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record for run directories (no index list: the hash identifies it).

        ``class_order`` appears only when it is not the default "index": the record is part of a
        run's data fingerprint, which must stay the same for runs made before the option existed.
        """
        record = {
            "profile": self.profile,
            "imbalance_factor": self.imbalance_factor,
            "seed": self.seed,
            "max_per_class": self.max_per_class,
            "num_images": len(self),
            "counts": list(self.counts),
            "index_hash": self.index_hash,
        }
        if self.class_order != "index":
            record["class_order"] = self.class_order
        return record

    def __repr__(self) -> str:
        return (
            f"LongTailSplit(profile={self.profile!r}, imbalance_factor={self.imbalance_factor:g}, seed={self.seed}, "
            f"num_images={len(self)}, counts={list(self.counts[:3])}...{list(self.counts[-2:])}, "
            f"index_hash={self.index_hash[:12]}...)"
        )


def _as_label_array(labels: Any) -> np.ndarray:
    if hasattr(labels, "labels") and not isinstance(labels, np.ndarray):
        labels = labels.labels  # a dataset (InMemoryImages, list-file / image-folder dataset)
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"labels must be 1-D (one class index per image), got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        if np.issubdtype(array.dtype, np.floating) and np.all(np.mod(array, 1) == 0):
            array = array.astype(np.int64)
        else:
            raise ValueError(f"labels must be integer class indices, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def make_longtail(
    labels: Any,
    imbalance_factor: float,
    profile: str = "exp",
    seed: int = 0,
    num_classes: int | None = None,
    max_per_class: float | None = None,
    class_order: str = "index",
    class_names: Any = None,
) -> LongTailSplit:
    """Select a long-tailed subset of a labelled set with the LDAM-DRW generator (methods.md 5).

    ``labels``: class indices 0..K-1 (sequence, numpy array, tensor, or a dataset with ``.labels``).
    ``max_per_class`` (n_max) defaults to ``len(labels) / K`` as in LDAM-DRW, which for a balanced
    set is its per-class count. ``class_order``: "index" (class i gets the i-th count, LDAM-DRW) or
    "frequency" (the class with the i-th most images gets it; ties by index). ``class_names``
    (default: the dataset's ``classes`` when a dataset is passed) only make refusals readable.
    Apply the result with ``dataset.subset(split.indices)``.

    Reproduces ``np.random.seed(seed)`` + per-class ``np.random.shuffle`` exactly, but with a
    private ``np.random.RandomState(seed)``: the legacy global generator *is* a RandomState, so the
    shuffles are identical (tests/test_data_longtail.py checks against the global-seed code), and
    the caller's global numpy RNG state is left untouched.
    """
    check_class_order(class_order)
    if class_names is None and hasattr(labels, "classes") and not isinstance(labels, np.ndarray):
        class_names = labels.classes
    label_array = _as_label_array(labels)
    if label_array.size == 0:
        raise ValueError("labels are empty; there is nothing to sample a long-tailed split from")
    if int(label_array.min()) < 0:
        raise ValueError(f"labels must be class indices >= 0, found {int(label_array.min())}")
    if num_classes is None:
        num_classes = int(label_array.max()) + 1
    elif int(label_array.max()) >= num_classes:
        raise ValueError(f"label {int(label_array.max())} is out of range for num_classes={num_classes}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r} (the legacy numpy seed range)")
    available = np.bincount(label_array, minlength=num_classes)
    if (available == 0).any():
        # LDAM-DRW zips np.unique(labels) with the counts, so an absent class would shift every
        # later class onto the wrong count; refuse instead of silently misaligning.
        missing = np.flatnonzero(available == 0).tolist()
        raise ValueError(
            f"classes {missing[:10]}{'...' if len(missing) > 10 else ''} have no images; the generator needs "
            f"every class 0..{num_classes - 1} present. Relabel to drop empty classes or pass num_classes."
        )
    img_max = len(label_array) / num_classes if max_per_class is None else float(max_per_class)
    by_rank = longtail_counts(num_classes, img_max, imbalance_factor, profile)
    rank_to_class = np.arange(num_classes) if class_order == "index" else frequency_rank(available)
    counts = [0] * num_classes
    for rank, the_class in enumerate(rank_to_class.tolist()):
        counts[the_class] = by_rank[rank]
    short = [c for c in range(num_classes) if counts[c] > available[c]]
    if short:
        # The original slices idx[:n_i] and would silently keep fewer; an unbalanced source set
        # needs an explicit n_max (and usually the frequency order) instead.
        raise ValueError(_shortfall_message(short, counts, available, rank_to_class, img_max, imbalance_factor, profile,
                                            class_order, class_names))
    rng = np.random.RandomState(int(seed))
    selected = []
    for the_class in range(num_classes):
        idx = np.where(label_array == the_class)[0]
        rng.shuffle(idx)
        selected.append(idx[: counts[the_class]])
    indices = np.concatenate(selected).astype(np.int64)
    return LongTailSplit(
        indices=indices,
        counts=tuple(int(n) for n in counts),
        profile=profile,
        imbalance_factor=float(imbalance_factor),
        seed=int(seed),
        max_per_class=img_max,
        index_hash=index_hash(indices),
        class_order=class_order,
    )


def _largest_n_max(available, rank_to_class, imbalance_factor, profile) -> int:
    """The largest integer n_max for which every class holds its target in this order (binary search:
    the targets grow with n_max; n_max = 1 always fits, n_max above the rank-0 class's count never)."""
    need = np.asarray(available)[rank_to_class]

    def fits(n_max: int) -> bool:
        return bool((np.asarray(longtail_counts(len(need), n_max, imbalance_factor, profile)) <= need).all())

    low, high = 1, int(need[0])
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    return low


def _shortfall_message(short, counts, available, rank_to_class, img_max, imbalance_factor, profile, class_order,
                       class_names) -> str:
    def name(c: int) -> str:
        if class_names is not None and c < len(class_names) and str(class_names[c]) != str(c):
            return f"class {c} '{class_names[c]}'"
        return f"class {c}"

    c = short[0]
    bound = _largest_n_max(available, rank_to_class, imbalance_factor, profile)
    hint = f"Pass max_per_class <= {bound} (n_max; now {img_max:g})"
    if class_order == "index":
        hint += ", or class_order='frequency' so the smallest classes get the smallest targets"
    listed = ", ".join(f"{name(k)} needs {counts[k]} has {int(available[k])}" for k in short[1:4])
    return (
        f"{name(c)} needs {counts[c]} images (class order {class_order!r}, n_max {img_max:g}) but has only "
        f"{int(available[c])}; {len(short)} class(es) short{': also ' + listed if listed else ''}"
        f"{' ...' if len(short) > 4 else ''}. {hint}, or choose a smaller imbalance_factor."
    )
