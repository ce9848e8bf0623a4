"""DPM-Solver-fast (``sample(method="dpm_solver", schedule="fast")``): the order rule, the NFE budget, its
accuracy on the exact Gaussian flow map (float64), its identity with order-3 steps, and its errors.

Lu et al. 2022, Sec. 3.4: for a budget of ``NFE`` evaluations, ``K = NFE // 3 + 1`` intervals with orders
``[3]*(K-2) + [2, 1]`` / ``[3]*(K-1) + [1]`` / ``[3]*(K-1) + [2]`` for ``NFE % 3 == 0 / 1 / 2``.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from scoresde import build, sampling
from scoresde import parameterization as P
from scoresde import sde as sde_lib
from scoresde.sampling import fast

from conftest import load_config

D = 4
MU = np.array([0.3, -0.2, 0.1, 0.0])
VAR = np.array([0.05, 0.2, 0.5, 1.0]) ** 2
EPS = 1e-3

# The rule written out by hand (not recomputed from the formula the code uses).
ORDER3 = {
    6: (3, 2, 1),
    7: (3, 3, 1),
    8: (3, 3, 2),
    9: (3, 3, 2, 1),
    10: (3, 3, 3, 1),
    11: (3, 3, 3, 2),
    12: (3, 3, 3, 2, 1),
}


def _oracle(sde):
    """Exact score and denoiser of N(MU, diag VAR) noised by ``sde`` (dtype of the state)."""

    def parts(x, t):
        a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
        mu, var = jnp.asarray(MU, x.dtype)[None], jnp.asarray(VAR, x.dtype)[None]
        return a, mu, var, a**2 * var + s**2

    def score(x, t):
        a, mu, _, tot = parts(x, t)
        return -(x - a * mu) / tot

    def denoiser(x, t):
        a, mu, var, tot = parts(x, t)
        return mu + a * var / tot * (x - a * mu)

    return P.with_denoiser(score, denoiser)


def _exact_map(sde, x, t0, t1):
    mu, var = jnp.asarray(MU, x.dtype)[None], jnp.asarray(VAR, x.dtype)[None]
    a0, s0 = sde.alpha(jnp.asarray(t0, x.dtype)), sde.sigma(jnp.asarray(t0, x.dtype))
    a1, s1 = sde.alpha(jnp.asarray(t1, x.dtype)), sde.sigma(jnp.asarray(t1, x.dtype))
    return a1 * mu + (x - a0 * mu) * jnp.sqrt((a1**2 * var + s1**2) / (a0**2 * var + s0**2))


class CountingScore:
    """Counts the score evaluations actually executed (a ``jax.debug.callback`` per call)."""

    def __init__(self, model):
        self.model, self.calls = model, 0
        self.denoiser = self._denoiser if getattr(model, "denoiser", None) is not None else None

    def _tick(self):
        self.calls += 1

    def __call__(self, x, t):
        jax.debug.callback(self._tick)
        return self.model(x, t)

    def _denoiser(self, x, t):
        jax.debug.callback(self._tick)
        return self.model.denoiser(x, t)

    def take(self):
        jax.effects_barrier()
        n, self.calls = self.calls, 0
        return n


def test_fast_orders_follow_the_rule():
    for nfe, orders in ORDER3.items():
        assert fast.fast_orders(nfe, 3) == orders, nfe
        assert sum(orders) == nfe and len(orders) == nfe // 3 + 1
    # order 2 / 1, as the authors' singlestep solver: the budget is spent exactly, odd budgets end first order
    assert fast.fast_orders(7, 2) == (2, 2, 2, 1) and fast.fast_orders(8, 2) == (2, 2, 2, 2)
    assert fast.fast_orders(4, 1) == (1, 1, 1, 1)
    assert [fast.fast_orders(n, 3) for n in (1, 2, 3)] == [(1,), (2,), (2, 1)]


def test_fast_grid_log_snr_uniform_else_subsampled():
    sde = sde_lib.VPSDE()
    ts, orders = fast.fast_schedule(sde, 12, EPS, order=3)
    assert orders == ORDER3[12]
    np.testing.assert_array_equal(ts, sampling.time_grid(sde, 5, EPS, kind="log_snr"))
    # another grid: the NFE-interval grid at the cumulative orders 0, 3, 6, 9, 11, 12
    ts, _ = fast.fast_schedule(sde, 12, EPS, order=3, kind="uniform_t")
    base = sampling.time_grid(sde, 12, EPS, kind="uniform_t")
    np.testing.assert_array_equal(ts, base[np.array([0, 3, 6, 9, 11, 12])])


def test_reported_nfe_equals_the_budget():
    sde = sde_lib.VPSDE()
    score = CountingScore(_oracle(sde))
    cases = [({"steps": n}, n) for n in ORDER3]
    cases += [
        ({"steps": 7, "grid": "uniform_t"}, 7),
        ({"steps": 8, "order": 2}, 8),
        ({"steps": 7, "denoise": True}, 8),
        ({"steps": 7, "to_zero": True}, 7),
    ]
    for options, expected in cases:
        options = {"order": 3, **options}
        _, nfe = sampling.sample(score, sde, (8, D), jax.random.key(0), method="dpm_solver", schedule="fast", **options)
        made = score.take()
        assert int(nfe) == made == expected, (options, int(nfe), made)
    # alpha(T) = 0: the forced first-order first step is part of the budget ([1] + the rule for NFE - 1)
    rf = sde_lib.RectifiedFlow()
    score = CountingScore(_oracle(rf))
    ts, orders = fast.fast_schedule(rf, 10, EPS, order=3)
    assert orders == (1,) + ORDER3[9] and ts.shape == (6,)
    x, nfe = sampling.sample(
        score, rf, (8, D), jax.random.key(0), method="dpm_solver", schedule="fast", steps=10, order=3
    )
    assert int(nfe) == score.take() == 10 and bool(jnp.all(jnp.isfinite(x)))


def _errors(sde, runs):
    with jax.enable_x64(True):
        model = _oracle(sde)
        x_init = jax.random.normal(jax.random.key(1), (16, D), jnp.float64)
        exact = _exact_map(sde, x_init, sde.T, EPS)
        out = []
        for options in runs:
            x, nfe = sampling.sample(
                model, sde, (16, D), jax.random.key(0), method="dpm_solver", x_init=x_init, eps=EPS, **options
            )
            assert x.dtype == jnp.float64
            out.append((float(jnp.max(jnp.abs(x - exact))), int(nfe)))
        return out


def test_fast_beats_uniform_order2_at_12_nfe():
    sde = sde_lib.VPSDE()
    (e_fast, n_fast), (e_2, n_2), (e_3, n_3) = _errors(
        sde, [dict(order=3, schedule="fast", steps=12), dict(order=2, steps=6), dict(order=3, steps=4)]
    )
    print(
        f"\nVP, 12 NFE, max |x - exact flow map|: fast {e_fast:.3e}, uniform order 2 {e_2:.3e}, "
        f"uniform order 3 {e_3:.3e}"
    )
    assert n_fast == n_2 == n_3 == 12
    # Measured (float64, deterministic): fast 1.909e-1, uniform order 2 5.040e-1 (2.6x); uniform order 3 on 4
    # intervals 7.415e-2. Few steps on a stiff component (std 0.05): the errors are large in absolute terms,
    # their order is the point. At 24 NFE: fast 8.2e-3, order 2 1.2e-1, order 3 1.0e-2.
    assert e_fast < e_2 / 2, (e_fast, e_2)


def test_fast_is_order3_uniform_then_an_order2_and_an_order1_step():
    """NFE = 12 on log-SNR: K = 5 intervals; the first K - 2 are order-3 uniform steps on the same points (the
    time_grid of 5 intervals), then one order-2 and one order-1 step: the composition agrees to rounding."""
    with jax.enable_x64(True):
        sde = sde_lib.VPSDE()
        model = _oracle(sde)
        x_init = jax.random.normal(jax.random.key(1), (16, D), jnp.float64)
        x, nfe = sampling.sample(
            model,
            sde,
            (16, D),
            jax.random.key(0),
            method="dpm_solver",
            x_init=x_init,
            eps=EPS,
            order=3,
            schedule="fast",
            steps=12,
        )
        ts = sampling.time_grid(sde, 5, EPS, kind="log_snr", dtype=jnp.float64)

        @jax.jit
        def composed(x0):
            y, n = fast.dpm_solver(model, sde, x0, ts[:4], jax.random.key(0), 0, order=3)
            y, n = fast.dpm_solver(model, sde, y, ts[3:5], jax.random.key(0), n, order=2)
            return fast.dpm_solver(model, sde, y, ts[4:], jax.random.key(0), n, order=1)

        y, n = composed(x_init)
        assert int(nfe) == int(n) == 12
        # equal to rounding (float64; not bitwise: XLA fuses the two programs differently); a wrong order or
        # grid point differs by >= 5e-2 here (orders (3,3,3,2,2) on these points: 5.8e-2)
        np.testing.assert_allclose(x, y, rtol=1e-13, atol=1e-14)
        # and it is not just the order-3 uniform sampler on 5 intervals (15 NFE)
        z, nz = sampling.sample(
            model, sde, (16, D), jax.random.key(0), method="dpm_solver", x_init=x_init, eps=EPS, order=3, steps=5
        )
        assert int(nz) == 15 and not np.allclose(x, z, rtol=1e-6, atol=1e-8)


def test_bad_values_raise_naming_the_value():
    sde = sde_lib.VPSDE()
    model = _oracle(sde)
    with pytest.raises(ValueError, match="unknown dpm_solver schedule 'fastest'; expected one of: uniform, fast"):
        sampling.sample(model, sde, (2, D), jax.random.key(0), method="dpm_solver", schedule="fastest")
    with pytest.raises(ValueError, match="unknown option"):
        sampling.sample(model, sde, (2, D), jax.random.key(0), method="ddim", schedule="fast")
    with pytest.raises(ValueError, match="order must be 1, 2 or 3; got 4"):
        sampling.sample(model, sde, (2, D), jax.random.key(0), method="dpm_solver", schedule="fast", order=4)
    with pytest.raises(ValueError, match="NFE budget >= 1; got 0"):
        fast.fast_orders(0)
    with pytest.raises(ValueError, match="NFE budget >= 2"):
        sampling.sample(
            _oracle(sde_lib.RectifiedFlow()),
            sde_lib.RectifiedFlow(),
            (2, D),
            jax.random.key(0),
            method="dpm_solver",
            schedule="fast",
            steps=1,
        )
    with pytest.raises(ValueError, match=r"orders must be 2 ints"):
        fast.dpm_solver(model, sde, jnp.zeros((2, D)), jnp.array([1.0, 0.5, EPS]), jax.random.key(0), 0, orders=(3, 4))


def test_config_edge_passes_schedule():
    config = ml_collections.ConfigDict()
    config.sampling = ml_collections.ConfigDict(
        dict(method="dpm_solver", steps=7, order=3, schedule="Fast", noise_removal=False)
    )
    # a hand-made config is completed from the defaults table (to_zero=False), as a loaded one is
    assert build.sampling_options(config) == (
        "dpm_solver",
        {"denoise": False, "steps": 7, "order": 3, "schedule": "fast", "to_zero": False},
    )
    config.sampling.schedule = ""  # the default: the method's own (uniform)
    assert "schedule" not in build.sampling_options(config)[1]
    config.sampling.schedule = "mixed"
    with pytest.raises(ValueError, match="unknown dpm_solver schedule 'mixed'"):
        build.sampling_options(config)
    from scoresde import config_defaults

    assert config_defaults.get_default_configs().sampling.schedule == ""


def _point_mass_score(sde, x_star):
    """The exact score of data concentrated at ``x_star``: -(x - α x*) / σ²; its denoiser is x* itself."""

    def score_fn(x, t):
        a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
        return -(x - a * x_star[None]) / s**2

    return score_fn


def test_ddim_clip_denoised_clips_the_data_prediction():
    """With data at a point x*, DDIM's data prediction is x* at every step: inside the range clipping changes
    nothing (bit for bit); outside it, every prediction is the range's end, so DDIM ends there."""
    sde = sde_lib.VPSDE()
    key = jax.random.key(0)
    inside = _point_mass_score(sde, jnp.array([0.5, -0.9]))
    a, _ = sampling.sample(inside, sde, (8, 2), key, method="ddim", steps=20, eps=EPS)
    b, _ = sampling.sample(inside, sde, (8, 2), key, method="ddim", steps=20, eps=EPS, clip_denoised=(-1.0, 1.0))
    np.testing.assert_array_equal(a, b)
    outside = _point_mass_score(sde, jnp.array([2.0, -3.0]))
    plain, _ = sampling.sample(outside, sde, (8, 2), key, method="ddim", steps=20, eps=EPS)
    clipped, _ = sampling.sample(outside, sde, (8, 2), key, method="ddim", steps=20, eps=EPS, clip_denoised=(-1.0, 1.0))
    np.testing.assert_allclose(plain, np.broadcast_to([2.0, -3.0], (8, 2)), atol=0.02)
    np.testing.assert_allclose(clipped, np.broadcast_to([1.0, -1.0], (8, 2)), atol=0.02)
    with pytest.raises(ValueError, match=r"clip_denoised must be a \(low, high\) range"):
        sampling.sample(outside, sde, (8, 2), key, method="ddim", steps=4, clip_denoised=(1.0, -1.0))


def test_config_clip_denoised_is_the_data_range_of_ddim_only():
    config = load_config("digits_vp", "smoke")
    config.sampling.method = "ddim"
    config.sampling.clip_denoised = True
    config.data.centered = True
    assert build.sampling_options(config)[1]["clip_denoised"] == (-1.0, 1.0)
    config.data.centered = False
    assert build.sampling_options(config)[1]["clip_denoised"] == (0.0, 1.0)
    config.sampling.method = "dpm_solver++"
    with pytest.raises(ValueError, match="clip_denoised=True is an option of method 'ddim'"):
        build.sampling_options(config)
    config.sampling.method = "ddim"
    config.sampling.parallel_window = 4
    with pytest.raises(ValueError, match="ParaDiGMS.*does not clip"):
        build.parallel_settings(config)
