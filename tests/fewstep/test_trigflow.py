"""TrigFlow against exact answers.

Oracles (:class:`scoresde.analytic.GaussianMixture`): the exact noised marginal and score of every linear
SDE, the closed-form probability-flow map of one Gaussian, and the EDM marginal at ``σ = σ_d tan t``, which
the TrigFlow marginal must equal after the change of variables ``x_edm = x / cos t``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import parameterization as P
from scoresde import sampling
from scoresde import sde as sde_lib
from scoresde.analytic import GaussianMixture, random_rotation
from scoresde.fewstep import trigflow as tf
from scoresde.sampling import ode

SD = 0.5
TRIG = tf.TrigFlow(sigma_data=SD)
SDES = {
    "vp": sde_lib.VPSDE(),
    "subvp": sde_lib.SubVPSDE(),
    "ve": sde_lib.VESDE(),
    "edm": sde_lib.EDMSDE(),
    "rf": sde_lib.RectifiedFlow(),
}
# one anisotropic, rotated Gaussian (closed-form flow map) and a 3-component mixture (no closed form)
GAUSS = GaussianMixture(
    np.array([[0.3, -0.2]]), np.array([[0.6, 0.25]]), rotation=np.asarray(random_rotation(jax.random.key(3), 2))
)
MIX = GaussianMixture(np.array([[-0.6, -0.3], [0.6, 0.3], [0.0, 0.7]]), np.array([0.15, 0.2, 0.12]))


def _rk4(velocity, x, t0, t1, steps):
    """Classical RK4 on a uniform grid in ``t`` (per-batch scalar times), order 4."""
    h = (t1 - t0) / steps

    def body(i, x):
        t = t0 + i * h
        tv = lambda s: jnp.full((x.shape[0],), s, x.dtype)
        k1 = velocity(x, tv(t))
        k2 = velocity(x + 0.5 * h * k1, tv(t + 0.5 * h))
        k3 = velocity(x + 0.5 * h * k2, tv(t + 0.5 * h))
        k4 = velocity(x + h * k3, tv(t + h))
        return x + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)

    return jax.jit(lambda x: jax.lax.fori_loop(0, steps, body, x))(x)


# ------------------------------------------------------------------------------ the process


def test_process_coefficients_are_trigflow_and_consistent_with_its_sde():
    t = jnp.linspace(0.05, 1.5, 9)
    np.testing.assert_allclose(TRIG.alpha(t), np.cos(t), rtol=1e-6)
    np.testing.assert_allclose(TRIG.sigma(t), SD * np.sin(t), rtol=1e-6)
    np.testing.assert_allclose(TRIG.t_from_log_snr(TRIG.log_snr(t)), t, rtol=1e-5)
    # the prior is exact at T = π/2 (alpha vanishes) and has std σ_d
    assert float(TRIG.alpha(jnp.array([TRIG.T]))[0]) == 0.0 and TRIG.prior_std == SD
    # f = alpha'/alpha and g² = (sigma²)' - 2 f sigma² (Kingma et al. 2021, eq. 33): breaks if sde() is wrong
    x = jnp.ones((t.shape[0], 1))
    drift, g = TRIG.sde(x, t)
    dalpha = jax.vmap(jax.grad(lambda s: TRIG.alpha(s)))(t)
    dvar = jax.vmap(jax.grad(lambda s: TRIG.sigma(s) ** 2))(t)
    f = dalpha / TRIG.alpha(t)
    np.testing.assert_allclose(drift[:, 0], f, rtol=1e-5)
    np.testing.assert_allclose(g**2, dvar - 2 * f * TRIG.sigma(t) ** 2, rtol=1e-4)
    with pytest.raises(ValueError, match="sigma_data"):
        tf.TrigFlow(sigma_data=0.0)
    with pytest.raises(ValueError, match="T <= pi/2"):
        tf.TrigFlow(T=2.0)


@pytest.mark.parametrize("t", [0.2, 0.9, 1.45])
def test_marginal_is_the_edm_marginal_at_sigma_d_tan_t(t):
    """``p_t^trig(x) = p_σ^edm(x / cos t) / cos(t)^D`` with ``σ = σ_d tan t`` (the conversion's claim)."""
    x = jax.random.normal(jax.random.key(0), (256, 2))
    tv = jnp.full((256,), t)
    lhs = MIX.log_prob_t(TRIG, x, tv)
    x_edm, sig = tf.from_trigflow(SDES["edm"], x, tv, SD)
    np.testing.assert_allclose(sig, SD * np.tan(t), rtol=1e-5)
    np.testing.assert_allclose(x_edm, x / np.cos(t), rtol=1e-5)
    rhs = MIX.log_prob_t(SDES["edm"], x_edm, sig) - 2 * np.log(np.cos(t))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-4, atol=1e-4)


