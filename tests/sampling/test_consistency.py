"""``sample(method="scm")``: sCM sampling on TrigFlow against the exact consistency function of a Gaussian.

Oracle: the exact consistency function is the probability-flow map to the data, ``f*(x_t, t) = Φ_{t→0}(x_t)``
(:meth:`scoresde.analytic.GaussianMixture.flow_map`, closed form for one Gaussian). One step from ``σ_d z`` at
``π/2`` is then exactly ``Φ_{π/2→0}``; two steps re-noise with TrigFlow's kernel and map back, an exact draw of
the data distribution again (its moments are known).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import sampling
from scoresde import sde as sde_lib
from scoresde.analytic import GaussianMixture, random_rotation
from scoresde.fewstep import scm

SD = 0.5
TRIG = sde_lib.get_sde("trigflow", sigma_data=SD)
GAUSS = GaussianMixture(
    np.array([[0.3, -0.2]]), np.array([[0.6, 0.25]]), rotation=np.asarray(random_rotation(jax.random.key(3), 2))
)


def _f_exact(x, t):
    return GAUSS.flow_map(TRIG, x, t, 0.0)


def test_one_step_with_the_exact_consistency_function_is_the_exact_flow_map():
    x_init = TRIG.prior_sampling(jax.random.key(1), (64, 2))
    x, nfe = sampling.sample(_f_exact, TRIG, (64, 2), jax.random.key(0), method="scm", x_init=x_init)
    exact = GAUSS.flow_map(TRIG, x_init, TRIG.T, 0.0)
    assert int(nfe) == 1 and float(jnp.min(jnp.max(jnp.abs(exact - x_init), axis=1))) > 0.05
    np.testing.assert_allclose(x, exact, atol=1e-5)


def test_two_steps_re_noise_at_t_mid_and_stay_exact_draws():
    n = 20000
    key = jax.random.key(4)
    x1, nfe1 = sampling.sample(_f_exact, TRIG, (n, 2), key, method="scm")
    x2, nfe2 = sampling.sample(_f_exact, TRIG, (n, 2), key, method="scm", steps=2)
    assert (int(nfe1), int(nfe2)) == (1, 2)
    assert float(jnp.mean(jnp.abs(x2 - x1))) > 0.1  # the second step re-noised (at t_mid = 1.1) and moved
    mean, cov = np.asarray(GAUSS.mean()), np.asarray(GAUSS.covariance())
    for x in (x1, x2):
        np.testing.assert_allclose(np.asarray(x).mean(0), mean, atol=4 * np.sqrt(cov.max() / n))
        np.testing.assert_allclose(np.cov(np.asarray(x).T), cov, atol=4 * np.sqrt(2.0 / n) * cov.max())
    # the library's sCM sampler (fewstep.scm.scm_sample) is the same loop with the same defaults
    y2, m2 = scm.scm_sample(_f_exact, key, (n, 2), sigma_data=SD, steps=2)
    np.testing.assert_allclose(y2, x2, atol=1e-6)  # same key split: prior draw, then the re-noising
    assert int(m2) == 2 and scm.T_MID == sampling.consistency.SCM_T_MID == 1.1


def test_scm_refuses_other_processes_and_unplaced_steps():
    with pytest.raises(ValueError, match="method 'scm' .* TrigFlow; got sde=VPSDE"):
        sampling.sample(_f_exact, sde_lib.VPSDE(), (4, 2), jax.random.key(0), method="scm")
    with pytest.raises(ValueError, match="steps 1 or 2 without times"):
        sampling.sample(_f_exact, TRIG, (4, 2), jax.random.key(0), method="scm", steps=3)
    x, nfe = sampling.sample(_f_exact, TRIG, (4, 2), jax.random.key(0), method="scm", times=(1.3, 0.8))
    assert int(nfe) == 3 and bool(jnp.all(jnp.isfinite(x)))
    assert sampling.method_traits("scm").consistency_fn
