"""Bits/dim: the dequantisation offset derived from bit depth and scaler, on cases worked by hand.

The model is VP with N(0, I) data, whose score is exactly ``-x`` at every t: the probability-flow drift
``-½β x - ½β(-x)`` vanishes, so ``log p_y(y) = log N(y; 0, I)`` exactly and every bits/dim is a number
that can be written down.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import likelihood
from scoresde import sde as sde_lib

VP = sde_lib.VPSDE()


def _std_normal_score(x, t):
    return -x


def _centred(u):
    return 2.0 * u - 1.0


def test_offsets_derived_from_bits_and_scaler():
    assert likelihood.bpd_offset(_centred, 8) == 7.0  # derived, and exact
    assert likelihood.bpd_offset(None, 8) == pytest.approx(8.0, abs=1e-6)
    assert likelihood.bpd_offset(lambda u: u, 8) == pytest.approx(8.0, abs=1e-6)
    assert likelihood.bpd_offset(_centred, 5) == pytest.approx(4.0, abs=1e-6)
    assert likelihood.bpd_offset(lambda u: 4.0 * u, None) == pytest.approx(-2.0, abs=1e-6)


def test_hand_worked_no_dequantisation():
    # Every pixel 0.5; D = 3.
    x = jnp.full((2, 1, 1, 3), 0.5)
    # Centred: y = 0, -log N(0) = ½ ln 2π nats/dim = ½ log₂(2π) = 1.325748 bits/dim; offset 8 - log₂ 2 = 7.
    res = likelihood.bits_per_dim(
        _std_normal_score, VP, x, jax.random.key(0), scaler=_centred, num_bits=8, dequantization="none"
    )
    np.testing.assert_allclose(np.asarray(res.per_example), 8.325748, atol=1e-5)
    assert res.offset == pytest.approx(7.0, abs=1e-6)
    # Uncentred: y = 0.5, -log N(0.5) = 0.918939 + 0.125 = 1.043939 nats = 1.506085 bits; offset 8.
    res = likelihood.bits_per_dim(
        _std_normal_score, VP, x, jax.random.key(0), scaler=None, num_bits=8, dequantization="none"
    )
    np.testing.assert_allclose(np.asarray(res.per_example), 9.506085, atol=1e-5)
    # Continuous data (no bit depth): just -log₂ N(0.5) per dim.
    res = likelihood.bits_per_dim(_std_normal_score, VP, x, jax.random.key(0), num_bits=None, dequantization="none")
    np.testing.assert_allclose(np.asarray(res.per_example), 1.506085, atol=1e-5)


def test_uniform_dequantisation_expectation_and_stderr():
    b, d, repeats = 256, 4, 2
    k = jax.random.randint(jax.random.key(1), (b, d), 0, 256)
    x = k / 255.0
    res = likelihood.bits_per_dim(
        _std_normal_score,
        VP,
        x,
        jax.random.key(2),
        scaler=_centred,
        num_bits=8,
        dequantization="uniform",
        num_repeats=repeats,
    )
    per = np.asarray(res.per_example, np.float64)
    kf = np.asarray(k, np.float64)
    # y = 2(k + U)/256 - 1 is uniform on [lo, hi]; E[y²] = m² + (hi - lo)²/12.
    lo, hi = 2 * kf / 256 - 1, 2 * (kf + 1) / 256 - 1
    m, var = (lo + hi) / 2, (hi - lo) ** 2 / 12
    nats = 0.5 * math.log(2 * math.pi) + 0.5 * (m * m + var)
    expected = np.mean(nats, axis=1) / math.log(2) + 7.0
    # Each value lies inside the range the bin allows ...
    y2_min = np.where(lo * hi <= 0, 0.0, np.minimum(lo * lo, hi * hi))
    y2_max = np.maximum(lo * lo, hi * hi)
    bits = lambda y2: np.mean(0.5 * math.log(2 * math.pi) + 0.5 * y2, axis=1) / math.log(2) + 7.0
    assert np.all(per >= bits(y2_min) - 1e-5) and np.all(per <= bits(y2_max) + 1e-5)
    # ... it was really dequantised (not evaluated at the grid point k/255) ...
    grid = bits((2 * kf / 255 - 1) ** 2)
    assert np.mean(np.abs(per - grid)) > 1e-4
    # ... and the errors against the exact expectation are centred.
    err = per - expected
    assert abs(err.mean()) < 3 * err.std(ddof=1) / math.sqrt(b)
    np.testing.assert_allclose(float(res.mean), per.mean(), rtol=1e-6)
    np.testing.assert_allclose(float(res.stderr), per.std(ddof=1) / math.sqrt(b), rtol=1e-4)
    assert res.nfe.shape == (repeats, b)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"dequantization": "variational"}, "dequantization"),
        ({"num_repeats": 0}, "num_repeats"),
        ({"dequantization": "none", "num_repeats": 5}, "repeats nothing"),
        ({"num_bits": None}, "num_bits"),
    ],
)
def test_bad_arguments_are_named(kw, match):
    with pytest.raises(ValueError, match=match):
        likelihood.bits_per_dim(_std_normal_score, VP, jnp.zeros((2, 3)), jax.random.key(0), **kw)
