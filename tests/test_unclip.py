"""unCLIP's prior, decoder chaining, variations and slerp against exact answers.

The exact prior: text embeddings ``c ∈ R²`` and image embeddings ``z ∈ R³`` with ``z | c ~ N(A c + b, diag(s²))``.
Every noised conditional is Gaussian, so the conditional score is known in closed form (checked against
:class:`scoresde.analytic.GaussianMixture` for one ``c``) and the prior's samples must have the exact conditional
law: standardised residuals ``(z - A c - b) / s`` with mean 0, std 1 and no correlation with ``c``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scoresde import sde as sde_lib
from scoresde import unclip
from scoresde.analytic import GaussianMixture
from scoresde.models.mlp import MLPScore

VP = sde_lib.VPSDE()
A = jnp.array([[1.0, -0.5], [0.3, 0.8], [-1.2, 0.4]])
B = jnp.array([0.5, -0.2, 0.1])
S = jnp.array([0.3, 0.6, 0.45])
N = 3000


def exact_prior_score(x, t, c):
    """``∇ log p_t(z | c)`` of ``N(alpha (A c + b), alpha² s² + sigma²)``."""
    a, s = VP.alpha(t)[:, None], VP.sigma(t)[:, None]
    mean = c @ A.T + B[None]
    return -(x - a * mean) / (a**2 * S[None] ** 2 + s**2)


def test_exact_prior_score_is_the_gaussian_oracle():
    c = jnp.array([0.7, -1.1])
    gm = GaussianMixture(np.asarray(A @ c + B)[None], np.asarray(S)[None])
    x = jax.random.normal(jax.random.key(0), (16, 3))
    t = jnp.linspace(0.01, 1.0, 16)
    np.testing.assert_allclose(
        np.asarray(exact_prior_score(x, t, jnp.broadcast_to(c, (16, 2)))), np.asarray(gm.score_fn(VP)(x, t)), atol=1e-5
    )


@pytest.mark.parametrize(
    "method,opts", [pytest.param("pc", dict(steps=300), marks=pytest.mark.slow), ("dpm_solver++", dict(steps=30))]
)
def test_prior_samples_have_the_exact_conditional_law(method, opts):
    c = jax.random.normal(jax.random.key(1), (N, 2))
    z, nfe = unclip.sample_prior(exact_prior_score, VP, c, jax.random.key(2), dim=3, method=method, **opts)
    r = np.asarray((z - (c @ A.T + B[None])) / S[None], np.float64)
    np.testing.assert_array_less(np.abs(r.mean(0)), 4 / np.sqrt(N))
    np.testing.assert_array_less(np.abs(r.std(0) - 1.0), 4 / np.sqrt(2 * N))
    cn = np.asarray(c)
    corr = (r - r.mean(0)).T @ (cn - cn.mean(0)) / N
    np.testing.assert_array_less(np.abs(corr), 4 / np.sqrt(N))
    assert int(nfe) > 0


def test_prior_ignoring_its_condition_fails_the_check():
    """The check above can fail: the prior's samples for another caption are off by ``A Δc``."""
    c = jax.random.normal(jax.random.key(1), (N, 2))
    z, _ = unclip.sample_prior(exact_prior_score, VP, -c, jax.random.key(2), dim=3, method="dpm_solver++", steps=30)
    r = np.asarray((z - (c @ A.T + B[None])) / S[None])
    assert np.max(np.abs(r.mean(0))) > 4 / np.sqrt(N) or np.max(np.abs(r.std(0) - 1)) > 4 / np.sqrt(2 * N)


def test_text_to_image_chains_prior_and_decoder_and_variations_share_the_embedding():
    """A 'decoder' whose conditional law is N(y, 0.1² I) on 3-vectors: text -> prior -> decoder gives z + noise."""

    def decoder_score(x, t, y):
        a, s = VP.alpha(t)[:, None], VP.sigma(t)[:, None]
        return -(x - a * y) / (a**2 * 0.01 + s**2)

    c = jax.random.normal(jax.random.key(3), (N, 2))
    x, z, nfe = unclip.text_to_image(
        dict(score_fn=exact_prior_score, sde=VP, dim=3, method="dpm_solver++", steps=30),
        dict(score_fn=decoder_score, sde=VP, method="dpm_solver++", steps=30),
        c,
        (3,),
        jax.random.key(4),
    )
    assert int(nfe) == 60
    r = np.asarray((x - z) / 0.1)
    np.testing.assert_array_less(np.abs(r.std(0) - 1.0), 4 / np.sqrt(2 * N))
    v, _ = unclip.variations(decoder_score, VP, z[0], 2000, (3,), jax.random.key(5), method="dpm_solver++", steps=30)
    np.testing.assert_allclose(np.asarray(v.mean(0)), np.asarray(z[0]), atol=4 * 0.1 / np.sqrt(2000))
    assert float(jnp.min(jnp.std(v, 0))) > 0.08  # fresh noise: the variations are not one image


