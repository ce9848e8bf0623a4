"""ECT's shrinking-Δt mapping and loss against hand-computed values."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from scoresde.fewstep import ect


def test_mapping_matches_the_formula_and_halves_the_gap_per_stage():
    t = jnp.array([0.01, 0.5, 1.9, 2.0, 10.0, 80.0])
    for stage in range(6):
        n = 1 + 8 / (1 + np.exp(np.asarray(t, np.float64)))  # 1 + k sigmoid(-b t)
        want = np.maximum(np.asarray(t) - np.asarray(t) * n / 2.0 ** (stage + 1), 0.0)
        np.testing.assert_allclose(ect.ect_r(t, stage), want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ect.ect_delta_t(t, 4) / ect.ect_delta_t(t, 3), 0.5, rtol=1e-6)
    # stage 0 is diffusion pretraining exactly where n(t)/2 >= 1, i.e. t <= ln 7 (and consistency training beyond)
    r0 = ect.ect_r(jnp.array([math.log(7) - 1e-3, math.log(7) + 1e-3]), 0)
    assert float(r0[0]) == 0.0 and float(r0[1]) > 0.0
    np.testing.assert_array_equal(ect.ect_stage(jnp.array([0, 99, 100, 250]), 100), [0, 0, 1, 2])
    np.testing.assert_allclose(ect.ect_weight(jnp.array([2.0]), jnp.array([1.5])), [2.0])


def test_loss_is_the_weighted_distance_to_the_stop_gradient_target():
    batch = jax.random.normal(jax.random.key(0), (512, 2))
    key = jax.random.key(1)
    f_fn = lambda p, x, t: x / (1.0 + p * t[:, None])  # any function with f(x, 0) = x

    loss, aux = ect.ect_loss(f_fn, 0.7, batch, key, stage=1, huber_c=0.03)
    k_t, k_eps = jax.random.split(key)
    t = ect.sample_noise_level(k_t, 512)
    eps = jax.random.normal(k_eps, batch.shape)
    r = ect.ect_r(t, 1)
    online = f_fn(0.7, batch + t[:, None] * eps, t)
    target = jnp.where((r > 0)[:, None], f_fn(0.7, batch + r[:, None] * eps, r), batch)
    want = (jnp.sqrt(jnp.sum((online - target) ** 2, -1) + 0.03**2) - 0.03) / (t - r)
    np.testing.assert_allclose(aux["losses"], want, rtol=1e-5)
    assert 0 < float(jnp.mean(r == 0)) < 1  # both branches are exercised
    # only the online branch is differentiated
    grad = jax.grad(lambda p: ect.ect_loss(f_fn, p, batch, key, stage=1, huber_c=0.03)[0])(0.7)
    manual = jax.grad(
        lambda p: jnp.mean(
            (jnp.sqrt(jnp.sum((f_fn(p, batch + t[:, None] * eps, t) - target) ** 2, -1) + 0.03**2) - 0.03) / (t - r)
        )
    )(0.7)
    np.testing.assert_allclose(grad, manual, rtol=1e-5)
    # c = 0 (the L2 norm) keeps a finite gradient where the error vanishes
    zero = jnp.zeros((8, 2))
    g0 = jax.grad(lambda p: ect.ect_loss(lambda q, x, t: q * jnp.zeros_like(x), p, zero, key, stage=0)[0])(1.0)
    assert np.isfinite(float(g0))
