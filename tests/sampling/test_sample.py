"""Samplers against the closed-form oracles of ``scoresde.analytic``.

* deterministic samplers vs the exact probability-flow map from the same ``x_init`` (with the NFE
  counted by a ``jax.debug.callback`` inside the score function in the same runs);
* convergence orders from error-vs-steps slopes in float64;
* DDIM(eta=0) == DPM-Solver-1 == Euler in sigma-coordinates;
* stochastic samplers' mean / covariance within Monte-Carlo error;
* compile-once behaviour, encode/decode, ``get_sampling_fn`` and error messages.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from scoresde import analytic, build, sampling
from scoresde import sde as sde_lib
from scoresde.sampling import pc

from conftest import BackendCompiles

D = 4


def _gaussian():
    rot = analytic.random_rotation(jax.random.key(5), D)
    return analytic.GaussianMixture(jnp.array([[0.3, -0.2, 0.1, 0.0]]), jnp.array([[0.1, 0.3, 0.6, 1.0]]), rotation=rot)


class CountingScore:
    """Wraps a score function; counts evaluations actually executed, with a ``jax.debug.callback``."""

    def __init__(self, score_fn):
        self.score_fn, self.calls = score_fn, 0

    def _tick(self):
        self.calls += 1

    def __call__(self, x, t):
        jax.debug.callback(self._tick)
        return self.score_fn(x, t)

    def take(self):
        jax.effects_barrier()
        n, self.calls = self.calls, 0
        return n


# (method, options, tolerance on the max abs error vs the exact map, SDEs to run on).
# Tolerances are ~3x the errors these step counts give; a wrong coefficient gives errors of order 0.1–1.
DETERMINISTIC = [
    ("ode", {}, 5e-4, ("vp", "subvp", "ve")),  # rtol = atol = 1e-5
    ("ode", {"solver": "dopri5", "rtol": 1e-6, "atol": 1e-6}, 1e-4, ("vp",)),
    ("ode", {"solver": "heun", "steps": 200}, 6e-3, ("vp", "ve")),
    ("ddim", {"steps": 500}, 2e-2, ("vp",)),
    ("dpm_solver", {"order": 2, "steps": 50}, 1.5e-2, ("vp",)),
    ("dpm_solver", {"order": 3, "steps": 20}, 1e-3, ("vp",)),
    ("dpm_solver++", {"steps": 100}, 7e-3, ("vp", "subvp", "ve")),
    ("edm_heun", {"steps": 50}, 4e-2, ("vp", "subvp")),
]


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
def test_deterministic_samplers_match_exact_flow_map_and_count_nfe(sde_name):
    gm, sde = _gaussian(), sde_lib.get_sde(sde_name)
    eps = sampling.default_eps(sde)
    x_init = sde.prior_sampling(jax.random.key(1), (32, D))
    exact = gm.flow_map(sde, x_init, sde.T, eps)
    score = CountingScore(gm.score_fn(sde))
    ran = 0
    for method, options, tol, sdes in DETERMINISTIC:
        if sde_name not in sdes:
            continue
        x, nfe = sampling.sample(score, sde, (32, D), jax.random.key(0), method=method, x_init=x_init, **options)
        err = float(jnp.max(jnp.abs(x - exact)))
        assert err < tol, (method, options, err)
        assert int(nfe) == score.take(), (method, options)
        ran += 1
    assert ran >= 3


def test_reported_nfe_equals_evaluations_made():
    gm, sde = _gaussian(), sde_lib.VPSDE(N=40)
    score = CountingScore(gm.score_fn(sde))
    cases = [
        ("pc", {"corrector": "langevin", "n_steps": 2}, 40 * 3),
        ("pc", {"predictor": "reverse_diffusion", "corrector": "ald"}, 40 * 2),
        ("pc", {"steps": 7, "predictor": "none", "corrector": "langevin", "corrector_first": False}, 7),
        ("ode", {"solver": "euler", "steps": 7, "denoise": True}, 8),
        ("ode", {"solver": "tsit5", "rtol": 1e-2, "atol": 1e-2}, None),  # rejected steps happen here
        ("edm_heun", {"steps": 5, "S_churn": 10.0, "denoise": True}, 11),
    ]
    for method, options, expected in cases:
        _, nfe = sampling.sample(score, sde, (8, D), jax.random.key(0), method=method, **options)
        made = score.take()
        assert int(nfe) == made, (method, options, int(nfe), made)
        if expected is not None:
            assert made == expected, (method, options, made)
    z, nfe = sampling.encode(score, sde, gm.sample(jax.random.key(2), 8), rtol=1e-3, atol=1e-3)
    assert int(nfe) == score.take()


# -- float64: convergence orders and identities -----------------------------------------------------


def _exact64(sde, mu, var, x, t0, t1):
    """The closed-form flow map for a diagonal Gaussian, in float64 (``GaussianMixture`` is float32)."""
    a0, s0 = sde.alpha(jnp.asarray(t0, x.dtype)), sde.sigma(jnp.asarray(t0, x.dtype))
    a1, s1 = sde.alpha(jnp.asarray(t1, x.dtype)), sde.sigma(jnp.asarray(t1, x.dtype))
    mu, var = mu[None], var[None]
    return a1 * mu + (x - a0 * mu) * jnp.sqrt((a1**2 * var + s1**2) / (a0**2 * var + s0**2))


def test_float64_exact_map_helper_agrees_with_analytic():
    sde = sde_lib.VPSDE()
    mu, std = jnp.array([0.3, -0.2, 0.1, 0.0]), jnp.array([0.05, 0.2, 0.5, 1.0])
    gm = analytic.GaussianMixture(mu[None], std[None])
    x = jax.random.normal(jax.random.key(0), (8, D))
    np.testing.assert_allclose(
        _exact64(sde, mu, std**2, x, 1.0, 1e-3), gm.flow_map(sde, x, 1.0, 1e-3), rtol=1e-5, atol=1e-6
    )


# (method, options, steps for the slope fit, expected order). Step ranges where the leading error
# term dominates (Euler in t needs more steps to leave its pre-asymptotic regime).
ORDERS = [
    ("ode", {"solver": "euler"}, (80, 160, 320), 1),
    ("ode", {"solver": "heun"}, (80, 160, 320), 2),
    ("dpm_solver", {"order": 2}, (20, 40, 80), 2),
    ("dpm_solver", {"order": 3}, (40, 80, 160), 3),
    ("dpm_solver++", {"order": 2}, (20, 40, 80), 2),
    ("edm_heun", {}, (20, 40, 80), 2),
]


def test_convergence_orders_float64():
    with jax.enable_x64(True):
        sde = sde_lib.VPSDE()
        mu = jnp.array([0.3, -0.2, 0.1, 0.0], jnp.float64)
        var = jnp.array([0.05, 0.2, 0.5, 1.0], jnp.float64) ** 2

        def score_fn(x, t):
            a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
            return -(x - a * mu[None]) / (a**2 * var[None] + s**2)

        x_init = jax.random.normal(jax.random.key(1), (16, D), jnp.float64)
        exact = _exact64(sde, mu, var, x_init, sde.T, 1e-3)
        slopes = {}
        for method, options, steps, order in ORDERS:
            errs = []
            for n in steps:
                x, _ = sampling.sample(
                    score_fn,
                    sde,
                    (16, D),
                    jax.random.key(0),
                    method=method,
                    x_init=x_init,
                    eps=1e-3,
                    steps=n,
                    **options,
                )
                assert x.dtype == jnp.float64
                errs.append(float(jnp.mean(jnp.abs(x - exact))))
            slope = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
            slopes[(method, str(options))] = slope
            # +-0.25 separates neighbouring integer orders; it fails for order p +- 1.
            assert abs(slope - order) < 0.25, (method, options, errs, slope)


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_ddim_equals_dpm_solver_1_equals_euler_in_sigma_coordinates(sde_name):
    with jax.enable_x64(True):
        sde = sde_lib.get_sde(sde_name)
        gm = _gaussian()
        score_fn = gm.score_fn(sde)
        eps = sampling.default_eps(sde)
        x_init = sde.prior_sampling(jax.random.key(1), (8, D)).astype(jnp.float64)
        kw = dict(x_init=x_init, eps=eps, steps=12, grid="log_snr")
        x_ddim, _ = sampling.sample(score_fn, sde, (8, D), jax.random.key(0), method="ddim", eta=0.0, **kw)
        x_dpm, _ = sampling.sample(score_fn, sde, (8, D), jax.random.key(0), method="dpm_solver", order=1, **kw)
        x_dpmpp, _ = sampling.sample(score_fn, sde, (8, D), jax.random.key(0), method="dpm_solver++", order=1, **kw)
        # Euler on dxbar/dsigmabar = eps_pred with xbar = x / alpha, sigmabar = sigma / alpha.
        ts = np.asarray(sampling.time_grid(sde, 12, eps, kind="log_snr", dtype=jnp.float64))
        x = x_init
        for s, t in zip(ts[:-1], ts[1:]):
            s_b, t_b = jnp.full((8,), s), jnp.full((8,), t)
            a_s, sig_s, a_t, sig_t = (
                sde.alpha(s_b)[:, None],
                sde.sigma(s_b)[:, None],
                sde.alpha(t_b)[:, None],
                sde.sigma(t_b)[:, None],
            )
            eps_pred = -sig_s * score_fn(x, s_b)
            x = a_t * (x / a_s + (sig_t / a_t - sig_s / a_s) * eps_pred)
        assert x_ddim.dtype == jnp.float64
        np.testing.assert_allclose(x_ddim, x, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(x_dpm, x, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(x_dpmpp, x, rtol=1e-9, atol=1e-9)
        # and they are not trivially equal to the exact map (the test would be vacuous then)
        assert float(jnp.max(jnp.abs(x - gm.flow_map(sde, x_init, sde.T, eps)))) > 1e-3


# -- stochastic samplers ----------------------------------------------------------------------------

_ROT = analytic.random_rotation(jax.random.key(3), 2)
STOCHASTIC = [
    # (data, sde, method, options)
    ("gauss", "vp", "pc", {"steps": 500}),
    ("gauss", "vp", "pc", {"steps": 500, "predictor": "reverse_diffusion", "corrector": "langevin"}),
    ("mix", "subvp", "pc", {"steps": 500, "predictor": "reverse_diffusion", "corrector": "langevin"}),
    ("mix", "ve", "pc", {"steps": 500, "predictor": "ancestral_sampling"}),
    ("mix", "ve", "pc", {"steps": 500, "predictor": "reverse_diffusion", "corrector": "langevin"}),
    ("gauss", "ve", "ddim", {"steps": 1000, "eta": 1.0}),
    ("mix", "vp", "edm_heun", {"steps": 200, "S_churn": 80.0}),
]


def _data(name):
    if name == "gauss":
        return analytic.GaussianMixture(jnp.array([[0.5, -1.0]]), jnp.array([[0.3, 1.0]]), rotation=_ROT)
    return analytic.GaussianMixture(
        jnp.array([[-1.5, 0.0], [1.5, 0.5]]), jnp.array([0.4, 0.6]), weights=jnp.array([0.3, 0.7])
    )


@pytest.mark.parametrize("data,sde_name,method,options", STOCHASTIC)
def test_stochastic_sampler_moments_within_monte_carlo_error(data, sde_name, method, options):
    gm, sde = _data(data), sde_lib.get_sde(sde_name)
    n = 4000
    x, _ = sampling.sample(gm.score_fn(sde), sde, (n, 2), jax.random.key(0), method=method, **options)
    x = np.asarray(x, np.float64)
    m_true, c_true = np.asarray(gm.mean(), np.float64), np.asarray(gm.covariance(), np.float64)
    # Standard errors of the sample mean and covariance (Gaussian approximation of the 4th moments).
    z_mean = (x.mean(0) - m_true) / np.sqrt(np.diag(c_true) / n)
    se_cov = np.sqrt((c_true**2 + np.outer(np.diag(c_true), np.diag(c_true))) / n)
    z_cov = (np.cov(x.T) - c_true) / se_cov
    assert np.all(np.abs(z_mean) < 5), z_mean
    assert np.all(np.abs(z_cov) < 5), z_cov


def test_langevin_step_matches_reference_formula():
    """One Langevin corrector step against the reference's formula (step from global-batch mean norms)."""
    sde = sde_lib.SubVPSDE(N=10)
    gm = _data("mix")
    score_fn = gm.score_fn(sde)
    x = jax.random.normal(jax.random.key(0), (6, 2))
    t = jnp.full((6,), 0.5)
    key = jax.random.key(7)
    out, out_mean, nfe = pc._langevin(sde, score_fn, key, x, t, 0, 0.16, 1)
    grad = np.asarray(score_fn(x, t))
    z = np.asarray(jax.random.normal(jax.random.fold_in(key, 0), x.shape))
    alpha = sde.alphas[int(0.5 * 9)]
    step = (0.16 * np.linalg.norm(z, axis=-1).mean() / np.linalg.norm(grad, axis=-1).mean()) ** 2 * 2 * alpha
    np.testing.assert_allclose(out_mean, np.asarray(x) + step * grad, rtol=1e-5)
    np.testing.assert_allclose(out, np.asarray(x) + step * grad + np.sqrt(2 * step) * z, rtol=1e-5, atol=1e-6)
    assert nfe == 1
    # a zero score (an untrained, zero-initialised network) means no move, not the reference's NaN
    out0, _, _ = pc._langevin(sde, lambda x, t: jnp.zeros_like(x), key, x, t, 0, 0.16, 1)
    np.testing.assert_array_equal(out0, x)


