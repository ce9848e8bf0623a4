"""Latent-diffusion math against closed forms: posterior, losses, scale factor, latent samplers and likelihood.
(The LSGM bound is in ``test_bound.py``.)"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from scoresde import analytic, images, latent, likelihood, sampling
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
    np.testing.assert_allclose(
        np.asarray(post.entropy()), stats.norm.entropy(mean, std).reshape(3, -1).sum(-1), rtol=1e-5
    )
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
    assert float(images.psnr(x, x_rec)[0]) == pytest.approx(10 * math.log10(4 / 0.5625), rel=1e-6)
    with pytest.raises(ValueError, match="unknown reconstruction loss 'l3'"):
        latent.reconstruction_error(x, x_rec, "l3")
    # Hinge: real logits 2 and 0 -> relu(1-2)=0, relu(1-0)=1; fake -2 and 0.5 -> 0, 1.5. ½(0.5 + 0.75).
    d = latent.hinge_discriminator_loss(jnp.array([2.0, 0.0]), jnp.array([-2.0, 0.5]))
    assert float(d) == pytest.approx(0.625)
    assert float(latent.discriminator_loss(jnp.array([2.0, 0.0]), jnp.array([-2.0, 0.5]), step=3, disc_start=4)) == 0.0
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
    loss_p, tp = latent.autoencoder_loss(
        x, post, reconstruct, w, kl_weight=0.1, reconstruction="l2", perceptual_fn=perc, perceptual_weight=0.5
    )
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
    return analytic.GaussianMixture(
        jnp.array([[1.0, -1.0, 0.5, 0.0], [-1.0, 0.5, 0.0, 1.0]]),
        jnp.array([[0.3, 0.6, 0.9, 1.2], [0.5, 0.5, 0.8, 0.4]]),
        rotation=rot,
        event_shape=SHAPE,
    )


def test_encode_decode_apply_the_scale_factor():
    _, encoder_fn, decoder_fn = _orthogonal_ae()
    x = _pixel_mixture().sample(jax.random.key(0), 5)
    z = latent.encode(encoder_fn, x, 2.5)
    np.testing.assert_allclose(np.asarray(z), 2.5 * np.asarray(encoder_fn(x)[0]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(latent.decode(decoder_fn, z, 2.5)), np.asarray(x), atol=1e-5)
    # A posterior sample differs from the mean by std · ε: here std = exp(-15), so by < 1e-6.
    zs = latent.encode(encoder_fn, x, 2.5, key=jax.random.key(1))
    np.testing.assert_allclose(np.asarray(zs), np.asarray(z), atol=1e-5)


@pytest.mark.parametrize(
    "method,options",
    [("ddim", dict(steps=20)), ("dpm_solver", dict(steps=6, order=2)), ("ode", dict(solver="heun", steps=20))],
)
def test_latent_sampling_through_orthogonal_ae_equals_pixel_sampling(method, options):
    sde = sde_lib.VPSDE()
    gm = _pixel_mixture()
    q, encoder_fn, decoder_fn = _orthogonal_ae()
    pixel_score = gm.score_fn(sde)
    # The exact latent score, pulled back through x = Q z: s_z(z, t) = Qᵀ s_x(Q z, t) (noise is isotropic).
    latent_score = lambda z, t: encoder_fn(pixel_score(decoder_fn(z), t))[0]
    x_init = jax.random.normal(jax.random.key(3), (8,) + SHAPE)
    x_pix, nfe_pix = sampling.sample(
        pixel_score, sde, (8,) + SHAPE, jax.random.key(4), method=method, x_init=x_init, **options
    )
    z_init = latent.encode(encoder_fn, x_init, 1.0)
    z_lat, nfe_lat = sampling.sample(
        latent_score, sde, (8,) + SHAPE, jax.random.key(4), method=method, x_init=z_init, **options
    )
    x_lat = latent.decode(decoder_fn, z_lat, 1.0)
    np.testing.assert_allclose(np.asarray(x_lat), np.asarray(x_pix), atol=2e-5)
    assert int(nfe_lat) == int(nfe_pix)
    assert float(jnp.max(jnp.abs(x_pix - x_init))) > 0.1  # the samplers moved the state


def test_latent_likelihood_through_orthogonal_ae_equals_pixel_likelihood():
    sde = sde_lib.VPSDE()
    gm = analytic.GaussianMixture(
        jnp.array([[1.0, -1.0, 0.5, 0.0]]),
        jnp.array([[0.3, 0.6, 0.9, 1.2]]),
        rotation=analytic.random_rotation(jax.random.key(7), D),
        event_shape=SHAPE,
    )
    _, encoder_fn, decoder_fn = _orthogonal_ae()
    pixel_score = gm.score_fn(sde)
    latent_score = lambda z, t: encoder_fn(pixel_score(decoder_fn(z), t))[0]
    x = gm.sample(jax.random.key(0), 4)
    kw = dict(hutchinson="exact", rtol=1e-5, atol=1e-5, eps=1e-5)
    both = jax.jit(
        lambda x, key: (
            likelihood.log_likelihood(pixel_score, sde, x, key, **kw)[0],
            likelihood.log_likelihood(latent_score, sde, latent.encode(encoder_fn, x, 1.0), key, **kw)[0],
        )
    )
    logp_pix, logp_lat = both(x, jax.random.key(1))
    # Exact answer: log p_ε(x) - log p_T(x*_T) + log N(x*_T; 0, I) with the closed-form flow map x*_T.
    z_t = gm.flow_map(sde, x, 1e-5, sde.T)
    ref = (
        gm.log_prob_t(sde, x, jnp.full((4,), 1e-5))
        - gm.log_prob_t(sde, z_t, jnp.full((4,), sde.T))
        + sde.prior_logp(z_t)
    )
    np.testing.assert_allclose(np.asarray(logp_lat), np.asarray(logp_pix), atol=1e-4)
    np.testing.assert_allclose(np.asarray(logp_lat), np.asarray(ref), atol=4e-3)  # 1e-3 nats per dimension
