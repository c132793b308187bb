"""Shifted test priors: SADE's test-agnostic protocol, exact expectations and prior adaptation.

Every long-tail benchmark scores on a balanced test split; a deployment sees classes with its own
frequencies pi_test. Three tools:

1. **Test-agnostic test sets** (SADE: Zhang et al., "Self-Supervised Aggregation of Diverse
   Experts for Test-Agnostic Long-Tailed Recognition", NeurIPS 2022; code Vanint/SADE-AgnosticLT,
   ``data_loader/imbalance_cifar.py`` and ``cifar_data_loaders.TestAgnosticImbalanceCIFAR100DataLoader``).
   Class c gets ``n_c = int(n_max * (1 / rho) ** (r_c / (K - 1)))`` images, r_c its rank by
   training count (0 = most frequent; ``K - 1 - rank`` for *backward*), ``n_max`` the balanced
   split's per-class count; *uniform* keeps ``n_max`` per class. The images of class c are the
   first n_c of a seeded shuffle of that class's indices, classes in index order: SADE's
   ``np.random.seed(seed); for each class: np.random.shuffle(idx); idx[:n_c]``, so draw 0 with
   seed 0 is SADE's CIFAR-100 selection index for index. Sizes: ImageNet-LT (50 per class)
   forward-50 = backward-50 = 12,058 images, as SADE's released lists.
2. **Exact expectations.** A drawn set has exactly n_c images of class c, drawn without
   replacement from the balanced split, so the expected number correct in class c is
   n_c * acc_c and the expected accuracy is exactly ``sum_c pi_c acc_c`` with pi_c = n_c / N: no
   sampling needed for the mean, the draws give the spread.
3. **Prior adaptation** (label shift: p(x | y) fixed, p(y) changes). A model whose softmax
   estimates p(y | x) under an *encoded prior* pi_enc gives the posterior under pi_test by
   ``logits + log pi_test - log pi_enc`` (Saerens, Latinne & Decaestecker, "Adjusting the Outputs
   of a Classifier to New a Priori Probabilities", Neural Computation 2002, eq. 2.4). Which prior
   the logits encode depends on the training loss (:data:`ENCODED_PRIOR_BY_LOSS`). An unknown
   pi_test is estimated from unlabelled predictions by EM (Saerens et al. 2002, section 3) or by
   BBSE from a validation confusion matrix (Lipton, Wang & Smola, "Detecting and Correcting for
   Label Shift with Black Box Predictors", ICML 2018).

Everything computes in float64 NumPy; torch tensors are accepted wherever arrays are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = [
    "TEST_PRIOR_RHOS",
    "TEST_PRIOR_DIRECTIONS",
    "ENCODED_PRIOR_BY_LOSS",
    "frequency_ranks",
    "shifted_class_counts",
    "shifted_prior_names",
    "draw_test_indices",
    "ShiftedTestSet",
    "shifted_test_sets",
    "prior_from_counts",
    "expected_metrics",
    "drawn_metrics",
    "encoded_prior",
    "prior_shift",
    "adapt_logits",
    "EMResult",
    "em_prior",
    "BBSEResult",
    "bbse_prior",
]

TEST_PRIOR_RHOS = (50, 25, 10, 5, 2)
TEST_PRIOR_DIRECTIONS = ("forward", "uniform", "backward")

# Which class prior a model's softmax estimates at the population optimum of its training loss
# (a well-specified, calibrated model). "train": p(y | x) under the training frequencies, so the
# shift to pi_test is log pi_test - log pi_train. "uniform": the loss adds log pi_train to the
# logits during training (Balanced Softmax, Ren et al. 2020; logit adjustment with tau = 1, Menon
# et al. 2021), so the logits are log p(x | y) + const and the shift is log pi_test - log(1 / K).
# Logit adjustment with a general tau encodes pi_train ** (1 - tau): use encoded_prior(..., tau=).
# Approximate entries: focal and label smoothing do not estimate p(y | x) exactly, LDAM's margins
# favour the tail without encoding a prior, and CCAR's weight depends on class frequency, so it
# shifts the encoded prior somewhat from its base loss's. Losses that reweight classes
# (weighted_ce, cb_*, *_drw) encode pi_train * w / Z at the optimum, which depends on their
# options and phase: they are deliberately absent; pass their prior explicitly.
ENCODED_PRIOR_BY_LOSS = {
    "ce": "train",
    "label_smoothing": "train",
    "focal": "train",
    "ldam": "train",
    "ccar_ce": "train",
    "logit_adjusted": "uniform",
    "la": "uniform",
    "balanced_softmax": "uniform",
    "bs": "uniform",
    "focal_la": "uniform",
    "focal_bs": "uniform",
    "ccar_la": "uniform",
    "ccar_bs": "uniform",
}


# ---- input checks --------------------------------------------------------------------------------


def _float64(values, name: str) -> np.ndarray:
    if hasattr(values, "detach"):  # torch tensor, any device / dtype
        values = values.detach().cpu().double().numpy()
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be numeric, got {type(values).__name__}") from error
    return array


def _finite(array: np.ndarray, name: str) -> None:
    if not np.isfinite(array).all():
        position = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
        raise ValueError(f"{name} contain a non-finite value at index {position}: {array[position]}")


def _vector(values, name: str, length: int | None = None) -> np.ndarray:
    array = _float64(values, name)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence (one entry per class), got shape {array.shape}")
    if length is not None and array.size != length:
        raise ValueError(f"{name} has {array.size} entries, expected {length} (one per class)")
    _finite(array, name)
    return array


def prior_from_counts(values, name: str = "prior", num_classes: int | None = None) -> np.ndarray:
    """Normalise non-negative class counts or frequencies to a float64 prior summing to 1.

    Zeros are allowed (a class that never occurs); negative, non-finite or all-zero input is refused.
    """
    array = _vector(values, name, num_classes)
    if (array < 0).any():
        index = int(np.argmax(array < 0))
        raise ValueError(f"{name}[{index}] = {array[index]:g} is negative: class frequencies must be >= 0")
    total = array.sum()
    if total <= 0:
        raise ValueError(f"{name} sums to 0: at least one class needs a positive frequency")
    return array / total


def _positive_counts(train_counts, name: str = "train_counts") -> np.ndarray:
    counts = _vector(train_counts, name)
    if (counts <= 0).any():
        index = int(np.argmax(counts <= 0))
        raise ValueError(f"{name}[{index}] = {counts[index]:g}: every class needs a positive training count")
    return counts


# ---- 1. SADE's test-agnostic test sets ----------------------------------------------------------


def frequency_ranks(train_counts) -> np.ndarray:
    """Rank of each class by training count, 0 = most frequent (int64, shape (K,)).

    Ties keep class-index order (a stable sort). On CIFAR-100-LT, whose training counts fall with
    the class index, this gives rank = index, which is the order SADE's CIFAR code uses. SADE's
    ImageNet-LT / Places-LT lists were written by an unreleased script; their tie order cannot be
    recovered (the list sizes do not depend on it).
    """
    counts = _positive_counts(train_counts)
    order = np.argsort(-counts, kind="stable")
    ranks = np.empty(counts.size, dtype=np.int64)
    ranks[order] = np.arange(counts.size)
    return ranks


def _check_direction(direction: str) -> None:
    if direction not in TEST_PRIOR_DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(TEST_PRIOR_DIRECTIONS)}, got {direction!r}")


def shifted_class_counts(train_counts, n_max: int, rho: float, direction: str) -> np.ndarray:
    """Images per class of SADE's test set ``direction``-``rho`` (int64, shape (K,)).

    ``n_c = int(n_max * (1 / rho) ** (r / (K - 1)))`` with r the class's frequency rank (forward)
    or ``K - 1 - rank`` (backward), evaluated exactly as SADE's ``get_img_num_per_cls``
    (``img_max * imb_factor ** (r / (K - 1.0))``, truncated). *uniform*: n_max per class.
    """
    _check_direction(direction)
    ranks = frequency_ranks(train_counts)
    num_classes = ranks.size
    if isinstance(n_max, bool) or int(n_max) != n_max or n_max < 1:
        raise ValueError(f"n_max must be a positive integer (images per class in the balanced split), got {n_max!r}")
    if direction == "uniform":
        return np.full(num_classes, int(n_max), dtype=np.int64)
    if not (np.isfinite(rho) and rho >= 1):
        raise ValueError(f"rho (test imbalance, n_max / n_min) must be a finite number >= 1, got {rho!r}")
    if num_classes == 1:
        return np.full(1, int(n_max), dtype=np.int64)
    exponent_rank = ranks if direction == "forward" else num_classes - 1 - ranks
    imb_factor = 1.0 / rho
    # A Python-float loop, operation for operation as SADE's code: int() truncation is sensitive
    # to the last bit, and numpy's vectorised power may round differently.
    img_max = float(n_max)
    return np.array(
        [int(img_max * (imb_factor ** (int(r) / (num_classes - 1.0)))) for r in exponent_rank], dtype=np.int64
    )


def shifted_prior_names(rhos: Sequence[float] = TEST_PRIOR_RHOS) -> list[tuple[str, str, float]]:
    """``(name, direction, rho)`` in SADE's order: forward-50 ... forward-2, uniform, backward-2 ... backward-50."""
    rhos = [_check_rho(rho) for rho in rhos]
    forward = [(f"forward-{_format_rho(rho)}", "forward", rho) for rho in sorted(rhos, reverse=True)]
    backward = [(f"backward-{_format_rho(rho)}", "backward", rho) for rho in sorted(rhos)]
    return [*forward, ("uniform", "uniform", 1.0), *backward]