# -- compilation, encode/decode, config front door, errors --------------------------------------------


def test_compiled_once_for_new_seed_inputs_and_float_options():
    gm, sde = _gaussian(), sde_lib.VPSDE(N=16)
    traces = []

    def score_fn(x, t):
        traces.append(1)  # runs only while tracing
        return gm.score_fn(sde)(x, t)

    for method, opts in [("pc", {"corrector": "langevin"}), ("ddim", {"steps": 8}), ("edm_heun", {"steps": 4})]:
        x0 = sde.prior_sampling(jax.random.key(1), (8, D))
        sampling.sample(score_fn, sde, (8, D), jax.random.key(0), method=method, x_init=x0, **opts)
        first = len(traces)
        assert first > 0
        for i, val in enumerate([0.5, 0.9]):
            floats = {"pc": {"snr": val * 0.3}, "ddim": {"eta": val}, "edm_heun": {"S_churn": 10 * val}}[method]
            sampling.sample(
                score_fn,
                sde,
                (8, D),
                jax.random.key(i + 3),
                method=method,
                x_init=x0 * val,
                eps=1e-3 * (1 + val),
                **opts,
                **floats,
            )
        assert len(traces) == first, method  # no retrace, so no recompilation
        traces.clear()
    # a new step count changes the loop length: it does retrace
    sampling.sample(score_fn, sde, (8, D), jax.random.key(0), method="ddim", steps=9)
    assert len(traces) > 0


