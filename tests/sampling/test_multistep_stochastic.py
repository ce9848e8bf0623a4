"""The new processes (RectifiedFlow, EDMSDE) and samplers (unipc, deis, dpm_solver++_sde, euler_ancestral)
against closed forms, in float64 on a diagonal Gaussian (exact denoiser, score and flow map)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import parameterization as P
from scoresde import sampling
from scoresde import sde as sde_lib
from scoresde.sampling import stochastic

D = 3
MU = np.array([0.4, -0.3, 0.1])
VAR = np.array([0.05, 0.3, 1.0]) ** 2


def _oracle(sde):
    """Exact score and denoiser of N(MU, diag VAR) noised by ``sde`` (finite at alpha = 0)."""
    mu, var = jnp.asarray(MU), jnp.asarray(VAR)

    def parts(t):
        a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
        return a, s, a**2 * var[None] + s**2

    def score(x, t):
        a, s, tot = parts(t)
        return -(x - a * mu[None]) / tot

    def denoiser(x, t):
        a, s, tot = parts(t)
        return mu[None] + a * var[None] / tot * (x - a * mu[None])

    return P.with_denoiser(score, denoiser)


def _exact_map(sde, x, t0, t1):
    mu, var = jnp.asarray(MU)[None], jnp.asarray(VAR)[None]
    a0, s0 = sde.alpha(jnp.asarray(t0, x.dtype)), sde.sigma(jnp.asarray(t0, x.dtype))
    a1, s1 = sde.alpha(jnp.asarray(t1, x.dtype)), sde.sigma(jnp.asarray(t1, x.dtype))
    return a1 * mu + (x - a0 * mu) * jnp.sqrt((a1**2 * var + s1**2) / (a0**2 * var + s0**2))


DETERMINISTIC = [
    ("ddim", {"steps": 400}),
    ("dpm_solver", {"order": 2, "steps": 40}),
    ("dpm_solver", {"order": 3, "steps": 20}),
    ("dpm_solver++", {"steps": 60}),
    ("edm_heun", {"steps": 60}),
    ("unipc", {"order": 1, "steps": 40}),
    ("unipc", {"order": 2, "steps": 30}),
    ("unipc", {"order": 3, "steps": 30, "variant": "bh2"}),
    ("deis_logsnr_x0", {"order": 1, "steps": 300}),
    ("deis_logsnr_x0", {"order": 2, "steps": 40}),
    ("deis_logsnr_x0", {"order": 3, "steps": 30}),
    ("deis", {"order": 1, "steps": 60}),
    ("deis", {"order": 3, "steps": 30}),
    ("deis", {"order": 3, "steps": 30, "grid": "log_snr"}),
    ("dpm_solver++_sde", {"order": 2, "eta": 0.0, "steps": 60}),
    ("dpm_solver++_sde", {"order": 3, "eta": 0.0, "steps": 40}),
    ("euler_ancestral", {"eta": 0.0, "steps": 400}),
]


@pytest.mark.slow  # 15-35 s on 2 shared CPU cores
@pytest.mark.parametrize("sde_name", ["rectified_flow", "edm"])
def test_deterministic_samplers_match_exact_flow_map(sde_name):
    with jax.enable_x64(True):
        sde = sde_lib.get_sde(sde_name)
        eps = sampling.default_eps(sde)
        model = _oracle(sde)
        x_init = sde.prior_sampling(jax.random.key(1), (16, D)).astype(jnp.float64)
        exact = _exact_map(sde, x_init, sde.T, eps)
        errs = {}
        for method, options in DETERMINISTIC:
            x, nfe = sampling.sample(model, sde, (16, D), jax.random.key(0), method=method, x_init=x_init, **options)
            assert x.dtype == jnp.float64 and bool(jnp.all(jnp.isfinite(x))), (method, options)
            errs[(method, str(options))] = float(jnp.max(jnp.abs(x - exact)))
        # observed max errors 2e-4 .. 1.9e-2 at these step counts; a wrong coefficient gives 0.1 - 10
        # (the exact map moves every point by more than the prior's scale: checked below).
        assert float(jnp.min(jnp.max(jnp.abs(exact - x_init), axis=1))) > 0.1
        for key, err in errs.items():
            assert err < 3e-2, (key, err)


# (method, options, steps, expected slope) on VP in float64; UniPC-p with its corrector is order p + 1.
ORDERS = [
    ("unipc", {"order": 1}, (20, 40, 80), 2),
    ("unipc", {"order": 2}, (20, 40, 80), 3),
    ("unipc", {"order": 2, "variant": "bh2"}, (20, 40, 80), 3),
    ("deis_logsnr_x0", {"order": 1}, (20, 40, 80), 1),
    ("deis_logsnr_x0", {"order": 2}, (20, 40, 80), 2),
    ("deis_logsnr_x0", {"order": 3}, (20, 40, 80), 4),  # measured 3.9 here (its error constant falls fast); >= 3
    ("dpm_solver++_sde", {"order": 2, "eta": 0.0}, (20, 40, 80), 2),
]


@pytest.mark.slow  # 15-35 s on 2 shared CPU cores
def test_convergence_orders_float64():
    with jax.enable_x64(True):
        sde = sde_lib.VPSDE()
        x_init = jax.random.normal(jax.random.key(1), (8, D), jnp.float64)
        exact = _exact_map(sde, x_init, sde.T, 1e-3)
        for method, options, steps, order in ORDERS:
            errs = []
            for n in steps:
                x, nfe = sampling.sample(
                    _oracle(sde),
                    sde,
                    (8, D),
                    jax.random.key(0),
                    method=method,
                    x_init=x_init,
                    eps=1e-3,
                    steps=n,
                    **options,
                )
                assert int(nfe) == n
                errs.append(float(jnp.mean(jnp.abs(x - exact))))
            slope = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
            assert abs(slope - order) < 0.35, (method, options, errs, slope)


def _exact_output_moments(fn, model, sde, ts, **kw):
    """Mean and variance of a stochastic sampler's output for 1-D Gaussian data, exactly: the scheme is affine
    in the prior draw and the step noises, so the gradients give all its coefficients."""
    n = ts.shape[0] - 1

    def out(x, noise):
        return fn(model, sde, x.reshape(1, 1), ts, jax.random.key(0), 0, noise=noise.reshape(n, 1, 1), **kw)[0][0, 0]

    x0, z0 = jnp.zeros(()), jnp.zeros((n,))
    gx, gz = jax.grad(out, (0, 1))(x0, z0)
    return out(x0, z0), gx**2 * sde.prior_std**2 + jnp.sum(gz**2)


@pytest.mark.slow  # 15-35 s on 2 shared CPU cores
def test_sde_solvers_weak_order_float64():
    """Weak error (|mean| + |variance| error of the output law, computed exactly) vs steps."""
    with jax.enable_x64(True):
        sde, eps = sde_lib.VPSDE(), 1e-3
        mu, v = 0.4, 0.3**2
        a = lambda t: sde.alpha(t)[:, None]
        s = lambda t: sde.sigma(t)[:, None]
        model = P.with_denoiser(
            lambda x, t: -(x - a(t) * mu) / (a(t) ** 2 * v + s(t) ** 2),
            lambda x, t: mu + a(t) * v / (a(t) ** 2 * v + s(t) ** 2) * (x - a(t) * mu),
        )
        te = jnp.array([eps])
        m_ex, v_ex = float(sde.alpha(te)[0] * mu), float(sde.alpha(te)[0] ** 2 * v + sde.sigma(te)[0] ** 2)
        steps = (40, 80, 160)
        for fn, kw, order in [
            (stochastic.euler_ancestral, {}, 1),
            (stochastic.dpm_solver_pp_sde, {"order": 2}, 2),
            (stochastic.dpm_solver_pp_sde, {"order": 3}, 2),
        ]:
            errs = []
            for n in steps:
                ts = sampling.time_grid(sde, n, eps, kind="log_snr", dtype=jnp.float64)
                mean, var = _exact_output_moments(fn, model, sde, ts, **kw)
                errs.append(abs(float(var) - v_ex) + abs(float(mean) - m_ex))
            slope = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
            assert abs(slope - order) < 0.35, (fn.__name__, kw, errs, slope)


def test_euler_ancestral_and_2m_sde_agree_with_k_diffusion_loops():
    """k-diffusion's sample_euler_ancestral / sample_dpmpp_2m_sde (midpoint), transcribed in numpy on the
    EDM process (alpha = 1, so xbar = x), with the same noise draws."""
    with jax.enable_x64(True):
        sde = sde_lib.EDMSDE()
        model = _oracle(sde)
        n = 12
        ts = sampling.time_grid(sde, n, sde.sigma_min, kind="edm", dtype=jnp.float64)
        sig = np.asarray(ts)
        x_init = np.asarray(jax.random.normal(jax.random.key(3), (4, D), jnp.float64)) * sde.sigma_max
        noise = np.asarray(jax.random.normal(jax.random.key(4), (n, 4, D), jnp.float64))
        den = lambda x, s: np.asarray(model.denoiser(jnp.asarray(x), jnp.full((4,), s)))
        eta = 0.7
        x = x_init.copy()
        for i in range(n):
            d = den(x, sig[i])
            s_up = min(sig[i + 1], eta * (sig[i + 1] ** 2 * (sig[i] ** 2 - sig[i + 1] ** 2) / sig[i] ** 2) ** 0.5)
            s_down = (sig[i + 1] ** 2 - s_up**2) ** 0.5
            x = x + (x - d) / sig[i] * (s_down - sig[i]) + noise[i] * s_up
        ours, nfe = stochastic.euler_ancestral(
            model, sde, jnp.asarray(x_init), ts, jax.random.key(0), 0, eta=eta, noise=jnp.asarray(noise)
        )
        np.testing.assert_allclose(ours, x, rtol=1e-10, atol=1e-10)
        x, old, h_last = x_init.copy(), None, None
        for i in range(n):
            d = den(x, sig[i])
            t, s = -np.log(sig[i]), -np.log(sig[i + 1])
            h = s - t
            eta_h = eta * h
            x = sig[i + 1] / sig[i] * np.exp(-eta_h) * x + (-np.expm1(-h - eta_h)) * d
            if old is not None:
                r = h_last / h
                x = x + 0.5 * (-np.expm1(-h - eta_h)) * (1 / r) * (d - old)
            x = x + noise[i] * sig[i + 1] * np.sqrt(-np.expm1(-2 * eta_h))
            old, h_last = d, h
        ours, nfe = stochastic.dpm_solver_pp_sde(
            model, sde, jnp.asarray(x_init), ts, jax.random.key(0), 0, eta=eta, noise=jnp.asarray(noise)
        )
        np.testing.assert_allclose(ours, x, rtol=1e-10, atol=1e-10)
        assert int(nfe) == n


def test_alpha_zero_guards_and_default_grid():
    sde = sde_lib.RectifiedFlow()
    with pytest.raises(ValueError, match="does not determine"):
        sampling.sample(lambda x, t: -x, sde, (2, D), jax.random.key(0), method="unipc")
    with pytest.raises(ValueError, match="infinite at alpha"):
        sampling.sample(_oracle(sde), sde, (2, D), jax.random.key(0), method="pc")
    with pytest.raises(ValueError, match="does not determine"):
        sampling.sample(lambda x, t: -x, sde, (2, D), jax.random.key(0), method="ode")
    ts = np.asarray(sampling.time_grid(sde, 5, 1e-3, kind="log_snr"))
    assert ts[0] == 1.0 and ts[-1] == np.float32(1e-3) and np.all(np.diff(ts) < 0) and np.all(np.isfinite(ts))
    edm = sde_lib.EDMSDE()
    assert sampling.default_eps(edm) == 0.002 and edm.T == 80.0
    # EDM's grid is the sampler default on EDMSDE: deis with and without grid="edm" agree exactly (the SDE's
    # default grid wins over the method's quadratic_t)
    m = _oracle(edm)
    a, _ = sampling.sample(m, edm, (2, D), jax.random.key(0), method="deis", steps=6)
    b, _ = sampling.sample(m, edm, (2, D), jax.random.key(0), method="deis", steps=6, grid="edm")
    c, _ = sampling.sample(m, edm, (2, D), jax.random.key(0), method="deis", steps=6, grid="log_snr")
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


# -- tAB-DEIS: the authors' algorithm (Zhang & Chen 2023, jax_deis ``t_ab``) -------------------------------------


def _vp_g_prime(sde, t):
    """d(sigma/alpha)/dt for VP in float64: sigma/alpha = sqrt(e^B - 1), B(t) = beta_0 t + (beta_1 - beta_0) t²/2."""
    b = sde.beta_min * t + 0.5 * (sde.beta_max - sde.beta_min) * t**2
    db = sde.beta_min + (sde.beta_max - sde.beta_min) * t
    return 0.5 * db * np.exp(b) / np.sqrt(np.expm1(b))


def _lagrange(tau, nodes, j):
    out = 1.0
    for m, tm in enumerate(nodes):
        if m != j:
            out = out * (tau - tm) / (nodes[j] - tm)
    return out


def _official_tab_coefficients(sde, ts, order, quadrature):
    """The authors' tAB table ``C[k, j] = alpha(t_{k+1}) ∫_{t_k}^{t_{k+1}} d(sigma/alpha)/dτ L_j(τ) dτ`` (their
    ``psi(τ, t) eps_integrand(τ)`` is this integrand), written out here in float64: ``quadrature="quad"`` by
    adaptive scipy quadrature (the reference), ``"riemann"`` by the authors' own rule, a 10,000-point left sum."""
    from scipy import integrate

    ts = np.asarray(ts, np.float64)
    alpha = np.asarray(sde.alpha(jnp.asarray(ts)), np.float64)
    c = np.zeros((len(ts) - 1, order + 1))
    for k in range(len(ts) - 1):
        r = min(order, k)
        nodes = ts[k - np.arange(r + 1)]
        for j in range(r + 1):
            f = lambda tau, nodes=nodes, j=j: _vp_g_prime(sde, tau) * _lagrange(tau, nodes, j)  # noqa: E731
            if quadrature == "quad":
                val = integrate.quad(f, ts[k], ts[k + 1], epsabs=0.0, epsrel=1e-13, limit=200)[0]
            else:
                tau = np.linspace(ts[k], ts[k + 1], 10_000, endpoint=False)
                val = np.sum(f(tau)) * (ts[k + 1] - ts[k]) / 10_000
            c[k, j] = alpha[k + 1] * val
    return c