def _check_rho(rho) -> float:
    try:
        value = float(rho)
    except (TypeError, ValueError) as error:
        raise ValueError(f"rho must be a number >= 1, got {rho!r}") from error
    if not (np.isfinite(value) and value > 1):
        raise ValueError(f"rho must be a finite number > 1 (rho = 1 is the uniform set), got {rho!r}")
    return value


def _format_rho(rho: float) -> str:
    return str(int(rho)) if float(rho).is_integer() else f"{rho:g}"


def _class_indices(labels: np.ndarray, num_classes: int) -> list[np.ndarray]:
    order = np.argsort(labels, kind="stable")
    boundaries = np.searchsorted(labels[order], np.arange(num_classes + 1))
    return [order[boundaries[c] : boundaries[c + 1]] for c in range(num_classes)]


def _labels(labels, num_classes: int | None = None) -> np.ndarray:
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D sequence of class indices, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices, got dtype {array.dtype}")
    if array.min() < 0 or (num_classes is not None and array.max() >= num_classes):
        bad = array.min() if array.min() < 0 else array.max()
        raise ValueError(f"labels contain {bad}, outside 0..{(num_classes or 0) - 1}")
    return array.astype(np.int64)


def draw_test_indices(labels, class_counts, seed: int) -> np.ndarray:
    """Indices (into ``labels``) of one seeded draw with ``class_counts[c]`` images of class c.

    SADE's ``gen_imbalanced_data``: ``np.random.seed(seed)``, then for each class in index order
    its indices (in split order) are shuffled and the first n_c kept; the result lists class 0's
    picks, then class 1's, and so on. A private ``RandomState(seed)`` replays the same stream
    without touching NumPy's global generator.
    """
    counts = _vector(class_counts, "class_counts")
    if (counts < 0).any() or (counts != np.round(counts)).any():
        raise ValueError("class_counts must be non-negative integers (images per class)")
    counts = counts.astype(np.int64)
    labels = _labels(labels, counts.size)
    per_class = _class_indices(labels, counts.size)
    short = [c for c in range(counts.size) if per_class[c].size < counts[c]]
    if short:
        c = short[0]
        raise ValueError(
            f"class {c} has {per_class[c].size} images in the split but the test set needs {counts[c]} "
            f"({len(short)} classes short); lower n_max to at most the smallest class's count"
        )
    generator = np.random.RandomState(seed)
    picks = []
    for c in range(counts.size):
        indices = per_class[c].copy()
        generator.shuffle(indices)
        picks.append(indices[: counts[c]])
    return np.concatenate(picks)


