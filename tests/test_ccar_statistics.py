"""CCAR's training statistics (Omega per Many / Medium / Few group, share below the pivot), pinned
against a NumPy recomputation of the formula from the logits, never against the loss's own output."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from longtail.losses import CCAR

# Two Many (> 100), two Medium (20..100) and two Few (< 20) classes.
COUNTS = [400, 150, 60, 30, 12, 5]
GROUPS = {"all": [0, 1, 2, 3, 4, 5], "many": [0, 1], "medium": [2, 3], "few": [4, 5]}


def numpy_omega(logits: np.ndarray, soft: np.ndarray, counts, base: str, pivot: float):
    """Omega_i and p_t,i from the formula: p_t = sum_c q_c softmax(z + log pi)_c for Balanced
    Softmax (z for CE), f = sum_c q_c N_c / N, f' = f below the pivot else 1 - f."""
    counts = np.asarray(counts, dtype=np.float64)
    z = logits + (np.log(counts / counts.sum()) if base == "bs" else 0.0)
    z = z - z.max(axis=1, keepdims=True)
    probabilities = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    p_true = (soft * probabilities).sum(axis=1)
    frequency = soft @ (counts / counts.sum())
    dual = np.where(p_true < pivot, frequency, 1.0 - frequency)
    return (math.e - dual) ** (pivot - p_true), p_true


def expected_statistics(batches, counts, base, pivot, batch_mean=False):
    """Per group: sample-mass weighted means over every batch (a soft target spreads its sample)."""
    rows = []
    for logits, soft in batches:
        omega, p_true = numpy_omega(logits, soft, counts, base, pivot)
        weight = omega / omega.mean() if batch_mean else omega
        rows.append((soft, omega, p_true, weight))
    out = {}
    for group, classes in GROUPS.items():
        m_list = [soft[:, classes].sum(axis=1) for soft, *_ in rows]
        total = sum(m.sum() for m in m_list)
        mean = sum((m * o).sum() for m, (_, o, _, _) in zip(m_list, rows)) / total
        square = sum((m * o * o).sum() for m, (_, o, _, _) in zip(m_list, rows)) / total
        out[f"ccar_omega_mean_{group}"] = mean
        out[f"ccar_omega_std_{group}"] = math.sqrt(square - mean * mean)
        out[f"ccar_below_pivot_{group}"] = sum((m * (p < pivot)).sum() for m, (_, _, p, _) in zip(m_list, rows)) / total
        out[f"ccar_p_true_mean_{group}"] = sum((m * p).sum() for m, (_, _, p, _) in zip(m_list, rows)) / total
        out[f"ccar_weight_mean_{group}"] = sum((m * w).sum() for m, (_, _, _, w) in zip(m_list, rows)) / total
    return out


def batches(seed: int, soft: bool, n: int = 3, size: int = 40):
    generator = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        logits = generator.normal(0.0, 2.0, size=(size, len(COUNTS)))
        labels = generator.integers(0, len(COUNTS), size=size)
        onehot = np.eye(len(COUNTS))[labels]
        if soft:
            partner = np.eye(len(COUNTS))[generator.permutation(labels)]
            lam = generator.uniform(0.2, 0.8, size=(size, 1))
            onehot = lam * onehot + (1 - lam) * partner
        out.append((logits, onehot))
    return out


def run_loss(loss, data, soft: bool):
    for logits, targets in data:
        z = torch.tensor(logits, dtype=torch.float32, requires_grad=True)
        t = torch.tensor(targets, dtype=torch.float32) if soft else torch.tensor(targets.argmax(axis=1))
        loss(z, t).backward()


@pytest.mark.parametrize("base,soft,normalization", [("ce", False, "none"), ("bs", False, "none"),
                                                      ("bs", True, "none"), ("bs", False, "batch_mean")])
def test_statistics_equal_a_numpy_recomputation_per_group(base, soft, normalization):
    data = batches(seed=3, soft=soft)
    loss = CCAR(COUNTS, base=base, omega=0.6, weight_normalization=normalization)
    loss.track_statistics()
    run_loss(loss, data, soft)
    got = loss.epoch_statistics()
    want = expected_statistics(data, COUNTS, base, 0.6, batch_mean=normalization == "batch_mean")
    assert set(got) == set(want)
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key
    # They describe something: Omega spreads, and not every sample sits on one side of the pivot.
    assert got["ccar_omega_std_all"] > 0.05 and 0 < got["ccar_below_pivot_all"] < 1


def test_nothing_is_recorded_without_gradients_or_tracking_and_each_call_resets():
    data = batches(seed=4, soft=False, n=1)
    untracked = CCAR(COUNTS, base="bs")
    run_loss(untracked, data, soft=False)
    assert untracked.epoch_statistics() == {}
    assert not any(name.startswith("statistics_") for name in untracked.state_dict())

    loss = CCAR(COUNTS, base="bs")
    loss.track_statistics()
    logits, onehot = data[0]
    with torch.no_grad():  # an evaluation pass
        loss(torch.tensor(logits, dtype=torch.float32), torch.tensor(onehot.argmax(axis=1)))
    assert loss.epoch_statistics() == {}
    run_loss(loss, data, soft=False)
    assert loss.epoch_statistics() != {}
    assert loss.epoch_statistics() == {}  # reset by the previous call


def test_a_group_without_samples_is_left_out():
    loss = CCAR(COUNTS, base="ce")
    loss.track_statistics()
    logits = torch.randn(4, len(COUNTS), requires_grad=True)
    loss(logits, torch.tensor([0, 1, 0, 1])).backward()  # many-shot classes only
    keys = loss.epoch_statistics()
    assert "ccar_omega_mean_many" in keys and "ccar_omega_mean_few" not in keys and "ccar_omega_mean_medium" not in keys


def test_mid_epoch_state_resumes_the_sums_and_old_checkpoints_load():
    data = batches(seed=5, soft=False, n=4)
    whole = CCAR(COUNTS, base="bs")
    whole.track_statistics()
    run_loss(whole, data, soft=False)

    first = CCAR(COUNTS, base="bs")
    first.track_statistics()
    run_loss(first, data[:2], soft=False)
    state = first.state_dict()  # a mid-epoch checkpoint
    resumed = CCAR(COUNTS, base="bs")
    resumed.track_statistics()
    resumed.load_state_dict(state)
    run_loss(resumed, data[2:], soft=False)
    assert resumed.epoch_statistics() == whole.epoch_statistics()

    old = CCAR(COUNTS, base="bs").state_dict()  # written before statistics existed
    loaded = CCAR(COUNTS, base="bs")
    loaded.track_statistics()
    loaded.load_state_dict(old)
    assert loaded.epoch_statistics() == {}