def _official_tab_sample(sde, x, ts, coef):
    """The authors' multistep loop on the exact Gaussian noise prediction, in numpy float64."""
    ts = np.asarray(ts, np.float64)
    alpha = np.asarray(sde.alpha(jnp.asarray(ts)), np.float64)
    sigma = np.asarray(sde.sigma(jnp.asarray(ts)), np.float64)
    hist = []
    for k in range(len(ts) - 1):
        tot = alpha[k] ** 2 * VAR + sigma[k] ** 2
        hist.insert(0, sigma[k] * (x - alpha[k] * MU) / tot)  # exact E[eps | x_t] of N(MU, VAR)
        x = alpha[k + 1] / alpha[k] * x + sum(coef[k, j] * hist[j] for j in range(min(len(hist), coef.shape[1])))
    return x


@pytest.mark.parametrize("grid", ["quadratic_t", "log_snr", "uniform_t"])
def test_deis_is_the_official_tab_deis_on_the_same_grid(grid):
    """Coefficients and samples equal the authors' tAB-DEIS (order 3, 20 steps) up to far less than the error of
    the authors' own 10,000-point quadrature of the same coefficients."""
    from scoresde.sampling import multistep

    with jax.enable_x64(True):
        sde = sde_lib.VPSDE()
        ts = sampling.time_grid(sde, 20, 1e-3, kind=grid, dtype=jnp.float64)
        exact = _official_tab_coefficients(sde, ts, 3, "quad")
        riemann = _official_tab_coefficients(sde, ts, 3, "riemann")
        ours = np.asarray(multistep.tab_deis_coefficients(sde, ts, 3))
        riemann_err = np.max(np.abs(riemann - exact))
        assert riemann_err > 1e-7  # the authors' rule is first order: its error is visible in float64
        assert np.max(np.abs(ours - exact)) < 1e-3 * riemann_err, (np.max(np.abs(ours - exact)), riemann_err)

        x_init = np.asarray(jax.random.normal(jax.random.key(1), (8, D), jnp.float64))
        ref = _official_tab_sample(sde, x_init, ts, exact)
        off = _official_tab_sample(sde, x_init, ts, riemann)
        x, nfe = sampling.sample(
            _oracle(sde),
            sde,
            (8, D),
            jax.random.key(0),
            method="deis",
            x_init=jnp.asarray(x_init),
            eps=1e-3,
            steps=20,
            order=3,
            grid=grid,
        )
        assert int(nfe) == 20
        assert np.max(np.abs(np.asarray(x) - ref)) < 1e-3 * np.max(np.abs(off - ref))


