"""Input checks of the CAR bound helpers and the singular vectors of the power iteration, which the
mutation sample found untested (docs/mutation.md)."""

from __future__ import annotations

import numpy as np
import pytest

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
