"""CCAR (spec section 1): every listed property, Lemma 1's gradient, numerics and the variants.

References are hand-written float64 formulas (python math / numpy); gradients are torch.autograd in
float64 against the closed forms of the spec.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from longtail import losses as L

E = math.e
COUNTS = [500, 120, 40, 9, 2]
K = len(COUNTS)
FREQ = np.asarray(COUNTS, dtype=np.float64) / sum(COUNTS)
LOG_PRIOR = np.log(FREQ)


def omega_ref(p, f, omega):
    """Omega(p_t, f_c) = (e - f')^(omega - p_t), f' = f below the pivot, 1 - f from it on (numpy)."""
    p, f = np.broadcast_arrays(np.asarray(p, dtype=np.float64), np.asarray(f, dtype=np.float64))
    gamma = np.where(p < omega, E - f, E - 1 + f)
    return gamma ** (omega - p)


def np_log_softmax(z):
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def logits_with_p_true(p_true, targets, num_classes=K):
    """float64 logits whose softmax gives exactly p_true to the target class (others share the rest)."""
    p_true = np.asarray(p_true, dtype=np.float64)
    rows = np.zeros((len(p_true), num_classes))
    rows[np.arange(len(p_true)), targets] = np.log(p_true) - np.log((1 - p_true) / (num_classes - 1))
    return torch.tensor(rows, dtype=torch.float64)


# ---------------------------------------------------------------- the weight's properties


def test_weight_hand_values():
    omega = 0.75
    p = torch.tensor([0.25, 0.9, 0.0, 1.0], dtype=torch.float64)
    f = torch.tensor([0.1, 0.1, 0.3, 0.3], dtype=torch.float64)
    expected = [math.sqrt(E - 0.1), (E - 0.9) ** -0.15, (E - 0.3) ** 0.75, (E - 0.7) ** -0.25]
    np.testing.assert_allclose(L.ccar_weight(p, f, omega).numpy(), expected, rtol=1e-14)


@pytest.mark.parametrize("omega", [0.25, 0.5, 0.75, 1.0])
def test_continuity_at_the_pivot_from_both_sides(omega):
    f = torch.tensor(np.concatenate([FREQ, [0.0, 0.3, 0.5, 0.99, 1.0]]))
    at = L.ccar_weight(torch.full_like(f, omega), f, omega)
    torch.testing.assert_close(at, torch.ones_like(f), rtol=0, atol=0)
    for side in (-1, 1):
        near = L.ccar_weight(torch.full_like(f, omega + side * 1e-9), f, omega)
        assert (near - 1).abs().max() < 2e-9  # |ln gamma| <= 1, so |Omega - 1| ~ 1e-9


@pytest.mark.parametrize("omega", [0.25, 0.5, 0.75, 1.0])
def test_amplify_below_suppress_above(omega):
    p = torch.linspace(0, 1, 401, dtype=torch.float64)
    for f in np.concatenate([FREQ, [0.5, 0.999]]):
        weight = L.ccar_weight(p, torch.tensor(f, dtype=torch.float64), omega)
        assert (weight[p < omega] > 1).all()
        assert (weight[p > omega] < 1).all()
    # for f = 1 above the pivot gamma = e - 1 + 1 = e > 1 still: suppression holds; f = 0 below: e > 1.


@pytest.mark.parametrize("f", list(FREQ) + [0.0, 0.25, 0.5, 0.9, 1.0])
def test_one_sided_derivatives_at_pivot_and_jump_bound(f):
    omega = 0.75
    below = torch.tensor(omega - 1e-13, dtype=torch.float64, requires_grad=True)
    above = torch.tensor(omega, dtype=torch.float64, requires_grad=True)  # p_t >= omega uses 1 - f
    frequency = torch.tensor(f, dtype=torch.float64)
    (left,) = torch.autograd.grad(L.ccar_weight(below, frequency, omega), below)
    (right,) = torch.autograd.grad(L.ccar_weight(above, frequency, omega), above)
    assert left.item() == pytest.approx(-math.log(E - f), rel=1e-10)
    assert right.item() == pytest.approx(-math.log(E - 1 + f), rel=1e-12)
    jump = abs(left.item() - right.item())
    assert jump <= math.log(E / (E - 1)) + 1e-12
    if f == 0.0:  # the bound is attained at f = 0 (and f = 1)
        assert jump == pytest.approx(math.log(E / (E - 1)), rel=1e-10)
    assert math.log(E / (E - 1)) == pytest.approx(0.459, abs=5e-4)


@pytest.mark.parametrize("omega", [0.25, 0.5, 0.75, 1.0])
def test_weight_bounded_by_e_to_the_omega(omega):
    p = torch.linspace(0, 1, 1001, dtype=torch.float64)[:, None]
    f = torch.linspace(0, 1, 201, dtype=torch.float64)[None, :]
    weight = L.ccar_weight(p, f, omega)
    assert weight.max().item() <= E**omega * (1 + 1e-15)
    assert weight.max().item() == pytest.approx(E**omega)  # attained at p_t = 0, f = 0
    assert weight.min().item() > 0


# ---------------------------------------------------------------- the loss and Lemma 1


P_BELOW_AND_ABOVE = [0.02, 0.3, 0.6, 0.7499, 0.7501, 0.8, 0.95, 0.999]


def test_loss_is_weight_times_ce():
    targets = np.array([0, 1, 2, 3, 4, 4, 0, 2])
    z = logits_with_p_true(P_BELOW_AND_ABOVE, targets)
    got = L.CCAR(COUNTS, reduction="none")(z, torch.tensor(targets))
    p = np.asarray(P_BELOW_AND_ABOVE)
    np.testing.assert_allclose(got.numpy(), omega_ref(p, FREQ[targets], 0.75) * -np.log(p), rtol=1e-10)
    mean = L.CCAR(COUNTS)(z, torch.tensor(targets))
    total = L.CCAR(COUNTS, reduction="sum")(z, torch.tensor(targets))
    assert mean.item() == pytest.approx(got.mean().item(), rel=1e-14)
    assert total.item() == pytest.approx(got.sum().item(), rel=1e-14)


def lemma1_gradient(logits, targets, omega, frequencies, offset=0.0):
    """Psi * (p - onehot), Psi = gamma^(omega - p_t) (1 - p_t ln gamma ln p_t), on logits + offset."""
    z = logits.numpy() + offset
    p = np.exp(np_log_softmax(z))
    rows = np.arange(len(targets))
    p_t = p[rows, targets]
    f = frequencies[targets]
    gamma = np.where(p_t < omega, E - f, E - 1 + f)
    psi = gamma ** (omega - p_t) * (1 - p_t * np.log(gamma) * np.log(p_t))
    one_hot = np.eye(z.shape[1])[targets]
    return psi[:, None] * (p - one_hot), p_t


@pytest.mark.parametrize("omega", [0.5, 0.75])
def test_lemma1_gradient_on_both_sides_of_the_pivot(omega):
    generator = torch.Generator().manual_seed(3)
    targets = np.array([0, 1, 2, 3, 4, 4, 0, 2])
    z = logits_with_p_true(P_BELOW_AND_ABOVE, targets) + 0.3 * torch.randn(8, K, generator=generator, dtype=torch.float64)
    z.requires_grad_()
    L.CCAR(COUNTS, omega=omega, reduction="sum")(z, torch.tensor(targets)).backward()
    expected, p_t = lemma1_gradient(z.detach(), targets, omega, FREQ)
    assert (p_t < omega).sum() >= 2 and (p_t > omega).sum() >= 2  # both phases exercised
    np.testing.assert_allclose(z.grad.numpy(), expected, rtol=1e-9, atol=1e-13)


def test_lemma1_gradient_through_gradcheck():
    z = logits_with_p_true([0.3, 0.9], np.array([1, 3])).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: L.CCAR(COUNTS)(x, torch.tensor([1, 3])), (z,))


def test_detach_weight_gradient_is_omega_times_ce_gradient():
    targets = np.array([0, 1, 2, 3, 4, 4, 0, 2])
    z = logits_with_p_true(P_BELOW_AND_ABOVE, targets).requires_grad_()
    L.CCAR(COUNTS, detach_weight=True, reduction="sum")(z, torch.tensor(targets)).backward()
    p = np.exp(np_log_softmax(z.detach().numpy()))
    weight = omega_ref(np.asarray(P_BELOW_AND_ABOVE), FREQ[targets], 0.75)
    np.testing.assert_allclose(z.grad.numpy(), weight[:, None] * (p - np.eye(K)[targets]), rtol=1e-9, atol=1e-13)
    # and it differs from Lemma 1's gradient (the weight's own derivative is missing)
    lemma, _ = lemma1_gradient(z.detach(), targets, 0.75, FREQ)
    assert np.abs(z.grad.numpy() - lemma).max() > 1e-3


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("p_true", [1e-30, 1 - 1e-7])
def test_finite_at_extreme_confidence(p_true, dtype):
    targets = torch.tensor([2])
    z = logits_with_p_true([p_true], targets.numpy()).to(dtype).requires_grad_()
    for base in ("ce", "balanced_softmax"):
        loss = L.CCAR(COUNTS, base=base)(z, targets)
        (grad,) = torch.autograd.grad(loss, z)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
    if dtype == torch.float64:
        loss = L.CCAR(COUNTS)(z, targets)
        expected = omega_ref(p_true, FREQ[2], 0.75) * -math.log(p_true)
        assert loss.item() == pytest.approx(float(expected), rel=1e-8)
        (grad,) = torch.autograd.grad(loss, z)
        lemma, _ = lemma1_gradient(z.detach(), targets.numpy(), 0.75, FREQ)
        np.testing.assert_allclose(grad.numpy(), lemma, rtol=1e-6, atol=1e-12)


# ---------------------------------------------------------------- LA / BS bases and which p_t


@pytest.mark.parametrize("base,tau", [("logit_adjusted", 0.5), ("logit_adjusted", 1.0), ("balanced_softmax", 1.0)])
def test_adjusted_bases_use_the_adjusted_p_true(base, tau):
    generator = torch.Generator().manual_seed(4)
    z = torch.randn(32, K, generator=generator, dtype=torch.float64) * 2
    targets = torch.randint(0, K, (32,), generator=generator)
    t = targets.numpy()
    rows = np.arange(32)
    log_p_adj = np_log_softmax(z.numpy() + tau * LOG_PRIOR)[rows, t]
    base_loss = -log_p_adj
    ccar = L.CCAR(COUNTS, base=base, tau=tau, reduction="none")
    expected = omega_ref(np.exp(log_p_adj), FREQ[t], 0.75) * base_loss
    np.testing.assert_allclose(ccar(z, targets).numpy(), expected, rtol=1e-10)
    # the raw-logit reading is a different number here, so the test can tell them apart
    raw_p = np.exp(np_log_softmax(z.numpy())[rows, t])
    assert np.abs(omega_ref(raw_p, FREQ[t], 0.75) * base_loss - expected).max() > 1e-2
    # Lemma 1 holds on the adjusted logits (d(z + tau log pi)/dz = I)
    z.requires_grad_()
    L.CCAR(COUNTS, base=base, tau=tau, reduction="sum")(z, targets).backward()
    lemma, _ = lemma1_gradient(z.detach(), t, 0.75, FREQ, offset=tau * LOG_PRIOR)
    np.testing.assert_allclose(z.grad.numpy(), lemma, rtol=1e-9, atol=1e-13)


def test_confidence_from_raw():
    generator = torch.Generator().manual_seed(5)
    z = (torch.randn(24, K, generator=generator, dtype=torch.float64) * 2).requires_grad_()
    targets = torch.randint(0, K, (24,), generator=generator)
    t, rows = targets.numpy(), np.arange(24)
    ccar = L.CCAR(COUNTS, base="balanced_softmax", confidence_from="raw", reduction="none")
    p_raw_all = np.exp(np_log_softmax(z.detach().numpy()))
    p_adj_all = np.exp(np_log_softmax(z.detach().numpy() + LOG_PRIOR))
    p_raw, p_adj = p_raw_all[rows, t], p_adj_all[rows, t]
    weight = omega_ref(p_raw, FREQ[t], 0.75)
    base_loss = -np.log(p_adj)
    values = ccar(z, targets)
    np.testing.assert_allclose(values.detach().numpy(), weight * base_loss, rtol=1e-10)
    # gradient: dOmega/dp_raw * L_BS * dp_raw/dz + Omega * (p_adj - onehot), dOmega/dp = -ln(gamma) Omega
    values.sum().backward()
    one_hot = np.eye(K)[t]
    gamma = np.where(p_raw < 0.75, E - FREQ[t], E - 1 + FREQ[t])
    d_weight = -np.log(gamma) * weight
    expected = (d_weight * base_loss * p_raw)[:, None] * (one_hot - p_raw_all) + weight[:, None] * (p_adj_all - one_hot)
    np.testing.assert_allclose(z.grad.numpy(), expected, rtol=1e-9, atol=1e-13)


def test_max_normalized_frequency_variant():
    targets = np.array([0, 1, 2, 3, 4, 4, 0, 2])
    z = logits_with_p_true(P_BELOW_AND_ABOVE, targets)
    got = L.CCAR(COUNTS, frequency="max_normalized", reduction="none")(z, torch.tensor(targets))
    f = np.asarray(COUNTS, dtype=np.float64) / max(COUNTS)
    p = np.asarray(P_BELOW_AND_ABOVE)
    np.testing.assert_allclose(got.numpy(), omega_ref(p, f[targets], 0.75) * -np.log(p), rtol=1e-10)
    assert L.CCAR(COUNTS).frequency == "raw"  # never the default


# ---------------------------------------------------------------- soft targets, composition, registry


def test_soft_targets():
    generator = torch.Generator().manual_seed(6)
    z = torch.randn(10, K, generator=generator, dtype=torch.float64)
    a, b = torch.randint(0, K, (2, 10), generator=generator)
    lam = torch.rand(10, 1, generator=generator, dtype=torch.float64)
    q = lam * F.one_hot(a, K) + (1 - lam) * F.one_hot(b, K)
    got = L.CCAR(COUNTS, base="logit_adjusted", tau=0.8, reduction="none")(z, q)
    log_p = np_log_softmax(z.numpy() + 0.8 * LOG_PRIOR)
    qn = q.numpy()
    p_t = (qn * np.exp(log_p)).sum(1)  # documented: p_t = sum_c q_c p_c
    f = qn @ FREQ  # documented: f = sum_c q_c f_c
    np.testing.assert_allclose(got.numpy(), omega_ref(p_t, f, 0.75) * -(qn * log_p).sum(1), rtol=1e-10)


def test_wraps_any_per_sample_loss_object():
    generator = torch.Generator().manual_seed(7)
    z = torch.randn(12, K, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, K, (12,), generator=generator)
    t = targets.numpy()
    focal = L.CCAR(COUNTS, base=L.FocalLoss(COUNTS, gamma=2.0), reduction="none")(z, targets)
    p = np.exp(np_log_softmax(z.numpy())[np.arange(12), t])
    np.testing.assert_allclose(focal.numpy(), omega_ref(p, FREQ[t], 0.75) * -(1 - p) ** 2 * np.log(p), rtol=1e-10)
    # a DRW-scheduled base keeps its schedule inside CCAR
    drw = L.DeferredReweighting(L.CrossEntropy(COUNTS), COUNTS, switch_epoch=1)
    ccar = L.CCAR(COUNTS, base=drw, reduction="none")
    before = ccar(z, targets)
    drw.set_epoch(1)
    after = ccar(z, targets)
    torch.testing.assert_close(after, before * L.class_weights(COUNTS, "effective_number")[targets])


def test_registry_builds_the_documented_ccar():
    generator = torch.Generator().manual_seed(8)
    z = torch.randn(12, K, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, K, (12,), generator=generator)
    pairs = [("ccar_ce", {}, "ce"), ("ccar_la", {"tau": 0.6}, "logit_adjusted"), ("ccar_bs", {}, "balanced_softmax")]
    for name, options, base in pairs:
        built = L.build_loss(name, COUNTS, omega=0.5, **options)(z, targets)
        direct = L.CCAR(COUNTS, base=base, omega=0.5, **options)(z, targets)
        assert built.item() == direct.item()
    assert L.build_loss("ccar_bs", COUNTS).omega == 0.75


def test_bad_arguments():
    for omega in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="omega"):
            L.CCAR(COUNTS, omega=omega)
    with pytest.raises(ValueError, match="valid bases"):
        L.CCAR(COUNTS, base="hinge")
    with pytest.raises(ValueError, match="confidence_from"):
        L.CCAR(COUNTS, confidence_from="logits")
    with pytest.raises(ValueError, match="frequency"):
        L.CCAR(COUNTS, frequency="log")
    with pytest.raises(ValueError, match="tau"):
        L.CCAR(COUNTS, base="balanced_softmax", tau=0.5)
    with pytest.raises(ValueError, match="per_sample"):
        L.CCAR(COUNTS, base=torch.nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match="base loss has 3 classes"):
        L.CCAR(COUNTS, base=L.BalancedSoftmaxLoss([1, 2, 3]))
    with pytest.raises(ValueError, match=r"class_counts\[1\] = 0"):
        L.CCAR([3, 0, 2])
    bad = torch.zeros(2, K)
    bad[1, 3] = float("nan")
    with pytest.raises(ValueError, match=r"index \(1, 3\)"):
        L.CCAR(COUNTS)(bad, torch.tensor([0, 1]))


# ---------------------------------------------------------------- precision and devices


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("base", ["ce", "balanced_softmax"])
def test_half_precision_logits_weight_in_float32(dtype, base):
    generator = torch.Generator().manual_seed(9)
    z = (torch.randn(64, K, generator=generator) * 3).to(dtype)
    targets = torch.randint(0, K, (64,), generator=generator)
    reference = L.CCAR(COUNTS, base=base, reduction="none")(z.double(), targets)
    half = z.clone().requires_grad_()
    values = L.CCAR(COUNTS, base=base, reduction="none")(half, targets)
    assert values.dtype == torch.float32
    # a weight computed in 16 bits would be off by ~1e-2 (bf16) / ~1e-3 (fp16) relative
    torch.testing.assert_close(values.double(), reference, rtol=2e-6, atol=1e-6)
    values.mean().backward()
    assert half.grad.dtype == dtype and torch.isfinite(half.grad.float()).all()


def test_under_cpu_autocast():
    generator = torch.Generator().manual_seed(10)
    layer = torch.nn.Linear(8, K)
    x = torch.randn(32, 8, generator=generator)
    targets = torch.randint(0, K, (32,), generator=generator)
    loss_fn = L.CCAR(COUNTS, base="balanced_softmax")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer(x)
        loss = loss_fn(logits, targets)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert loss.item() == pytest.approx(loss_fn(logits.double(), targets).item(), rel=1e-6)
    loss.backward()
    assert torch.isfinite(layer.weight.grad).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_matches_cpu(dtype):
    generator = torch.Generator().manual_seed(11)
    z = (torch.randn(64, K, generator=generator) * 3).to(dtype)
    targets = torch.randint(0, K, (64,), generator=generator)
    loss_fn = L.CCAR(COUNTS, base="balanced_softmax")  # buffers stay on CPU: the loss follows the logits
    on_cuda = z.cuda().requires_grad_()
    value = loss_fn(on_cuda, targets.cuda())
    value.backward()
    assert value.device.type == "cuda" and on_cuda.grad.dtype == dtype
    assert value.item() == pytest.approx(loss_fn(z.double(), targets).item(), rel=1e-5)
    moved = L.CCAR(COUNTS, base="balanced_softmax").cuda()
    assert moved(on_cuda, targets.cuda()).item() == pytest.approx(value.item(), rel=1e-6)
    with torch.autocast("cuda", dtype=torch.float16):
        assert loss_fn(on_cuda.float() @ torch.eye(K, device="cuda"), targets.cuda()).dtype == torch.float32


def test_batch_mean_weight_normalization_variant():
    """Named variant: Omega / mean_batch(Omega) (detached) on Balanced Softmax; value and gradient
    against a float64 formula written here from the definition."""
    generator = torch.Generator().manual_seed(11)
    targets = torch.tensor([0, 0, 1, 2, 3, 4, 4, 1])
    z = (torch.randn(8, K, generator=generator, dtype=torch.float64) * 2).requires_grad_()
    got = L.CCAR(COUNTS, base="balanced_softmax", weight_normalization="batch_mean")(z, targets)
    (grad,) = torch.autograd.grad(got, z)

    z_ref = z.detach().clone().requires_grad_()
    log_p = torch.log_softmax(z_ref + torch.tensor(LOG_PRIOR), dim=1).gather(1, targets[:, None]).squeeze(1)
    p = log_p.exp()
    f = torch.tensor(FREQ)[targets]
    gamma = torch.where(p < 0.75, E - f, E - 1 + f)
    omega = gamma ** (0.75 - p)
    expected = (omega * -log_p).sum() / omega.detach().sum()  # mean reduction / detached batch mean
    (expected_grad,) = torch.autograd.grad(expected, z_ref)
    assert abs(got.item() - expected.item()) < 1e-12
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-13)
    # per sample, the normalised weights average to exactly 1
    per_sample = L.CCAR(COUNTS, base="balanced_softmax", weight_normalization="batch_mean", reduction="none")(z, targets)
    np.testing.assert_allclose((per_sample / -log_p.detach()).mean().item(), 1.0, rtol=1e-12)
    assert L.CCAR(COUNTS).weight_normalization == "none"  # the paper's form stays the default
    with pytest.raises(ValueError, match="weight_normalization"):
        L.CCAR(COUNTS, weight_normalization="sum")
