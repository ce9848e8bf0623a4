"""Gaussian-mixture oracle: exact scores, densities, classifier and flow map."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from scoresde import analytic
from scoresde import sde as sde_lib

SDES = [sde_lib.VPSDE(), sde_lib.SubVPSDE(), sde_lib.VESDE(sigma_max=10.0)]


def _mixture(rotated=True):
    key = jax.random.key(0)
    means = jax.random.normal(key, (3, 4)) * 2
    stds = jnp.array([[0.3, 0.5, 1.0, 0.2], [0.7, 0.7, 0.7, 0.7], [1.5, 0.1, 0.4, 0.9]])
    rot = analytic.random_rotation(jax.random.key(1), 4) if rotated else None
    return analytic.GaussianMixture(means, stds, weights=jnp.array([0.2, 0.5, 0.3]), rotation=rot)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("rotated", [False, True])
def test_score_equals_autodiff_of_log_prob_t(sde, rotated):
    gm = _mixture(rotated)
    x = gm.sample(jax.random.key(2), 16) * 1.3
    t = jnp.linspace(0.01, 1.0, 16)
    auto = jax.grad(lambda x: jnp.sum(gm.log_prob_t(sde, x, t)))(x)
    np.testing.assert_allclose(gm.score_fn(sde)(x, t), auto, rtol=1e-4, atol=1e-4)
    # conditional scores are the component scores; mixing them with the posterior gives the score
    post = jnp.exp(gm.class_log_prob(sde, x, t))
    cond = jnp.stack([gm.conditional_score_fn(sde)(x, t, jnp.full((16,), k)) for k in range(3)], axis=1)
    np.testing.assert_allclose(jnp.einsum("bk,bkd->bd", post, cond), auto, rtol=1e-4, atol=1e-4)


def test_log_prob_matches_scipy_full_covariance():
    gm = _mixture(rotated=True)
    x = gm.sample(jax.random.key(3), 10)
    covs = np.asarray(gm._covs(), np.float64)
    dens = sum(
        float(w) * scipy.stats.multivariate_normal(np.asarray(m, np.float64), c).pdf(np.asarray(x, np.float64))
        for w, m, c in zip(gm.weights, gm.means, covs)
    )
    np.testing.assert_allclose(gm.log_prob(x), np.log(dens), rtol=1e-4)


def test_marginal_matches_noised_samples():
    """p_t is the law of alpha x0 + sigma z: compare the mixture's moments with a large sample."""
    gm, sde, t = _mixture(), sde_lib.VPSDE(), 0.4
    x0 = gm.sample(jax.random.key(4), 200000)
    mean, std = sde.marginal_prob(x0, jnp.full((200000,), t))
    xt = mean + std[:, None] * jax.random.normal(jax.random.key(5), x0.shape)
    mt = gm.marginal(sde, t)
    np.testing.assert_allclose(jnp.mean(xt, 0), mt.mean(), atol=0.02)
    np.testing.assert_allclose(jnp.cov(xt.T), mt.covariance(), atol=0.05)
    # and the marginal's log-density equals log_prob_t
    np.testing.assert_allclose(mt.log_prob(xt[:8]), gm.log_prob_t(sde, xt[:8], jnp.full((8,), t)), rtol=1e-4)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_flow_map_solves_probability_flow_ode(sde):
    """d/dt flow_map = f - ½ g² score along the trajectory, and the map pushes p_s to p_t."""
    gm = analytic.GaussianMixture(
        jnp.array([[1.0, -0.5, 0.3]]),
        jnp.array([[0.2, 0.6, 1.1]]),
        rotation=analytic.random_rotation(jax.random.key(6), 3),
    )
    x0 = gm.sample(jax.random.key(7), 5)
    s = jnp.full((5,), 0.05)
    t = jnp.full((5,), 0.6)
    h = 1e-3
    xt = gm.flow_map(sde, x0, s, t)
    dx = (gm.flow_map(sde, x0, s, t + h) - gm.flow_map(sde, x0, s, t - h)) / (2 * h)
    drift, _ = sde.reverse(gm.score_fn(sde), probability_flow=True).sde(xt, t)
    np.testing.assert_allclose(dx, drift, rtol=2e-3, atol=2e-3)
    back = gm.flow_map(sde, xt, t, s)
    np.testing.assert_allclose(back, x0, atol=1e-4)
    # change of variables: log p_s(x) = log p_t(T(x)) + log|det T'|
    xs = gm.marginal(sde, 0.05).sample(jax.random.key(8), 5)
    lhs = gm.log_prob_t(sde, xs, s)
    rhs = gm.log_prob_t(sde, gm.flow_map(sde, xs, s, t), t) + gm.flow_log_det(sde, 0.05, 0.6)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-4, atol=1e-4)


def test_class_posterior_is_bayes_rule_and_sampling_labels():
    gm = _mixture()
    x, labels = gm.sample(jax.random.key(9), 30000, return_labels=True)
    frac = np.bincount(np.asarray(labels), minlength=3) / 30000
    np.testing.assert_allclose(frac, gm.weights, atol=0.015)
    sde = sde_lib.VPSDE()
    t = jnp.full((30000,), 1e-3)
    acc = float(jnp.mean(jnp.argmax(gm.class_log_prob(sde, x, t), -1) == labels))
    assert acc > 0.95  # well-separated components at small t


def test_event_shape_and_errors():
    gm = analytic.GaussianMixture(jnp.zeros((1, 12)), jnp.ones((1,)), event_shape=(2, 2, 3))
    x = gm.sample(jax.random.key(0), 4)
    assert x.shape == (4, 2, 2, 3)
    assert gm.score_fn(sde_lib.VPSDE())(x, jnp.full((4,), 0.5)).shape == x.shape
    with pytest.raises(ValueError, match="expected inputs of shape"):
        gm.log_prob(jnp.zeros((4, 12)))
    with pytest.raises(ValueError, match="stds must have shape"):
        analytic.GaussianMixture(jnp.zeros((2, 3)), jnp.ones((3,)))
    with pytest.raises(ValueError, match="single Gaussian"):
        _mixture().flow_map(sde_lib.VPSDE(), jnp.zeros((1, 4)), 0.1, 0.5)
