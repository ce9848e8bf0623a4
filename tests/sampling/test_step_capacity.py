"""``step_capacity``: a grid padded to a fixed number of intervals with ``steps`` traced, so one compiled sampler
serves every step count up to the capacity, and its samples and NFE are those of the unpadded grid."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import parameterization as P
from scoresde import sampling
from scoresde import sde as sde_lib

from conftest import BackendCompiles

D = 3
MEAN = jnp.array([0.5, -1.0, 0.2])
STD = jnp.array([0.3, 1.0, 0.6])


def _gaussian_model(sde):
    """The exact score and denoiser of x0 ~ N(MEAN, diag(STD²)) under any linear process (finite at alpha = 0)."""

    def parts(x, t):
        a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
        var = a**2 * STD[None] ** 2 + s**2
        return a, var, x - a * MEAN[None]

    def score(x, t):
        _, var, r = parts(x, t)
        return -r / var

    def denoiser(x, t):
        a, var, r = parts(x, t)
        return MEAN[None] + a * STD[None] ** 2 / var * r

    return P.with_denoiser(score, denoiser)


GRID_METHODS = [
    ("ddim", {}),
    ("ddim", {"eta": 1.0}),
    ("dpm_solver", {"order": 3}),
    ("dpm_solver++", {}),
    ("edm_heun", {"S_churn": 10.0}),
    ("unipc", {"order": 3}),
    ("deis", {}),
    ("deis_logsnr_x0", {"order": 3}),
    ("dpm_solver++_sde", {"order": 3}),
    ("euler_ancestral", {}),
]


@pytest.mark.parametrize("sde_name", ["vpsde", "rectified_flow"])
@pytest.mark.parametrize("method,options", GRID_METHODS, ids=[f"{m}{o or ''}" for m, o in GRID_METHODS])
def test_padded_grid_gives_the_unpadded_samples_and_nfe(method, options, sde_name):
    """In float64, where both programs' rounding is far below the tolerance (in float32 a 2-step order-3
    DPM-Solver amplifies the two programs' different rounding to ~1e-4)."""
    with jax.enable_x64(True):
        _padded_equals_unpadded(method, options, sde_name)


def _padded_equals_unpadded(method, options, sde_name):
    sde = sde_lib.get_sde(sde_name)
    model = _gaussian_model(sde)
    x_init = jax.random.normal(jax.random.key(0), (16, D), jnp.float64)
    for steps in (1, 6):
        exact, nfe = sampling.sample(
            model, sde, x_init.shape, jax.random.key(1), method=method, x_init=x_init, steps=steps, **options
        )
        padded, nfe_padded = sampling.sample(
            model,
            sde,
            x_init.shape,
            jax.random.key(1),
            method=method,
            x_init=x_init,
            steps=steps,
            step_capacity=9,
            **options,
        )
        assert int(nfe_padded) == int(nfe), (steps, int(nfe), int(nfe_padded))
        assert padded.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(padded), np.asarray(exact), rtol=1e-10, atol=1e-10, err_msg=str(steps))
        assert np.all(np.isfinite(np.asarray(padded)))


def test_padded_grid_with_to_zero_and_denoise():
    with jax.enable_x64(True):
        _edm_endings()


def _edm_endings():
    sde = sde_lib.EDMSDE()
    model = _gaussian_model(sde)
    x_init = sde.prior_sampling(jax.random.key(0), (16, D)).astype(jnp.float64)
    for opts in ({"to_zero": True}, {"denoise": True}):
        exact, nfe = sampling.sample(model, sde, x_init.shape, jax.random.key(1), "edm_heun", x_init, steps=6, **opts)
        padded, nfe_p = sampling.sample(
            model, sde, x_init.shape, jax.random.key(1), "edm_heun", x_init, steps=6, step_capacity=18, **opts
        )
        assert int(nfe_p) == int(nfe)
        np.testing.assert_allclose(np.asarray(padded), np.asarray(exact), rtol=1e-10, atol=1e-10)


def test_padded_time_grid_is_the_grid_then_eps():
    for sde in (sde_lib.VPSDE(), sde_lib.RectifiedFlow()):
        for kind in sampling.GRIDS:
            for steps in (1, 5):
                exact = sampling.time_grid(sde, steps, 1e-3, kind=kind)
                padded = sampling.time_grid(sde, jnp.asarray(steps), 1e-3, kind=kind, capacity=8)
                assert padded.shape == (9,)
                np.testing.assert_array_equal(np.asarray(padded[: steps + 1]), np.asarray(exact))
                np.testing.assert_array_equal(np.asarray(padded[steps:]), np.full(9 - steps, np.float32(1e-3)))


def test_one_program_for_every_step_count_up_to_the_capacity():
    sde = sde_lib.VPSDE()
    model = _gaussian_model(sde)
    x_init = jax.random.normal(jax.random.key(0), (8, D))
    jax.block_until_ready(x_init)
    counts, nfes = [], []
    for steps in (5, 10, 20, 32):
        with BackendCompiles("_sample_jit") as c:
            out, nfe = sampling.sample(
                model, sde, x_init.shape, jax.random.key(1), "dpm_solver++", x_init, steps=steps, step_capacity=32
            )
            jax.block_until_ready(out)
        counts.append(c.count)
        nfes.append(int(nfe))
    assert counts == [1, 0, 0, 0], counts
    assert nfes == [5, 10, 20, 32]


def test_step_capacity_is_checked():
    sde = sde_lib.VPSDE()
    model = _gaussian_model(sde)
    with pytest.raises(ValueError, match="steps=40 does not fit step_capacity=32"):
        sampling.sample(model, sde, (2, D), jax.random.key(0), "unipc", steps=40, step_capacity=32)
    with pytest.raises(ValueError, match="step_capacity must be a positive Python int; got 0"):
        sampling.sample(model, sde, (2, D), jax.random.key(0), "unipc", steps=4, step_capacity=0)
    with pytest.raises(ValueError, match="schedule 'fast' places its grid"):
        sampling.sample(
            model, sde, (2, D), jax.random.key(0), "dpm_solver", steps=10, schedule="fast", step_capacity=16
        )
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['step_capacity'\] for method 'pc'"):
        sampling.sample(model, sde, (2, D), jax.random.key(0), "pc", step_capacity=16)