# (grid, eps, steps): tAB-DEIS of order r converges with order r + 1. The noise prediction along the flow behaves
# like sqrt(t) near t = 0 on VP, which a polynomial in t on a uniform-t grid resolves only to order ~1.5 when
# eps = 1e-3; eps = 0.05 keeps the uniform-t check about the method, not that singularity.
@pytest.mark.slow  # ~40 s on 2 shared CPU cores
@pytest.mark.parametrize("grid, eps", [("log_snr", 1e-3), ("uniform_t", 0.05)])
def test_deis_convergence_orders_float64(grid, eps):
    with jax.enable_x64(True):
        sde = sde_lib.VPSDE()
        x_init = jax.random.normal(jax.random.key(1), (8, D), jnp.float64)
        exact = _exact_map(sde, x_init, sde.T, eps)
        steps = (40, 80, 160)
        slopes = []
        for order in (0, 1, 2, 3):
            errs = []
            for n in steps:
                x, nfe = sampling.sample(
                    _oracle(sde),
                    sde,
                    (8, D),
                    jax.random.key(0),
                    method="deis",
                    x_init=x_init,
                    eps=eps,
                    steps=n,
                    order=order,
                    grid=grid,
                )
                assert int(nfe) == n
                errs.append(float(jnp.mean(jnp.abs(x - exact))))
            slopes.append(-np.polyfit(np.log(steps), np.log(errs), 1)[0])
        # order r -> r + 1, approached from below at these step counts (measured: log_snr 0.98 / 1.93 / 2.87 / 3.65,
        # uniform_t 0.99 / 1.91 / 2.71 / 3.35)
        for order, slope in enumerate(slopes):
            assert order + 1 - 0.7 < slope < order + 1 + 0.35, (grid, order, slopes)
        assert all(b > a + 0.5 for a, b in zip(slopes, slopes[1:], strict=False)), (grid, slopes)