def test_prior_guidance_weight_zero_is_the_conditional_prior():
    """w = 0 is the conditional score on the doubled batch: equal up to the float rounding of a batch twice as large
    (XLA may order a batched matmul's sums differently), at one evaluation per step either way."""
    c = jax.random.normal(jax.random.key(1), (64, 2))
    opts = dict(dim=3, method="dpm_solver++", steps=10)
    plain, n1 = unclip.sample_prior(exact_prior_score, VP, c, jax.random.key(2), **opts)
    cfg, n2 = unclip.sample_prior(exact_prior_score, VP, c, jax.random.key(2), w=0.0, **opts)
    np.testing.assert_allclose(np.asarray(plain), np.asarray(cfg), rtol=1e-5, atol=1e-6)
    assert int(n1) == int(n2) == 10


def test_slerp_is_the_great_circle_at_constant_angular_speed():
    a, b = jnp.array([2.0, 0.0, 0.0]), jnp.array([0.0, 0.0, 4.0])
    path = unclip.interpolate(a, b, 5)
    np.testing.assert_allclose(np.asarray(path[0]), a, atol=1e-6)
    np.testing.assert_allclose(np.asarray(path[-1]), b, atol=1e-6)
    angles = np.arctan2(np.asarray(path[:, 2]), np.asarray(path[:, 0]))
    np.testing.assert_allclose(angles, np.linspace(0, np.pi / 2, 5), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(path), axis=1), np.linspace(2, 4, 5), rtol=1e-6)
    # parallel ends: linear interpolation, no division by sin 0
    np.testing.assert_allclose(np.asarray(unclip.slerp(a, 3 * a, 0.5)), 2 * a, rtol=1e-6)
    with pytest.raises(ValueError, match="n >= 2"):
        unclip.interpolate(a, b, 1)


def test_mlp_vector_conditioning_null_is_zeros_and_conditioning_changes_the_output():
    net = MLPScore(3, hidden=16, num_layers=1, cond_dim=2, rngs=nnx.Rngs(0))
    net.out.kernel[...] = jax.random.normal(jax.random.key(0), net.out.kernel.shape)  # off the zero init
    x, t = jnp.ones((4, 3)), jnp.full((4,), 0.5)
    y = jax.random.normal(jax.random.key(1), (4, 2))
    np.testing.assert_array_equal(np.asarray(net(x, t)), np.asarray(net(x, t, jnp.zeros((4, 2)))))
    assert not np.allclose(np.asarray(net(x, t, y)), np.asarray(net(x, t)))
    with pytest.raises(ValueError, match=r"shape \(4, 2\)"):
        net(x, t, jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match="not both"):
        MLPScore(3, num_classes=10, cond_dim=2, rngs=nnx.Rngs(0))
    plain = MLPScore(3, hidden=16, num_layers=1, rngs=nnx.Rngs(0))
    assert jax.tree.all(jax.tree.map(jnp.array_equal, nnx.state(plain, nnx.Param), _without_cond(net)))


def _without_cond(net):
    fresh = MLPScore(3, hidden=16, num_layers=1, cond_dim=2, rngs=nnx.Rngs(0))
    state = nnx.state(fresh, nnx.Param)
    del state["cond_emb"]
    return state


def test_bad_conditioning_is_named():
    with pytest.raises(ValueError, match=r"\(4, D\) batch; got shape \(3, 2\)"):
        unclip.conditioned_score(exact_prior_score, jnp.zeros((3, 2)), 4)
    with pytest.raises(ValueError, match="text embeddings must be"):
        unclip.sample_prior(exact_prior_score, VP, jnp.zeros((2,)), jax.random.key(0), dim=3)
    with pytest.raises(ValueError, match="one image embedding"):
        unclip.variations(exact_prior_score, VP, jnp.zeros((2, 3)), 4, (3,), jax.random.key(0))
