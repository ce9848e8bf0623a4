"""The config edge's optimiser: settings from a config section, Adam / RAdam with warm-up, clipping and a
per-period linear decay; the EMA decay by half-life (EDM)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from scoresde import build

from conftest import load_config


def test_optimizer_settings_of_config_optim():
    config = load_config("toy2d_vp")
    assert build.optimizer_settings(config.optim) == dict(
        lr=1e-3,
        warmup=100,
        grad_clip=1.0,
        beta1=0.9,
        beta2=0.999,
        eps=1e-8,
        weight_decay=0.0,
        optimizer="adam",
        lr_decay_steps=0,
    )


def test_optimizer_settings_of_a_classifier_section():
    config = load_config("toy2d_vp_cond")
    assert build.optimizer_settings(config.classifier) == dict(
        lr=1e-3,
        warmup=0,
        grad_clip=1.0,
        beta1=0.9,
        beta2=0.999,
        eps=1e-8,
        weight_decay=0.0,
        optimizer="adam",
        lr_decay_steps=0,
    )


def test_only_adam_and_radam():
    config = load_config("toy2d_vp")
    with config.unlocked():
        config.optim.optimizer = "SGD"
    with pytest.raises(ValueError, match="unknown optimizer 'SGD'; expected one of: Adam, RAdam"):
        build.optimizer_settings(config.optim)


def test_lr_schedule_warms_up_linearly():
    schedule = build.lr_schedule(2e-4, warmup=100)
    np.testing.assert_allclose([float(schedule(c)) for c in (0, 25, 100, 1000)], [0.0, 5e-5, 2e-4, 2e-4], rtol=1e-6)
    assert float(build.lr_schedule(3e-4)(7)) == pytest.approx(3e-4)


def test_optimizer_from_config_clips_then_takes_an_adam_step():
    config = load_config("toy2d_vp")
    with config.unlocked():
        config.optim.warmup = 0
        config.optim.grad_clip = 1.0
    tx = build.optimizer_from_config(config)
    params = {"w": jnp.zeros(4)}
    grads = {"w": jnp.array([3.0, -4.0, 0.0, 0.0])}  # norm 5: clipped to norm 1, Adam's first step is -lr sign(g)
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    np.testing.assert_allclose(updates["w"], [-1e-3, 1e-3, 0.0, 0.0], rtol=1e-4, atol=1e-9)
    # the second step with the same gradient is again -lr sign(g): the bias corrections cancel
    updates, _ = tx.update(grads, state, jax.tree.map(lambda p, u: p + u, params, updates))
    np.testing.assert_allclose(updates["w"], [-1e-3, 1e-3, 0.0, 0.0], rtol=1e-4, atol=1e-9)


def _updates(tx, grads_seq, params):
    state, out = tx.init(params), []
    for g in grads_seq:
        u, state = tx.update(g, state, params)
        params = jax.tree.map(lambda p, d: p + d, params, u)
        out.append(u["w"])
    return np.stack(out)


_GRADS = [{"w": jnp.array([3.0, -4.0, 0.5, 0.0]) * (1.0 + 0.3 * k)} for k in range(8)]


def test_radam_is_optax_radam():
    """RAdam (the consistency-models CIFAR-10 optimiser) is ``optax.radam`` step for step: its first updates
    (rho_t <= 5) are bias-corrected momentum, later ones rectified Adam."""
    params = {"w": jnp.zeros(4)}
    ours = build.make_optimizer(lr=4e-4, optimizer="radam", beta1=0.9, beta2=0.999, eps=1e-8)
    ref = optax.radam(4e-4, b1=0.9, b2=0.999, eps=1e-8)
    np.testing.assert_allclose(_updates(ours, _GRADS, params), _updates(ref, _GRADS, params), rtol=1e-6, atol=0)


@pytest.mark.parametrize("grad_clip", [0.0, -1.0, float("inf")])
def test_clipping_off_leaves_gradients_unchanged(grad_clip):
    """``grad_clip <= 0`` or ``inf``: exactly Adam on the raw gradients (norm 5 and more, so clipping would show)."""
    params = {"w": jnp.zeros(4)}
    ours = build.make_optimizer(lr=1e-3, grad_clip=grad_clip)
    ref = optax.adam(1e-3, b1=0.9, b2=0.999, eps=1e-8)
    np.testing.assert_array_equal(_updates(ours, _GRADS, params), _updates(ref, _GRADS, params))
    clipped = build.make_optimizer(lr=1e-3, grad_clip=1.0)
    assert not np.allclose(_updates(clipped, _GRADS, params), _updates(ref, _GRADS, params))


def test_lr_decays_linearly_to_zero_within_every_period():
    """PD's per-round schedule: ``lr (1 - (k mod P) / P)``, the same as a fresh ``optax.linear_schedule`` per round."""
    schedule = build.lr_schedule(5e-5, decay_steps=100)
    per_round = optax.linear_schedule(5e-5, 0.0, transition_steps=100)
    counts = [0, 1, 50, 99, 100, 101, 150, 199, 200]
    np.testing.assert_allclose(
        [float(schedule(c)) for c in counts], [float(per_round(c % 100)) for c in counts], rtol=1e-6, atol=1e-12
    )
    np.testing.assert_allclose(float(schedule(150)), 2.5e-5, rtol=1e-6)


