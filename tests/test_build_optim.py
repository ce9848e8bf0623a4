"""The config edge's optimiser: settings from a config section, Adam with warm-up and clipping."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import build

from conftest import load_config


def test_optimizer_settings_of_config_optim():
    config = load_config("toy2d_vp")
    assert build.optimizer_settings(config.optim) == dict(
        lr=1e-3, warmup=100, grad_clip=1.0, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0
    )


def test_optimizer_settings_of_a_classifier_section():
    config = load_config("toy2d_vp_cond")
    assert build.optimizer_settings(config.classifier) == dict(
        lr=1e-3, warmup=0, grad_clip=1.0, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0
    )


def test_only_adam():
    config = load_config("toy2d_vp")
    with config.unlocked():
        config.optim.optimizer = "SGD"
    with pytest.raises(ValueError, match="unknown optimizer 'SGD'; expected 'Adam'"):
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