@dataclass(frozen=True)
class ShiftedTestSet:
    """One test prior of the protocol: its name, per-class counts and the drawn index sets."""

    name: str
    direction: str
    rho: float
    class_counts: np.ndarray
    draws: tuple[np.ndarray, ...]

    @property
    def prior(self) -> np.ndarray:
        return prior_from_counts(self.class_counts, self.name)


def shifted_test_sets(
    labels,
    train_counts,
    rhos: Sequence[float] = TEST_PRIOR_RHOS,
    draws: int = 3,
    seed: int = 0,
    n_max: int | None = None,
) -> list[ShiftedTestSet]:
    """SADE's forward-rho / uniform / backward-rho test sets drawn from the split with ``labels``.

    ``n_max``: images per class of the balanced split; default the smallest class's count in
    ``labels`` (equal to the per-class count on a balanced split such as ImageNet-LT's test).
    On an unbalanced split (GTSRB's test) uniform is then itself a draw of n_max per class.
    Draw d uses seed ``seed + d``.
    """
    counts = _positive_counts(train_counts)
    labels = _labels(labels, counts.size)
    available = np.bincount(labels, minlength=counts.size)
    if (available == 0).any():
        raise ValueError(f"class {int(np.argmax(available == 0))} has no image in the test split")
    if n_max is None:
        n_max = int(available.min())
    if isinstance(draws, bool) or int(draws) != draws or draws < 1:
        raise ValueError(f"draws must be a positive integer, got {draws!r}")
    sets = []
    for name, direction, rho in shifted_prior_names(rhos):
        class_counts = shifted_class_counts(counts, n_max, rho, direction)
        indices = tuple(draw_test_indices(labels, class_counts, seed + d) for d in range(int(draws)))
        sets.append(ShiftedTestSet(name, direction, rho, class_counts, indices))
    return sets


