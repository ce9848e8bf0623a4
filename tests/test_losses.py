"""DSM losses against closed-form values on Gaussian data."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from scoresde import analytic, losses
from scoresde import parameterization as P
from scoresde import sde as sde_lib
from scoresde.data import toy
from scoresde.models.mlp import MLPScore

VARS = jnp.array([0.05, 0.3, 1.0, 2.5]) ** 2
SDES = [sde_lib.VPSDE(), sde_lib.SubVPSDE(), sde_lib.VESDE(sigma_max=10.0)]


def _gaussian(rotated=False):
    rot = analytic.random_rotation(jax.random.key(3), 4) if rotated else None
    return analytic.GaussianMixture(jnp.array([[0.5, -1.0, 2.0, 0.0]]), jnp.sqrt(VARS)[None], rotation=rot)


def _per_t_value(sde, t, weighting):
    """E_{x, z} of the per-example loss at time t with the exact score (mean over dims)."""
    a2, s2 = np.asarray(sde.alpha(t), np.float64) ** 2, np.asarray(sde.sigma(t), np.float64) ** 2
    v = np.asarray(VARS, np.float64)
    base = np.mean(a2[:, None] * v / (a2[:, None] * v + s2[:, None]), axis=-1)  # E||σ s + z||² / D
    if weighting == "sigma2":
        return base
    g2 = np.asarray(sde.sde(jnp.zeros((t.shape[0], 1)), t)[1], np.float64) ** 2
    return base * g2 / s2


def _expected(sde, weighting, eps=1e-5):
    t = np.exp(np.linspace(np.log(eps), np.log(sde.T), 200001))
    vals = _per_t_value(sde, jnp.asarray(t, jnp.float32), weighting)
    return float(np.trapezoid(vals, t) / (sde.T - eps))


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("rotated", [False, True])
def test_dsm_loss_at_exact_score_is_the_closed_form_minimum(sde, rotated):
    gm = _gaussian(rotated)
    n = 40000
    batch = gm.sample(jax.random.key(0), n)
    loss, aux = losses.continuous_dsm_loss(gm.score_fn(sde), sde, batch, jax.random.key(1))
    se = float(jnp.std(aux["losses"])) / math.sqrt(n)
    expected = losses.gaussian_dsm_minimum(sde, VARS)
    assert abs(expected - _expected(sde, "sigma2")) < 1e-4 * expected
    assert abs(float(loss) - expected) < 4 * se, (float(loss), expected, se)
    # a perturbed score is strictly worse, on the same draws and in expectation
    for scale in (0.9, 1.1):
        bad = lambda x, t: scale * gm.score_fn(sde)(x, t)
        bad_loss, bad_aux = losses.continuous_dsm_loss(bad, sde, batch, jax.random.key(1))
        diff = bad_aux["losses"] - aux["losses"]
        assert float(jnp.mean(diff)) > 5 * float(jnp.std(diff)) / math.sqrt(n)
    shifted = lambda x, t: gm.score_fn(sde)(x, t) + 0.1
    assert float(losses.continuous_dsm_loss(shifted, sde, batch, jax.random.key(1))[0]) > float(loss)


def test_reduce_sum_is_half_sum():
    sde, gm = sde_lib.VPSDE(), _gaussian()
    batch = gm.sample(jax.random.key(0), 64)
    lm, _ = losses.continuous_dsm_loss(gm.score_fn(sde), sde, batch, jax.random.key(1), reduce_mean=True)
    ls, _ = losses.continuous_dsm_loss(gm.score_fn(sde), sde, batch, jax.random.key(1), reduce_mean=False)
    np.testing.assert_allclose(ls, 0.5 * 4 * lm, rtol=1e-5)


@pytest.mark.parametrize(
    "sde", [sde_lib.VPSDE(), sde_lib.SubVPSDE(), sde_lib.VESDE(sigma_max=10.0)], ids=lambda s: type(s).__name__
)
def test_likelihood_weighting_with_importance_sampling_matches_quadrature(sde):
    gm = _gaussian()
    n = 40000
    batch = gm.sample(jax.random.key(0), n)
    sampler = losses.likelihood_importance_sampler(sde)
    loss, aux = losses.continuous_dsm_loss(
        gm.score_fn(sde),
        sde,
        batch,
        jax.random.key(2),
        likelihood_weighting=True,
        importance_sampling=True,
        t_sampler=sampler,
    )
    se = float(jnp.std(aux["losses"])) / math.sqrt(n)
    expected = _expected(sde, "likelihood")
    assert abs(float(loss) - expected) < 4 * se + 2e-3 * expected, (float(loss), expected, se)
    # sampled t follow the density g²/σ² (compare the CDF at a few points with quadrature)
    t = np.asarray(aux["t"])
    grid = np.exp(np.linspace(np.log(1e-5), 0.0, 100001))
    dens = _per_t_value(sde, jnp.asarray(grid, jnp.float32), "likelihood") / _per_t_value(
        sde, jnp.asarray(grid, jnp.float32), "sigma2"
    )
    cdf = np.concatenate([[0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(grid))])
    cdf /= cdf[-1]
    for q in (1e-3, 1e-1, 0.5):
        assert abs(np.mean(t < q) - np.interp(q, grid, cdf)) < 0.01
    with pytest.raises(ValueError, match="importance_sampling"):
        losses.continuous_dsm_loss(gm.score_fn(sde), sde, batch, jax.random.key(2), importance_sampling=True)


def test_likelihood_weighting_without_importance_sampling_is_unbiased():
    """Uniform-t likelihood weighting: compare with quadrature over t >= 0.05 (finite variance there)."""
    sde, gm, n, eps = sde_lib.VPSDE(), _gaussian(), 60000, 0.05
    batch = gm.sample(jax.random.key(0), n)
    loss, aux = losses.continuous_dsm_loss(
        gm.score_fn(sde), sde, batch, jax.random.key(3), likelihood_weighting=True, eps=eps
    )
    se = float(jnp.std(aux["losses"])) / math.sqrt(n)
    assert abs(float(loss) - _expected(sde, "likelihood", eps)) < 4 * se


def _discrete_expected(a, s):
    v = np.asarray(VARS, np.float64)
    return float(np.mean(np.mean(a[:, None] ** 2 * v / (a[:, None] ** 2 * v + s[:, None] ** 2), -1)))


def test_ddpm_and_smld_losses_at_exact_networks():
    gm, n = _gaussian(), 40000
    batch = gm.sample(jax.random.key(0), n)
    vp = sde_lib.VPSDE()
    a_all, s_all = np.asarray(vp.sqrt_alphas_cumprod), np.asarray(vp.sqrt_1m_alphas_cumprod)

    def eps_net(x, labels):  # exact noise prediction under the discrete schedule
        a, s = jnp.asarray(a_all, jnp.float32)[labels], jnp.asarray(s_all, jnp.float32)[labels]
        score = gm._score_at(x, a, s)
        return -s[:, None] * score

    loss, aux = losses.ddpm_loss(eps_net, vp, batch, jax.random.key(1))
    se = float(jnp.std(aux["losses"])) / math.sqrt(n)
    assert abs(float(loss) - _discrete_expected(a_all, s_all)) < 4 * se

    ve = sde_lib.VESDE(sigma_max=10.0)
    sig = ve.discrete_sigmas[::-1]

    def score_net(x, labels):
        s = jnp.asarray(sig.copy(), jnp.float32)[labels]
        return gm._score_at(x, jnp.ones_like(s), s)

    loss, aux = losses.smld_loss(score_net, ve, batch, jax.random.key(2), reduce_mean=True)
    se = float(jnp.std(aux["losses"])) / math.sqrt(n)
    assert abs(float(loss) - _discrete_expected(np.ones_like(sig), sig)) < 4 * se
    with pytest.raises(ValueError, match="needs a VPSDE"):
        losses.ddpm_loss(eps_net, ve, batch, jax.random.key(1))


def test_mlp_training_on_2d_data_lowers_the_loss():
    sde = sde_lib.VPSDE()
    model = MLPScore(2, hidden=64, num_layers=2, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
    conv = P.reference_convention(sde)

    @nnx.jit
    def step(model, opt, key):
        kd, kl = jax.random.split(key)
        batch = toy.sample("gmm_grid", kd, 256)

        def loss_fn(model):
            score_fn = P.model_score_fn(lambda x, l: model(x, l), sde, **conv)
            return losses.continuous_dsm_loss(score_fn, sde, batch, kl)[0]

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss

    key = jax.random.key(0)
    hist = [float(step(model, opt, jax.random.fold_in(key, i))) for i in range(400)]
    first, last = np.mean(hist[:20]), np.mean(hist[-50:])
    assert last < 0.6 * first, (first, last)


def test_snr_truncation_is_max_snr_one_times_the_x0_error():
    """Salimans & Ho's snr_trunc: with the data prediction x̂₀ = (x_t + σ² s) / α of any score, the per-example
    loss is max(α²/σ², 1) · mean((x̂₀ - x₀)²), computed here from the sampled times independently of the loss."""
    sde = sde_lib.CosineVPSDE()
    x0 = jax.random.normal(jax.random.key(0), (256, 3))

    def score_fn(x, t):  # an arbitrary (wrong) score: the identity holds for every score
        return -0.7 * x + 0.1 * jnp.sin(3.0 * x) * t[:, None]

    key = jax.random.key(1)
    _, aux = losses.continuous_dsm_loss(score_fn, sde, x0, key, snr_truncation=True)
    t = aux["t"]
    key_t, key_z = jax.random.split(key)
    z = jax.random.normal(key_z, x0.shape)
    a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    xt = a * x0 + s * z
    x0_hat = (xt + s**2 * score_fn(xt, t)) / a
    snr = (a / s) ** 2
    expected = np.maximum(np.asarray(snr[:, 0]), 1.0) * np.mean(np.asarray(x0_hat - x0) ** 2, axis=1)
    np.testing.assert_allclose(aux["losses"], expected, rtol=2e-4)
    # both sides of SNR = 1 were sampled, so the truncation was exercised
    assert float(jnp.min(snr)) < 1.0 < float(jnp.max(snr))
    with pytest.raises(ValueError, match="snr_truncation=True .* needs likelihood_weighting=False"):
        losses.continuous_dsm_loss(score_fn, sde, x0, key, snr_truncation=True, likelihood_weighting=True)
