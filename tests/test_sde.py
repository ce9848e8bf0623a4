"""SDE library: marginals vs simulation, priors vs scipy, discretisations, numerics near t = 0."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from scoresde import sde as sde_lib

SDES = {
    "vp": sde_lib.VPSDE(),
    "subvp": sde_lib.SubVPSDE(),
    "ve": sde_lib.VESDE(sigma_min=0.01, sigma_max=5.0),
    "ou": sde_lib.OUSDE(),
}


def _simulate(sde, x0, t_end, n_paths, n_steps, key):
    """Fine Euler–Maruyama simulation of the forward SDE from a fixed x0."""
    dt = t_end / n_steps
    x = jnp.full((n_paths, 1), x0, jnp.float32)

    def step(x, inp):
        i, k = inp
        t = jnp.full((n_paths,), i * dt)
        drift, g = sde.sde(x, t)
        x = x + drift * dt + sde_lib.batch_mul(g * math.sqrt(dt), jax.random.normal(k, x.shape))
        return x, None

    keys = jax.random.split(key, n_steps)
    x, _ = jax.lax.scan(step, x, (jnp.arange(n_steps, dtype=jnp.float32), keys))
    return np.asarray(x[:, 0], np.float64)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve", "ou"])
@pytest.mark.parametrize("t_end", [0.3, 1.0])
def test_marginal_prob_matches_simulation(name, t_end):
    sde = SDES[name]
    t_end = t_end * sde.T
    x0, n = 1.5, 40000
    xs = _simulate(sde, x0, t_end, n, 1000, jax.random.key(0))
    mean, std = sde.marginal_prob(jnp.full((1, 1), x0), jnp.full((1,), t_end))
    mean, std = float(mean[0, 0]), float(std[0])
    if name == "ve":  # the kernel std omits the sigma_min² offset (reference convention); the SDE itself has it
        std = math.sqrt(std**2 - sde.sigma_min**2)
    se_mean = std / math.sqrt(n)
    se_std = std / math.sqrt(2 * n)
    assert abs(xs.mean() - mean) < 5 * se_mean + 2e-3 * abs(x0)
    assert abs(xs.std() - std) < 5 * se_std + 2e-3 * std


@pytest.mark.parametrize("name", list(SDES))
def test_prior_logp_matches_scipy(name):
    sde = SDES[name]
    z = sde.prior_sampling(jax.random.key(1), (5, 3, 2))
    expected = scipy.stats.norm(0, sde.prior_std).logpdf(np.asarray(z, np.float64)).reshape(5, -1).sum(-1)
    np.testing.assert_allclose(np.asarray(sde.prior_logp(z)), expected, rtol=1e-5)
    assert z.shape == (5, 3, 2)
    assert abs(float(jnp.std(sde.prior_sampling(jax.random.key(2), (20000,)))) - sde.prior_std) < 0.03 * sde.prior_std


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_discretize_consistent_with_sde_as_n_grows(name):
    """f_i ≈ f dt and G_i ≈ g sqrt(dt) with relative error -> 0 as N grows."""
    errs = []
    for n in (100, 1000, 10000):
        sde = (
            type(SDES[name])(**{**{f: getattr(SDES[name], f) for f in ("T",)}, "N": n})
            if name == "vp"
            else sde_lib.VESDE(sigma_min=0.01, sigma_max=5.0, N=n)
        )
        t = jnp.array([0.2, 0.5, 0.9])
        x = jnp.ones((3, 2))
        f, g_disc = sde.discretize(x, t)
        drift, g = sde.sde(x, t)
        dt = sde.T / n
        # the discrete grid index is floor(t (N-1)); compare with the SDE at that grid time
        err_f = (
            float(jnp.max(jnp.abs(f - drift * dt))) / max(float(jnp.max(jnp.abs(drift * dt))), 1e-12)
            if name == "vp"
            else 0.0
        )
        err_g = float(jnp.max(jnp.abs(g_disc - g * math.sqrt(dt)) / (g * math.sqrt(dt))))
        errs.append(max(err_f, err_g))
    assert errs[2] < errs[1] < errs[0]
    assert errs[2] < 2e-3


def test_default_euler_maruyama_discretization():
    sde = SDES["subvp"]
    x, t = jnp.ones((2, 3)), jnp.array([0.1, 0.7])
    f, g = sde.discretize(x, t)
    drift, diffusion = sde.sde(x, t)
    np.testing.assert_allclose(f, drift / sde.N, rtol=1e-6)
    np.testing.assert_allclose(g, diffusion * math.sqrt(1 / sde.N), rtol=1e-6)


def _vp_exact(t, b0=0.1, b1=20.0):
    from mpmath import exp, expm1, mp, mpf, sqrt

    mp.dps = 40
    t = mpf(t)
    big_b = b0 * t + (b1 - b0) * t * t / 2
    return {
        "vp_std": float(sqrt(-expm1(-big_b))),
        "subvp_std": float(-expm1(-big_b)),
        "subvp_g": float(sqrt((b0 + t * (b1 - b0)) * -expm1(-2 * big_b))),
        "alpha": float(exp(-big_b / 2)),
    }


@pytest.mark.parametrize("t", [1e-5, 1e-4, 1e-3])
def test_float32_accuracy_near_zero(t):
    exact = _vp_exact(t)
    tt = jnp.array([t], jnp.float32)
    rel = lambda a, b: abs(float(a[0]) - b) / abs(b)
    assert rel(SDES["vp"].sigma(tt), exact["vp_std"]) < 1e-5
    assert rel(SDES["subvp"].sigma(tt), exact["subvp_std"]) < 1e-5
    assert rel(SDES["subvp"].sde(jnp.zeros((1, 1)), tt)[1], exact["subvp_g"]) < 1e-5
    assert rel(SDES["vp"].alpha(tt), exact["alpha"]) < 1e-6


@pytest.mark.parametrize("name", list(SDES))
def test_log_snr_inverse_and_kernel_consistency(name):
    sde = SDES[name]
    t = jnp.linspace(1e-3, sde.T, 50)
    lam = sde.log_snr(t)
    np.testing.assert_allclose(lam, 2 * jnp.log(sde.alpha(t) / sde.sigma(t)), rtol=1e-4, atol=1e-4)
    assert bool(jnp.all(jnp.diff(lam) < 0))
    np.testing.assert_allclose(sde.t_from_log_snr(lam), t, rtol=1e-4, atol=1e-6)
    mean, std = sde.marginal_prob(jnp.ones((50, 2)), t)
    np.testing.assert_allclose(mean[:, 0], sde.alpha(t), rtol=1e-6)
    np.testing.assert_allclose(std, sde.sigma(t), rtol=1e-6)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_kernel_satisfies_moment_odes(name):
    """d alpha/dt = f alpha and d sigma²/dt = 2 f sigma² + g² (the marginal family solves Fokker–Planck)."""
    sde = SDES[name]
    t = jnp.linspace(0.05, 0.95, 7)
    h = 1e-3
    one = jnp.ones((7, 1))
    f = sde.sde(one, t)[0][:, 0]  # f(t) * 1
    g = sde.sde(one, t)[1]
    da = (sde.alpha(t + h) - sde.alpha(t - h)) / (2 * h)
    ds2 = (sde.sigma(t + h) ** 2 - sde.sigma(t - h) ** 2) / (2 * h)
    np.testing.assert_allclose(da, f * sde.alpha(t), rtol=2e-3, atol=1e-5)
    np.testing.assert_allclose(ds2, 2 * f * sde.sigma(t) ** 2 + g**2, rtol=2e-3, atol=1e-4)


def test_ou_is_constant_beta_vp():
    ou = sde_lib.OUSDE()
    x, t = jnp.array([[1.0, -2.0]]), jnp.array([0.4])
    drift, g = ou.sde(x, t)
    np.testing.assert_allclose(drift, -x, rtol=1e-6)
    np.testing.assert_allclose(g, [math.sqrt(2.0)], rtol=1e-6)
    np.testing.assert_allclose(ou.alpha(t), [math.exp(-0.4)], rtol=1e-6)


def test_reverse_drifts_match_hand_derivation():
    sde = SDES["vp"]
    x = jnp.array([[0.5, -1.0], [2.0, 0.3]])
    t = jnp.array([0.3, 0.8])
    score = lambda x, t: -3.0 * x  # any fixed function
    beta = 0.1 + t * 19.9
    rev = sde.reverse(score)
    drift, g = rev.sde(x, t)
    np.testing.assert_allclose(drift, -0.5 * beta[:, None] * x - beta[:, None] * (-3.0 * x), rtol=1e-5)
    np.testing.assert_allclose(g, jnp.sqrt(beta), rtol=1e-6)
    flow = sde.reverse(score, probability_flow=True)
    drift, g = flow.sde(x, t)
    np.testing.assert_allclose(drift, -0.5 * beta[:, None] * x - 0.5 * beta[:, None] * (-3.0 * x), rtol=1e-5)
    np.testing.assert_allclose(g, 0.0)
    # reverse discretisation (reverse-diffusion predictor), VE: f = 0, G² = sigma_i² - sigma_{i-1}²
    ve = SDES["ve"]
    rf, rg = ve.reverse(score).discretize(x, t)
    _, G = ve.discretize(x, t)
    np.testing.assert_allclose(rf, -(G**2)[:, None] * (-3.0 * x), rtol=1e-5)
    np.testing.assert_allclose(rg, G)


def test_sde_objects_are_static_pytrees_usable_under_jit():
    sde = sde_lib.VPSDE(beta_min=0.2)
    assert jax.tree_util.tree_leaves(sde) == []
    assert hash(sde) == hash(sde_lib.VPSDE(beta_min=0.2))

    @jax.jit
    def f(sde, x, t):
        return sde.marginal_prob(x, t)[1]

    np.testing.assert_allclose(f(sde, jnp.ones((2, 1)), jnp.array([0.1, 0.5])), sde.sigma(jnp.array([0.1, 0.5])))
    with pytest.raises(dataclasses_error()):
        sde.beta_min = 1.0


def dataclasses_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="unknown sde 'vpp'"):
        sde_lib.get_sde("vpp")
    with pytest.raises(ValueError, match="sigma_min"):
        sde_lib.VESDE(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="N >= 2"):
        sde_lib.VPSDE(N=1)
    assert isinstance(sde_lib.get_sde("subvpsde", beta_max=10.0), sde_lib.SubVPSDE)


def test_trigflow_is_built_by_name_like_the_other_processes():
    from scoresde.fewstep import trigflow

    trig = sde_lib.get_sde("trigflow", sigma_data=0.7)
    assert isinstance(trig, sde_lib.TrigFlow) and trig.sigma_data == 0.7 and trig.T == sde_lib.HALF_PI
    assert trigflow.TrigFlow is sde_lib.TrigFlow  # one class, re-exported where its maps live
    assert jax.tree_util.tree_leaves(trig) == [] and hash(trig) == hash(sde_lib.TrigFlow(sigma_data=0.7))
    t = jnp.linspace(0.05, 1.5, 7)
    np.testing.assert_allclose(trig.alpha(t), np.cos(t), rtol=1e-6)
    np.testing.assert_allclose(trig.sigma(t), 0.7 * np.sin(t), rtol=1e-6)
    # alpha is clamped to 0 at T (cos(float32(π/2)) < 0) but keeps cos's derivative there
    end = jnp.array([trig.T], jnp.float32)
    a, da = jax.jvp(trig.alpha, (end,), (jnp.ones_like(end),))
    assert float(a[0]) == 0.0 and abs(float(da[0]) + 1.0) < 1e-6
    with pytest.raises(ValueError, match="sigma_data > 0"):
        sde_lib.get_sde("trigflow", sigma_data=0.0)
    with pytest.raises(ValueError, match="trigflow"):
        sde_lib.get_sde("trig")
