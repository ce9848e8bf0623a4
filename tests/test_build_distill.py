"""The distillation edge: the student's online / target consistency functions and their dropout."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scoresde import build

from conftest import load_config


class _DropoutNet(nnx.Module):
    """The project's network call ``net(x, labels, train=, key=)``, with inverted dropout (rate 0.3) on a linear map."""

    def __init__(self, d, rngs):
        self.lin = nnx.Linear(d, d, rngs=rngs)

    def __call__(self, x, labels, *, train=False, key=None):
        h = self.lin(x.reshape(x.shape[0], -1)) + labels[:, None]
        if train:
            h = jnp.where(jax.random.bernoulli(key, 0.7, h.shape), h / 0.7, 0.0)
        return h.reshape(x.shape)


def _outputs(shared_dropout):
    config = load_config("digits_ct", "smoke")
    with config.unlocked():
        config.distill.shared_dropout = shared_dropout
    sde = build.make_sde(config)
    shape = (2,) + build.model_data_shape(config)
    graphdef, params, rest = nnx.split(_DropoutNet(int(np.prod(shape[1:])), nnx.Rngs(0)), nnx.Param, ...)
    x, t = jax.random.normal(jax.random.key(1), shape), jnp.array([0.5, 0.9])
    online, target = build.consistency_pair(config, sde, graphdef, rest, jax.random.key(7))
    online_8, _ = build.consistency_pair(config, sde, graphdef, rest, jax.random.key(8))
    return online(params)(x, t), target(params)(x, t), online_8(params)(x, t)


def test_shared_dropout_makes_the_target_the_online_network_when_parameters_agree():
    """The consistency-models code evaluates the target in train mode with the online network's dropout key:
    with equal parameters (CT's mu = 0) target == online exactly; without it the target runs without dropout."""
    online, target, other_key = _outputs(True)
    np.testing.assert_array_equal(online, target)
    assert not np.allclose(online, other_key)  # the dropout is live: another key gives another output
    online, target, _ = _outputs(False)
    assert not np.allclose(online, target)