def test_deis_orders_and_grid_defaults_are_the_authors():
    traits = sampling.method_traits("deis")
    assert traits.options["order"] == 3 and traits.default_grid == "quadratic_t" and traits.orders == (0, 1, 2, 3)
    ts = np.asarray(sampling.time_grid(sde_lib.VPSDE(), 4, 1e-3, kind="quadratic_t", dtype=jnp.float32))
    np.testing.assert_allclose(ts, (1.0 + np.arange(5) / 4 * (np.sqrt(1e-3) - 1.0)) ** 2, rtol=1e-6)
    with pytest.raises(ValueError, match="deis order must be 0, 1, 2 or 3; got 4"):
        sampling.sample(_oracle(sde_lib.VPSDE()), sde_lib.VPSDE(), (2, D), jax.random.key(0), method="deis", order=4)
    with pytest.raises(ValueError, match="unipc order must be 1, 2 or 3; got 0"):
        sampling.sample(_oracle(sde_lib.VPSDE()), sde_lib.VPSDE(), (2, D), jax.random.key(0), method="unipc", order=0)
    # order 0 is DDIM on the same grid
    with jax.enable_x64(True):
        vp, x_init = sde_lib.VPSDE(), jax.random.normal(jax.random.key(1), (4, D), jnp.float64)
        a, _ = sampling.sample(_oracle(vp), vp, (4, D), jax.random.key(0), method="deis", order=0, x_init=x_init)
        b, _ = sampling.sample(
            _oracle(vp), vp, (4, D), jax.random.key(0), method="ddim", grid="quadratic_t", steps=20, x_init=x_init
        )
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_a_grid_known_to_hurt_a_method_warns_once_when_traced():
    import warnings

    vp = sde_lib.VPSDE()
    model = _oracle(vp)
    assert "uniform_t" in sampling.method_traits("deis_logsnr_x0").bad_grids
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):  # the second call reuses the compiled sampler: no second warning
            sampling.sample(model, vp, (2, D), jax.random.key(0), method="deis_logsnr_x0", grid="uniform_t", steps=7)
        sampling.sample(model, vp, (2, D), jax.random.key(0), method="deis_logsnr_x0", steps=7)  # its good grid
        sampling.sample(model, vp, (2, D), jax.random.key(0), method="deis", grid="uniform_t", steps=7)
    hurt = [w for w in caught if "on grid 'uniform_t'" in str(w.message)]
    assert len(hurt) == 1 and "deis_logsnr_x0" in str(hurt[0].message), [str(w.message) for w in caught]
    for traits in sampling.TABLE.values():
        if traits.uses_grid:
            assert traits.good_grids[0] == traits.default_grid and not set(traits.good_grids) & set(traits.bad_grids)


