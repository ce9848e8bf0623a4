"""EDM's augmentation conditioning (``augment_dim`` / ``augment_labels``) on the three score networks: off, it
leaves the parameters and outputs as they were; on, all-zero labels (sampling) are the network without them, and
non-zero labels change the output.

The default (``augment_dim=0``) is today's network number for number: ``tests/test_convert.py`` checks it
against the reference checkpoints and ``tests/models/test_param_counts.py`` its parameter counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scoresde.models.ddpm import DDPM
from scoresde.models.mlp import MLPScore
from scoresde.models.ncsnpp import NCSNpp

_UNET = dict(image_size=4, num_channels=3, nf=32, ch_mult=(2,), num_res_blocks=1, attn_resolutions=(), dropout=0.0)
BUILDERS = {
    "mlp": lambda rngs, **kw: MLPScore(12, hidden=16, num_layers=2, embed_dim=8, rngs=rngs, **kw),
    "ncsnpp": lambda rngs, **kw: NCSNpp(**_UNET, embedding_type="fourier", rngs=rngs, **kw),
    "ddpm": lambda rngs, **kw: DDPM(**_UNET, rngs=rngs, **kw),
}


def _inputs(name):
    k = jax.random.key(1)
    if name == "mlp":
        return jax.random.normal(k, (2, 12)), jnp.asarray([3.0, 500.0])
    x = jax.random.uniform(k, (2, 4, 4, 3))
    return x, (jnp.asarray([0.5, 20.0]) if name == "ncsnpp" else jnp.asarray([3.0, 500.0]))


def _params(model):
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _check_added_kernel(p_plain, p_on, width=9):
    """The option adds exactly one bias-free ``(width, ·)`` kernel beside the unchanged tree."""
    extra = {k: v for k, v in p_on.items() if k not in p_plain}
    assert len(extra) == 1
    (added,) = extra.values()
    assert list(added) == ["kernel"] and added["kernel"].shape[0] == width
    assert jax.tree.structure({k: p_on[k] for k in p_plain}) == jax.tree.structure(p_plain)


def _randomised(name):
    """``(plain, on)`` built shape-only (fast) and given the same random parameters (a zero-initialised output layer
    would hide the labels' effect), the added kernel random too. 64 channels: with 32 GroupNorm groups of one
    channel the DDPM blocks would normalise the (per-channel constant) time embedding away."""
    plain = nnx.eval_shape(lambda: BUILDERS[name](nnx.Rngs(0)))
    on = nnx.eval_shape(lambda: BUILDERS[name](nnx.Rngs(0), augment_dim=9))
    p_on = _params(on)
    leaves, tree = jax.tree.flatten(p_on)
    keys = jax.random.split(jax.random.key(7), len(leaves))
    p_on = jax.tree.unflatten(tree, [0.1 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)])
    p_plain = _params(plain)
    _check_added_kernel(p_plain, p_on)
    p_plain = {k: p_on[k] for k in p_plain}
    for model, p in ((plain, p_plain), (on, p_on)):
        state = nnx.state(model, nnx.Param)
        nnx.replace_by_pure_dict(state, p)
        nnx.update(model, state)
    return plain, on


@pytest.mark.parametrize(
    "name",
    # NCSN++ compiles for about a minute on a loaded 2-core box: slow; DDPM checks the U-Net wiring by default
    ["mlp", "ddpm", pytest.param("ncsnpp", marks=pytest.mark.slow)],
)
def test_zero_labels_are_the_network_without_the_option_and_others_are_not(name):
    plain, on = _randomised(name)
    x, t = _inputs(name)

    @jax.jit
    def outputs(x, t):
        return (
            plain(x, t),
            on(x, t),
            on(x, t, augment_labels=jnp.zeros((2, 9))),
            on(x, t, augment_labels=jnp.ones((2, 9))),
        )

    base, none, zeros, ones = outputs(x, t)
    np.testing.assert_array_equal(none, base)  # None: the sampling call
    np.testing.assert_array_equal(zeros, base)
    assert float(jnp.abs(ones - base).max()) > 1e-3 * float(jnp.abs(base).max())
    with pytest.raises(ValueError, match="augment_dim=0"):
        jax.eval_shape(lambda: plain(x, t, augment_labels=jnp.zeros((2, 9))))


def test_mlp_option_draws_no_other_parameter_differently():
    plain = BUILDERS["mlp"](nnx.Rngs(0))
    on = BUILDERS["mlp"](nnx.Rngs(0), augment_dim=9)
    p_plain, p_on = _params(plain), _params(on)
    _check_added_kernel(p_plain, p_on)
    jax.tree.map(np.testing.assert_array_equal, {k: p_on[k] for k in p_plain}, p_plain)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ncsnpp", "ddpm"])
def test_unet_option_draws_no_other_parameter_differently(name):
    """As for the MLP, with the real initialisation (slow on CPU: the U-Nets' eager init)."""
    p_plain = _params(BUILDERS[name](nnx.Rngs(0)))
    p_on = _params(BUILDERS[name](nnx.Rngs(0), augment_dim=9))
    _check_added_kernel(p_plain, p_on)
    jax.tree.map(np.testing.assert_array_equal, {k: p_on[k] for k in p_plain}, p_plain)