# ---- 2. metrics under a prior --------------------------------------------------------------------


def _group_masks(train_counts: np.ndarray, many_threshold: float, few_threshold: float) -> dict[str, np.ndarray]:
    # Same definition as longtail.metrics.shot_group_masks (Many > 100, Few < 20 training images).
    many = train_counts > many_threshold
    few = train_counts < few_threshold
    return {"many": many, "medium": ~many & ~few, "few": few}


def _summary(weights: np.ndarray, correct: np.ndarray, accuracy: np.ndarray, train_counts, many, few) -> dict:
    """``weights``: images (or prior mass) per class; ``correct``: expected or counted correct per class."""
    total = weights.sum()
    present = weights > 0
    result = {"accuracy": float(correct.sum() / total)}
    for group, mask in _group_masks(train_counts, many, few).items():
        members = mask & present
        # Image-weighted within the group: the accuracy a user sees on that group's images.
        result[f"{group}_accuracy"] = float(correct[members].sum() / weights[members].sum()) if members.any() else None
    present_accuracy = np.where(present, accuracy, np.inf)
    worst = int(np.argmin(present_accuracy))
    result["worst_class_accuracy"] = float(accuracy[worst])
    result["worst_class"] = worst
    return result


def expected_metrics(
    per_class_accuracy, prior, train_counts, many_threshold: float = 100, few_threshold: float = 20
) -> dict:
    """Exact expectations under the test prior ``prior`` (counts or frequencies, normalised here).

    ``accuracy`` = sum_c pi_c acc_c; ``many/medium/few_accuracy`` = the same within the group,
    sum_{c in G} pi_c acc_c / sum_{c in G} pi_c (None if the group has no mass); ``worst_class`` /
    ``worst_class_accuracy`` = the lowest acc_c among classes with pi_c > 0. For a drawn set with
    fixed per-class counts the first four are exact expectations; the worst class of a draw is
    lower on average (few images per class make a class's drawn accuracy noisy).

    SADE's own Many/Medium/Few are unweighted means of per-class accuracies; their expectation
    does not depend on the prior at all (only on which classes are present), so they are not used.
    """
    accuracy = _vector(per_class_accuracy, "per_class_accuracy")
    if ((accuracy < 0) | (accuracy > 1)).any():
        raise ValueError("per_class_accuracy must be fractions in [0, 1] (NaN for a class without test images is not allowed)")
    pi = prior_from_counts(prior, "prior", accuracy.size)
    counts = _positive_counts(train_counts)
    if counts.size != accuracy.size:
        raise ValueError(f"train_counts has {counts.size} entries, per_class_accuracy {accuracy.size}")
    return _summary(pi, pi * accuracy, accuracy, counts, many_threshold, few_threshold)


