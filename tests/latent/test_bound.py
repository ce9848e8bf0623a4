"""The LSGM variational bound (``scoresde.latent.bound``) on Gaussian data where the exact negative
log-likelihood is known."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from scoresde import analytic, latent, likelihood
from scoresde import sde as sde_lib

SHAPE = (2, 2, 1)  # one example: a 2×2 single-channel "image"; D = d_z = 4
D = 4


# -- the LSGM bound on a linear-Gaussian latent model with an exactly known p(x) ---------------------------

EPS = 1e-5


def _linear_gaussian_model(c):
    """Latent model p_θ on ẑ = c z: the probability-flow density of a diagonal Gaussian base (exact scores).

    Its flow map ẑ -> u from ε to T is affine and diagonal with slope k, so p_θ(ẑ) = N(u; 0, I) |k| is the
    Gaussian N(Φ⁻¹(0), 1 / k²) (VP prior std 1). Decoder: x = Q (a ⊙ z) + b + σ n.
    """
    sde = sde_lib.VPSDE()
    m, lam = np.array([0.5, -1.0, 0.0, 1.5]), np.array([0.4, 1.0, 2.0, 0.7])
    base = analytic.GaussianMixture(m[None], np.sqrt(lam)[None], event_shape=SHAPE)
    t_eps, t_end = jnp.array([EPS]), jnp.array([sde.T])
    a_e, s_e = float(sde.alpha(t_eps)[0]), float(sde.sigma(t_eps)[0])
    a_t, s_t = float(sde.alpha(t_end)[0]), float(sde.sigma(t_end)[0])
    k = np.sqrt((a_t**2 * lam + s_t**2) / (a_e**2 * lam + s_e**2))
    mean_hat = a_e * m - a_t * m / k
    var_hat = 1.0 / k**2
    q = np.asarray(analytic.random_rotation(jax.random.key(11), D), np.float64)
    a, b, sigma = np.array([1.5, 0.8, 1.2, 2.0]), np.array([0.1, -0.2, 0.3, 0.0]), 0.3
    mz, vz = mean_hat / c, var_hat / c**2  # the unscaled latent z = ẑ / c
    cov_x = q @ np.diag(a**2 * vz + sigma**2) @ q.T
    mean_x = q @ (a * mz) + b
    post_var = 1.0 / (1.0 / vz + a**2 / sigma**2)

    a32, b32, qt32 = (jnp.asarray(v, jnp.float32) for v in (a[None], b[None], q.T))
    decoder_fn = lambda z: ((z.reshape(z.shape[0], D) * a32) @ qt32 + b32).reshape(z.shape)
    return dict(
        sde=sde,
        score=base.score_fn(sde),
        cov_x=cov_x,
        mean_x=mean_x,
        post_var=post_var,
        mz=mz,
        vz=vz,
        a=a,
        b=b,
        q=q,
        sigma2=sigma**2,
        decoder_fn=decoder_fn,
        sigma=sigma,
    )


def _bound(model, x, c, encoder_fn, num_samples, key=1, scaler=None):
    fn = jax.jit(
        lambda x, key: latent.variational_bound(
            encoder_fn,
            model["decoder_fn"],
            model["score"],
            model["sde"],
            x,
            key,
            scale_factor=c,
            scaler=scaler,
            decoder_std=model["sigma"],
            num_bits=None,
            dequantization="none",
            num_samples=num_samples,
            hutchinson="exact",
            rtol=1e-5,
            atol=1e-5,
            eps=EPS,
        )
    )
    return fn(x, jax.random.key(key))


def _encoder(model, mean_shift=0.0, var_ratio=1.0):
    """The exact posterior p(z | x) (``mean_shift=0, var_ratio=1``) or a shifted / widened Gaussian."""
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    pv, mz, vz, a, b, q, s2 = (f32(model[k]) for k in ("post_var", "mz", "vz", "a", "b", "q", "sigma2"))

    def encoder_fn(y):
        flat = y.reshape(y.shape[0], D)
        mean = (pv * (mz / vz))[None] + (pv * a / s2)[None] * ((flat - b[None]) @ q) + mean_shift
        logvar = jnp.broadcast_to(jnp.log(pv * var_ratio)[None], flat.shape)
        return mean.reshape(y.shape), logvar.reshape(y.shape)

    return encoder_fn


def _exact_nll(model, x):
    return -stats.multivariate_normal(model["mean_x"], model["cov_x"]).logpdf(np.asarray(x, np.float64).reshape(-1, D))


def test_variational_bound_is_tight_with_the_exact_posterior():
    # c = 2: a missing change-of-variables term d_z log c (2.8 nats) would fail this.
    c = 2.0
    model = _linear_gaussian_model(c)
    y = np.random.default_rng(0).multivariate_normal(model["mean_x"], model["cov_x"], 3)
    # The data enter through the scaler s(u) = 2u - 1 (continuous, no dequantisation): bits/dim then subtract
    # log2 |s'| = 1 bit per dimension from -log2 p(y) / D.
    scaler = lambda u: 2.0 * u - 1.0
    u = jnp.asarray((y.reshape((3,) + SHAPE) + 1.0) / 2.0, jnp.float32)
    out = _bound(model, u, c, _encoder(model), num_samples=2, scaler=scaler)
    nll = _exact_nll(model, y)
    # With q = p(z | x), -log p(x|z) + log q(z|x) - log p(z) = -log p(x) for every z: exact up to the ODE solve.
    np.testing.assert_allclose(np.asarray(out.nats), nll, atol=4e-3)
    np.testing.assert_allclose(np.asarray(out.nats), np.asarray(out.reconstruction + out.log_q + out.prior), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out.offset_bpd), likelihood.bpd_offset(scaler, None), rtol=1e-6)  # -1
    np.testing.assert_allclose(np.asarray(out.bits_per_dim), nll / (D * math.log(2)) - 1.0, atol=4e-3)
    np.testing.assert_allclose(
        np.asarray(out.bits_per_dim),
        np.asarray(out.reconstruction_bpd + out.log_q_bpd + out.prior_bpd + out.offset_bpd),
        rtol=1e-6,
    )
    assert out.nfe.shape == (2, 3) and np.all(np.asarray(out.nfe) > 3)
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        latent.variational_bound(
            _encoder(model),
            model["decoder_fn"],
            model["score"],
            model["sde"],
            u,
            jax.random.key(0),
            scale_factor=c,
            decoder_std=0.3,
            num_samples=0,
        )
    with pytest.raises(ValueError, match="unknown dequantization 'gauss'"):
        latent.variational_bound(
            _encoder(model),
            model["decoder_fn"],
            model["score"],
            model["sde"],
            u,
            jax.random.key(0),
            scale_factor=c,
            decoder_std=0.3,
            dequantization="gauss",
        )


def test_variational_bound_exceeds_nll_by_kl_to_the_true_posterior():
    c = 2.0
    model = _linear_gaussian_model(c)
    rng = np.random.default_rng(1)
    x = rng.multivariate_normal(model["mean_x"], model["cov_x"], 2)
    shift, ratio, k = 0.3, 2.0, 64
    out = _bound(model, jnp.asarray(x.reshape((2,) + SHAPE), jnp.float32), c, _encoder(model, shift, ratio), k)
    gap = np.asarray(out.nats) - _exact_nll(model, x)
    # E_q[bound] - (-log p(x)) = KL(q(z|x) || p(z|x)): both diagonal Gaussians, same shift for every example.
    pv = model["post_var"]
    kl = 0.5 * np.sum(ratio - 1 - np.log(ratio) + shift**2 / pv)
    # The per-draw gap is log q(z) - log p(z|x); its std by numpy Monte Carlo sets the tolerance (5 stderr).
    e = rng.standard_normal((100_000, D))
    z_off = np.sqrt(ratio * pv) * e + shift  # z - posterior mean
    draws = (
        stats.norm.logpdf(e).sum(-1)
        - 0.5 * np.sum(np.log(ratio * pv))
        - stats.norm.logpdf(z_off, 0, np.sqrt(pv)).sum(-1)
    )
    assert abs(draws.mean() - kl) < 5 * draws.std() / math.sqrt(len(draws))  # the closed form is right
    stderr = draws.std() / math.sqrt(k * 2)
    assert abs(gap.mean() - kl) < 5 * stderr + 4e-3, (gap, kl, stderr)
    assert np.all(gap > 0) and kl > 10 * stderr
