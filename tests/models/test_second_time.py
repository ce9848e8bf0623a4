"""Two-time networks ``u(x, r, t)`` (MeanFlow): the ``second_time`` flag and the ``r=`` argument of every network.

What must hold: without the flag nothing changes (the one-time network's parameters are a subset, equal leaf for
leaf, of the two-time network's built from the same seed: its extra embedding is created last, from its own key);
with it, ``r`` is required and the output depends on it; a one-time network refuses ``r``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scoresde.models.ddpm import DDPM
from scoresde.models.mlp import MLPScore
from scoresde.models.ncsnpp import NCSNpp

UNET = dict(image_size=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0)
NETS = {
    "mlp": lambda **k: MLPScore(2, hidden=16, num_layers=2, embed_dim=8, **k),
    "ncsnpp": lambda **k: NCSNpp(nf=8, **UNET, **k),
    "ncsnpp_fourier": lambda **k: NCSNpp(nf=8, embedding_type="fourier", **UNET, **k),
    "ddpm": lambda **k: DDPM(nf=32, **UNET, **k),
}


def _inputs(name):
    shape = (3, 2) if name == "mlp" else (3, 8, 8, 3)
    x = jax.random.normal(jax.random.key(0), shape)
    labels = jnp.array([0.2, 0.5, 0.9]) if name == "ncsnpp_fourier" else jnp.array([100.0, 400.0, 900.0])
    return x, labels


def _perturb(model, seed=1):
    """Moves every parameter off its (partly zero) initialisation, so every path reaches the output."""
    state = nnx.state(model, nnx.Param)
    leaves, tree = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    nnx.update(
        model, jax.tree.unflatten(tree, [v + 0.05 * jax.random.normal(k, v.shape) for v, k in zip(leaves, keys)])
    )
    return model


@pytest.mark.parametrize("name", NETS)
def test_the_flag_off_leaves_the_network_as_it_was(name):
    one = NETS[name](rngs=nnx.Rngs(0))
    two = NETS[name](second_time=True, rngs=nnx.Rngs(0))
    flat_one = dict(nnx.to_flat_state(nnx.state(one, nnx.Param)))
    flat_two = dict(nnx.to_flat_state(nnx.state(two, nnx.Param)))
    extra = sorted(set(flat_two) - set(flat_one))
    assert set(flat_one) <= set(flat_two) and extra and all(p[0] in ("gap_temb", "gap_embed") for p in extra)
    for path, var in flat_one.items():
        np.testing.assert_array_equal(var[...], flat_two[path][...], err_msg=str(path))


@pytest.mark.parametrize("name", NETS)
def test_two_time_network_needs_r_and_depends_on_it(name):
    x, labels = _inputs(name)
    one = _perturb(NETS[name](rngs=nnx.Rngs(0)))
    two = _perturb(NETS[name](second_time=True, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="second_time=True: call it with r="):
        two(x, labels)
    with pytest.raises(ValueError, match="second_time=False"):
        one(x, labels, r=labels)
    with pytest.raises(ValueError, match="expected the labels' shape"):
        two(x, labels, r=labels[:2])
    out_t = two(x, labels, r=labels)
    out_r = two(x, labels, r=0.5 * labels)
    assert out_t.shape == x.shape and bool(jnp.all(jnp.isfinite(out_r)))
    assert float(jnp.max(jnp.abs(out_t - out_r))) > 1e-4
    # jit-traced r, as a training step passes it
    graphdef, state = nnx.split(two)
    jitted = jax.jit(lambda s, x, t, r: nnx.merge(graphdef, s)(x, t, r=r))(state, x, labels, 0.5 * labels)
    np.testing.assert_allclose(jitted, out_r, rtol=1e-5, atol=1e-5)


def test_unconditional_unet_refuses_a_second_time():
    with pytest.raises(ValueError, match="second_time=True needs conditional=True"):
        NCSNpp(nf=8, conditional=False, second_time=True, rngs=nnx.Rngs(0), **UNET)
