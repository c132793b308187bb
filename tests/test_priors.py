"""Shifted test priors (longtail.metrics.priors): SADE's test sets, expectations, prior adaptation.

References are independent of the module: SADE's CIFAR code transcribed line for line, sizes
from SADE's paper and released list files, brute-force enumeration over every possible draw,
closed-form Bayes posteriors of a discrete generative model, and a hand-written EM.
"""

from __future__ import annotations

import itertools
import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, recall_score

from longtail.metrics import (
    ENCODED_PRIOR_BY_LOSS,
    adapt_logits,
    bbse_prior,
    draw_test_indices,
    drawn_metrics,
    em_prior,
    encoded_prior,
    expected_metrics,
    frequency_ranks,
    prior_from_counts,
    prior_shift,
    shifted_class_counts,
    shifted_prior_names,
    shifted_test_sets,
)

SHARED = Path(os.environ.get("LONGTAIL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
PLACES_TRAIN = SHARED / "lt-lists" / "Places_LT_train.txt"


# ---- SADE's test-set sizes -----------------------------------------------------------------------


def test_imagenet_lt_forward_and_backward_50_have_sades_published_12058_images():
    # ImageNet-LT: 1000 classes, test split 50 per class. Any training counts without ties give the
    # same total; SADE's ImageNet_LT_forward50.txt / backward50.txt hold 12,058 lines.
    train_counts = np.arange(1280, 280, -1)
    for direction in ("forward", "backward"):
        counts = shifted_class_counts(train_counts, 50, 50, direction)
        assert counts.sum() == 12_058
        assert counts.max() == 50 and counts.min() == 1


def test_backward_is_forward_with_the_ranks_reversed():
    train_counts = np.random.default_rng(0).permutation(np.arange(1, 101)) * 7
    forward = shifted_class_counts(train_counts, 100, 10, "forward")
    backward = shifted_class_counts(train_counts, 100, 10, "backward")
    ranks = frequency_ranks(train_counts)
    assert forward[np.argmax(train_counts)] == 100 and backward[np.argmin(train_counts)] == 100
    np.testing.assert_array_equal(np.sort(forward), np.sort(backward))
    np.testing.assert_array_equal(forward[np.argsort(ranks)], backward[np.argsort(ranks)][::-1])


def sade_get_img_num_per_cls(img_max, cls_num, imb_factor, reverse):
    """SADE-AgnosticLT data_loader/imbalance_cifar.py, get_img_num_per_cls, imb_type 'exp' (transcribed)."""
    img_num_per_cls = []
    for cls_idx in range(cls_num):
        if reverse:
            num = img_max * (imb_factor ** ((cls_num - 1 - cls_idx) / (cls_num - 1.0)))
        else:
            num = img_max * (imb_factor ** (cls_idx / (cls_num - 1.0)))
        img_num_per_cls.append(int(num))
    return img_num_per_cls


def sade_gen_imbalanced_indices(targets, img_num_per_cls, rand_number=0):
    """SADE's gen_imbalanced_data, returning the selected indices instead of the images (transcribed)."""
    state = np.random.get_state()
    try:
        np.random.seed(rand_number)
        targets_np = np.array(targets, dtype=np.int64)
        selected = []
        for the_class, the_img_num in zip(np.unique(targets_np), img_num_per_cls):
            idx = np.where(targets_np == the_class)[0]
            np.random.shuffle(idx)
            selected.append(idx[:the_img_num])
        return np.concatenate(selected)
    finally:
        np.random.set_state(state)


@pytest.mark.parametrize("rho", [50, 25, 10, 5, 2])
@pytest.mark.parametrize("reverse", [False, True])
def test_cifar100_sets_equal_sades_code_index_for_index(rho, reverse):
    # CIFAR-100-LT training counts fall with the class index (with ties in the tail), the test split
    # has 100 per class in a shuffled order: SADE's TestAgnosticImbalanceCIFAR100DataLoader setting.
    train_counts = sade_get_img_num_per_cls(500.0, 100, 0.01, False)
    assert len(set(train_counts)) < 100  # ties exist: rank order must still be the class index
    targets = np.random.default_rng(1).permutation(np.repeat(np.arange(100), 100))
    expected_counts = sade_get_img_num_per_cls(len(targets) / 100, 100, 1 / rho, reverse)
    counts = shifted_class_counts(train_counts, 100, rho, "backward" if reverse else "forward")
    assert counts.tolist() == expected_counts
    indices = draw_test_indices(targets, counts, seed=0)
    np.testing.assert_array_equal(indices, sade_gen_imbalanced_indices(targets, expected_counts, 0))


def test_cifar100_sizes_from_sades_formula():
    train_counts = sade_get_img_num_per_cls(500.0, 100, 0.01, False)
    sizes = {rho: int(shifted_class_counts(train_counts, 100, rho, "forward").sum()) for rho in (50, 25, 10, 5, 2)}
    assert sizes == {50: 2486, 25: 2956, 10: 3876, 5: 4932, 2: 7166}


@pytest.fixture(scope="module")
def places_train_counts():
    if not PLACES_TRAIN.is_file():
        pytest.skip(f"{PLACES_TRAIN} not available")
    labels = [int(line.split()[1]) for line in PLACES_TRAIN.read_text().splitlines()]
    return np.bincount(labels, minlength=365)


def test_places_lt_forward_50_matches_sades_released_list(places_train_counts):
    # SADE's data_txt/Places_LT_v2/Places_LT_forward50.txt (ranks from Places_LT_train.txt, 100 test
    # images per class). Its line counts for classes 0-6, 8, 10, 11 were counted by hand in the file.
    # Its total follows from its length: 347,199 characters of lines
    # "val_256/Places365_val_NNNNNNNN.jpg <label>\n" (36 characters + the label's digits); classes
    # 0-9 take 379 lines, the first label-100 line starts at character 113,355 = 37 * 379 + 38 * 2614,
    # and 5,996 lines of 39 characters follow. (How the 2614 + 5996 split between labels 10-99 and
    # 100-364 depends on SADE's unrecoverable tie order among equal training counts; the total does not.)
    counts = shifted_class_counts(places_train_counts, 100, 50, "forward")
    assert int(counts.sum()) == 379 + 2614 + 5996 == 8_989
    assert int(counts[:10].sum()) == 379
    assert counts[[0, 1, 2, 3, 4, 5, 6, 8, 10, 11]].tolist() == [46, 4, 28, 18, 48, 6, 5, 26, 6, 7]
    assert counts[np.argmax(places_train_counts)] == 100


def test_frequency_ranks_are_stable_on_ties():
    np.testing.assert_array_equal(frequency_ranks([5, 9, 5, 9, 1]), [2, 0, 3, 1, 4])
    # Many ties: rank_c = #{j: N_j > N_c} + #{j < c: N_j = N_c}, counted directly.
    counts = np.random.default_rng(0).integers(1, 20, size=3000)
    direct = [(counts > n).sum() + (counts[:c] == n).sum() for c, n in enumerate(counts)]
    np.testing.assert_array_equal(frequency_ranks(counts), direct)


def test_uniform_keeps_n_max_per_class_and_names_follow_sades_order():
    assert shifted_class_counts([3, 2, 1], 7, 50, "uniform").tolist() == [7, 7, 7]
    names = [name for name, _, _ in shifted_prior_names((2, 50, 5))]
    assert names == ["forward-50", "forward-5", "forward-2", "uniform", "backward-2", "backward-5", "backward-50"]


# ---- seeded draws --------------------------------------------------------------------------------


def test_draws_are_reproducible_within_the_split_and_have_the_asked_counts():
    rng = np.random.default_rng(3)
    labels = rng.permutation(np.repeat(np.arange(10), 30))
    train_counts = (1000 * 0.1 ** (np.arange(10) / 9)).astype(int)
    sets = shifted_test_sets(labels, train_counts, rhos=(10, 2), draws=4, seed=11)
    assert [s.name for s in sets] == ["forward-10", "forward-2", "uniform", "backward-2", "backward-10"]
    again = shifted_test_sets(labels, train_counts, rhos=(10, 2), draws=4, seed=11)
    for first, second in zip(sets, again):
        for a, b in zip(first.draws, second.draws):
            np.testing.assert_array_equal(a, b)
    for shifted in sets:
        assert len(shifted.draws) == 4
        for indices in shifted.draws:
            assert len(set(indices.tolist())) == indices.size  # without replacement
            assert indices.min() >= 0 and indices.max() < labels.size
            np.testing.assert_array_equal(np.bincount(labels[indices], minlength=10), shifted.class_counts)
        np.testing.assert_allclose(shifted.prior, shifted.class_counts / shifted.class_counts.sum())
    forward = sets[0]
    assert not np.array_equal(np.sort(forward.draws[0]), np.sort(forward.draws[1]))  # seeds differ
    # The balanced split's uniform set is the whole split, in every draw.
    assert all(np.array_equal(np.sort(d), np.arange(labels.size)) for d in sets[2].draws)


def test_unbalanced_split_uses_the_smallest_class_count_and_refuses_too_large_n_max():
    labels = np.repeat(np.arange(3), [8, 5, 12])
    sets = shifted_test_sets(labels, [30, 20, 10], rhos=(2,), draws=2, seed=0)
    assert sets[1].class_counts.tolist() == [5, 5, 5]
    with pytest.raises(ValueError, match="class 1 has 5 images"):
        shifted_test_sets(labels, [30, 20, 10], rhos=(2,), n_max=8)
    with pytest.raises(ValueError, match="class 2 has no image"):
        shifted_test_sets(np.array([0, 1, 0, 1]), [3, 2, 1])


# ---- expectations --------------------------------------------------------------------------------


def test_expected_accuracy_equals_the_mean_over_every_possible_draw():
    # 3 classes, 4 test images each with known correctness; forward counts (3, 2, 1): enumerate all
    # C(4,3) * C(4,2) * C(4,1) draws and average their accuracy exactly with fractions.
    correct = {0: [1, 1, 0, 1], 1: [0, 1, 0, 0], 2: [1, 0, 0, 0]}
    counts = [3, 2, 1]
    totals = []
    for picks in itertools.product(*(itertools.combinations(correct[c], counts[c]) for c in range(3))):
        totals.append(Fraction(sum(sum(p) for p in picks), sum(counts)))
    brute = sum(totals) / len(totals)
    per_class = [Fraction(sum(correct[c]), 4) for c in range(3)]
    result = expected_metrics([float(a) for a in per_class], counts, [300, 50, 5])
    assert result["accuracy"] == pytest.approx(float(brute), abs=1e-15)
    assert float(brute) == pytest.approx(float(sum(n * a for n, a in zip(counts, per_class)) / 6), abs=1e-15)
    assert result["many_accuracy"] == 0.75 and result["medium_accuracy"] == 0.25 and result["few_accuracy"] == 0.25
    assert result["worst_class_accuracy"] == 0.25 and result["worst_class"] == 1


def test_expectation_groups_are_image_weighted_and_worst_class_skips_absent_classes():
    accuracy = np.array([0.9, 0.5, 0.1, 0.3])
    train_counts = [500, 400, 10, 5]
    prior = [0.6, 0.2, 0.2, 0.0]
    result = expected_metrics(accuracy, prior, train_counts)
    assert result["accuracy"] == pytest.approx(0.6 * 0.9 + 0.2 * 0.5 + 0.2 * 0.1)
    assert result["many_accuracy"] == pytest.approx((0.6 * 0.9 + 0.2 * 0.5) / 0.8)
    assert result["medium_accuracy"] is None  # no class with 20..100 training images
    assert result["few_accuracy"] == pytest.approx(0.1)  # class 3 has no mass
    assert result["worst_class"] == 2


def test_drawn_metrics_agree_with_sklearn_and_with_the_expectation_on_the_full_split():
    rng = np.random.default_rng(5)
    labels = rng.permutation(np.repeat(np.arange(6), 20))
    preds = np.where(rng.random(labels.size) < 0.7, labels, rng.integers(0, 6, labels.size))
    train_counts = [400, 150, 60, 30, 12, 6]
    indices = draw_test_indices(labels, [20, 12, 8, 5, 3, 2], seed=2)
    measured = drawn_metrics(preds, labels, indices, train_counts)
    assert measured["accuracy"] == pytest.approx(accuracy_score(labels[indices], preds[indices]))
    recalls = recall_score(labels[indices], preds[indices], labels=range(6), average=None, zero_division=0)
    assert measured["worst_class_accuracy"] == pytest.approx(recalls.min())
    many = np.isin(labels[indices], [0, 1])
    assert measured["many_accuracy"] == pytest.approx(accuracy_score(labels[indices][many], preds[indices][many]))
    # Whole balanced split: drawn == expected exactly.
    full = np.arange(labels.size)
    per_class = recall_score(labels, preds, labels=range(6), average=None)
    expected = expected_metrics(per_class, np.full(6, 20), train_counts)
    for key, value in drawn_metrics(preds, labels, full, train_counts).items():
        assert value == pytest.approx(expected[key], abs=1e-12), key


def test_mean_of_many_draws_approaches_the_exact_expectation():
    rng = np.random.default_rng(8)
    labels = np.repeat(np.arange(8), 50)
    preds = np.where(rng.random(labels.size) < np.repeat(np.linspace(0.9, 0.2, 8), 50), labels, (labels + 1) % 8)
    train_counts = (500 * 0.05 ** (np.arange(8) / 7)).astype(int)
    counts = shifted_class_counts(train_counts, 50, 10, "forward")
    per_class = np.array([np.mean(preds[labels == c] == c) for c in range(8)])
    exact = expected_metrics(per_class, counts, train_counts)["accuracy"]
    draws = [drawn_metrics(preds, labels, draw_test_indices(labels, counts, s), train_counts)["accuracy"] for s in range(400)]
    # Standard error of the mean of 400 draws is < 0.002 here; 0.006 is three of them.
    assert np.mean(draws) == pytest.approx(exact, abs=0.006)


# ---- a discrete label-shift world with closed-form posteriors -------------------------------------


def discrete_world(seed, num_classes=5, num_inputs=40):
    """p(x | y) tables, a long-tailed training prior and a random test prior."""
    rng = np.random.default_rng(seed)
    likelihood = rng.dirichlet(np.full(num_inputs, 0.3), size=num_classes)  # (K, M): p(x | y)
    pi_train = 0.2 ** (np.arange(num_classes) / (num_classes - 1))
    pi_train /= pi_train.sum()
    pi_test = rng.dirichlet(np.ones(num_classes))
    return likelihood, pi_train, pi_test


def bayes_posterior(likelihood, prior):
    """p(y | x) for every input x, shape (M, K), by Bayes' rule (independent of the module)."""
    joint = likelihood.T * prior
    return joint / joint.sum(axis=1, keepdims=True)


def expected_accuracy(decisions, likelihood, prior):
    """Exact accuracy of decision rule x -> decisions[x] under p(x, y) = prior[y] p(x | y)."""
    return float(sum(prior[y] * likelihood[y, x] for x, y in enumerate(decisions)))


@pytest.mark.parametrize("seed", range(25))
def test_adaptation_gives_the_bayes_posterior_and_never_lowers_expected_accuracy(seed):
    likelihood, pi_train, pi_test = discrete_world(seed)
    source_logits = np.log(bayes_posterior(likelihood, pi_train)) + np.random.default_rng(seed).normal(size=(40, 1))
    adapted = adapt_logits(source_logits, pi_test, encoded_prior(1000 * pi_train, "ce"))
    softmax = np.exp(adapted - adapted.max(axis=1, keepdims=True))
    np.testing.assert_allclose(softmax / softmax.sum(axis=1, keepdims=True), bayes_posterior(likelihood, pi_test), rtol=1e-12)
    before = expected_accuracy(source_logits.argmax(axis=1), likelihood, pi_test)
    after = expected_accuracy(adapted.argmax(axis=1), likelihood, pi_test)
    assert after >= before - 1e-15
    # A balanced-softmax model's logits are log p(x | y) + const: its encoded prior is uniform.
    balanced_logits = np.log(likelihood.T) + 3.0
    balanced_adapted = adapt_logits(balanced_logits, pi_test, encoded_prior(1000 * pi_train, "balanced_softmax"))
    np.testing.assert_array_equal(balanced_adapted.argmax(axis=1), adapted.argmax(axis=1))


def test_adaptation_helps_a_calibrated_model_on_sampled_labels():
    # Calibrated by construction: inputs drawn from the test marginal, labels drawn from the true
    # test posteriors; the model reports the training-prior posteriors.
    likelihood, pi_train, _ = discrete_world(0)
    pi_test = pi_train[::-1].copy()  # backward: the tail becomes the head
    rng = np.random.default_rng(0)
    labels = rng.choice(5, size=100_000, p=pi_test)
    inputs = np.array([rng.choice(40, p=likelihood[y]) for y in labels[:20_000]])
    labels = labels[:20_000]
    logits = np.log(bayes_posterior(likelihood, pi_train))[inputs]
    adapted = adapt_logits(logits, pi_test, pi_train)
    before = np.mean(logits.argmax(axis=1) == labels)
    after = np.mean(adapted.argmax(axis=1) == labels)
    exact_before = expected_accuracy(np.log(bayes_posterior(likelihood, pi_train)).argmax(axis=1), likelihood, pi_test)
    exact_after = expected_accuracy(bayes_posterior(likelihood, pi_test).argmax(axis=1), likelihood, pi_test)
    assert exact_after > exact_before + 0.05  # the shift matters in this world
    assert after > before and after == pytest.approx(exact_after, abs=0.015)


def test_adapt_logits_keeps_torch_dtype_and_excludes_zero_prior_classes():
    logits = torch.zeros(2, 3, dtype=torch.float32)
    out = adapt_logits(logits, [0.5, 0.5, 0.0], [1, 1, 1])
    assert out.dtype == torch.float32 and torch.isinf(out[:, 2]).all()
    assert torch.softmax(out, dim=1)[:, 2].eq(0).all() and not torch.isnan(torch.softmax(out, dim=1)).any()
    np.testing.assert_allclose(prior_shift([1, 3], [1, 1]), np.log([0.25, 0.75]) - np.log(0.5))


def test_encoded_prior_for_logit_adjustment_strength_tau():
    counts = np.array([800.0, 150.0, 50.0])
    pi = counts / counts.sum()
    np.testing.assert_allclose(encoded_prior(counts, tau=0.5), np.sqrt(pi) / np.sqrt(pi).sum(), rtol=1e-14)
    np.testing.assert_allclose(encoded_prior(counts, tau=1.0), np.full(3, 1 / 3), rtol=1e-14)
    np.testing.assert_allclose(encoded_prior(counts, "ccar_ce"), pi, rtol=1e-14)
    np.testing.assert_allclose(encoded_prior(counts, "ccar_bs"), np.full(3, 1 / 3), rtol=1e-14)
    assert {ENCODED_PRIOR_BY_LOSS[name] for name in ("ce", "focal", "ccar_ce")} == {"train"}
    assert {ENCODED_PRIOR_BY_LOSS[name] for name in ("bs", "balanced_softmax", "la", "ccar_bs")} == {"uniform"}
    with pytest.raises(ValueError, match="no known encoded prior for 'cb_ce'"):
        encoded_prior(counts, "cb_ce")


@pytest.mark.parametrize("q", [1.0, 0.5, 0.0])
def test_encoded_prior_with_a_resampling_sampler_gives_the_bayes_posterior(q):
    # A sampler drawing class c with probability ~ n_c ** q makes the loss see the prior s ~ pi ** q.
    # A calibrated CE model then outputs the Bayes posterior under s; a Balanced Softmax model's
    # logits + log pi_train give it (BS adds log of the data frequencies, not the sampler's).
    likelihood, pi_train, pi_test = discrete_world(3)
    sampled = pi_train**q / (pi_train**q).sum()
    ce_logits = np.log(bayes_posterior(likelihood, sampled))
    bs_logits = ce_logits - np.log(pi_train)
    for logits, kind in ((ce_logits, "ce"), (bs_logits, "bs")):
        adapted = adapt_logits(logits, pi_test, encoded_prior(1000 * pi_train, kind, sampling_power=q))
        softmax = np.exp(adapted - adapted.max(axis=1, keepdims=True))
        np.testing.assert_allclose(softmax / softmax.sum(axis=1, keepdims=True), bayes_posterior(likelihood, pi_test), rtol=1e-10)
    la_logits = ce_logits - 0.5 * np.log(pi_train)  # logit adjustment with tau = 0.5
    adapted = adapt_logits(la_logits, pi_test, encoded_prior(1000 * pi_train, tau=0.5, sampling_power=q))
    softmax = np.exp(adapted - adapted.max(axis=1, keepdims=True))
    np.testing.assert_allclose(softmax / softmax.sum(axis=1, keepdims=True), bayes_posterior(likelihood, pi_test), rtol=1e-10)


# ---- EM ------------------------------------------------------------------------------------------


def reference_em(probs, pi_source, tol, max_iter):
    """Saerens et al. 2002, eqs. 2.9-2.10, written independently of the module."""
    prior = pi_source.copy()
    for step in range(1, max_iter + 1):
        unnormalised = probs * prior / pi_source
        posterior = unnormalised / unnormalised.sum(axis=1)[:, None]
        updated = posterior.mean(axis=0)
        done = np.max(np.abs(updated - prior)) < tol
        prior = updated
        if done:
            return prior, step
    return prior, max_iter


def test_em_equals_a_hand_written_em():
    rng = np.random.default_rng(2)
    probs = rng.dirichlet(np.full(7, 0.5), size=300)
    source = rng.dirichlet(np.full(7, 2.0))
    result = em_prior(probs, source, tol=1e-10, max_iter=5000)
    prior, steps = reference_em(probs, source, 1e-10, 5000)
    assert result.converged and result.iterations == steps
    np.testing.assert_allclose(result.prior, prior, rtol=1e-12, atol=1e-15)
    expected_probs = probs * prior / source
    np.testing.assert_allclose(result.probs, expected_probs / expected_probs.sum(axis=1, keepdims=True), rtol=1e-9)


@pytest.mark.parametrize("encoding", ["train", "uniform"])
def test_em_recovers_a_known_test_prior_from_calibrated_predictions(encoding):
    # 30,000 unlabelled inputs from the test marginal; the model reports the exact posteriors under
    # its encoded prior. Stated tolerance: max |pi_hat - pi_test| < 0.01 (the sampling error of the
    # label counts alone is ~0.003 per class here).
    likelihood, pi_train, pi_test = discrete_world(7)
    encoded = pi_train if encoding == "train" else np.full(5, 0.2)
    rng = np.random.default_rng(4)
    labels = rng.choice(5, size=30_000, p=pi_test)
    inputs = (rng.random(labels.size)[:, None] > np.cumsum(likelihood[labels], axis=1)).sum(axis=1)
    probs = bayes_posterior(likelihood, encoded)[inputs]
    result = em_prior(probs, encoded)
    assert result.converged
    assert np.abs(result.prior - pi_test).max() < 0.01
    assert np.abs(probs.mean(axis=0) - pi_test).max() > 0.05  # the unadapted mean is far off


def test_em_refuses_logits_and_bad_rows():
    with pytest.raises(ValueError, match="not logits"):
        em_prior(np.array([[2.0, -1.0]]), [0.5, 0.5])
    with pytest.raises(ValueError, match="sums to"):
        em_prior(np.array([[0.7, 0.7]]), [0.5, 0.5])
    with pytest.raises(ValueError, match="non-finite"):
        em_prior(np.array([[np.nan, 1.0]]), [0.5, 0.5])
    with pytest.raises(ValueError, match="2 entries, expected 3"):
        em_prior(np.full((4, 3), 1 / 3), [0.5, 0.5])


# ---- BBSE ----------------------------------------------------------------------------------------


def test_bbse_recovers_the_prior_exactly_from_exact_moments():
    rng = np.random.default_rng(0)
    k = 6
    conditional = rng.dirichlet(np.full(k, 0.5), size=k) * 0.4 + np.eye(k) * 0.6  # p(pred | y), rows
    pi_val = rng.dirichlet(np.ones(k))
    pi_test = rng.dirichlet(np.ones(k))
    counts = 1e6 * (conditional * pi_val[:, None])  # counts[true, pred]
    target_pred = pi_test @ conditional  # P_target(pred)
    result = bbse_prior(counts, target_pred)
    np.testing.assert_allclose(result.prior, pi_test, rtol=1e-10)
    np.testing.assert_allclose(result.weights, pi_test / pi_val, rtol=1e-10)
    assert result.clipped.size == 0 and not result.singular


def test_bbse_on_sampled_predictions_is_close_to_the_truth():
    likelihood, pi_train, pi_test = discrete_world(3)
    rng = np.random.default_rng(9)
    rule = bayes_posterior(likelihood, pi_train).argmax(axis=1)  # fixed black-box classifier

    def sample(prior, n):
        labels = rng.choice(5, size=n, p=prior)
        inputs = (rng.random(n)[:, None] > np.cumsum(likelihood[labels], axis=1)).sum(axis=1)
        return labels, rule[inputs]

    val_labels, val_preds = sample(pi_train, 40_000)
    _, target_preds = sample(pi_test, 40_000)
    confusion = np.zeros((5, 5))
    np.add.at(confusion, (val_labels, val_preds), 1)
    result = bbse_prior(confusion, np.bincount(target_preds, minlength=5), on_singular="lstsq")
    assert np.abs(result.prior - pi_test).max() < 0.03


def test_bbse_refuses_a_singular_matrix_and_falls_back_on_request():
    counts = np.array([[10.0, 0.0, 0.0], [0.0, 8.0, 0.0], [0.0, 5.0, 0.0]])  # class 2 never predicted
    with pytest.raises(ValueError, match=r"singular \(rank 2 of 3; never predicted on validation: classes \[2\]"):
        bbse_prior(counts, [5, 5, 0])
    result = bbse_prior(counts, [5, 5, 0], on_singular="lstsq")
    assert result.singular and result.prior.sum() == pytest.approx(1.0) and np.isfinite(result.prior).all()


def test_bbse_clips_negative_weights_and_says_which():
    counts = np.array([[90.0, 10.0], [30.0, 70.0]])
    # Target predicts class 0 more often than even a class-0-only world would: w_1 < 0.
    result = bbse_prior(counts, [0.95, 0.05])
    assert result.clipped.tolist() == [1] and result.weights[1] == 0
    np.testing.assert_allclose(result.prior, [1.0, 0.0])


# ---- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: prior_from_counts([1, -1, 2]), "is negative"),
        (lambda: prior_from_counts([0, 0]), "sums to 0"),
        (lambda: prior_from_counts([1, np.inf]), "non-finite"),
        (lambda: prior_from_counts([[1, 2]]), "1-D"),
        (lambda: shifted_class_counts([3, 2, 1], 10, 0.5, "forward"), "rho"),
        (lambda: shifted_class_counts([3, 2, 1], 10, 5, "sideways"), "direction must be one of"),
        (lambda: shifted_class_counts([3, 0, 1], 10, 5, "forward"), "positive training count"),
        (lambda: shifted_class_counts([3, 2, 1], 0, 5, "forward"), "n_max"),
        (lambda: shifted_prior_names((1,)), "rho must be a finite number > 1"),
        (lambda: draw_test_indices([0, 1, 1], [1, 3], seed=0), "class 1 has 2 images"),
        (lambda: draw_test_indices([0.0, 1.0], [1, 1], seed=0), "integer class indices"),
        (lambda: expected_metrics([0.5, 1.5], [1, 1], [10, 10]), r"in \[0, 1\]"),
        (lambda: expected_metrics([0.5, 0.5], [1, 1, 1], [10, 10]), "3 entries, expected 2"),
        (lambda: adapt_logits(np.zeros((2, 3)), [1, 1], [1, 1]), "logits have 3 classes"),
        (lambda: prior_shift([1, 1], [1, 0]), "positive for every class"),
        (lambda: bbse_prior(np.ones((2, 3)), [1, 1]), "square"),
        (lambda: bbse_prior(np.eye(2), [1, 1], on_singular="pinv"), "on_singular"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(call, message):
    with pytest.raises(ValueError, match=message):
        call()
