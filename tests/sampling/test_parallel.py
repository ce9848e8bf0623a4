"""ParaDiGMS parallel-in-time sampling against the sequential sampler it must reproduce.

Window 1 is the sequential DDIM / DDPM sampler bit for bit; the tolerance going to 0 recovers it to
float64 rounding; on a D = 64 Gaussian the window needs far fewer sequential rounds than steps.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import sampling
from scoresde import sde as sde_lib
from scoresde.analytic import GaussianMixture

VP = sde_lib.VPSDE()


def _mixture_score64():
    gm = GaussianMixture(np.array([[1.0, 0.5, -0.5, 0.0], [-1.0, 0.0, 0.5, 1.0]]), np.array([0.5, 0.3]))
    sf = gm.score_fn(VP)
    return lambda x, t: sf(x, t).astype(x.dtype)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_window_one_is_the_sequential_sampler_bitwise(eta):
    with jax.enable_x64(True):
        score_fn, key = _mixture_score64(), jax.random.key(0)
        x_init = jax.random.normal(jax.random.key(1), (8, 4), jnp.float64)
        ref, nfe_ref = sampling.sample(score_fn, VP, (8, 4), key, method="ddim", x_init=x_init, steps=30, eta=eta)
        x, nfe, stats = sampling.parallel_sample(
            score_fn, VP, (8, 4), key, method="ddim", eta=eta, window=1, tol=1e-3, x_init=x_init, steps=30, stats=True
        )
        rounds = stats["rounds"]
        assert x.dtype == jnp.float64
        np.testing.assert_array_equal(np.asarray(x), np.asarray(ref))
        assert int(nfe) == int(nfe_ref) == 30 and int(rounds) == 30


def test_ddpm_method_is_ddim_eta_one():
    with jax.enable_x64(True):
        score_fn, key = _mixture_score64(), jax.random.key(2)
        kw = dict(window=4, tol=1e-2, steps=20)
        a = sampling.parallel_sample(score_fn, VP, (4, 4), key, method="ddpm", **kw)[0]
        b = sampling.parallel_sample(score_fn, VP, (4, 4), key, method="ddim", eta=1.0, **kw)[0]
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_tolerance_to_zero_recovers_the_sequential_sampler(eta):
    with jax.enable_x64(True):
        score_fn, key = _mixture_score64(), jax.random.key(3)
        x_init = jax.random.normal(jax.random.key(4), (8, 4), jnp.float64)
        ref, _ = sampling.sample(score_fn, VP, (8, 4), key, method="ddim", x_init=x_init, steps=30, eta=eta)
        errors = []
        for tol in (1e-1, 1e-2, 1e-4, 0.0):
            x, nfe, stats = sampling.parallel_sample(
                score_fn,
                VP,
                (8, 4),
                key,
                method="ddim",
                eta=eta,
                window=6,
                tol=tol,
                x_init=x_init,
                steps=30,
                stats=True,
            )
            rounds = stats["rounds"]
            errors.append(float(jnp.max(jnp.abs(x - ref))))
            assert int(nfe) == 6 * int(rounds)
        assert errors[0] > 1e-4, errors  # a loose tolerance does stop early (the test can fail)
        assert errors[0] > errors[1] > errors[2] > errors[3], errors
        assert errors[3] < 1e-12, errors


def test_d64_gaussian_needs_far_fewer_rounds_than_steps():
    """D = 64 Gaussian, 100 DDIM steps, window 25, tol 1e-3: observed 20 rounds (ratio 0.20), RMS 1.1e-5 from sequential."""
    d, steps = 64, 100
    stds = np.linspace(0.2, 1.0, d)
    gm = GaussianMixture(np.linspace(-1.0, 1.0, d)[None], stds[None])
    score_fn = gm.score_fn(VP)
    key = jax.random.key(5)
    x_init = jax.random.normal(jax.random.key(6), (16, d))
    ref, _ = sampling.sample(score_fn, VP, (16, d), key, method="ddim", x_init=x_init, steps=steps)
    x, nfe, stats = sampling.parallel_sample(
        score_fn, VP, (16, d), key, method="ddim", window=25, tol=1e-3, x_init=x_init, steps=steps, stats=True
    )
    rounds = stats["rounds"]
    ratio = int(rounds) / steps
    rms = float(jnp.sqrt(jnp.mean((x - ref) ** 2)))
    print(f"D=64: rounds {int(rounds)} / steps {steps} = {ratio:.2f}, nfe {int(nfe)}, rms vs sequential {rms:.2e}")
    assert ratio <= 0.3, ratio
    # the answer is the sequential one to well within the data scale (the tolerance's purpose)
    assert rms < 1e-3, rms


def test_bad_arguments_are_named():
    score_fn = lambda x, t: -x
    with pytest.raises(ValueError, match="'heun'"):
        sampling.parallel_sample(score_fn, VP, (2, 2), jax.random.key(0), method="heun", window=2, tol=0.1)
    with pytest.raises(ValueError, match="window must be a positive int; got 0"):
        sampling.parallel_sample(score_fn, VP, (2, 2), jax.random.key(0), window=0, tol=0.1)
    with pytest.raises(ValueError, match="eta"):
        sampling.parallel_sample(score_fn, VP, (2, 2), jax.random.key(0), method="ddpm", eta=0.5, window=2, tol=0.1)
