"""Two-time networks ``u(x, r, t)`` (MeanFlow): the ``second_time`` flag and the ``r=`` argument of every network.

What must hold: without the flag nothing changes (the one-time network's parameters are a subset, equal leaf for
leaf, of the two-time network's built from the same seed: its extra embedding is created last, from its own key);
with it, ``r`` is required; a one-time network refuses ``r``. That the output depends on ``r``, and how
smoothly, is checked in float64 in ``test_jvp.py``. The networks are those of ``test_jvp.py`` (shared shapes
compile once per session).
"""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scoresde.models.ddpm import DDPM
from scoresde.models.mlp import MLPScore
from scoresde.models.ncsnpp import NCSNpp

UNET = dict(image_size=8, num_channels=2, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0)
NETS = {
    "mlp": lambda **k: MLPScore(3, hidden=16, num_layers=2, embed_dim=8, **k),
    "ncsnpp": lambda **k: NCSNpp(
        nf=8, resblock_type="biggan", embedding_type="fourier", fourier_scale=1.0, **UNET, **k
    ),
    "ddpmpp": lambda **k: NCSNpp(nf=8, resblock_type="ddpm", **UNET, **k),
    "ddpm": lambda **k: DDPM(nf=64, **UNET, **k),  # 32 groups of 2 channels: of 1, GroupNorm would erase temb
}


@pytest.mark.parametrize("name", NETS)
def test_the_flag_off_leaves_the_network_as_it_was_and_the_flag_on_needs_r(name):
    one = NETS[name](rngs=nnx.Rngs(0))
    two = NETS[name](second_time=True, rngs=nnx.Rngs(0))
    flat_one = dict(nnx.to_flat_state(nnx.state(one, nnx.Param)))
    flat_two = dict(nnx.to_flat_state(nnx.state(two, nnx.Param)))
    extra = sorted(set(flat_two) - set(flat_one))
    assert set(flat_one) <= set(flat_two) and extra and all(p[0] in ("gap_temb", "gap_embed") for p in extra)
    for path, var in flat_one.items():
        np.testing.assert_array_equal(var[...], flat_two[path][...], err_msg=str(path))
    # the checks run before any computation
    x = jnp.zeros((3, 3) if name == "mlp" else (3, 8, 8, 2))
    labels = jnp.array([0.2, 0.5, 0.9])
    with pytest.raises(ValueError, match="second_time=True: call it with r="):
        two(x, labels)
    with pytest.raises(ValueError, match="second_time=False"):
        one(x, labels, r=labels)
    with pytest.raises(ValueError, match="expected the labels' shape"):
        two(x, labels, r=labels[:2])


def test_unconditional_unet_refuses_a_second_time():
    with pytest.raises(ValueError, match="second_time=True needs conditional=True"):
        NCSNpp(nf=8, conditional=False, second_time=True, rngs=nnx.Rngs(0), **UNET)
