"""CLIP guidance against exact answers.

An exact "CLIP" on a Gaussian mixture whose components are the captions: the text embedding of caption ``c`` is
row ``c`` of an orthonormal matrix ``Q``, the image embedding of ``x_t`` is ``τ Σ_k (log p_t(k | x_t) + b(x)) Q_k``
with ``b`` an arbitrary per-example offset, so that ``E_I(x_t, t) · E_T(c) / τ = log p_t(c | x_t) + b(x)``. CLIP
guidance at scale 1 must then be the exact conditional score (for ``∇b = 0``: an offset constant in ``x``), and
its samples the exact component law. Statistical tolerances are a few Monte-Carlo standard errors.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import sampling
from scoresde import sde as sde_lib
from scoresde.analytic import GaussianMixture, random_rotation
from scoresde.guidance import clip as gclip
from scoresde.guidance import posterior as pg

N = 4000
VP = sde_lib.VPSDE()
MIX = GaussianMixture(np.array([[-1.0, 0.0], [1.0, 0.0], [0.0, 1.5]]), np.array([[0.6, 0.4], [0.5, 0.5], [0.4, 0.6]]))
TAU = 0.07
Q = random_rotation(jax.random.key(7), 3)  # rows: the text embeddings of the three captions
C = 0


def exact_image_embed(x, t):
    """``τ Qᵀ (log p_t(· | x) + 5)``: its dot with ``Q_c`` over ``τ`` is ``log p_t(c | x) + 5``."""
    return TAU * (MIX.class_log_prob(VP, x, t) + 5.0) @ Q


def _batch(n=64, seed=0):
    x = MIX.sample(jax.random.key(seed), n)
    t = jax.random.uniform(jax.random.key(seed + 1), (n,), minval=1e-3, maxval=1.0)
    return x, t


def test_clip_guidance_scale_one_is_the_exact_conditional_score_and_zero_the_unguided():
    x, t = _batch()
    # the exact CLIP's similarity is the class log-likelihood up to a constant
    sim = exact_image_embed(x, t) @ Q[C] / TAU
    np.testing.assert_allclose(np.asarray(sim), np.asarray(MIX.class_log_prob(VP, x, t)[:, C] + 5.0), atol=1e-4)
    score = MIX.score_fn(VP)
    guided = gclip.clip_guidance(score, exact_image_embed, Q[C], scale=1.0, temperature=TAU)
    exact = MIX.conditional_score_fn(VP)(x, t, jnp.full((x.shape[0],), C))
    np.testing.assert_allclose(np.asarray(guided(x, t)), np.asarray(exact), rtol=1e-4, atol=1e-4)
    off = gclip.clip_guidance(score, exact_image_embed, Q[C], scale=0.0, temperature=TAU)
    np.testing.assert_array_equal(np.asarray(off(x, t)), np.asarray(score(x, t)))
    # one caption per example: each row guided to its own component
    cs = jnp.arange(x.shape[0]) % 3
    per = gclip.clip_guidance(score, exact_image_embed, Q[cs], scale=1.0, temperature=TAU)
    np.testing.assert_allclose(
        np.asarray(per(x, t)), np.asarray(MIX.conditional_score_fn(VP)(x, t, cs)), rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("method,opts", [("pc", dict(steps=300)), ("dpm_solver++", dict(steps=40))])
def test_clip_guidance_scale_one_samples_the_exact_conditional_law(method, opts):
    guided = gclip.clip_guidance(MIX.score_fn(VP), exact_image_embed, Q[C], scale=1.0, temperature=TAU)
    x, _ = sampling.sample(guided, VP, (N, 2), jax.random.key(1), method=method, **opts)
    exact = MIX.component(C).sample(jax.random.key(123), 200_000)
    mean, std = np.asarray(exact.mean(0)), np.asarray(exact.std(0))
    x = np.asarray(x, np.float64)
    np.testing.assert_array_less(np.abs(x.mean(0) - mean), 4 * std / np.sqrt(N))
    np.testing.assert_array_less(np.abs(x.std(0) - std), 4 * std / np.sqrt(2 * N))
    # the check can fail: the unguided mixture is far from the component law
    assert np.abs(np.asarray(MIX.mean())[0] - mean[0]) > 20 * std[0] / np.sqrt(N)


def test_scale_and_caption_are_traced_no_recompilation():
    traces = []

    def embed(x, t):
        traces.append(1)
        return exact_image_embed(x, t)

    score = MIX.score_fn(VP)  # the score function is static by identity: one object for both runs

    def run(scale, c):
        guided = gclip.clip_guidance(score, embed, Q[c], scale=scale, temperature=TAU)
        return sampling.sample(guided, VP, (8, 2), jax.random.key(0), method="dpm_solver++", steps=5)[0]

    run(1.0, 0)
    n = len(traces)
    run(3.0, 2)
    assert len(traces) == n


def test_clean_clip_guidance_is_embedding_guidance_scaled_by_the_temperature():
    x, t = _batch(16)
    score = MIX.score_fn(VP)
    w = jax.random.normal(jax.random.key(3), (2, 4))
    embed = lambda v: v @ w  # noqa: E731
    c = jnp.array([1.0, -0.5, 0.2, 0.3])
    ours = gclip.clean_clip_guidance(score, VP, embed, c, scale=2.0, temperature=0.5)
    ref = pg.embedding_guidance(score, VP, embed, c, scale=4.0)
    np.testing.assert_allclose(np.asarray(ours(x, t)), np.asarray(ref(x, t)), rtol=1e-6, atol=1e-6)
    assert ours.evaluations_per_call == 2


@pytest.mark.slow
def test_clean_clip_guidance_pulls_samples_into_the_requested_component():
    """A clean exact 'CLIP' (the clean Bayes classifier's log-probabilities as the image embedding): guidance
    through the denoiser moves the Bayes fraction of component 2 well above its unguided share."""

    def clean_embed(x0):
        return MIX.class_log_prob(VP, x0, jnp.zeros((x0.shape[0],)))

    def frac(x):
        return float(jnp.mean(jnp.argmax(MIX.class_log_prob(VP, x, jnp.zeros((x.shape[0],))), -1) == 2))

    score = MIX.score_fn(VP)
    base, _ = sampling.sample(score, VP, (500, 2), jax.random.key(4), method="dpm_solver++", steps=10)
    guided = gclip.clean_clip_guidance(score, VP, clean_embed, jnp.eye(3)[2], scale=1.0, temperature=0.1)
    x, _ = sampling.sample(guided, VP, (500, 2), jax.random.key(4), method="dpm_solver++", steps=10)
    assert frac(base) < 0.45 and frac(x) > frac(base) + 0.3, (frac(base), frac(x))


def test_bad_inputs_are_named():
    score = MIX.score_fn(VP)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        gclip.clip_guidance(score, exact_image_embed, Q[C], temperature=0.0)
    x, t = _batch(4)
    with pytest.raises(ValueError, match=r"expected \(3,\) or \(4, 3\)"):
        gclip.clip_guidance(score, exact_image_embed, jnp.ones((5,)), temperature=TAU)(x, t)
    with pytest.raises(ValueError, match="must return \\(B, E\\)"):
        gclip.clip_guidance(score, lambda x, t: x[:, 0], Q[C], temperature=TAU)(x, t)