def drawn_metrics(
    preds, labels, indices, train_counts, many_threshold: float = 100, few_threshold: float = 20
) -> dict:
    """The same keys measured on one drawn set: ``preds[indices]`` against ``labels[indices]``."""
    counts = _positive_counts(train_counts)
    labels = _labels(labels, counts.size)
    preds = _labels(preds, counts.size)
    if preds.shape != labels.shape:
        raise ValueError(f"preds and labels must have equal length, got {preds.size} and {labels.size}")
    indices = np.asarray(indices, dtype=np.int64)
    chosen_labels = labels[indices]
    support = np.bincount(chosen_labels, minlength=counts.size).astype(np.float64)
    correct = np.bincount(chosen_labels[preds[indices] == chosen_labels], minlength=counts.size).astype(np.float64)
    accuracy = np.divide(correct, support, out=np.zeros_like(correct), where=support > 0)
    return _summary(support, correct, accuracy, counts, many_threshold, few_threshold)


# ---- 3. prior adaptation ---------------------------------------------------------------------------


def encoded_prior(train_counts, kind="train", tau: float | None = None, sampling_power: float = 1.0) -> np.ndarray:
    """The prior a model's logits encode (float64, sums to 1).

    ``kind``: ``"train"`` (the training frequencies), ``"uniform"`` (1 / K), a loss name from
    :data:`ENCODED_PRIOR_BY_LOSS`, or a vector of K frequencies used as given. ``tau``: a model
    trained with logit adjustment of strength tau (or evaluated after post-hoc adjustment by tau)
    encodes pi_train ** (1 - tau) / Z; it overrides ``kind``.

    ``sampling_power`` q: the training batches drew class c with probability proportional to
    n_c ** q (1 instance-balanced, the default; 0.5 square-root; 0 class-balanced, as in cRT).
    The loss then sees the prior pi_train ** q, and a loss that adds tau * log pi_train to the
    logits (with pi_train the data's frequencies, whatever the sampler) leaves
    pi_train ** (q - tau) / Z in them: "train" is tau = 0, "uniform" tau = 1. Not used with a
    vector ``kind``.
    """
    counts = _positive_counts(train_counts)
    pi_train = counts / counts.sum()
    if not np.isfinite(sampling_power):
        raise ValueError(f"sampling_power must be finite, got {sampling_power!r}")
    if tau is not None:
        if not np.isfinite(tau):
            raise ValueError(f"tau must be finite, got {tau!r}")
        return prior_from_counts(pi_train ** (sampling_power - tau), "encoded prior")
    if isinstance(kind, str):
        key = kind.strip().lower().replace("-", "_")
        key = ENCODED_PRIOR_BY_LOSS.get(key, key)
        if key in ("train", "uniform"):
            adjustment = 0.0 if key == "train" else 1.0
            return prior_from_counts(pi_train ** (sampling_power - adjustment), "encoded prior")
        raise ValueError(
            f"no known encoded prior for {kind!r}: use 'train', 'uniform', a loss among "
            f"{', '.join(sorted(ENCODED_PRIOR_BY_LOSS))}, or pass the K frequencies the model's logits encode "
            "(losses that reweight classes encode pi_train * w / Z)"
        )
    prior = prior_from_counts(kind, "encoded prior", counts.size)
    if (prior <= 0).any():
        raise ValueError("an encoded prior must be positive for every class (log of it is taken)")
    return prior


