"""Power-function EMA and its post-hoc reconstruction (scoresde.posthoc_ema) against exact answers: the σ_rel ↔ γ
map, the tracked EMA's closed-form weights, the profiles' inner products by quadrature, and a synthesised EMA
against a directly tracked one within the Cauchy–Schwarz bound of the profile fit."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from scoresde import posthoc_ema as P


def test_sigma_rel_and_gamma_invert_each_other():
    sigma = np.asarray([0.01, 0.05, 0.08, 0.10, 0.2])
    gamma = P.gamma_from_sigma_rel(sigma)
    np.testing.assert_allclose(P.sigma_rel_from_gamma(gamma), sigma, rtol=1e-12)
    # the paper's pair: sigma_rel 0.05 and 0.10 are gamma 16.97 and 6.94 (EDM2, Sec. 3.1)
    np.testing.assert_allclose(P.gamma_from_sigma_rel([0.05, 0.10]), [16.97220, 6.93720], atol=1e-5)
    with pytest.raises(ValueError, match="sigma_rel=0.3"):
        P.gamma_from_sigma_rel(0.3)


def test_tracked_ema_has_the_closed_form_weights():
    rng = np.random.default_rng(0)
    theta = np.cumsum(rng.normal(size=(150, 3)), axis=0).astype(np.float32)
    tx = P.track_power_ema([0.05, 0.10])
    params = {"w": jnp.zeros(3)}
    state = tx.init(params)
    update = jax.jit(tx.update)
    for i in range(len(theta)):
        target = {"w": jnp.asarray(theta[i])}
        updates = jax.tree.map(lambda a, b: a - b, target, params)
        out, state = update(updates, state, params)
        assert out is updates or jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), out, updates))
        params = optax.apply_updates(params, updates)
    assert int(state.count) == len(theta)
    for gamma, ema in zip(P.gamma_from_sigma_rel([0.05, 0.10]), state.emas, strict=True):
        w = P.power_ema_weights(gamma, len(theta))
        np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-12)
        np.testing.assert_allclose(ema["w"], w @ theta, rtol=2e-5, atol=2e-5)


def test_weights_are_the_profile_integrated_over_each_update():
    gamma, t = 6.9372, 40
    w = P.power_ema_weights(gamma, t)
    grid = np.linspace(0, t, 400_001)
    density = (gamma + 1) * grid**gamma / t ** (gamma + 1)
    cum = np.concatenate([[0], np.cumsum((density[1:] + density[:-1]) / 2 * np.diff(grid))])
    np.testing.assert_allclose(np.diff(np.interp(np.arange(t + 1), grid, cum)), w, atol=1e-8)


def test_inner_products_match_quadrature():
    ga, gb, ta, tb = 16.97, 6.94, 70.0, 100.0
    grid = np.linspace(0, min(ta, tb), 1_000_001)  # the product vanishes beyond the shorter profile

    def p(t, g):
        return (g + 1) * (grid / t) ** g / t

    f = p(ta, ga) * p(tb, gb)
    quad = np.sum((f[1:] + f[:-1]) / 2 * np.diff(grid))
    np.testing.assert_allclose(P.profile_inner_products(ta, ga, tb, gb), quad, rtol=1e-6)
    np.testing.assert_allclose(P.profile_inner_products(tb, gb, ta, ga), quad, rtol=1e-6)
    # large times and exponents stay finite (the products are evaluated in logs)
    assert np.isfinite(P.profile_inner_products(1e7, 40.0, 2e7, 40.0))


def test_a_stored_profile_is_reproduced_exactly():
    t_in, s_in = np.repeat([100, 200, 300], 2), np.tile([0.05, 0.10], 3)
    x = P.solve_coefficients(t_in, s_in, [300], [0.10])
    np.testing.assert_allclose(x[:, 0], np.eye(6)[5], atol=1e-8)
    np.testing.assert_allclose(P.profile_residual(t_in, s_in, [300], [0.10], x), 0.0, atol=1e-6)


def test_synthesised_ema_equals_the_directly_tracked_one_within_the_profile_bound():
    """A toy run (noisy gradient descent on a quadratic, 600 updates) tracks σ_rel 0.05 and 0.10 (stored every 50
    updates) and, as the oracle, 0.08 directly. The synthesis differs from the oracle by at most
    ``residual · ‖p‖ · ‖θ − c‖`` (Cauchy–Schwarz; ``c`` any constant, since both profiles integrate to 1)."""
    steps, every, target = 600, 50, 0.08
    tx = optax.chain(optax.sgd(0.05), P.track_power_ema([0.05, 0.10, target]))
    params = {"a": jnp.zeros(4), "b": jnp.ones(())}
    state = tx.init(params)
    centre = {"a": jnp.asarray([1.0, -2.0, 0.5, 3.0]), "b": jnp.asarray(-1.0)}

    @jax.jit
    def step(params, state, key):
        grads = jax.tree.map(lambda p, c: p - c, params, centre)
        grads = jax.tree.map(lambda g, k: g + 2.0 * jax.random.normal(k, g.shape), grads, {"a": key, "b": key})
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    trajectory, snapshots = [], []
    for i in range(steps):
        params, state = step(params, state, jax.random.key(i))
        trajectory.append(np.concatenate([np.asarray(params["a"]), np.asarray(params["b"])[None]]))
        ph = P.find_power_ema_state(state)
        if (i + 1) % every == 0:
            snapshots.append((int(ph.count), ph.emas[0], ph.emas[1]))
    t_in = np.repeat([t for t, _, _ in snapshots], 2)
    s_in = np.tile([0.05, 0.10], len(snapshots))
    trees = [tree for _, e1, e2 in snapshots for tree in (e1, e2)]
    x = P.solve_coefficients(t_in, s_in, [steps], [target])[:, 0]
    synth = P.combine(trees, x)
    oracle = P.find_power_ema_state(state).emas[2]

    theta = np.asarray(trajectory, np.float64)
    g = P.gamma_from_sigma_rel(target)
    residual = P.profile_residual(t_in, s_in, [steps], [target], x[:, None])[0]
    bound = (
        residual * np.sqrt(P.profile_inner_products(steps, g, steps, g)) * np.linalg.norm(theta - theta.mean(0), axis=0)
    )
    err = np.abs(np.concatenate([synth["a"], synth["b"][None]]) - np.concatenate([oracle["a"], oracle["b"][None]]))
    assert residual < 0.02, residual  # twelve snapshot pairs fit the σ_rel 0.08 profile to 2 % in L²
    assert np.all(err <= bound + 1e-5), (err, bound)
    # the synthesis is much closer to the oracle than either stored profile is
    final = P.find_power_ema_state(state)
    for stored in final.emas[:2]:
        assert np.max(err) < 0.5 * np.max(np.abs(np.asarray(stored["a"]) - np.asarray(oracle["a"])))


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="singular"):
        P.solve_coefficients([10, 10], [0.05, 0.05], [10], [0.08])
    with pytest.raises(ValueError, match="> 0 updates"):
        P.solve_coefficients([0, 10], [0.05, 0.05], [10], [0.08])
    with pytest.raises(ValueError, match="2 snapshots but 3 coefficients"):
        P.combine([{"a": 1.0}, {"a": 2.0}], [0.2, 0.3, 0.5])
