"""The config edge of the continuous-time few-step methods: the time inputs a network receives."""

import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import build

from conftest import load_config


def _with(config, **fields):
    with config.unlocked():
        for dotted, value in fields.items():
            section, name = dotted.split(".")
            config[section][name] = value
    return config


def _recorder():
    """A stand-in network that returns the labels it was called with, broadcast to the input's shape."""
    return lambda x, labels, **kw: jnp.broadcast_to(labels[:, None], x.shape)


T = jnp.array([0.05, 0.4, 0.9, 1.3, float(np.pi / 2)], jnp.float32)


def test_scm_network_reads_trigflow_time_by_default():
    """The paper's c_noise(t) = t: the network sees the TrigFlow time itself."""
    config = load_config("digits_sct")
    sde = build.make_sde(config)
    f = build.trigflow_net(_recorder(), sde, config)
    np.testing.assert_array_equal(f(jnp.zeros((5, 3)), T)[:, 0], T)


def test_scm_network_with_sde_labels_reads_the_vp_label_of_the_same_noise_level():
    """``sde``: 999 s with sigma(s) / alpha(s) = sigma_d tan(t) (the VP's continuous label), t = pi/2 read as T."""
    config = _with(load_config("digits_sct"), **{"distill.scm_time_label": "sde"})
    sde = build.make_sde(config)
    labels = np.asarray(build.trigflow_net(_recorder(), sde, config)(jnp.zeros((5, 3)), T)[:, 0])
    s = jnp.asarray(labels / 999.0)
    sigma_d = float(config.distill.sigma_data)
    inside = np.asarray(T) < 1.5  # below the VP's largest noise level sigma(T) / alpha(T)
    np.testing.assert_allclose(
        np.asarray(sde.sigma(s) / sde.alpha(s))[inside], sigma_d * np.tan(np.asarray(T))[inside], rtol=1e-3
    )
    assert labels[-1] == pytest.approx(999.0 * sde.T)


def test_unknown_scm_time_label_is_refused_by_name():
    config = _with(load_config("digits_sct"), **{"distill.scm_time_label": "999t"})
    with pytest.raises(ValueError, match=r"scm_time_label '999t'; expected one of: trigflow, sde"):
        build.trigflow_net(_recorder(), build.make_sde(config), config)


@pytest.mark.parametrize("name", ["digits_meanflow", "toy2d_meanflow", "cifar10_meanflow"])
def test_meanflow_networks_read_raw_t_and_r(name):
    """MeanFlow's (t, r) enter the network in [0, 1], as the official code feeds its positional embedding."""
    config = load_config(name)
    seen = {}

    def model(x, labels, r=None):
        seen.update(t=labels, r=r)
        return x

    t, r = jnp.array([0.9, 0.5]), jnp.array([0.1, 0.5])
    build.meanflow_u(model, build.make_sde(config), config)(jnp.zeros((2, 3)), r, t)
    np.testing.assert_allclose(seen["t"], t)
    np.testing.assert_allclose(seen["r"], r)