def test_kernel_samples_have_the_marginal_moments():
    """Samples of ``marginal_prob`` have the covariance of ``p_t`` (4 standard errors; breaks if sigma lacks σ_d)."""
    n, t = 40000, 0.9
    x0 = MIX.sample(jax.random.key(1), n)
    z = jax.random.normal(jax.random.key(2), x0.shape)
    mean, std = TRIG.marginal_prob(x0, jnp.full((n,), t))
    xt = mean + std[:, None] * z
    cov = np.asarray(MIX.marginal(TRIG, t).covariance())
    np.testing.assert_allclose(np.cov(np.asarray(xt).T), cov, atol=4 * np.sqrt(2.0 / n) * cov.max())


# ------------------------------------------------------------------------------ conversions


@pytest.mark.parametrize("name", list(SDES))
def test_state_map_sends_the_sde_kernel_to_the_trigflow_kernel(name):
    """``x_s = alpha x_0 + sigma z``  ↦  ``cos(t) x_0 + sin(t) σ_d z`` with the same ``x_0, z``; and back."""
    sde = SDES[name]
    key0, key1, key2 = jax.random.split(jax.random.key(4), 3)
    x0, z = jax.random.normal(key0, (64, 2)), jax.random.normal(key1, (64, 2))
    hi = 0.999 if name == "rf" else sde.T
    s = jax.random.uniform(key2, (64,), minval=1e-3 if name != "edm" else 0.01, maxval=hi)
    xs = sde.alpha(s)[:, None] * x0 + sde.sigma(s)[:, None] * z
    xt, t = tf.to_trigflow(sde, xs, s, SD)
    np.testing.assert_allclose(xt, np.cos(t)[:, None] * x0 + SD * np.sin(t)[:, None] * z, rtol=2e-4, atol=2e-5)
    back, s_back = tf.from_trigflow(sde, xt, t, SD)
    np.testing.assert_allclose(s_back, s, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(back, xs, rtol=1e-3, atol=1e-4)


def test_rectified_flow_closed_forms():
    t = jnp.array([0.1, 0.7, 1.3, tf.HALF_PI])
    x = jnp.ones((4, 2))
    c, s = np.cos(np.float64(t)), np.sin(np.float64(t))
    x_rf, s_rf = tf.from_trigflow(SDES["rf"], x, t, SD)
    np.testing.assert_allclose(s_rf, SD * s / (c + SD * s), rtol=1e-5)
    np.testing.assert_allclose(x_rf[:, 0], 1.0 / (c + SD * s), rtol=1e-5)
    # rectified flow's prior time s = 1 (alpha = 0) is TrigFlow's π/2
    np.testing.assert_allclose(tf.trigflow_time(SDES["rf"], jnp.array([1.0]), SD), [np.pi / 2], rtol=1e-7)


@pytest.mark.parametrize("name", ["vp", "edm", "rf"])
def test_teacher_velocity_is_the_trigflow_probability_flow_drift(name):
    """A teacher's exact denoiser, converted, gives TrigFlow's exact PF-ODE drift ``-tan t (x + σ_d² ∇log p_t)``."""
    sde = SDES[name]
    x = 0.6 * jax.random.normal(jax.random.key(5), (128, 2))
    t = jax.random.uniform(jax.random.key(6), (128,), minval=0.05, maxval=1.45)
    v = tf.trigflow_velocity_from_score(MIX.score_fn(sde), sde, sigma_data=SD)(x, t)
    drift = sde_lib.probability_flow_drift(MIX.score_fn(TRIG), TRIG, x, t)
    np.testing.assert_allclose(v, drift, rtol=2e-3, atol=2e-4)
    # the same through an explicit denoiser
    den = lambda xs, s: (xs + sde.sigma(s)[:, None] ** 2 * MIX.score_fn(sde)(xs, s)) / sde.alpha(s)[:, None]
    np.testing.assert_allclose(
        tf.trigflow_velocity_from_denoiser(den, sde, sigma_data=SD)(x, t), drift, rtol=2e-3, atol=2e-4
    )


def test_flow_map_of_a_vp_teacher_is_the_exact_trigflow_flow_map():
    """RK4 on the VP-converted velocity, diffrax on TrigFlow's own SDE drift, and the closed form agree."""
    x1 = GAUSS.marginal(TRIG, 1.4).sample(jax.random.key(7), 256)
    exact = GAUSS.flow_map(TRIG, x1, 1.4, 0.05)
    v = tf.trigflow_velocity_from_score(GAUSS.score_fn(SDES["vp"]), SDES["vp"], sigma_data=SD)
    rk4 = _rk4(v, x1, 1.4, 0.05, 200)
    np.testing.assert_allclose(rk4, exact, atol=2e-4)
    sol, _, ok = ode.solve_flow(GAUSS.score_fn(TRIG), TRIG, x1, 1.4, 0.05, rtol=1e-6, atol=1e-6)
    assert bool(ok)
    np.testing.assert_allclose(sol, exact, atol=2e-4)
    # a wrong σ_d in the conversion (the classic bug) moves the endpoint by much more than the tolerance
    wrong = tf.trigflow_velocity_from_score(GAUSS.score_fn(SDES["vp"]), SDES["vp"], sigma_data=1.0)
    assert float(jnp.max(jnp.abs(_rk4(wrong, x1, 1.4, 0.05, 200) - exact))) > 1e-2


def test_mixture_flow_maps_agree_across_vp_and_trigflow_time():
    """The VP PF-ODE solved in VP time, mapped to TrigFlow, ends where RK4 in TrigFlow time ends."""
    vp = SDES["vp"]
    t0, t1 = 1.3, 0.1
    s0, s1 = float(tf.sde_time(vp, jnp.array(t0), SD)), float(tf.sde_time(vp, jnp.array(t1), SD))
    xt = MIX.marginal(TRIG, t0).sample(jax.random.key(8), 256)
    x_vp, _ = tf.from_trigflow(vp, xt, jnp.full((256,), t0), SD)
    y_vp, _, ok = ode.solve_flow(MIX.score_fn(vp), vp, x_vp, s0, s1, rtol=1e-6, atol=1e-6)
    assert bool(ok)
    y_trig, _ = tf.to_trigflow(vp, y_vp, jnp.full((256,), s1), SD)
    v = tf.trigflow_velocity_from_score(MIX.score_fn(vp), vp, sigma_data=SD)
    np.testing.assert_allclose(_rk4(v, xt, t0, t1, 400), y_trig, atol=5e-4)


# ------------------------------------------------------------------------------ network conventions


def _exact_consistency_net(gauss):
    """``F*(x_in, t) = (cos t x - Φ_{t→0}(x)) / (σ_d sin t)`` with ``x = σ_d x_in``: the exact sCM network."""

    def net(x_in, t):
        x = SD * x_in
        return (jnp.cos(t)[:, None] * x - gauss.flow_map(TRIG, x, t, 0.0)) / (SD * jnp.sin(t))[:, None]

    return net


def test_consistency_fn_of_the_exact_network_is_the_flow_map_to_data():
    f = tf.consistency_fn(_exact_consistency_net(GAUSS), sigma_data=SD)
    x = jax.random.normal(jax.random.key(9), (64, 2))
    t = jax.random.uniform(jax.random.key(10), (64,), minval=0.05, maxval=1.5)
    np.testing.assert_allclose(f(x, t), GAUSS.flow_map(TRIG, x, t, 0.0), atol=1e-5)
    # the boundary condition holds exactly for any network
    net = lambda x_in, t: 3.0 + x_in**2
    np.testing.assert_array_equal(tf.consistency_fn(net, sigma_data=SD)(x, jnp.zeros((64,))), x)
    # the velocity convention v = σ_d F(x/σ_d, t), and D = cos x - sin v inverts v = (cos x - D)/sin
    v = tf.network_velocity(net, sigma_data=SD)(x, t)
    np.testing.assert_allclose(v, SD * (3.0 + (x / SD) ** 2), rtol=1e-6)
    d = tf.denoiser_from_velocity(v, x, t)
    np.testing.assert_allclose(tf.velocity_from_denoiser(d, x, t), v, rtol=1e-4, atol=1e-4)


def test_velocity_target_is_the_time_derivative_of_the_kernel():
    x0, z = jax.random.normal(jax.random.key(11), (2, 8, 2))
    t = jnp.linspace(0.1, 1.4, 8)
    xt = lambda s: jnp.cos(s)[:, None] * x0 + SD * jnp.sin(s)[:, None] * z
    _, dxdt = jax.jvp(xt, (t,), (jnp.ones_like(t),))
    np.testing.assert_allclose(tf.velocity_target(x0, z, t, sigma_data=SD), dxdt, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------ the front door's samplers


def _gauss_model(sde):
    """The exact score and denoiser of ``GAUSS`` noised by ``sde``, in float64, finite where ``alpha = 0``."""
    mu, cov = jnp.asarray(GAUSS.mean(), jnp.float64), jnp.asarray(GAUSS.covariance(), jnp.float64)

    def parts(t):
        a, s = sde.alpha(t), sde.sigma(t)
        tot = a[:, None, None] * a[:, None, None] * cov[None] + (s * s)[:, None, None] * jnp.eye(2)[None]
        return a, jnp.linalg.inv(tot)

    def score(x, t):
        a, prec = parts(t)
        return -jnp.einsum("bij,bj->bi", prec, x - a[:, None] * mu[None])

    def denoiser(x, t):
        a, prec = parts(t)
        return mu[None] + a[:, None] * jnp.einsum("ij,bjk,bk->bi", cov, prec, x - a[:, None] * mu[None])

    return P.with_denoiser(score, denoiser)


@pytest.mark.parametrize(
    "method, options, tol",
    [
        ("ode", dict(rtol=1e-8, atol=1e-8), 1e-6),
        ("ode", dict(solver="heun", steps=400), 1e-4),
        # measured 5.5e-3 at 40 steps, 1.6e-3 at 80 (order ~1.7; rectified flow with this sampler: 7.8e-3, 2.2e-3)
        ("dpm_solver++", dict(steps=40), 1e-2),
    ],
)
def test_front_door_samplers_on_trigflow_from_t_half_pi_give_the_exact_flow_map(method, options, tol):
    """``sample`` on TrigFlow by name, from ``T = π/2`` (``alpha = 0``), ends at the closed-form flow map."""
    with jax.enable_x64(True):
        trig = sde_lib.get_sde("trigflow", sigma_data=SD)
        x_init = trig.prior_sampling(jax.random.key(12), (32, 2)).astype(jnp.float64)
        exact = GAUSS.flow_map(trig, x_init, trig.T, 1e-3)
        x, nfe = sampling.sample(
            _gauss_model(trig), trig, (32, 2), jax.random.key(0), method=method, x_init=x_init, eps=1e-3, **options
        )
        assert x.dtype == jnp.float64 and int(nfe) > 10
        # every point moves by far more than the tolerance
        assert float(jnp.min(jnp.max(jnp.abs(exact - x_init), axis=1))) > 0.05
        np.testing.assert_allclose(x, exact, atol=tol)
        # the velocity form at T (alpha = 0) is -D: alpha's derivative there is -sin(T) = -1, not the clamp's 0
        t_end = jnp.full((32,), trig.T)
        np.testing.assert_allclose(
            ode.flow_velocity(_gauss_model(trig).denoiser, trig, x_init, t_end),
            -_gauss_model(trig).denoiser(x_init, t_end),
            atol=1e-7,
        )