def _edm_ema_beta(cur_nimg, batch_size, ema_halflife_kimg=500, ema_rampup_ratio=0.05):
    """NVlabs/edm training/training_loop.py, "Update EMA", in plain Python."""
    ema_halflife_nimg = ema_halflife_kimg * 1000
    if ema_rampup_ratio is not None:
        ema_halflife_nimg = min(ema_halflife_nimg, cur_nimg * ema_rampup_ratio)
    return 0.5 ** (batch_size / max(ema_halflife_nimg, 1e-8))


@pytest.mark.parametrize("updates", [0, 1, 2, 10, 1000, 19531, 19532, 100000, 390624])
def test_ema_halflife_beta_is_edms(updates):
    beta = build.ema_halflife_decay(512, 500_000.0, 0.05)
    expected = _edm_ema_beta(updates * 512, 512)
    np.testing.assert_allclose(float(beta(updates)), expected, rtol=1e-6, atol=0)
    np.testing.assert_allclose(
        float(build.ema_halflife_decay(512, 500_000.0)(updates)),
        _edm_ema_beta(0, 512, ema_rampup_ratio=None),
        rtol=1e-7,
    )


def test_ema_decay_of_a_config():
    """A number (``model.ema_rate``) unless ``model.ema_halflife_img > 0``; the first ramped-up update gives 0."""
    config = load_config("toy2d_vp")
    assert build.ema_decay(config) == float(config.model.ema_rate)
    with config.unlocked():
        config.model.ema_halflife_img = 500_000.0
        config.model.ema_rampup_ratio = 0.05
        config.training.batch_size = 512
    beta = build.ema_decay(config)
    assert float(beta(0)) == 0.0
    np.testing.assert_allclose(float(beta(10**6)), 0.5 ** (512 / 500_000), rtol=1e-7)
    with pytest.raises(ValueError, match="halflife_img > 0; got -1.0"):
        build.ema_halflife_decay(512, -1.0)


def test_trainer_step_applies_a_half_life_ema():
    """The trainer's step evaluates the EMA decay at the update count: EDM's ramp-up makes the first EMA the
    network itself (beta 0), the second ``beta(1) ema + (1 - beta(1)) params``."""
    from scoresde import parallel, train_state, training

    config = load_config("toy2d_vp")
    with config.unlocked():
        config.model.ema_halflife_img = 1000.0
        config.model.ema_rampup_ratio = 10.0  # update 1: half-life min(1000, 1 * 8 * 10) = 80 images
        config.training.batch_size = 8
    settings = build.read_settings(config)
    tx = optax.sgd(0.1)
    state = train_state.init_state({"w": jnp.ones(3)}, tx)
    loss = lambda p, batch, key, step: (jnp.sum(p["w"][None, :] * batch), {})  # noqa: E731
    step = training.jit_step(tx, settings, parallel.make_mesh(), jax.random.key(0), loss=loss)
    batch = jnp.ones((8, 3))
    state, _ = step(state, batch)
    np.testing.assert_allclose(state["ema"]["w"], state["params"]["w"], rtol=0, atol=0)
    ema0 = np.asarray(state["ema"]["w"])
    state, _ = step(state, batch)
    b1 = 0.5 ** (8 / 80)
    np.testing.assert_allclose(state["ema"]["w"], b1 * ema0 + (1 - b1) * np.asarray(state["params"]["w"]), rtol=1e-6)


def test_pd_recipe_decays_its_lr_within_each_round_and_cd_uses_radam_unclipped():
    pd = load_config("cifar10_pd")
    schedule = build.lr_schedule_from_config(pd)
    np.testing.assert_allclose(
        [float(schedule(c)) for c in (0, 25000, 37500, 50000)], [5e-5, 2.5e-5, 1.25e-5, 5e-5], rtol=1e-6
    )
    settings = build.optimizer_settings(load_config("cifar10_cd").optim)
    assert (settings["optimizer"], settings["grad_clip"], settings["warmup"]) == ("radam", 0.0, 0)