def prior_shift(target_prior, encoded: np.ndarray) -> np.ndarray:
    """``log pi_target - log pi_encoded`` (float64); -inf where pi_target is 0 (class excluded)."""
    pi_encoded = prior_from_counts(encoded, "encoded prior")
    if (pi_encoded <= 0).any():
        raise ValueError("the encoded prior must be positive for every class (log of it is taken)")
    pi_target = prior_from_counts(target_prior, "target prior", pi_encoded.size)
    with np.errstate(divide="ignore"):
        return np.log(pi_target) - np.log(pi_encoded)


def adapt_logits(logits, target_prior, encoded):
    """``logits + log pi_target - log pi_encoded``: logits whose softmax is p(y | x) under the target.

    numpy in -> float64 numpy out; a torch tensor keeps its dtype and device.
    """
    shift = prior_shift(target_prior, encoded)
    if hasattr(logits, "detach"):
        import torch

        if logits.dim() < 1 or logits.shape[-1] != shift.size:
            raise ValueError(f"logits have {logits.shape[-1] if logits.dim() else 0} classes, the priors {shift.size}")
        return logits + torch.as_tensor(shift, dtype=logits.dtype, device=logits.device)
    array = _float64(logits, "logits")
    if array.ndim < 1 or array.shape[-1] != shift.size:
        raise ValueError(f"logits have {array.shape[-1] if array.ndim else 0} classes, the priors {shift.size}")
    return array + shift


def _probabilities(probs, name: str = "probs") -> np.ndarray:
    array = _float64(probs, name)
    if array.ndim != 2 or array.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (N, K) array of class probabilities, got shape {array.shape}")
    _finite(array, name)
    if (array < 0).any():
        raise ValueError(f"{name} contain negative values: pass softmax probabilities, not logits")
    sums = array.sum(axis=1)
    if np.abs(sums - 1).max() > 1e-3:
        row = int(np.argmax(np.abs(sums - 1)))
        raise ValueError(f"{name} row {row} sums to {sums[row]:.6g}, not 1: pass softmax probabilities, not logits")
    return array / sums[:, None]  # float32 softmax rows are off by ~1e-7; make them exact


@dataclass(frozen=True)
class EMResult:
    prior: np.ndarray  # estimated test prior (float64, sums to 1)
    probs: np.ndarray  # posteriors adapted to it (N, K)
    iterations: int
    converged: bool


def em_prior(probs, encoded, tol: float = 1e-8, max_iter: int = 1000) -> EMResult:
    """Estimate the test prior from unlabelled posteriors by EM (Saerens et al. 2002, eqs. 2.9-2.10).

    ``probs``: (N, K) softmax outputs on the unlabelled images, estimating p(y | x) under the prior
    ``encoded`` (see :func:`encoded_prior`). Starting from pi^0 = encoded, each step reweights
    every row by pi^s / pi_enc, renormalises it (E step) and sets pi^{s+1} to the mean adapted row
    (M step); it is the maximum-likelihood prior under label shift. Stops when
    max |pi^{s+1} - pi^s| < tol or after ``max_iter`` steps (``converged`` says which).
    EM trusts the model's calibration: an over-confident model overshoots the shift (Alexandari et
    al., ICML 2020, recommend calibrating first).
    """
    p = _probabilities(probs)
    pi_encoded = prior_from_counts(encoded, "encoded prior", p.shape[1])
    if (pi_encoded <= 0).any():
        raise ValueError("the encoded prior must be positive for every class")
    if not (tol > 0) or int(max_iter) != max_iter or max_iter < 1:
        raise ValueError(f"tol must be > 0 and max_iter a positive integer, got {tol!r}, {max_iter!r}")
    prior = pi_encoded.copy()
    adapted = p
    for iteration in range(1, int(max_iter) + 1):
        weighted = p * (prior / pi_encoded)
        row_sums = weighted.sum(axis=1, keepdims=True)
        if (row_sums <= 0).any():  # every class the row gives mass to was driven to 0
            raise ValueError("EM assigned zero prior to every class some image supports; the posteriors are degenerate")
        adapted = weighted / row_sums
        new_prior = adapted.mean(axis=0)
        change = np.abs(new_prior - prior).max()
        prior = new_prior
        if change < tol:
            weighted = p * (prior / pi_encoded)
            return EMResult(prior, weighted / weighted.sum(axis=1, keepdims=True), iteration, True)
    return EMResult(prior, adapted, int(max_iter), False)


