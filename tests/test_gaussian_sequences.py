"""Sequences ``(B, N, C)`` from a Gaussian process: the DSM loss, the samplers, the likelihood and healing reach the
closed forms when an exact noise-prediction network (the sequence interface of the BiRNN) is plugged in.

The data: ``C = 2`` independent channels over ``N = 8`` points, each a GP with a squared-exponential kernel in
the point index (plus a small nugget), so ``vec(X) ~ N(0, K ⊗ I_C)``. Under VP the noised marginal is
``N(0, Σ_t)``, ``Σ_t = α_t² K + σ_t² I``, with score ``-Σ_t⁻¹ x``, linear probability-flow map
``x_s = Σ_s^{1/2} Σ_t^{-1/2} x_t`` (the ``Σ_t`` commute) and log-density in closed form. All closed forms are
written here in float64 NumPy, independently of :mod:`scoresde.analytic`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import likelihood, losses, parameterization, sampling
from scoresde import sde as sde_lib
from scoresde.guidance import inverse

N, C = 8, 2
D = N * C
SDE = sde_lib.VPSDE()


def _kernel():
    i = np.arange(N, dtype=np.float64)
    k = np.exp(-0.5 * (i[:, None] - i[None, :]) ** 2 / 2.0**2) + 0.05 * np.eye(N)
    return np.kron(k, np.eye(C))  # vec over (N, C) row-major: index n * C + c


K = _kernel()
LAM, U = np.linalg.eigh(K)


def _alpha_sigma(t):
    t = jnp.asarray(t, jnp.float32)
    return float(SDE.alpha(t)), float(SDE.sigma(t))


def _cov(t):
    a, s = _alpha_sigma(t)
    return a * a * K + s * s * np.eye(D)


def _draw(key, n):
    z = np.asarray(jax.random.normal(key, (n, D)), np.float64)
    return (z * np.sqrt(LAM)) @ U.T


def _eps_net(x, t):
    """The exact noise prediction ``-σ_t ∇ log p_t``, ``(B, N, C)`` in and out (what a BiRNN is trained to be)."""
    b = x.shape[0]
    alpha, sigma = SDE.alpha(t), SDE.sigma(t)
    lam = jnp.asarray(LAM, jnp.float32)
    u = jnp.asarray(U, jnp.float32)
    coef = sigma[:, None] / (alpha[:, None] ** 2 * lam[None] + sigma[:, None] ** 2)  # (B, D) in the eigenbasis
    flat = x.reshape(b, D)
    return (((flat @ u) * coef) @ u.T).reshape(x.shape)


SCORE = parameterization.model_score_fn(_eps_net, SDE, output="eps", time_label="t")


def _flow(x, t_from, t_to):
    """The exact probability-flow map in float64: scale each eigen-coordinate by sqrt(Σ_to / Σ_from)."""
    af, sf = _alpha_sigma(t_from)
    at, st = _alpha_sigma(t_to)
    scale = np.sqrt((at * at * LAM + st * st) / (af * af * LAM + sf * sf))
    flat = np.asarray(x, np.float64).reshape(len(x), D)
    return (((flat @ U) * scale) @ U.T).reshape(x.shape)


def _log_normal(x, cov):
    flat = np.asarray(x, np.float64).reshape(len(x), D)
    _, logdet = np.linalg.slogdet(cov)
    return -0.5 * (np.einsum("bi,ij,bj->b", flat, np.linalg.inv(cov), flat) + logdet + D * np.log(2 * np.pi))


def test_score_through_the_sequence_interface_is_the_closed_form():
    x = _draw(jax.random.key(0), 5).reshape(5, N, C)
    t = np.array([1e-3, 0.1, 0.4, 0.7, 1.0])
    got = np.asarray(SCORE(jnp.asarray(x, jnp.float32), jnp.asarray(t, jnp.float32)), np.float64)
    for i in range(5):
        want = -np.linalg.solve(_cov(t[i]), x[i].reshape(D)).reshape(N, C)
        np.testing.assert_allclose(got[i], want, rtol=2e-4, atol=2e-4 * np.abs(want).max())


def test_dsm_loss_at_the_exact_score_is_the_closed_form_minimum():
    x = jnp.asarray(_draw(jax.random.key(1), 8192).reshape(-1, N, C), jnp.float32)
    loss, aux = losses.continuous_dsm_loss(SCORE, SDE, x, jax.random.key(2), reduce_mean=True)
    want = losses.gaussian_dsm_minimum(SDE, LAM)
    stderr = float(np.std(np.asarray(aux["losses"])) / np.sqrt(x.shape[0]))
    assert abs(float(loss) - want) < 4 * stderr, (float(loss), want, stderr)
    assert 0.05 < want < 1.0  # the loss of the exact score is not a trivial number


@pytest.mark.parametrize("method,options", [("ode", {}), ("dpm_solver++", {"steps": 200})])
def test_probability_flow_samplers_reach_the_exact_flow_map(method, options):
    x_t = jax.random.normal(jax.random.key(3), (64, N, C))
    eps = 1e-3
    x, nfe = sampling.sample(SCORE, SDE, x_t.shape, jax.random.key(4), method=method, x_init=x_t, eps=eps, **options)
    assert x.shape == (64, N, C) and int(nfe) > 0
    want = _flow(np.asarray(x_t), SDE.T, eps)
    np.testing.assert_allclose(np.asarray(x, np.float64), want, atol=2e-3)


def test_sampled_sequences_have_the_gp_mean_and_covariance():
    n = 4096
    x, _ = sampling.sample(SCORE, SDE, (n, N, C), jax.random.key(5), method="ode", eps=1e-3)
    flat = np.asarray(x, np.float64).reshape(n, D)
    cov = _cov(1e-3)
    se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    assert np.all(np.abs(flat.mean(0)) < 5 * np.sqrt(np.diag(cov) / n))
    assert np.all(np.abs(np.cov(flat.T) - cov) < 5 * se)


def test_likelihood_is_the_exact_log_density():
    x = _draw(jax.random.key(6), 2).reshape(2, N, C)
    eps = 1e-5
    logp, z, _ = likelihood.log_likelihood(
        SCORE, SDE, jnp.asarray(x, jnp.float32), jax.random.key(7), hutchinson="exact", eps=eps, rtol=1e-4, atol=1e-4
    )
    z_ref = _flow(x, eps, SDE.T)
    # log p_ε(x) under the model = log N(x; 0, Σ_ε) - log N(z*; 0, Σ_T) + log N(z*; 0, I), z* the exact flow of x.
    want = _log_normal(x, _cov(eps)) - _log_normal(z_ref, _cov(SDE.T)) + _log_normal(z_ref, np.eye(D))
    np.testing.assert_allclose(np.asarray(z, np.float64), z_ref, atol=1e-3)
    np.testing.assert_allclose(np.asarray(logp, np.float64), want, atol=1e-3 * D)


def test_interpolation_through_the_flow_is_the_exact_latent_interpolation():
    x = jnp.asarray(_draw(jax.random.key(8), 2).reshape(2, N, C), jnp.float32)
    z, _ = sampling.encode(SCORE, SDE, x)
    np.testing.assert_allclose(np.asarray(z, np.float64), _flow(np.asarray(x), 1e-3, SDE.T), atol=1e-3)
    w = jnp.linspace(0.0, 1.0, 5)[:, None, None] * (jnp.pi / 2)
    path = jnp.cos(w) * z[:1] + jnp.sin(w) * z[1:]  # spherical: keeps the prior's norm
    xs, _ = sampling.decode(SCORE, SDE, path)
    np.testing.assert_allclose(np.asarray(xs, np.float64), _flow(np.asarray(path), SDE.T, 1e-3), atol=1e-3)
    np.testing.assert_allclose(np.asarray(xs[0]), np.asarray(x[0]), atol=2e-3)  # the ends are the drawings
    np.testing.assert_allclose(np.asarray(xs[-1]), np.asarray(x[1]), atol=2e-3)


def test_healing_a_span_keeps_the_rest_and_moves_toward_the_gp_conditional():
    """Replacement inpainting of points 3..5 with the exact score. The points outside the span are kept exactly. The
    replacement method is not the exact posterior sampler: it is known to pull the span toward the prior (the
    incoherence RePaint, Lugmayr et al. 2022, resamples against), and with this GP it lands about half-way between
    the prior mean 0 and the exact conditional mean. The test pins that: the healed mean is closer to the
    conditional mean than the prior mean is, and the spread is below the prior's."""
    x = _draw(jax.random.key(9), 1).reshape(1, N, C)
    mask = np.ones((1, N, C), np.float32)
    mask[:, 3:6] = 0.0
    op = inverse.Inpainting(jnp.asarray(mask))
    n = 512
    y = jnp.asarray(np.repeat(x * mask, n, axis=0), jnp.float32)
    healed, _ = inverse.posterior_sample(
        SCORE, SDE, op, y, jax.random.key(10), posterior="replacement", sigma_y=0.0, method="ddim", steps=200, eta=1.0
    )
    healed = np.asarray(healed, np.float64).reshape(n, D)
    miss = np.flatnonzero(mask.reshape(D) == 0)
    seen = np.flatnonzero(mask.reshape(D) == 1)
    kept = np.repeat(x.astype(np.float32).reshape(1, D)[:, seen], n, 0)
    np.testing.assert_array_equal(healed[:, seen], kept)
    k_ms = K[np.ix_(miss, seen)]
    cond_mean = k_ms @ np.linalg.solve(K[np.ix_(seen, seen)], x.reshape(D)[seen])
    prior_sd = np.sqrt(np.diag(K)[miss])
    err = np.linalg.norm(healed[:, miss].mean(0) - cond_mean)
    assert err < 0.75 * np.linalg.norm(cond_mean), (err, np.linalg.norm(cond_mean))
    assert np.all(healed[:, miss].std(0) < 0.9 * prior_sd)
