"""Baseline losses (spec section 4) against independent float64 computations.

References are written with numpy (or torch.nn.functional where PyTorch defines the convention we
follow), never with the code under test.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from longtail import losses as L

COUNTS = [500, 120, 40, 9, 2]
K = len(COUNTS)


def np_log_softmax(z):
    z = np.asarray(z, dtype=np.float64)
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def np_weights(counts, kind, beta=0.9999):
    n = np.asarray(counts, dtype=np.float64)
    raw = {"inverse": 1 / n, "sqrt": 1 / np.sqrt(n), "effective_number": (1 - beta) / (1 - beta**n)}[kind]
    return raw * len(n) / raw.sum()


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(16, K, generator=generator, dtype=torch.float64) * 3
    targets = torch.randint(0, K, (16,), generator=generator)
    soft = torch.softmax(torch.randn(16, K, generator=generator, dtype=torch.float64) * 2, dim=1)
    return logits, targets, soft


def np_softmax_loss(z, y=None, q=None, offset=0.0, gamma=0.0, weights=None, eps=0.0):
    """-sum_c q_c w_c (1 - p_c)^gamma log p_c on z + offset, written from the formula."""
    z = np.asarray(z, dtype=np.float64) + offset
    logp = np_log_softmax(z)
    k = z.shape[1]
    if q is None:
        q = np.eye(k)[np.asarray(y)]
    q = (1 - eps) * np.asarray(q) + eps / k
    w = np.ones(k) if weights is None else np.asarray(weights)
    return -(q * w * (1 - np.exp(logp)) ** gamma * logp).sum(axis=1)


# ---------------------------------------------------------------- cross-entropy family


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_ce_matches_numpy_and_torch(batch, reduction):
    logits, targets, _ = batch
    got = L.CrossEntropy(COUNTS, reduction=reduction)(logits, targets)
    per_sample = np_softmax_loss(logits.numpy(), targets.numpy())
    expected = {"none": per_sample, "sum": per_sample.sum(), "mean": per_sample.mean()}[reduction]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    torch.testing.assert_close(got, F.cross_entropy(logits, targets, reduction=reduction))


def test_ce_hand_value():
    # z = (0, ln 3): p = (1/4, 3/4); -log p_0 = ln 4
    loss = L.CrossEntropy()(torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64), torch.tensor([0]))
    assert loss.item() == pytest.approx(math.log(4.0), rel=1e-12)


def test_ce_soft_targets(batch):
    logits, _, soft = batch
    got = L.CrossEntropy(reduction="none")(logits, soft)
    np.testing.assert_allclose(got.numpy(), np_softmax_loss(logits.numpy(), q=soft.numpy()), rtol=1e-12)


def test_soft_path_equals_hard_path_for_one_hot(batch):
    logits, targets, _ = batch
    one_hot = F.one_hot(targets, K).double()
    for loss in (L.FocalLoss(COUNTS, gamma=2, reduction="none"), L.build_loss("cb_ce", COUNTS, reduction="none"),
                 L.LDAMLoss(COUNTS, reduction="none"), L.LogitAdjustedLoss(COUNTS, tau=1.5, reduction="none")):
        hard_loss, hard_log_p = loss.per_sample(logits / 10, targets)
        soft_loss, soft_log_p = loss.per_sample(logits / 10, one_hot)
        torch.testing.assert_close(hard_loss, soft_loss)
        torch.testing.assert_close(hard_log_p, soft_log_p)


def test_soft_target_p_true_is_target_weighted_probability(batch):
    logits, _, soft = batch
    _, log_p_true = L.CrossEntropy().per_sample(logits, soft)
    expected = (soft.numpy() * np.exp(np_log_softmax(logits.numpy()))).sum(axis=1)
    np.testing.assert_allclose(log_p_true.exp().numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_label_smoothing_matches_torch_and_formula(batch, reduction):
    logits, targets, _ = batch
    got = L.build_loss("label_smoothing", COUNTS, label_smoothing=0.2, reduction=reduction)(logits, targets)
    torch.testing.assert_close(got, F.cross_entropy(logits, targets, label_smoothing=0.2, reduction=reduction))
    per_sample = np_softmax_loss(logits.numpy(), targets.numpy(), eps=0.2)
    np.testing.assert_allclose(got.numpy(), per_sample if reduction == "none" else per_sample.sum(), rtol=1e-12)
    # the smoothed loss still reports the true class's probability
    _, log_p = L.CrossEntropy(label_smoothing=0.2).per_sample(logits, targets)
    np.testing.assert_allclose(log_p.numpy(), np_log_softmax(logits.numpy())[np.arange(16), targets.numpy()])


def test_label_smoothing_hand_value():
    # two classes, z = 0: p = 1/2 each; eps = 0.2 target (0.9, 0.1): loss = ln 2 regardless
    loss = L.CrossEntropy(label_smoothing=0.2)(torch.zeros(1, 2, dtype=torch.float64), torch.tensor([1]))
    assert loss.item() == pytest.approx(math.log(2.0), rel=1e-12)


@pytest.mark.parametrize("weighting", ["inverse", "sqrt"])
def test_weighted_ce(batch, weighting):
    logits, targets, soft = batch
    loss = L.build_loss("weighted_ce", COUNTS, weighting=weighting, reduction="none")
    w = np_weights(COUNTS, weighting)
    np.testing.assert_allclose(loss.class_weights.numpy(), w, rtol=1e-12)
    np.testing.assert_allclose(loss(logits, targets).numpy(),
                               np_softmax_loss(logits.numpy(), targets.numpy(), weights=w), rtol=1e-12)
    np.testing.assert_allclose(loss(logits, soft).numpy(),
                               np_softmax_loss(logits.numpy(), q=soft.numpy(), weights=w), rtol=1e-12)
    # soft-target weighting follows F.cross_entropy(weight=...) with probabilities
    torch.testing.assert_close(loss(logits, soft), F.cross_entropy(logits, soft, weight=torch.tensor(w), reduction="none"))
    # plain batch mean (documented), not F.cross_entropy's division by sum of w_y
    mean = L.build_loss("weighted_ce", COUNTS, weighting=weighting)(logits, targets)
    assert mean.item() == pytest.approx(np_softmax_loss(logits.numpy(), targets.numpy(), weights=w).mean(), rel=1e-12)


def test_weight_values_by_hand():
    # counts (1, 4): inverse (1, 1/4) -> *2/1.25 = (1.6, 0.4); sqrt (1, 1/2) -> *2/1.5 = (4/3, 2/3)
    np.testing.assert_allclose(L.class_weights([1, 4], "inverse").numpy(), [1.6, 0.4])
    np.testing.assert_allclose(L.class_weights([1, 4], "sqrt").numpy(), [4 / 3, 2 / 3])
    np.testing.assert_allclose(L.class_weights([1, 4], "none").numpy(), [1, 1])
    with pytest.raises(ValueError, match="weighting must be one of"):
        L.class_weights([1, 4], "bogus")


def test_weighted_ce_with_label_smoothing_matches_torch(batch):
    logits, targets, _ = batch
    loss = L.WeightedCrossEntropy(COUNTS, "sqrt", label_smoothing=0.1, reduction="sum")
    w = torch.tensor(np_weights(COUNTS, "sqrt"))
    torch.testing.assert_close(loss(logits, targets), F.cross_entropy(logits, targets, weight=w, label_smoothing=0.1, reduction="sum"))


# ---------------------------------------------------------------- focal


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0, 0.5])
def test_focal_matches_formula(batch, gamma):
    logits, targets, soft = batch
    loss = L.FocalLoss(gamma=gamma, reduction="none")
    np.testing.assert_allclose(loss(logits, targets).numpy(),
                               np_softmax_loss(logits.numpy(), targets.numpy(), gamma=gamma), rtol=1e-10)
    np.testing.assert_allclose(loss(logits, soft).numpy(),
                               np_softmax_loss(logits.numpy(), q=soft.numpy(), gamma=gamma), rtol=1e-10)


def test_focal_hand_value_and_gradient():
    # p_y = 3/4: loss = (1/4)^2 * ln(4/3)
    z = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64, requires_grad=True)
    loss = L.FocalLoss(gamma=2.0)(z, torch.tensor([1]))
    assert loss.item() == pytest.approx(0.0625 * math.log(4 / 3), rel=1e-12)
    assert torch.autograd.gradcheck(lambda x: L.FocalLoss(gamma=2.0)(x, torch.tensor([1])), (z,))


def test_focal_gamma0_is_ce_and_finite_at_certainty():
    z = torch.tensor([[200.0, 0.0, -50.0]], requires_grad=True)
    loss = L.FocalLoss(gamma=0.5)(z, torch.tensor([0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


# ---------------------------------------------------------------- class-balanced


def test_cb_weights_effective_number_sum_to_k():
    w = L.class_weights(COUNTS, "effective_number", beta=0.9999)
    np.testing.assert_allclose(w.numpy(), np_weights(COUNTS, "effective_number"), rtol=1e-10)
    assert w.sum().item() == pytest.approx(K, rel=1e-12)
    # hand value: counts (1, 2), beta = 0.5: raw (0.5/0.5, 0.5/0.75) = (1, 2/3) -> *2/(5/3) = (1.2, 0.8)
    np.testing.assert_allclose(L.class_weights([1, 2], "effective_number", beta=0.5).numpy(), [1.2, 0.8])


@pytest.mark.parametrize("name,gamma", [("cb_ce", 0.0), ("cb_focal", 2.0)])
def test_class_balanced_losses(batch, name, gamma):
    logits, targets, soft = batch
    loss = L.build_loss(name, COUNTS, reduction="none")
    w = np_weights(COUNTS, "effective_number")
    np.testing.assert_allclose(loss(logits, targets).numpy(),
                               np_softmax_loss(logits.numpy(), targets.numpy(), gamma=gamma, weights=w), rtol=1e-10)
    np.testing.assert_allclose(loss(logits, soft).numpy(),
                               np_softmax_loss(logits.numpy(), q=soft.numpy(), gamma=gamma, weights=w), rtol=1e-10)


# ---------------------------------------------------------------- LDAM


def test_ldam_margins():
    m = L.ldam_margins(COUNTS).numpy()
    n = np.asarray(COUNTS, dtype=np.float64)
    assert m.max() == pytest.approx(0.5)
    assert m.argmax() == n.argmin()
    np.testing.assert_allclose(m * n**0.25, np.full(K, 0.5 * 2**0.25), rtol=1e-12)  # C = 0.5 * min(N)^(1/4)


def test_ldam_on_hand_computed_cosine_logits():
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(12, 6, generator=generator, dtype=torch.float64)
    weight = torch.randn(K, 6, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, K, (12,), generator=generator)
    cosine = (features / features.norm(dim=1, keepdim=True)) @ (weight / weight.norm(dim=1, keepdim=True)).T
    n = np.asarray(COUNTS, dtype=np.float64)
    margins = 0.5 * n**-0.25 / (n**-0.25).max()
    adjusted = cosine.numpy().copy()
    adjusted[np.arange(12), targets.numpy()] -= margins[targets.numpy()]
    expected = -np_log_softmax(30 * adjusted)[np.arange(12), targets.numpy()]
    # default: logits are s * cos (CosineHead(scale=30)); the loss subtracts s * m_y
    got = L.build_loss("ldam", COUNTS, reduction="none")(30 * cosine, targets)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)
    # raw cosines (LDAM-DRW's NormedLinear) with logits_prescaled=False give the same number
    raw = L.LDAMLoss(COUNTS, logits_prescaled=False, reduction="none")(cosine, targets)
    np.testing.assert_allclose(raw.numpy(), expected, rtol=1e-10)
    # a mismatched reading is refused instead of silently scaling twice
    with pytest.raises(ValueError, match="raw cosines in"):
        L.LDAMLoss(COUNTS, logits_prescaled=False)(30 * cosine, targets)
    with pytest.raises(ValueError, match="LDAM expects s"):
        L.build_loss("ldam_drw", COUNTS)(100 * cosine, targets)
    with pytest.raises(ValueError, match="LDAM expects s"):
        L.CCAR(COUNTS, base=L.LDAMLoss(COUNTS))(100 * cosine, targets)


def test_ldam_with_the_project_cosine_head():
    heads = pytest.importorskip("longtail.models.heads")
    torch.manual_seed(2)
    head = heads.CosineHead(6, K, scale=30.0).double()
    features = torch.randn(10, 6, dtype=torch.float64)
    targets = torch.arange(10) % K
    cosine = F.normalize(features, dim=1) @ F.normalize(head.weight.detach(), dim=1).T  # by hand
    margins = L.ldam_margins(COUNTS)
    expected = F.cross_entropy(30 * (cosine - F.one_hot(targets, K) * margins), targets)
    torch.testing.assert_close(L.build_loss("ldam", COUNTS)(head(features), targets), expected.float(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- logit adjustment / balanced softmax


@pytest.mark.parametrize("tau", [1.0, 0.5, 2.0])
def test_logit_adjusted(batch, tau):
    logits, targets, soft = batch
    log_prior = np.log(np.asarray(COUNTS, dtype=np.float64) / sum(COUNTS))
    loss = L.build_loss("la", COUNTS, tau=tau, reduction="none")
    np.testing.assert_allclose(loss(logits, targets).numpy(),
                               np_softmax_loss(logits.numpy(), targets.numpy(), offset=tau * log_prior), rtol=1e-12)
    np.testing.assert_allclose(loss(logits, soft).numpy(),
                               np_softmax_loss(logits.numpy(), q=soft.numpy(), offset=tau * log_prior), rtol=1e-12)
    # the reported p_t is the adjusted probability
    _, log_p = loss.per_sample(logits, targets)
    np.testing.assert_allclose(log_p.numpy(), np_log_softmax(logits.numpy() + tau * log_prior)[np.arange(16), targets.numpy()])


def test_balanced_softmax_is_la_with_tau_one(batch):
    logits, targets, _ = batch
    torch.testing.assert_close(L.build_loss("bs", COUNTS)(logits, targets), L.LogitAdjustedLoss(COUNTS, tau=1.0)(logits, targets))
    # hand value: counts (1, 3), z = 0: adjusted logits (ln 1/4, ln 3/4) -> -log p_0 = ln 4
    hand = L.BalancedSoftmaxLoss([1, 3])(torch.zeros(1, 2, dtype=torch.float64), torch.tensor([0]))
    assert hand.item() == pytest.approx(math.log(4.0), rel=1e-12)


@pytest.mark.parametrize("name,tau", [("focal_la", 0.7), ("focal_bs", 1.0)])
def test_focal_logit_adjusted(batch, name, tau):
    logits, targets, _ = batch
    options = {"tau": tau} if name == "focal_la" else {}
    loss = L.build_loss(name, COUNTS, gamma=2.0, reduction="none", **options)
    offset = tau * np.log(np.asarray(COUNTS, dtype=np.float64) / sum(COUNTS))
    np.testing.assert_allclose(loss(logits, targets).numpy(),
                               np_softmax_loss(logits.numpy(), targets.numpy(), offset=offset, gamma=2.0), rtol=1e-10)


def test_post_hoc_adjust():
    counts = [90, 10]
    logits = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    adjusted = L.post_hoc_adjust(logits, counts, tau=1.0)
    np.testing.assert_allclose(adjusted.numpy(), logits.numpy() - np.log([0.9, 0.1]), rtol=1e-6)
    # ln(0.9/0.1) = 2.197: the first sample flips to the tail class, the second does not
    assert adjusted.argmax(1).tolist() == [1, 0]
    assert L.post_hoc_adjust(logits, counts, tau=0.0).argmax(1).tolist() == [0, 0]
    assert adjusted.dtype == logits.dtype
    with pytest.raises(ValueError, match="classes"):
        L.post_hoc_adjust(torch.zeros(2, 3), counts)


# ---------------------------------------------------------------- DRW


@pytest.mark.parametrize("name,base", [("ce_drw", "ce"), ("ldam_drw", "ldam")])
def test_drw_switch(batch, name, base):
    logits, targets, _ = batch
    logits = logits / 5
    loss = L.build_loss(name, COUNTS, switch_epoch=3, reduction="none")
    unweighted = L.build_loss(base, COUNTS, reduction="none")(logits, targets)
    w = torch.tensor(np_weights(COUNTS, "effective_number"))
    for epoch in (0, 2):
        loss.set_epoch(epoch)
        torch.testing.assert_close(loss(logits, targets), unweighted)
    for epoch in (3, 10):
        loss.set_epoch(epoch)
        torch.testing.assert_close(loss(logits, targets), unweighted * w[targets])
    loss.set_epoch(1)  # going back (a resumed run) restores the unweighted phase
    torch.testing.assert_close(loss(logits, targets), unweighted)


def test_drw_default_epoch_and_generic_wrap(batch):
    logits, targets, _ = batch
    drw = L.DeferredReweighting(L.FocalLoss(COUNTS, gamma=1.0, reduction="sum"), COUNTS)
    assert drw.switch_epoch == 160
    drw.set_epoch(159)
    before = drw(logits, targets)
    drw.set_epoch(160)
    w = np_weights(COUNTS, "effective_number")
    expected = np_softmax_loss(logits.numpy(), targets.numpy(), gamma=1.0, weights=w).sum()
    assert drw(logits, targets).item() == pytest.approx(expected, rel=1e-10)
    assert before.item() == pytest.approx(np_softmax_loss(logits.numpy(), targets.numpy(), gamma=1.0).sum(), rel=1e-10)
    with pytest.raises(ValueError, match="per-class weights"):
        L.DeferredReweighting(torch.nn.CrossEntropyLoss(), COUNTS)


def test_drw_defaults_to_the_weighted_mean_of_ldam_drw_code(batch):
    # LDAM-DRW's code: F.cross_entropy(s * (cos - m_y), y, weight=w) with its default mean, which
    # divides by sum_i w_{y_i}. The same call is the reference here.
    logits, targets, _ = batch
    cosine = torch.tanh(logits)
    w = torch.tensor(np_weights(COUNTS, "effective_number"))
    margins = torch.tensor(0.5 * np.asarray(COUNTS, dtype=np.float64) ** -0.25 / min(COUNTS) ** -0.25)
    adjusted = 30 * (cosine - F.one_hot(targets, K) * margins)
    loss = L.build_loss("ldam_drw", COUNTS, switch_epoch=2)
    assert loss.reduction == "weighted_mean"
    loss.set_epoch(1)
    torch.testing.assert_close(loss(30 * cosine, targets), F.cross_entropy(adjusted, targets))
    loss.set_epoch(2)
    torch.testing.assert_close(loss(30 * cosine, targets), F.cross_entropy(adjusted, targets, weight=w))
    ce_drw = L.build_loss("ce_drw", COUNTS, switch_epoch=0)
    torch.testing.assert_close(ce_drw(logits, targets), F.cross_entropy(logits, targets, weight=w))


@pytest.mark.parametrize("weighting", ["inverse", "sqrt"])
def test_weighted_mean_reduction(batch, weighting):
    logits, targets, soft = batch
    w = np_weights(COUNTS, weighting)
    loss = L.build_loss("weighted_ce", COUNTS, weighting=weighting, label_smoothing=0.1, reduction="weighted_mean")
    reference = F.cross_entropy(logits, targets, weight=torch.tensor(w), label_smoothing=0.1)
    torch.testing.assert_close(loss(logits, targets), reference)
    # Soft targets: sum_i loss_i / sum_i sum_c q_ic w_c (PyTorch's probability-target mean divides by B).
    loss = L.build_loss("weighted_ce", COUNTS, weighting=weighting, reduction="weighted_mean")
    expected = np_softmax_loss(logits.numpy(), q=soft.numpy(), weights=w).sum() / (soft.numpy() @ w).sum()
    assert loss(logits, soft).item() == pytest.approx(expected, rel=1e-12)
    # Unweighted losses: weighted_mean is mean; CCAR normalises by its base loss's weights.
    unweighted = L.build_loss("ce", COUNTS, reduction="weighted_mean")
    torch.testing.assert_close(unweighted(logits, targets), F.cross_entropy(logits, targets))
    base = L.WeightedCrossEntropy(COUNTS, weighting, reduction="none")
    ccar = L.CCAR(COUNTS, base=base, reduction="weighted_mean")
    per_sample = L.CCAR(COUNTS, base=base, reduction="none")(logits, targets)
    torch.testing.assert_close(ccar(logits, targets), per_sample.sum() / torch.tensor(w)[targets].sum())
    # All-zero weights in a batch: loss 0, not 0 / 0.
    zero = L.SoftmaxLoss(class_weights=torch.zeros(K), num_classes=K, reduction="weighted_mean")
    assert zero(logits, targets).item() == 0.0


# ---------------------------------------------------------------- registry


def test_registry_names_and_errors():
    names = L.available_losses()
    for required in ["ce", "weighted_ce", "label_smoothing", "focal", "cb_ce", "cb_focal", "ldam", "ldam_drw",
                     "ce_drw", "logit_adjusted", "la", "balanced_softmax", "bs", "focal_la", "focal_bs",
                     "ccar_ce", "ccar_la", "ccar_bs"]:
        assert required in names
    with pytest.raises(ValueError, match="valid names: .*ccar_bs"):
        L.build_loss("no_such_loss", COUNTS)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['gama'\].*valid options: gamma=2.0"):
        L.build_loss("focal", COUNTS, gama=1.0)
    with pytest.raises(ValueError, match="'inverse' or 'sqrt'"):
        L.build_loss("weighted_ce", COUNTS, weighting="cubic")


@pytest.mark.parametrize("name", L.available_losses())
def test_every_registered_loss_runs_and_has_gradient(name, batch):
    logits, targets, _ = batch
    logits = (logits / 4).float().requires_grad_()
    loss = L.build_loss(name, COUNTS)
    value = loss(logits, targets)
    value.backward()
    assert value.dim() == 0 and torch.isfinite(value)
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert L.build_loss(name, COUNTS, reduction="none")(logits, targets).shape == (16,)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("name", ["ce", "focal", "cb_ce", "ldam", "bs", "ccar_bs"])
def test_bad_input_raises_clear_errors(name):
    with pytest.raises(ValueError, match=r"class_counts\[2\] = 0"):
        L.build_loss(name, [10, 5, 0, 3])
    with pytest.raises(ValueError, match=r"class_counts\[0\] = -1"):
        L.build_loss(name, [-1, 5, 2, 3])
    loss = L.build_loss(name, [10, 5, 2, 3])
    logits = torch.randn(4, 4)
    with pytest.raises(ValueError, match="4 entries but logits have 4 rows|targets have 3 entries"):
        loss(logits, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="logits have 5 classes but class_counts has 4"):
        loss(torch.randn(4, 5), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="target 4 at position 2 is out of range"):
        loss(logits, torch.tensor([0, 1, 4, 3]))
    with pytest.raises(ValueError, match="target -1 at position 0"):
        loss(logits, torch.tensor([-1, 1, 2, 3]))
    bad = logits.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite.*index \(2, 1\)"):
        loss(bad, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="soft targets must have the logits' shape"):
        loss(logits, torch.full((4, 3), 1 / 3))


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="reduction"):
        L.CrossEntropy(reduction="avg")
    with pytest.raises(ValueError, match="gamma"):
        L.FocalLoss(gamma=-1)
    with pytest.raises(ValueError, match="label_smoothing"):
        L.CrossEntropy(label_smoothing=1.0)
    with pytest.raises(ValueError, match="beta"):
        L.ClassBalancedLoss(COUNTS, beta=1.0)


# ---------------------------------------------------------------- half precision


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["ce", "focal_bs", "ldam", "cb_focal"])
def test_half_precision_logits(name, dtype, batch):
    logits, targets, _ = batch
    logits = (logits / 4).float()
    reference = L.build_loss(name, COUNTS)(logits.to(dtype).float(), targets)
    half = logits.to(dtype).requires_grad_()
    value = L.build_loss(name, COUNTS)(half, targets)
    value.backward()
    assert value.dtype == torch.float32 and half.grad.dtype == dtype
    torch.testing.assert_close(value, reference, rtol=1e-6, atol=1e-6)
    assert torch.isfinite(half.grad.float()).all()
