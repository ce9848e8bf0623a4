"""Probability-flow likelihood against closed forms (Gaussian data, exact scores)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import analytic, likelihood
from scoresde import sde as sde_lib
from scoresde.sde import batch_mul

EPS = 1e-5


def _rotated_gaussian(d, seed=0):
    """One Gaussian with a non-diagonal covariance: stds in [0.3, 2], rotated by a random orthogonal R."""
    rot = analytic.random_rotation(jax.random.key(seed), d)
    mean = jnp.linspace(-1.0, 1.0, d)[None]
    stds = jnp.linspace(0.3, 2.0, d)[None]
    return analytic.GaussianMixture(mean, stds, rotation=rot)


def _closed_form(gm, sde, x):
    """log N(x; α_ε μ, Σ_ε) - log p_T(z*) + prior_logp(z*), z* the exact flow of x from ε to T."""
    b = x.shape[0]
    z = gm.flow_map(sde, x, EPS, sde.T)
    ref = gm.log_prob_t(sde, x, jnp.full((b,), EPS)) - gm.log_prob_t(sde, z, jnp.full((b,), sde.T))
    return ref + sde.prior_logp(z), z


SDES = {"vp": sde_lib.VPSDE(), "ve": sde_lib.VESDE()}


@pytest.mark.parametrize(
    "d,name",
    [
        pytest.param(d, n, marks=pytest.mark.slow) if n == "vp" else (d, n)
        for d, n in ((16, "vp"), (64, "vp"), (16, "ve"), (64, "ve"))
    ],  # vp: 18-25 s to compile
)
def test_exact_divergence_matches_closed_form(d, name):
    sde = SDES[name]
    gm = _rotated_gaussian(d)
    x = gm.sample(jax.random.key(1), 4)
    logp, z, nfe = likelihood.log_likelihood(
        gm.score_fn(sde), sde, x, jax.random.key(2), hutchinson="exact", rtol=1e-5, atol=1e-5, eps=EPS
    )
    ref, z_ref = _closed_form(gm, sde, x)
    err = np.abs(np.asarray(logp - ref)) / d
    assert np.all(err < 1e-3), (name, d, err)
    # The latent is the exact flow map; compare relative to the prior's scale (50 for VE).
    assert np.max(np.abs(np.asarray(z - z_ref))) < 1e-3 * sde.prior_std
    assert nfe.shape == (4,) and np.all(np.asarray(nfe) > 3)
    # Sanity of the oracle itself: the data log-density differs from the flow likelihood only by
    # log p_T(z*) - prior_logp(z*), a few nats here, so the comparison above is not vacuous.
    assert np.all(np.isfinite(np.asarray(logp)))


@pytest.mark.parametrize("name,probe,n_probes", [("vp", "rademacher", 1), ("ve", "gaussian", 2)])
def test_hutchinson_is_unbiased(name, probe, n_probes):
    # n_probes = 2 also checks that probes are averaged, not summed (a sum would double the trace: biased).
    sde = SDES[name]
    d, b = 16, 64
    gm = _rotated_gaussian(d, seed=3)
    x = gm.sample(jax.random.key(4), b)
    logp, _, _ = likelihood.log_likelihood(
        gm.score_fn(sde), sde, x, jax.random.key(5), hutchinson=probe, n_probes=n_probes
    )
    ref, _ = _closed_form(gm, sde, x)
    err = np.asarray(logp - ref, np.float64)
    se = err.std(ddof=1) / math.sqrt(b)
    # The estimator must actually be stochastic (a rotated covariance has off-diagonal Jacobian entries) ...
    assert err.std() > 0.05, err.std()
    # ... and centred on the exact value.
    assert abs(err.mean()) < 3 * se, (err.mean(), se)


def _ve_standard_normal_score(x, t):
    """Exact score of N(0, I) data under the VE SDE: ``-x / (1 + sigma(t)²)``."""
    return batch_mul(-1.0 / (1.0 + SDES["ve"].sigma(t) ** 2), x)


def test_nfe_is_what_actually_ran():
    calls = []

    def counting_score(x, t):
        # A host callback with no output: it cannot change the solve, and runs once per evaluation.
        jax.debug.callback(lambda t_: calls.append(1), t)
        return _ve_standard_normal_score(x, t)

    x = jax.random.normal(jax.random.key(1), (1, 4))
    logp, _, nfe = likelihood.log_likelihood(counting_score, SDES["ve"], x, jax.random.key(2), hutchinson="gaussian")
    jax.block_until_ready(nfe)
    assert int(nfe[0]) == len(calls) > 20
    assert np.isfinite(float(logp[0]))


def test_first_step_stays_inside_the_interval():
    # VE data start nearly still (drift ~ 1e-3 x), so the Hairer trial step 0.01 |y| / |f| is ~10: unclipped
    # it lands far beyond T, where sigma(t) overflows and the chosen step becomes nan.
    sde = SDES["ve"]
    drift = functools.partial(sde_lib.probability_flow_drift, _ve_standard_normal_score, sde)
    vf = lambda t, y, args: drift(y[None], jnp.reshape(t, (1,)))[0]
    y0 = jax.random.normal(jax.random.key(1), (4,))
    t0 = jnp.float32(EPS)
    h = likelihood._initial_step(vf, t0, y0, vf(t0, y0, None), 1.0, sde.T - EPS, 1e-5, 1e-5)
    assert 0 < float(h) <= sde.T - EPS


def test_failed_solve_gives_nan_not_garbage():
    x = jax.random.normal(jax.random.key(1), (2, 4))
    logp, _, _ = likelihood.log_likelihood(_ve_standard_normal_score, SDES["ve"], x, jax.random.key(2), max_steps=3)
    assert np.all(np.isnan(np.asarray(logp)))


def test_encode_decode_roundtrip_and_exact_flow():
    # encode/decode are re-exported from the samplers; check they invert each other and are the exact flow.
    sde = SDES["ve"]
    gm = _rotated_gaussian(8)
    x = gm.sample(jax.random.key(1), 4)
    score = gm.score_fn(sde)
    z, _ = likelihood.encode(score, sde, x, eps=EPS)
    np.testing.assert_allclose(np.asarray(z), np.asarray(gm.flow_map(sde, x, EPS, sde.T)), atol=1e-3 * 50)
    x_back, _ = likelihood.decode(score, sde, z, eps=EPS)
    np.testing.assert_allclose(np.asarray(x_back), np.asarray(x), atol=1e-3)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"hutchinson": "rademacher2"}, "hutchinson type"),
        ({"solver": "euler"}, "solver"),
        ({"n_probes": 0}, "n_probes"),
        ({"eps": 1.0}, "eps"),
    ],
)
def test_bad_arguments_are_named(kw, match):
    sde = SDES["vp"]
    with pytest.raises(ValueError, match=match):
        likelihood.log_likelihood(lambda x, t: -x, sde, jnp.zeros((2, 3)), jax.random.key(0), **kw)


def _rf_gaussian_model(d, seed=0):
    """A Gaussian with a full covariance and its exact score and denoiser ``E[x0 | x_t] = mu - alpha C score``
    under rectified flow (finite at t = 1, where it is ``mu``)."""
    from scoresde import parameterization

    rot = np.asarray(analytic.random_rotation(jax.random.key(seed), d), np.float64)
    cov = rot @ np.diag(np.linspace(0.3, 2.0, d) ** 2) @ rot.T
    mean = np.linspace(-1.0, 1.0, d)[None]
    gm = analytic.GaussianMixture(mean, covs=cov[None])
    rf = sde_lib.RectifiedFlow()
    score = gm.score_fn(rf)
    c = jnp.asarray(cov, jnp.float32)

    def denoiser(x, t):
        return jnp.asarray(mean, jnp.float32) - batch_mul(rf.alpha(t), score(x, t) @ c)

    return gm, rf, parameterization.with_denoiser(score, denoiser)


def test_rectified_flow_likelihood_from_t1_matches_closed_form():
    """RectifiedFlow() (T = 1, alpha(T) = 0): the velocity form is finite at T, so log p and bits/dim of Gaussian
    data equal the closed form log N(x; alpha_eps mu, ...) (p_1 is the prior N(0, I) exactly)."""
    d = 8
    gm, rf, model = _rf_gaussian_model(d)
    x = gm.sample(jax.random.key(1), 4)
    logp, z, nfe = likelihood.log_likelihood(model, rf, x, jax.random.key(2), hutchinson="exact", eps=EPS)
    ref = gm.log_prob_t(rf, x, jnp.full((4,), EPS))
    err = np.abs(np.asarray(logp - ref)) / d
    assert np.all(np.isfinite(np.asarray(logp))) and np.all(err < 1e-3), err
    np.testing.assert_allclose(np.asarray(z), np.asarray(gm.flow_map(rf, x, EPS, 1.0)), atol=1e-3)
    assert np.all(np.asarray(nfe) < 1000)  # the score form spent 98,307 NFE on a NaN here
    bpd = likelihood.bits_per_dim(
        model, rf, x, jax.random.key(3), num_bits=None, dequantization="none", hutchinson="exact", eps=EPS
    )
    np.testing.assert_allclose(np.asarray(bpd.per_example), -np.asarray(ref) / (d * math.log(2.0)), atol=1.5e-3)


def test_rectified_flow_likelihood_needs_a_denoiser():
    gm, rf, model = _rf_gaussian_model(4)
    with pytest.raises(ValueError, match="pass a model with a denoiser"):
        likelihood.log_likelihood(model.score, rf, gm.sample(jax.random.key(1), 2), jax.random.key(2))


def test_a_non_finite_likelihood_from_a_successful_solve_is_an_error_naming_it():
    """score = -11 x on VP pushes the flow to |z| ~ 1e22: the solve succeeds, log p_T(z) overflows float32."""
    x = jnp.ones((2, 2))
    with pytest.raises(
        FloatingPointError,
        match=r"the prior log-density log p_T\(z\) is non-finite for example\(s\) "
        r"\[0, 1\] although the ODE solve succeeded",
    ):
        likelihood.log_likelihood(lambda x, t: -11.0 * x, SDES["vp"], x, jax.random.key(0), hutchinson="exact")
    # the model that stays in range gives a finite value through the same path
    logp, _, _ = likelihood.log_likelihood(lambda x, t: -x, SDES["vp"], x, jax.random.key(0), hutchinson="exact")
    assert np.all(np.isfinite(np.asarray(logp)))


def test_conditional_likelihood_is_each_examples_class_law():
    """With cond, each example is solved under its own condition: the exact class-conditional score of a 3-class
    mixture gives, per example, the closed form of its component's law (and a different class a different value),
    also with the batch split over a mesh."""
    sde = SDES["vp"]
    d = 6
    means = jnp.stack([jnp.full((d,), -1.5), jnp.zeros((d,)), jnp.full((d,), 1.5)])
    stds = jnp.stack([jnp.full((d,), s) for s in (0.3, 0.6, 0.9)])
    gm = analytic.GaussianMixture(means, stds)
    y = jnp.array([2, 0, 1, 2])
    x = jnp.stack([gm.component(int(k)).sample(jax.random.key(10 + i), 1)[0] for i, k in enumerate(y)])
    score = gm.conditional_score_fn(sde)
    kw = dict(hutchinson="exact", rtol=1e-5, atol=1e-5, eps=EPS)
    logp, _, _ = likelihood.log_likelihood(score, sde, x, jax.random.key(2), cond=y, **kw)
    ref = jnp.stack([_closed_form(gm.component(int(k)), sde, x[i : i + 1])[0][0] for i, k in enumerate(y)])
    assert np.all(np.abs(np.asarray(logp - ref)) / d < 1e-3), (logp, ref)
    other, _, _ = likelihood.log_likelihood(score, sde, x, jax.random.key(2), cond=(y + 1) % 3, **kw)
    assert np.all(np.asarray(logp - other) > 1.0)  # the wrong class is far less likely: the condition is used
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("data",)) if jax.device_count() >= 2 else None
    if mesh is not None:
        sharded, _, _ = likelihood.log_likelihood(score, sde, x, jax.random.key(2), cond=y, mesh=mesh, **kw)
        np.testing.assert_allclose(sharded, logp, rtol=1e-5)
    with pytest.raises(ValueError, match="cond must hold one condition per example"):
        likelihood.log_likelihood(score, sde, x, jax.random.key(2), cond=y[:2], **kw)
