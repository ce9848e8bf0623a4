"""MeanFlow against exact answers.

Oracle: for Gaussian data ``N(mu, Q diag(λ) Qᵀ)`` under rectified flow the probability-flow map is closed-form
(:meth:`scoresde.analytic.GaussianMixture.flow_map`), hence so is the average velocity
``u*(z, r, t) = (z - Φ_{t→r}(z)) / (t - r)``. In the eigenbasis, with ``s_τ² = (1 - τ)² λ + τ²``,
``u* = (z - (1 - t) mu) ((1 + λ)(t + r) - 2λ) / (s_t (s_t + s_r)) - mu``, which is finite at ``r = t`` (there it is
the velocity). Scaling ``λ`` by a parameter ``θ`` gives a model family that is exact at ``θ = 1``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import ndtr

from scoresde import sde as sde_lib
from scoresde.analytic import GaussianMixture, random_rotation
from scoresde.fewstep import meanflow as mf

RF = sde_lib.RectifiedFlow()
LAM = np.array([0.36, 0.0625])
Q = np.asarray(random_rotation(jax.random.key(3), 2))
GAUSS = GaussianMixture(np.array([[0.3, -0.2]]), np.sqrt(LAM)[None], rotation=Q)
MU = np.asarray(GAUSS.means[0])


def _u_exact(theta, z, r, t):
    """The exact average velocity of ``N(mu, θ Q diag(λ) Qᵀ)`` (module docstring), ``(params, z, r, t)``."""
    lam = theta * jnp.asarray(LAM, jnp.float32)[None]
    q, mu = jnp.asarray(Q, jnp.float32), jnp.asarray(MU, jnp.float32)[None]
    r, t = r[:, None], t[:, None]
    s_t, s_r = jnp.sqrt((1 - t) ** 2 * lam + t**2), jnp.sqrt((1 - r) ** 2 * lam + r**2)
    y = (z - (1 - t) * mu) @ q
    return (y * ((1 + lam) * (t + r) - 2 * lam) / (s_t * (s_t + s_r))) @ q.T - mu


def _v_exact(z, t):
    """The marginal velocity ``E[ε - x | z_t] = (z - D) / t`` from the exact score (Tweedie's ``D``)."""
    d = (z + t[:, None] ** 2 * GAUSS.score_fn(RF)(z, t)) / (1 - t)[:, None]
    return (z - d) / t[:, None]


def _times(n, seed):
    k1, k2 = jax.random.split(jax.random.key(seed))
    t = jax.random.uniform(k1, (n,), minval=0.1, maxval=0.95)
    r = t * jax.random.uniform(k2, (n,), minval=0.0, maxval=0.9)  # t - r >= 0.01
    return r, t


def test_oracle_is_the_displacement_over_the_exact_flow_map():
    r, t = _times(256, 0)
    z = jax.random.normal(jax.random.key(1), (256, 2))
    disp = (z - GAUSS.flow_map(RF, z, t, r)) / (t - r)[:, None]
    np.testing.assert_allclose(_u_exact(1.0, z, r, t), disp, rtol=1e-3, atol=2e-4)
    np.testing.assert_allclose(_u_exact(1.0, z, t, t), _v_exact(z, t), rtol=1e-3, atol=2e-4)


def test_target_from_the_exact_velocity_is_the_exact_average_velocity():
    """``v - (t - r)(v ∂_z u + ∂_t u)`` at the exact ``u``, ``v`` equals ``u``; for a wrong ``u`` it does not.

    Breaks if the jvp tangent is not ``(v, 0, 1)`` on ``(z, r, t)`` (e.g. on ``r`` instead of ``t``), or the
    ``(t - r)`` factor or its sign is wrong.
    """
    r, t = _times(256, 2)
    r = r.at[:32].set(t[:32])  # r = t: the target is v itself
    z = jax.random.normal(jax.random.key(3), (256, 2))
    u, u_tgt = mf.meanflow_target(lambda zz, rr, tt: _u_exact(1.0, zz, rr, tt), z, r, t, _v_exact(z, t))
    np.testing.assert_allclose(u_tgt, u, rtol=1e-3, atol=2e-4)
    np.testing.assert_allclose(u, _u_exact(1.0, z, r, t), rtol=1e-6)
    u_bad, tgt_bad = mf.meanflow_target(lambda zz, rr, tt: _u_exact(1.5, zz, rr, tt), z, r, t, _v_exact(z, t))
    assert float(jnp.max(jnp.abs(tgt_bad - u_bad)[32:])) > 0.05


@pytest.mark.parametrize("power", [mf.POWER, 0.0])
def test_distillation_gradient_vanishes_at_the_exact_u_and_points_to_it(power):
    batch, key = GAUSS.sample(jax.random.key(4), 2048), jax.random.key(5)

    def loss(theta):
        return mf.meanflow_loss(_u_exact, theta, batch, key, velocity_fn=_v_exact, power=power, ratio=0.5)[0]

    grad = jax.jit(jax.grad(loss))
    g_star, g_hi, g_lo = float(grad(1.0)), float(grad(1.3)), float(grad(0.7))
    print(f"MeanFlow (exact v, p={power}) d loss/d θ: θ*=1 {g_star:.2e}, θ=1.3 {g_hi:.3e}, θ=0.7 {g_lo:.3e}")
    assert abs(g_star) < 1e-4 * max(abs(g_hi), abs(g_lo))
    assert g_hi > 0 > g_lo


def test_conditional_velocity_gradient_vanishes_in_expectation():
    """With ``v = ε - x`` and ``p = 0`` the per-sample gradients at ``θ* = 1`` average to 0 within 4 s.e."""
    batch, key = GAUSS.sample(jax.random.key(6), 8192), jax.random.key(7)

    def per_example(theta):
        return mf.meanflow_loss(_u_exact, theta, batch, key, power=0.0, ratio=0.5)[1]["losses"]

    stats = {}
    for theta in (1.0, 1.5):
        g = np.asarray(jax.jit(jax.jacfwd(per_example))(theta), np.float64)
        stats[theta] = (g.mean(), g.std() / np.sqrt(g.size))
    print("MeanFlow (ε - x, p=0) mean per-sample d loss/d θ ± s.e.:",
          {k: f"{m:.3e} ± {s:.1e}" for k, (m, s) in stats.items()})
    assert abs(stats[1.0][0]) < 4 * stats[1.0][1]
    assert stats[1.5][0] > 8 * stats[1.5][1]


def test_exact_u_samples_in_one_and_two_steps():
    n = 20000
    u = lambda z, r, t: _u_exact(1.0, z, r, t)
    key = jax.random.key(8)
    x1, nfe1 = mf.meanflow_sample(u, key, (n, 2), steps=1)
    x2, nfe2 = mf.meanflow_sample(u, key, (n, 2), steps=2)
    assert (int(nfe1), int(nfe2)) == (1, 2)
    eps = jax.random.normal(key, (n, 2))
    np.testing.assert_allclose(x1, GAUSS.flow_map(RF, eps, 1.0, 0.0), atol=1e-5)
    np.testing.assert_allclose(x2, x1, atol=1e-5)  # the exact u composes: Φ_{.5→0} ∘ Φ_{1→.5} = Φ_{1→0}
    cov = np.asarray(GAUSS.covariance())
    np.testing.assert_allclose(np.asarray(x1).mean(0), MU, atol=4 * np.sqrt(cov.max() / n))
    np.testing.assert_allclose(np.cov(np.asarray(x1).T), cov, atol=4 * np.sqrt(2.0 / n) * cov.max())
    # the instantaneous velocity in one Euler step (u(z, 1, 1) = v) is not a sampler: it misses the covariance
    x_euler, _ = mf.meanflow_sample(lambda z, r, t: _u_exact(1.0, z, t, t), key, (n, 2), steps=1)
    assert float(np.max(np.abs(np.cov(np.asarray(x_euler).T) - cov))) > 0.05


def test_time_proposal():
    n = 40000
    r, t = mf.sample_times(jax.random.key(9), n, p_mean=-0.4, p_std=1.0, ratio=0.25)
    assert bool(jnp.all((0 < r) & (r <= t) & (t < 1)))
    distinct = np.asarray(r < t)
    assert abs(distinct.mean() - 0.25) < 4 * np.sqrt(0.25 * 0.75 / n)
    # t is the larger of two logit-normal draws (also where r is then set to t): its CDF is Φ((logit t + 0.4)/1)²,
    # so that CDF evaluated at the samples is uniform
    tt = np.asarray(t, np.float64)
    cdf = ndtr(np.log(tt) - np.log1p(-tt) + 0.4) ** 2
    assert abs(cdf.mean() - 0.5) < 4 * np.sqrt(1 / 12 / n)
    assert abs(np.mean(cdf < 0.2) - 0.2) < 4 * np.sqrt(0.16 / n)
