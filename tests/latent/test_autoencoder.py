"""Latent-diffusion math against closed forms: posterior, losses, scale factor, latent samplers and likelihood,
and the LSGM variational bound on Gaussian data where the exact negative log-likelihood is known."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from scoresde import analytic, latent, likelihood, sampling
from scoresde import sde as sde_lib

SHAPE = (2, 2, 1)  # one example: a 2×2 single-channel "image"; D = d_z = 4
D = 4


def _posterior(seed=0, b=3, shape=SHAPE):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return latent.DiagonalGaussian(jax.random.normal(k1, (b,) + shape), 0.5 * jax.random.normal(k2, (b,) + shape))


def test_posterior_kl_log_prob_entropy_match_scipy_and_monte_carlo():
    post = _posterior()
    mean, std = np.asarray(post.mean, np.float64), np.asarray(post.std, np.float64)
    # log q(z) and the entropy against scipy's univariate normals, summed over the independent dimensions.
    z = post.sample(jax.random.key(1))
    ref_logq = stats.norm.logpdf(np.asarray(z, np.float64), mean, std).reshape(3, -1).sum(-1)
    np.testing.assert_allclose(np.asarray(post.log_prob(z)), ref_logq, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(post.entropy()), stats.norm.entropy(mean, std).reshape(3, -1).sum(-1),
                               rtol=1e-5)
    # KL(q || N(0, I)) = E_q[log q - log N(0, I)] by Monte Carlo, 200k draws, within 5 standard errors.
    n = 200_000
    draws = mean[None] + std[None] * np.random.default_rng(0).standard_normal((n,) + mean.shape)
    ratio = (stats.norm.logpdf(draws, mean, std) - stats.norm.logpdf(draws)).reshape(n, 3, -1).sum(-1)
    kl = np.asarray(post.kl())
    stderr = ratio.std(0) / math.sqrt(n)
    assert np.all(np.abs(ratio.mean(0) - kl) < 5 * stderr), (ratio.mean(0), kl, stderr)
    assert np.all(kl > 20 * stderr)  # a non-trivial KL: a zero or sign error would fail above
    # And the KL of the prior itself is zero.
    assert float(jnp.max(jnp.abs(latent.DiagonalGaussian(jnp.zeros((1, 4)), jnp.zeros((1, 4))).kl()))) == 0.0


def test_scale_by_std_is_one_over_the_std_of_the_latents_it_saw():
    means = 3.0 + 0.37 * jax.random.normal(jax.random.key(0), (64,) + SHAPE)
    c = latent.scale_by_std(means)
    np.testing.assert_allclose(float(c), 1.0 / np.std(np.asarray(means, np.float64)), rtol=1e-5)
    np.testing.assert_allclose(float(jnp.std(c * means)), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        latent.scale_by_std(jnp.ones((1,)))


def test_reconstruction_psnr_and_hinge_losses():
    x = jnp.array([[0.0, 1.0, 0.5, 0.25]])
    x_rec = jnp.array([[0.5, 0.5, 0.5, 0.0]])
    assert float(latent.reconstruction_error(x, x_rec, "l1")[0]) == pytest.approx(1.25)
    assert float(latent.reconstruction_error(x, x_rec, "l2")[0]) == pytest.approx(0.5625)
    assert float(latent.psnr(x, x_rec)[0]) == pytest.approx(10 * math.log10(4 / 0.5625), rel=1e-6)
    with pytest.raises(ValueError, match="unknown reconstruction loss 'l3'"):
        latent.reconstruction_error(x, x_rec, "l3")
    # Hinge: real logits 2 and 0 -> relu(1-2)=0, relu(1-0)=1; fake -2 and 0.5 -> 0, 1.5. ½(0.5 + 0.75).
    d = latent.hinge_discriminator_loss(jnp.array([2.0, 0.0]), jnp.array([-2.0, 0.5]))
    assert float(d) == pytest.approx(0.625)
    assert float(latent.discriminator_loss(jnp.array([2.0, 0.0]), jnp.array([-2.0, 0.5]), step=3,
                                           disc_start=4)) == 0.0
    assert float(latent.generator_adversarial_loss(jnp.array([1.0, 3.0]))) == -2.0


def test_autoencoder_loss_terms_warmup_and_adaptive_weight_closed_form():
    # A linear "decoder head" x̂ = w h and a linear discriminator D(x̂) = Σ v ⊙ x̂ per example:
    # L_rec = mean_b Σ (x - w h)², ∂/∂w = -2 mean_b Σ h (x - w h);  L_adv = -mean_b Σ v h w, ∂/∂w = -mean_b Σ v h.
    kx, kh, kv = jax.random.split(jax.random.key(0), 3)
    x, h, v = (jax.random.normal(k, (2, 4)) for k in (kx, kh, kv))
    w = jnp.asarray(0.7)
    post = _posterior(b=2, shape=(3,))
    reconstruct = lambda w_: w_ * h
    disc = lambda x_hat: jnp.sum(v * x_hat, axis=-1, keepdims=True)
    kw = dict(kl_weight=0.1, reconstruction="l2", discriminator_fn=disc, disc_weight=0.5, disc_start=10)
    xn, hn, vn, wn = (np.asarray(a, np.float64) for a in (x, h, v, w))
    rec = np.mean(np.sum((xn - wn * hn) ** 2, -1))
    g_rec = -2 * np.mean(np.sum(hn * (xn - wn * hn), -1))
    g_adv = -np.mean(np.sum(vn * hn, -1))
    gen = -np.mean(np.sum(vn * wn * hn, -1))
    kl = float(jnp.mean(post.kl()))
    before, t0 = latent.autoencoder_loss(x, post, reconstruct, w, step=9, **kw)
    after, t1 = latent.autoencoder_loss(x, post, reconstruct, w, step=10, **kw)
    assert float(before) == pytest.approx(rec + 0.1 * kl, rel=1e-5) and float(t0.adversarial_weight) == 0.0
    weight = 0.5 * abs(g_rec) / (abs(g_adv) + 1e-4)
    assert float(t1.adversarial_weight) == pytest.approx(weight, rel=1e-5)
    assert float(t1.generator) == pytest.approx(gen, rel=1e-5)
    assert float(after) == pytest.approx(rec + 0.1 * kl + weight * gen, rel=1e-5)
    # The perceptual hook: a per-example distance added to every dimension's error (weighted by D = 4).
    perc = lambda a, b: jnp.sum(jnp.abs(a - b), -1) * 0 + jnp.array([1.0, 3.0])
    loss_p, tp = latent.autoencoder_loss(x, post, reconstruct, w, kl_weight=0.1, reconstruction="l2",
                                         perceptual_fn=perc, perceptual_weight=0.5)
    assert float(tp.perceptual) == pytest.approx(2.0)
    assert float(loss_p) == pytest.approx(rec + 0.1 * kl + 0.5 * 4 * 2.0, rel=1e-5)


# -- an orthogonal linear "autoencoder": latent space = pixel space rotated --------------------------------


def _orthogonal_ae(seed=5):
    q = analytic.random_rotation(jax.random.key(seed), D)
    encoder_fn = lambda x: ((x.reshape(x.shape[0], D) @ q).reshape(x.shape), jnp.full(x.shape, -30.0))
    decoder_fn = lambda z: (z.reshape(z.shape[0], D) @ q.T).reshape(z.shape)
    return q, encoder_fn, decoder_fn


def _pixel_mixture():
    rot = analytic.random_rotation(jax.random.key(7), D)
    return analytic.GaussianMixture(jnp.array([[1.0, -1.0, 0.5, 0.0], [-1.0, 0.5, 0.0, 1.0]]),
                                    jnp.array([[0.3, 0.6, 0.9, 1.2], [0.5, 0.5, 0.8, 0.4]]), rotation=rot,
                                    event_shape=SHAPE)


def test_encode_decode_apply_the_scale_factor():
    _, encoder_fn, decoder_fn = _orthogonal_ae()
    x = _pixel_mixture().sample(jax.random.key(0), 5)
    z = latent.encode(encoder_fn, x, 2.5)
    np.testing.assert_allclose(np.asarray(z), 2.5 * np.asarray(encoder_fn(x)[0]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(latent.decode(decoder_fn, z, 2.5)), np.asarray(x), atol=1e-5)
    # A posterior sample differs from the mean by std · ε: here std = exp(-15), so by < 1e-6.
    zs = latent.encode(encoder_fn, x, 2.5, key=jax.random.key(1))
    np.testing.assert_allclose(np.asarray(zs), np.asarray(z), atol=1e-5)


@pytest.mark.parametrize("method,options", [("ddim", dict(steps=20)), ("dpm_solver", dict(steps=6, order=2)),
                                            ("ode", dict(solver="heun", steps=20))])
def test_latent_sampling_through_orthogonal_ae_equals_pixel_sampling(method, options):
    sde = sde_lib.VPSDE()
    gm = _pixel_mixture()
    q, encoder_fn, decoder_fn = _orthogonal_ae()
    pixel_score = gm.score_fn(sde)
    # The exact latent score, pulled back through x = Q z: s_z(z, t) = Qᵀ s_x(Q z, t) (noise is isotropic).
    latent_score = lambda z, t: encoder_fn(pixel_score(decoder_fn(z), t))[0]
    x_init = jax.random.normal(jax.random.key(3), (8,) + SHAPE)
    x_pix, nfe_pix = sampling.sample(pixel_score, sde, (8,) + SHAPE, jax.random.key(4), method=method,
                                     x_init=x_init, **options)
    z_init = latent.encode(encoder_fn, x_init, 1.0)
    z_lat, nfe_lat = sampling.sample(latent_score, sde, (8,) + SHAPE, jax.random.key(4), method=method,
                                     x_init=z_init, **options)
    x_lat = latent.decode(decoder_fn, z_lat, 1.0)
    np.testing.assert_allclose(np.asarray(x_lat), np.asarray(x_pix), atol=2e-5)
    assert int(nfe_lat) == int(nfe_pix)
    assert float(jnp.max(jnp.abs(x_pix - x_init))) > 0.1  # the samplers moved the state


def test_latent_likelihood_through_orthogonal_ae_equals_pixel_likelihood():
    sde = sde_lib.VPSDE()
    gm = analytic.GaussianMixture(jnp.array([[1.0, -1.0, 0.5, 0.0]]), jnp.array([[0.3, 0.6, 0.9, 1.2]]),
                                  rotation=analytic.random_rotation(jax.random.key(7), D), event_shape=SHAPE)
    _, encoder_fn, decoder_fn = _orthogonal_ae()
    pixel_score = gm.score_fn(sde)
    latent_score = lambda z, t: encoder_fn(pixel_score(decoder_fn(z), t))[0]
    x = gm.sample(jax.random.key(0), 4)
    kw = dict(hutchinson="exact", rtol=1e-5, atol=1e-5, eps=1e-5)
    both = jax.jit(lambda x, key: (likelihood.log_likelihood(pixel_score, sde, x, key, **kw)[0],
                                   likelihood.log_likelihood(latent_score, sde, latent.encode(encoder_fn, x, 1.0),
                                                             key, **kw)[0]))
    logp_pix, logp_lat = both(x, jax.random.key(1))
    # Exact answer: log p_ε(x) - log p_T(x*_T) + log N(x*_T; 0, I) with the closed-form flow map x*_T.
    z_t = gm.flow_map(sde, x, 1e-5, sde.T)
    ref = (gm.log_prob_t(sde, x, jnp.full((4,), 1e-5)) - gm.log_prob_t(sde, z_t, jnp.full((4,), sde.T))
           + sde.prior_logp(z_t))
    np.testing.assert_allclose(np.asarray(logp_lat), np.asarray(logp_pix), atol=1e-4)
    np.testing.assert_allclose(np.asarray(logp_lat), np.asarray(ref), atol=4e-3)  # 1e-3 nats per dimension


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
    return dict(sde=sde, score=base.score_fn(sde), cov_x=cov_x, mean_x=mean_x, post_var=post_var,
                mz=mz, vz=vz, a=a, b=b, q=q, sigma2=sigma**2, decoder_fn=decoder_fn, sigma=sigma)


def _bound(model, x, c, encoder_fn, num_samples, key=1, scaler=None):
    fn = jax.jit(lambda x, key: latent.variational_bound(
        encoder_fn, model["decoder_fn"], model["score"], model["sde"], x, key, scale_factor=c, scaler=scaler,
        decoder_std=model["sigma"], num_bits=None, dequantization="none", num_samples=num_samples,
        hutchinson="exact", rtol=1e-5, atol=1e-5, eps=EPS))
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
    np.testing.assert_allclose(np.asarray(out.bits_per_dim), np.asarray(
        out.reconstruction_bpd + out.log_q_bpd + out.prior_bpd + out.offset_bpd), rtol=1e-6)
    assert out.nfe.shape == (2, 3) and np.all(np.asarray(out.nfe) > 3)
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        latent.variational_bound(_encoder(model), model["decoder_fn"], model["score"], model["sde"], u,
                                 jax.random.key(0), scale_factor=c, decoder_std=0.3, num_samples=0)
    with pytest.raises(ValueError, match="unknown dequantization 'gauss'"):
        latent.variational_bound(_encoder(model), model["decoder_fn"], model["score"], model["sde"], u,
                                 jax.random.key(0), scale_factor=c, decoder_std=0.3, dequantization="gauss")


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
    draws = (stats.norm.logpdf(e).sum(-1) - 0.5 * np.sum(np.log(ratio * pv)) - stats.norm.logpdf(z_off, 0, np.sqrt(pv)).sum(-1))
    assert abs(draws.mean() - kl) < 5 * draws.std() / math.sqrt(len(draws))  # the closed form is right
    stderr = draws.std() / math.sqrt(k * 2)
    assert abs(gap.mean() - kl) < 5 * stderr + 4e-3, (gap, kl, stderr)
    assert np.all(gap > 0) and kl > 10 * stderr
