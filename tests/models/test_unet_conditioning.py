"""Caption- and vector-conditioned U-Nets (NCSN++/DDPM++ and DDPM): the caption reaches the output through the
time embedding and the cross-attentions, padding does not, the null is zeros, and the unconditioned networks'
parameters are unchanged by the option."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scoresde.data import captions
from scoresde.models.ddpm import DDPM
from scoresde.models.ncsnpp import NCSNpp

SMALL = dict(image_size=8, num_channels=1, nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0)
TEXT = dict(text_vocab=len(captions.VOCAB), text_len=captions.MAX_LEN, text_width=8, text_depth=1, text_heads=2)


def _jit(net):
    graphdef, state = nnx.split(net)
    call = jax.jit(lambda s, x, t, y: nnx.merge(graphdef, s)(x, t, y))
    return lambda x, t, y=None: call(state, x, t, y)


def _warm(net):
    """Non-zero cross-attention outputs (they start at zero, the identity) so that the tokens matter."""
    for block in net.cross_attn:
        block.out.W[...] = 0.3 * jax.random.normal(jax.random.key(len(block.out.W[...])), block.out.W[...].shape)
    return net


@pytest.mark.slow  # a U-Net compilation: about a minute on 2 shared CPU cores
@pytest.mark.parametrize("cls", [NCSNpp, DDPM], ids=["ncsnpp", "ddpm"])
def test_caption_conditioning_uses_the_tokens_ignores_padding_and_its_null_is_the_empty_caption(cls):
    kw = dict(SMALL, **({"resblock_type": "ddpm"} if cls is NCSNpp else {"nf": 32}))  # DDPM: 32 groups
    net = _warm(cls(**kw, **TEXT, rngs=nnx.Rngs(0)))
    # a self-attention at 4x4 on the way down and up, and the middle one: a cross-attention after each
    assert len(net.cross_attn) == 3
    fn = _jit(net)
    x = jax.random.normal(jax.random.key(1), (3, 8, 8, 1))
    t = jnp.array([0.2, 0.5, 0.9])
    tokens = jnp.asarray(captions.tokenize(["a bold seven", "the digit 3 slanted to the right", ""]))
    out = fn(x, t, tokens)
    other = fn(x, t, jnp.asarray(captions.tokenize(["a thin seven", "the digit 3 slanted to the left", ""])))
    # the caption changes the output (the output layer starts near zero: compare relative to the output's size)
    change = np.abs(np.asarray(out - other)[:2]).max(axis=(1, 2, 3)) / np.abs(np.asarray(out)[:2]).max(axis=(1, 2, 3))
    assert np.all(change > 1e-3), change
    np.testing.assert_array_equal(out[2], other[2])
    # the null caption (all padding) is what y=None means (padding invariance itself: tests/models/test_layers.py
    # for the cross-attention, tests/models/test_text.py for the encoder)
    null = net(x, t)
    np.testing.assert_allclose(fn(x, t, jnp.zeros_like(tokens)), null, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="int tokens"):
        fn(x, t, jnp.ones((3, 4)))


@pytest.mark.slow  # three U-Nets built and compiled
def test_vector_conditioning_and_options_that_leave_the_network_alone():
    net = _warm(NCSNpp(**SMALL, resblock_type="ddpm", cond_dim=5, cond_tokens=3, text_width=8, rngs=nnx.Rngs(0)))
    fn = _jit(net)
    x, t = jax.random.normal(jax.random.key(1), (2, 8, 8, 1)), jnp.array([0.3, 0.7])
    e = jax.random.normal(jax.random.key(2), (2, 5))
    out = fn(x, t, e)
    assert float(jnp.abs(out - fn(x, t, 2 * e)).max() / jnp.abs(out).max()) > 1e-3
    np.testing.assert_allclose(fn(x, t, jnp.zeros((2, 5))), net(x, t), rtol=1e-5, atol=1e-7)
    # the unconditioned network's parameters are the same with or without the option's code path
    plain = nnx.state(NCSNpp(**SMALL, resblock_type="ddpm", rngs=nnx.Rngs(0)), nnx.Param)
    cond = nnx.state(NCSNpp(**SMALL, resblock_type="ddpm", **TEXT, rngs=nnx.Rngs(0)), nnx.Param)
    flat_plain = dict(nnx.to_flat_state(plain))
    flat_cond = dict(nnx.to_flat_state(cond))
    for path, v in flat_plain.items():
        np.testing.assert_array_equal(flat_cond[path][...], v[...])
    with pytest.raises(ValueError, match="not both"):
        NCSNpp(**SMALL, num_classes=10, **TEXT, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="exactly one"):
        NCSNpp(**SMALL, cond_dim=4, **TEXT, rngs=nnx.Rngs(0))
