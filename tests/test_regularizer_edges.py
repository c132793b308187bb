"""Input checks of the CAR bound helpers and the singular vectors of the power iteration, which the
mutation sample found untested (docs/mutation.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from longtail.regularizers.bounds import class_weights, weighted_spectral_norm


def test_frequency_weighting_needs_a_positive_r0():
    with pytest.raises(ValueError, match="r0 must be > 0"):
        class_weights([10, 5, 1], "frequency", r0=0.0)
    weights = class_weights([10, 5, 1], "frequency", r0=1e-9)  # any positive r0 is accepted
    raw = (np.array([10, 5, 1]) / 16 + 1e-9) ** -0.5
    np.testing.assert_allclose(weights.numpy(), raw / raw.mean(), rtol=1e-12)


@pytest.mark.parametrize("shape", [(3, 4), (4, 3), (3,), (2, 2, 2)])
def test_spectral_norm_refuses_a_matrix_that_is_not_square(shape):
    with pytest.raises(ValueError, match="square K x K"):
        weighted_spectral_norm(np.ones(shape))


@pytest.mark.parametrize("num_classes", [3, 20])
def test_power_iteration_returns_the_unit_singular_vectors(num_classes):
    import torch

    from longtail.regularizers import top_singular_pair

    generator = torch.Generator().manual_seed(num_classes)
    matrix = torch.rand(num_classes, num_classes, generator=generator, dtype=torch.float64)
    u, s, vh = np.linalg.svd(matrix.numpy())
    for sigma, left, right in (top_singular_pair(matrix), top_singular_pair(matrix, torch.tensor(u[:, 0]), iterations=2)):
        assert sigma == pytest.approx(s[0], rel=1e-6)
        # Unique up to a common sign: compare |<u, u_exact>| = 1 and unit norms.
        assert float(left.norm()) == pytest.approx(1.0, rel=1e-9) and float(right.norm()) == pytest.approx(1.0, rel=1e-9)
        assert abs(float(left @ torch.tensor(u[:, 0]))) == pytest.approx(1.0, rel=1e-6)
        assert abs(float(right @ torch.tensor(vh[0]))) == pytest.approx(1.0, rel=1e-6)


def test_unknown_surrogate_and_non_square_matrices_are_refused_by_name():
    from longtail.regularizers import confusion_surrogate, top_singular_pair

    logits, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match=r"unknown surrogate 'hinge'; choose one of"):
        confusion_surrogate(logits, labels, surrogate="hinge")
    with pytest.raises(ValueError, match=r"matrix must be square, got shape \(2, 3\)"):
        top_singular_pair(torch.ones(2, 3))


def test_car_gradient_scale_flag_is_inert_in_a_single_process():
    """scale_grad_by_world_size multiplies by W under a process group; with one process W = 1,
    so switching it off must not change the gradient (a stray factor would)."""
    from longtail.regularizers import CAR

    grads = []
    for scale in (True, False):
        generator = torch.Generator().manual_seed(0)
        car = CAR([50, 30, 20, 10, 5], r0=1e-6, scale_grad_by_world_size=scale)
        for _ in range(2):  # the second batch: past the EMA's first-batch initialisation
            logits = (3 * torch.randn(16, 5, generator=generator)).requires_grad_(True)
            labels = torch.randint(0, 5, (16,), generator=generator)
            car(logits, labels).backward()
        grads.append(logits.grad)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)


def test_car_defaults_and_boundary_options():
    from longtail.regularizers import CAR, confusion_surrogate, top_singular_pair

    generator = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(10, 4, generator=generator), torch.randint(0, 4, (10,), generator=generator)
    torch.testing.assert_close(confusion_surrogate(logits, labels), confusion_surrogate(logits, labels, tau=1.0))
    assert not torch.allclose(confusion_surrogate(logits, labels), confusion_surrogate(logits, labels, tau=2.0))
    CAR([5, 3, 2, 1], alpha=0.0)  # alpha 0 (CAR off) and a single cold-start iteration are valid
    CAR([5, 3, 2, 1], cold_start_iters=1)
    with pytest.raises(ValueError, match="gamma"):
        CAR([5, 3, 2, 1], gamma=float("inf"))
    with pytest.raises(ValueError, match="soft_eps"):
        CAR([5, 3, 2, 1], soft_eps=0.0)
    sigma, left, right = top_singular_pair(torch.zeros(3, 3))
    assert float(sigma) == 0.0
    torch.testing.assert_close(right.double().norm(), torch.tensor(1.0, dtype=torch.float64))


def test_bound_helpers_name_the_argument_they_refuse():
    from longtail.regularizers.bounds import per_class_error, weighted_spectral_norm

    with pytest.raises(ValueError, match=r"^confusion must be a square K x K matrix, got shape \(2, 3\)$"):
        per_class_error(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"^matrix contains non-finite values$"):
        weighted_spectral_norm(np.array([[0.0, np.nan], [0.0, 0.0]]))