@dataclass(frozen=True)
class BBSEResult:
    prior: np.ndarray  # estimated test prior (float64, sums to 1)
    weights: np.ndarray  # importance weights w_j = pi_test_j / pi_val_j after clipping at 0
    clipped: np.ndarray  # classes whose solved weight was negative (set to 0)
    singular: bool  # True when the confusion matrix was rank-deficient and lstsq was used


def bbse_prior(validation_confusion, target_pred_counts, on_singular: str = "raise") -> BBSEResult:
    """Black-box shift estimation (Lipton et al. 2018, hard-confusion BBSE).

    ``validation_confusion``: counts[true, pred] (scikit-learn orientation, as
    :func:`longtail.metrics.confusion_matrix`) on a labelled split from the training
    distribution; ``target_pred_counts``: how often the model predicted each class on the
    unlabelled target images. With C[i, j] = P_val(pred = i, y = j) and mu[i] = P_target(pred = i),
    solves C w = mu; the estimate is pi_test = w * pi_val normalised. Negative w_j (sampling noise)
    are clipped to 0, as is common practice (Lipton et al.'s and Azizzadenesheli et al.'s code).

    A rank-deficient C (a class never predicted or absent from the validation split) has no unique
    solution: ``on_singular="raise"`` (default) refuses with the classes at fault;
    ``"lstsq"`` uses the minimum-norm least-squares solution instead and sets ``singular``.
    """
    if on_singular not in ("raise", "lstsq"):
        raise ValueError(f"on_singular must be 'raise' or 'lstsq', got {on_singular!r}")
    counts = _float64(validation_confusion, "validation_confusion")
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.size == 0:
        raise ValueError(f"validation_confusion must be a square (K, K) count matrix, got shape {counts.shape}")
    _finite(counts, "validation_confusion")
    if (counts < 0).any() or counts.sum() <= 0:
        raise ValueError("validation_confusion must hold non-negative counts with at least one sample")
    num_classes = counts.shape[0]
    mu = prior_from_counts(target_pred_counts, "target_pred_counts", num_classes)
    joint = counts.T / counts.sum()  # joint[pred, true]
    pi_val = joint.sum(axis=0)
    rank = np.linalg.matrix_rank(joint)
    singular = rank < num_classes
    if singular and on_singular == "raise":
        never_predicted = np.flatnonzero(joint.sum(axis=1) == 0).tolist()
        absent = np.flatnonzero(pi_val == 0).tolist()
        detail = []
        if never_predicted:
            detail.append(f"never predicted on validation: classes {never_predicted[:10]}")
        if absent:
            detail.append(f"absent from validation: classes {absent[:10]}")
        raise ValueError(
            f"the validation confusion matrix is singular (rank {rank} of {num_classes}"
            f"{'; ' + '; '.join(detail) if detail else ''}): BBSE has no unique solution. Use a larger "
            "validation split, EM (em_prior), or on_singular='lstsq' for the minimum-norm solution"
        )
    if singular:
        weights = np.linalg.lstsq(joint, mu, rcond=None)[0]
    else:
        weights = np.linalg.solve(joint, mu)
    clipped = np.flatnonzero(weights < 0)
    weights = np.clip(weights, 0.0, None)
    unnormalised = weights * pi_val
    if unnormalised.sum() <= 0:
        raise ValueError("BBSE gave no positive weight to any class present in validation: the estimate is unusable")
    return BBSEResult(unnormalised / unnormalised.sum(), weights, clipped, bool(singular))
