"""Input checks of the CAR bound helpers that the mutation sample found untested (docs/mutation.md)."""

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