def test_pytree_score_fn_parameters_are_traced():
    gm, sde = _gaussian(), sde_lib.VPSDE()
    traces = []

    def score(shift, x, t):
        traces.append(1)
        return gm.score_fn(sde)(x - shift, t)

    outs = []
    for shift in (0.0, 0.5):
        fn = jax.tree_util.Partial(score, jnp.asarray(shift))
        outs.append(sampling.sample(fn, sde, (8, D), jax.random.key(0), method="ddim", steps=5)[0])
    assert len(traces) == 1
    assert float(jnp.max(jnp.abs(outs[0] - outs[1]))) > 0.1


def test_encode_decode_exact_and_inverse():
    gm, sde = _gaussian(), sde_lib.VPSDE()
    x = gm.sample(jax.random.key(0), 16)
    z, nfe_e = sampling.encode(gm.score_fn(sde), sde, x, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(z, gm.flow_map(sde, x, 1e-3, sde.T), atol=5e-4)
    x_back, nfe_d = sampling.decode(gm.score_fn(sde), sde, z, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(x_back, x, atol=5e-4)
    assert int(nfe_e) > 10 and int(nfe_d) > 10
    z2, nfe = sampling.encode(gm.score_fn(sde), sde, x, solver="heun", steps=100, grid="log_snr")
    assert int(nfe) == 200
    np.testing.assert_allclose(z2, z, atol=2e-2)


def test_failed_ode_solve_raises():
    gm, sde = _gaussian(), sde_lib.VPSDE()
    with pytest.raises(RuntimeError, match="max_steps"):
        sampling.sample(gm.score_fn(sde), sde, (4, D), jax.random.key(0), method="ode", max_steps=3)


def _config(**sampling_fields):
    config = ml_collections.ConfigDict()
    config.sampling = ml_collections.ConfigDict(
        dict(
            method="pc",
            predictor="reverse_diffusion",
            corrector="langevin",
            snr=0.16,
            n_steps_each=1,
            noise_removal=True,
            probability_flow=False,
        )
    )
    config.sampling.update(sampling_fields)
    return config


@pytest.mark.parametrize(
    "fields,expected_nfe",
    [
        ({}, 2 * 40),
        ({"method": "pc", "predictor": "euler_maruyama", "corrector": "none", "probability_flow": True}, 40),
        ({"method": "ode", "solver": "euler", "steps": 6}, 6 + 1),
        ({"method": "ddim", "steps": 5, "eta": 0.5}, 5 + 1),
        ({"method": "dpm_solver", "steps": 3, "order": 3, "noise_removal": False}, 9),
        ({"method": "dpm_solver++", "steps": 6}, 6 + 1),
        ({"method": "edm_heun", "steps": 4, "S_churn": 1.0, "rho": 5.0}, 8 + 1),
    ],
)
def test_get_sampling_fn_from_config(fields, expected_nfe):
    gm, sde = _gaussian(), sde_lib.VPSDE(N=40)
    sampler = build.sampler_from_config(_config(**fields), sde, (8, D), inverse_scaler=lambda x: 2 * x)
    samples, nfe = sampler(jax.random.key(0), gm.score_fn(sde))
    assert samples.shape == (8, D) and bool(jnp.all(jnp.isfinite(samples)))
    assert int(nfe) == expected_nfe
    if fields:
        return
    x_init = jnp.ones((8, D))
    a, _ = sampler(jax.random.key(0), gm.score_fn(sde), x_init=x_init)
    b, _ = sampler(jax.random.key(0), gm.score_fn(sde), x_init=2 * x_init)
    assert not np.allclose(a, b)


def test_errors_name_the_bad_value():
    gm, sde = _gaussian(), sde_lib.VPSDE()
    with pytest.raises(ValueError, match="unknown sampling method 'ddpm'"):
        sampling.sample(gm.score_fn(sde), sde, (2, D), jax.random.key(0), method="ddpm")
    with pytest.raises(ValueError, match="unknown option"):
        sampling.sample(gm.score_fn(sde), sde, (2, D), jax.random.key(0), method="ddim", order=2)
    with pytest.raises(ValueError, match="unknown predictor 'rk4'"):
        sampling.sample(gm.score_fn(sde), sde, (2, D), jax.random.key(0), predictor="rk4")
    with pytest.raises(ValueError, match="ancestral_sampling is defined for VPSDE and VESDE"):
        sampling.sample(
            gm.score_fn(sde_lib.SubVPSDE()),
            sde_lib.SubVPSDE(),
            (2, D),
            jax.random.key(0),
            predictor="ancestral_sampling",
        )
    with pytest.raises(ValueError, match="discrete betas < 1"):
        sampling.sample(gm.score_fn(sde), sde, (2, D), jax.random.key(0), predictor="reverse_diffusion", steps=10)
    with pytest.raises(ValueError, match="order must be 1, 2 or 3"):
        sampling.sample(gm.score_fn(sde), sde, (2, D), jax.random.key(0), method="dpm_solver", order=4)
    with pytest.raises(ValueError, match="unknown time grid"):
        sampling.sample(gm.score_fn(sde), sde, (2, D), jax.random.key(0), method="ddim", grid="cosine")
    with pytest.raises(ValueError, match="steps must be a positive int"):
        sampling.sample(gm.score_fn(sde), sde, (2, D), jax.random.key(0), method="ddim", steps=0)


def test_default_eps_follows_reference():
    assert sampling.default_eps(sde_lib.VPSDE()) == 1e-3
    assert sampling.default_eps(sde_lib.SubVPSDE()) == 1e-3
    assert sampling.default_eps(sde_lib.VESDE()) == 1e-5


@pytest.mark.parametrize("kind", sampling.GRIDS)
def test_time_grids_are_decreasing_with_exact_endpoints(kind):
    for sde in (sde_lib.VPSDE(), sde_lib.VESDE()):
        ts = np.asarray(sampling.time_grid(sde, 10, 1e-3, kind=kind))
        assert ts.shape == (11,) and ts[0] == np.float32(1.0) and ts[-1] == np.float32(1e-3)
        assert np.all(np.diff(ts) < 0)
        if kind == "log_snr":
            lam = np.asarray(sde.log_snr(jnp.asarray(ts)))
            np.testing.assert_allclose(np.diff(lam), np.diff(lam)[0], rtol=1e-3)


def test_the_declared_deterministic_trait_is_what_each_method_does():
    """Same ``x_init``, another key: the samples are equal exactly where the table says the method draws no noise."""
    gm, sde = _gaussian(), sde_lib.VPSDE()
    x_init = jax.random.normal(jax.random.key(1), (3, D))
    cases = [(method, {}) for method in sampling.METHODS]
    cases += [
        ("ddim", dict(eta=1.0)),
        ("edm_heun", dict(S_churn=10.0)),
        ("euler_ancestral", dict(eta=0.0)),
        ("dpm_solver++_sde", dict(eta=0.0)),
    ]
    for method, opts in cases:
        process = sde
        if method in ("consistency", "scm"):
            score_fn, opts = (lambda x, t: 0.5 * x), dict(steps=2)  # any f(x, t): the re-noising is the noise
            process = sde_lib.TrigFlow() if method == "scm" else sde
        elif method == "meanflow":  # an average velocity u(z, r, t) on rectified flow, the one process it takes
            score_fn, opts, process = (lambda z, r, t: 0.5 * z), dict(steps=2), sde_lib.RectifiedFlow()
        else:
            score_fn = gm.score_fn(sde)
            opts = {**({"steps": 4} if method != "ode" else {}), **opts}
        a, _ = sampling.sample(score_fn, process, (3, D), jax.random.key(2), method=method, x_init=x_init, **opts)
        b, _ = sampling.sample(score_fn, process, (3, D), jax.random.key(3), method=method, x_init=x_init, **opts)
        same = bool(np.array_equal(np.asarray(a), np.asarray(b)))
        assert same == sampling.is_deterministic(method, opts), (method, opts, same)


def test_backend_compiles_per_step_count(method="dpm_solver++"):
    """One XLA program per (method, shape, step count): a repeat with a new key, prior draw, eps or float option
    compiles nothing; each new step count compiles exactly one program (``steps`` fixes the scan length)."""
    gm, sde = _gaussian(), sde_lib.VPSDE()
    score = gm.score_fn(sde)
    x0, x1 = (sde.prior_sampling(jax.random.key(i), (8, D)) for i in (1, 2))
    keys = [jax.random.key(i) for i in range(3)]
    eps = [1e-3, 2e-3]
    jax.block_until_ready((x0, x1, keys))
    counts = []
    for steps in (6, 6, 7):
        with BackendCompiles("_sample_jit") as c:
            for i, (x, e) in enumerate(((x0, eps[0]), (x1, eps[1]))):
                out, _ = sampling.sample(score, sde, (8, D), keys[i], method=method, x_init=x, eps=e, steps=steps)
                jax.block_until_ready(out)
        counts.append(c.count)
    assert counts == [1, 0, 1], counts
