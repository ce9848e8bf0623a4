"""sCM (continuous-time consistency models on TrigFlow) against exact answers.

Oracles: a single Gaussian's probability-flow map in TrigFlow time is closed-form
(:meth:`scoresde.analytic.GaussianMixture.flow_map`), so its consistency function ``f* = Φ_{t→0}`` and the
network ``F*`` with ``f = cos t x - sin t σ_d F*`` are exact; the teacher's exact velocity comes from the VP
score of the same Gaussian through :func:`scoresde.fewstep.trigflow.trigflow_velocity_from_score`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from scoresde import sde as sde_lib
from scoresde.analytic import GaussianMixture, random_rotation
from scoresde.fewstep import scm
from scoresde.fewstep import trigflow as tf
from scoresde.models.mlp import MLPScore, sinusoidal_embedding

SD = 0.5
TRIG = tf.TrigFlow(sigma_data=SD)
VP = sde_lib.VPSDE()
LAM = np.array([0.36, 0.0625])  # variances along the columns of Q: covariance Q diag(LAM) Qᵀ
Q = np.asarray(random_rotation(jax.random.key(3), 2))
GAUSS = GaussianMixture(np.array([[0.3, -0.2]]), np.sqrt(LAM)[None], rotation=Q)
MU = np.asarray(GAUSS.means[0])  # the rotation also rotates the mean
TEACHER = tf.trigflow_velocity_from_score(GAUSS.score_fn(VP), VP, sigma_data=SD)


def _gauss_net(params, x_in, t):
    """The exact sCM network of ``N(mu, θ C)``: exact at ``θ = 1`` (``params`` is the scalar ``θ``)."""
    x = SD * x_in
    c, s = jnp.cos(t)[:, None], jnp.sin(t)[:, None]
    lam = params * jnp.asarray(LAM, jnp.float32)[None]
    q, mu = jnp.asarray(Q, jnp.float32), jnp.asarray(MU, jnp.float32)[None]
    # Φ_{t→0}(x) = mu + Q diag(sqrt(λ / (cos² λ + σ_d² sin²))) Qᵀ (x - cos t mu)
    flow = mu + ((x - c * mu) @ q * jnp.sqrt(lam / (c**2 * lam + (SD * s) ** 2))) @ q.T
    return (c * x - flow) / (SD * s)


def _mlp_net(seed=0):
    net = MLPScore(2, hidden=32, num_layers=2, embed_dim=16, rngs=nnx.Rngs(seed))
    net.out.kernel[...] = 0.5 * jax.random.normal(jax.random.key(seed + 1), net.out.kernel.shape)  # F != 0
    graphdef, params = nnx.split(net)
    return (lambda p, x_in, t: nnx.merge(graphdef, p)(x_in, t)), params


def test_exact_network_gives_the_flow_map_to_data():
    x = jax.random.normal(jax.random.key(0), (64, 2))
    t = jax.random.uniform(jax.random.key(1), (64,), minval=0.05, maxval=1.5)
    f = tf.consistency_fn(lambda x_in, s: _gauss_net(1.0, x_in, s), sigma_data=SD)
    np.testing.assert_allclose(f(x, t), GAUSS.flow_map(TRIG, x, t, 0.0), atol=2e-5)


def test_time_proposal_is_lognormal_in_sigma_d_tan_t():
    n = 40000
    t = scm.sample_time(jax.random.key(2), n, sigma_data=SD, p_mean=-0.8, p_std=1.6)
    assert bool(jnp.all((t > 0) & (t < np.pi / 2)))
    log_sigma = np.log(SD * np.tan(np.asarray(t, np.float64)))
    assert abs(log_sigma.mean() + 0.8) < 4 * 1.6 / np.sqrt(n)
    assert abs(log_sigma.std() - 1.6) < 4 * 1.6 / np.sqrt(2 * n)
    np.testing.assert_allclose(scm.tangent_warmup(jnp.array([0, 500, 2000]), 1000), [0.0, 0.5, 1.0])
    assert float(scm.tangent_warmup(3, 0)) == 1.0


def test_tangent_from_jvp_is_the_time_derivative_of_f_along_the_exact_flow():
    """``df/dt`` from one jvp == central finite differences of ``t ↦ f(Φ_{1.3→t}(x), t)`` (any network)."""
    net_fn, params = _mlp_net()
    f = tf.consistency_fn(lambda x_in, s: net_fn(params, x_in, s), sigma_data=SD)
    x1 = GAUSS.marginal(TRIG, 1.3).sample(jax.random.key(4), 128)
    t = jax.random.uniform(jax.random.key(5), (128,), minval=0.2, maxval=1.2)
    path = jax.jit(lambda s: f(GAUSS.flow_map(TRIG, x1, 1.3, s), s))
    h = 1e-2
    fd = (path(t + h) - path(t - h)) / (2 * h)
    x_t = GAUSS.flow_map(TRIG, x1, 1.3, t)
    tangent = jax.jit(
        lambda p, r: scm.consistency_tangent(net_fn, p, x_t, t, TEACHER(x_t, t), sigma_data=SD, warmup=r)[1]
    )
    dfdt = tangent(params, 1.0)
    scale = float(jnp.max(jnp.abs(fd)))
    assert scale > 0.1  # a random network is far from consistent: the check has teeth
    np.testing.assert_allclose(dfdt, fd, atol=2e-3 * scale)
    # without the sin(t)(x + σ_d dF/dt) term (warm-up r = 0) it is a different number
    partial = tangent(params, 0.0)
    assert float(jnp.max(jnp.abs(partial - fd))) > 0.1 * scale
    # the exact consistency network is constant along the flow: df/dt = 0
    _, dfdt_exact = scm.consistency_tangent(_gauss_net, 1.0, x_t, t, TEACHER(x_t, t), sigma_data=SD)
    assert float(jnp.max(jnp.abs(dfdt_exact))) < 1e-4


def _batch(n, seed):
    return GAUSS.sample(jax.random.key(seed), n)


@pytest.mark.parametrize("norm_c", [scm.TANGENT_NORM_C, None])
def test_scd_gradient_vanishes_at_the_exact_model_and_points_to_it_elsewhere(norm_c):
    batch, key = _batch(2048, 6), jax.random.key(7)

    def loss(theta):
        return scm.scd_loss(_gauss_net, theta, TEACHER, batch, key, sigma_data=SD, tangent_norm_c=norm_c)[0]

    grad = jax.jit(jax.grad(loss))
    g_star, g_hi, g_lo = float(grad(1.0)), float(grad(1.3)), float(grad(0.7))
    print(f"sCD d loss/d θ (c={norm_c}): θ*=1 {g_star:.2e}, θ=1.3 {g_hi:.3e}, θ=0.7 {g_lo:.3e}")
    assert abs(g_star) < 1e-5
    # descent moves θ towards θ* = 1 from both sides (breaks if the sign of g or of the loss is flipped)
    assert g_hi > 1e3 * abs(g_star) and g_hi > 1e-3
    assert g_lo < -1e3 * abs(g_star) and g_lo < -1e-3


def test_sct_gradient_vanishes_in_expectation_at_the_exact_model():
    """One-sample ``dx_t/dt`` (no tangent normalisation): per-sample gradients average to 0 within 4 s.e."""
    batch, key = _batch(8192, 8), jax.random.key(9)

    def per_example(theta):
        return scm.sct_loss(_gauss_net, theta, batch, key, sigma_data=SD, tangent_norm_c=None)[1]["losses"]

    stats = {}
    for theta in (1.0, 1.5):
        g = np.asarray(jax.jit(jax.jacfwd(per_example))(theta), np.float64)
        stats[theta] = (g.mean(), g.std() / np.sqrt(g.size))
    print("sCT mean per-sample d loss/d θ ± s.e.:", {k: f"{m:.3e} ± {s:.1e}" for k, (m, s) in stats.items()})
    m, se = stats[1.0]
    assert abs(m) < 4 * se
    m, se = stats[1.5]
    assert m > 8 * se


def test_adaptive_weight_optimum_is_the_inverse_mean_error():
    """``∂/∂w mean(e^w mse - w) = 0`` at ``w = -log mean(mse)`` (the learned weight is a variance estimate)."""
    x_t = jax.random.normal(jax.random.key(10), (256, 2))
    t = jnp.full((256,), 0.8)
    dxdt = TEACHER(x_t, t)

    def loss(w):  # a wrong model (θ = 1.5), so that the error is not zero
        return scm.scm_loss_at(_gauss_net, 1.5, x_t, t, dxdt, sigma_data=SD, weight_fn=lambda p, s: jnp.full_like(s, w))

    _, aux = loss(0.0)
    w_star = -float(jnp.log(jnp.mean(aux["mse"])))
    grad = jax.jit(jax.grad(lambda w: loss(w)[0]))
    assert abs(float(grad(w_star))) < 1e-4
    assert abs(float(grad(w_star + 0.5))) > 0.1
    module = scm.AdaptiveWeight(16, sigma_data=SD, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(module(t), np.zeros(256))  # starts as the plain L2 loss


@pytest.mark.parametrize("steps", [1, 2])
def test_sampling_with_the_exact_network_gives_exact_samples(steps):
    n = 20000
    f = tf.consistency_fn(lambda x_in, s: _gauss_net(1.0, x_in, s), sigma_data=SD)
    key = jax.random.key(11)
    x, nfe = scm.scm_sample(f, key, (n, 2), sigma_data=SD, steps=steps)
    assert int(nfe) == steps
    if steps == 1:  # deterministic: the exact flow map of the prior draw
        x_T = SD * jax.random.normal(jax.random.split(key)[0], (n, 2))
        np.testing.assert_allclose(x, GAUSS.flow_map(TRIG, x_T, np.pi / 2, 0.0), atol=1e-5)
    cov = np.asarray(GAUSS.covariance())
    np.testing.assert_allclose(np.asarray(x).mean(0), MU, atol=4 * np.sqrt(cov.max() / n))
    np.testing.assert_allclose(np.cov(np.asarray(x).T), cov, atol=4 * np.sqrt(2.0 / n) * cov.max())
    with pytest.raises(ValueError, match="steps 1 or 2"):
        scm.scm_sample(f, key, (4, 2), sigma_data=SD, steps=3)


# ------------------------------------------------------------------------------ a short distillation run

MIX = GaussianMixture(np.array([[-1.0, -0.6], [1.0, 0.6], [0.2, 1.2]]), np.array([0.2, 0.25, 0.15]))


class _SCMNet(nnx.Module):
    """``F(x_in, t)`` (a residual SiLU MLP on ``[x_in, emb(t)]``) and the adaptive weight ``w_φ(t)`` in one module."""

    def __init__(self, sigma_data, hidden=128, emb=32, layers=3, *, rngs):
        self.emb = emb
        self.inp = nnx.Linear(2 + emb, hidden, rngs=rngs)
        self.hidden = nnx.List([nnx.Linear(hidden, hidden, rngs=rngs) for _ in range(layers)])
        self.out = nnx.Linear(hidden, 2, rngs=rngs)
        self.weight = scm.AdaptiveWeight(16, sigma_data=sigma_data, rngs=rngs)

    def __call__(self, x_in, t):
        # raw TrigFlow time (the paper's c_noise(t) = t): dF/dt enters the tangent
        h = nnx.silu(self.inp(jnp.concatenate([x_in, sinusoidal_embedding(t, self.emb)], axis=-1)))
        for layer in self.hidden:
            h = h + nnx.silu(layer(h))
        return self.out(h)


def _sliced_w2(a, b, key, n_proj=256):
    """Sliced 2-Wasserstein distance between two equal-size samples (sorted projections)."""
    theta = jax.random.normal(key, (n_proj, a.shape[1]))
    theta = theta / jnp.linalg.norm(theta, axis=1, keepdims=True)
    pa, pb = jnp.sort(a @ theta.T, axis=0), jnp.sort(b @ theta.T, axis=0)
    return float(jnp.sqrt(jnp.mean((pa - pb) ** 2)))


@pytest.mark.slow  # 3000 training steps: about a minute alone on 2 cores
def test_short_scd_run_from_a_vp_teacher_samples_a_mixture_in_one_step():
    """sCD of the exact VP teacher (converted to TrigFlow) into an MLP from scratch: 3000 Adam steps, batch 256.

    Tangent warm-up over 1000 steps, ``c = 0.1``, learned ``w_φ``, ``σ_d`` = the data's per-dimension std.
    Measured at commit time (sliced W2 to exact samples): 1 step 0.166, 2 steps 0.217, floor 0.084, the prior
    ``σ_d z`` about 0.5 (6000 steps: 0.136 / 0.174). Without teacher initialisation a short run is far from the
    paper's quality; the bound checks that the whole pipeline (loss sign, jvp tangent, warm-up, weighting,
    sampler) learns a one-step map: with the sign of ``df/dt`` flipped the same run diverges (1-step SW ~1e7).
    """
    sd = float(np.sqrt(np.trace(np.asarray(MIX.covariance())) / 2))
    teacher = tf.trigflow_velocity_from_score(MIX.score_fn(VP), VP, sigma_data=sd)
    steps, b = 3000, 256
    graphdef, params = nnx.split(_SCMNet(sd, rngs=nnx.Rngs(0)))
    net_fn = lambda p, x_in, t: nnx.merge(graphdef, p)(x_in, t)
    weight_fn = lambda p, t: nnx.merge(graphdef, p).weight(t)
    opt = optax.adam(1e-3, b1=0.9, b2=0.99)

    def step(carry, i):
        params, opt_state = carry
        k_data, k_loss = jax.random.split(jax.random.fold_in(jax.random.key(1), i))
        x = MIX.sample(k_data, b)
        grads = jax.grad(
            lambda p: scm.scd_loss(
                net_fn, p, teacher, x, k_loss, sigma_data=sd, weight_fn=weight_fn, warmup=scm.tangent_warmup(i, 1000)
            )[0]
        )(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    (params, _), _ = jax.jit(lambda c: jax.lax.scan(step, c, jnp.arange(steps)))((params, opt.init(params)))
    n = 4000
    f = tf.consistency_fn(lambda x_in, t: net_fn(params, x_in, t), sigma_data=sd)
    sample = jax.jit(lambda key, k: scm.scm_sample(f, key, (n, 2), sigma_data=sd, steps=k)[0], static_argnums=1)
    exact, key = MIX.sample(jax.random.key(6), n), jax.random.key(8)
    floor = _sliced_w2(MIX.sample(jax.random.key(7), n), exact, key)
    sw = {k: _sliced_w2(sample(jax.random.key(5), k), exact, key) for k in (1, 2)}
    prior = _sliced_w2(sd * jax.random.normal(jax.random.key(9), (n, 2)), exact, key)
    print(f"sCD 2-D mixture sliced W2: 1 step {sw[1]:.3f}, 2 steps {sw[2]:.3f}, floor {floor:.3f}, prior {prior:.3f}")
    assert sw[1] < floor + 0.12
    assert sw[2] < floor + 0.18