def test_ode_on_rectified_flow_starts_at_t1_with_the_velocity_form():
    """The adaptive ODE sampler from T = 1 (the rectified-flow authors' RK45 sampler) is the exact flow map."""
    from scoresde.sampling import ode

    with jax.enable_x64(True):
        rf = sde_lib.RectifiedFlow()
        model = _oracle(rf)
        x_init = rf.prior_sampling(jax.random.key(1), (16, D)).astype(jnp.float64)
        exact = _exact_map(rf, x_init, 1.0, 1e-3)
        x, nfe = sampling.sample(
            model, rf, (16, D), jax.random.key(0), method="ode", x_init=x_init, eps=1e-3, rtol=1e-8, atol=1e-8
        )
        assert float(jnp.max(jnp.abs(x - exact))) < 1e-6 and int(nfe) > 10
        # the velocity form is the score-form drift wherever both are finite, and (x - D) / t for rectified flow
        t = jnp.full((16,), 0.37, jnp.float64)
        v = ode.flow_velocity(model.denoiser, rf, x_init, t)
        np.testing.assert_allclose(v, sde_lib.probability_flow_drift(model, rf, x_init, t), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(v, (x_init - model.denoiser(x_init, t)) / 0.37, rtol=1e-12)
        t1 = jnp.ones((16,), jnp.float64)
        assert bool(jnp.all(jnp.isfinite(ode.flow_velocity(model.denoiser, rf, x_init, t1))))


def test_unipc_lowers_its_final_orders_at_every_step_count():
    """UniPC's rule (the authors' ``UniPC.sample``): the last step is first order and the one before at most second
    order, whatever the step count; deis_logsnr_x0 keeps DPM-Solver's rule (only below 10 steps)."""
    from scoresde.sampling import multistep

    assert multistep._step_orders(20, 3, False, True).tolist() == [1, 2] + [3] * 16 + [2, 1]
    assert multistep._step_orders(20, 3, False, False).tolist() == [1, 2] + [3] * 18
    assert multistep._step_orders(20, 3, False, True, 10).tolist() == [1, 2] + [3] * 18
    assert multistep._step_orders(6, 3, True, True, 10).tolist() == [1, 1, 2, 3, 2, 1]
    with jax.enable_x64(True):
        vp = sde_lib.VPSDE()
        x_init = jax.random.normal(jax.random.key(1), (8, D), jnp.float64)
        ts = sampling.time_grid(vp, 20, 1e-3, kind="log_snr", dtype=jnp.float64)
        model = _oracle(vp)
        lowered = multistep.unipc(model, vp, x_init, ts, jax.random.key(0), 0, order=3)[0]
        kept = multistep.unipc(model, vp, x_init, ts, jax.random.key(0), 0, order=3, lower_order_final=False)[0]
        x, _ = sampling.sample(
            model, vp, (8, D), jax.random.key(0), method="unipc", x_init=x_init, eps=1e-3, order=3, steps=20
        )
        np.testing.assert_allclose(x, lowered, rtol=1e-12, atol=1e-12)  # jit vs eager rounding only
        assert not np.allclose(lowered, kept, rtol=0, atol=1e-9)
