"""Forward-mode derivatives through every score network, attention included, against finite differences.

sCM's tangent (:func:`scoresde.fewstep.scm.consistency_tangent`) and MeanFlow's target
(:func:`scoresde.fewstep.meanflow.meanflow_target`) are one ``jax.jvp`` of the network in its input and its
time(s). Here each network's ``jvp`` in ``(x, t)`` (and ``r`` for a two-time network) must equal a central
difference of the network itself, in float64 (``jax.enable_x64``: float64 inputs keep float64 through every layer,
:func:`scoresde.models.layers.compute_dtype`), to ``1e-6`` of the tangent's scale: step ``h = 1e-5``, so the
difference's truncation error is ``O(h²) ≈ 1e-10`` and its rounding ``≈ 1e-16 / h = 1e-11``, while a float32 leak
anywhere in the network would show as ``≈ 1e-7 / h = 1e-2``. Parameters are moved off their initialisation (zero
output layers would make every derivative vanish).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scoresde.fewstep import scm
from scoresde.models.ddpm import DDPM
from scoresde.models.mlp import MLPScore
from scoresde.models.ncsnpp import NCSNpp

# one resolution with attention at 8x8, one residual block: every kind of layer, as small as it gets
UNET = dict(image_size=8, num_channels=2, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0)
NETS = {
    "mlp": lambda **k: MLPScore(3, hidden=16, num_layers=2, embed_dim=8, **k),
    "ncsnpp": lambda **k: NCSNpp(
        nf=8, resblock_type="biggan", embedding_type="fourier", fourier_scale=1.0, **UNET, **k
    ),
    "ddpmpp": lambda **k: NCSNpp(nf=8, resblock_type="ddpm", **UNET, **k),
    "ddpm": lambda **k: DDPM(nf=64, **UNET, **k),  # 32 groups of 2 channels: of 1, GroupNorm would erase temb
}
H = 1e-5
RTOL = 1e-6


def _perturbed(name, **kwargs):
    model = NETS[name](rngs=nnx.Rngs(0), **kwargs)
    state = nnx.state(model, nnx.Param)
    leaves, tree = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    nnx.update(model, jax.tree.unflatten(tree, [v + 0.1 * jax.random.normal(k, v.shape) for v, k in zip(leaves, keys)]))
    return model


def _point(name):
    shape = (2, 3) if name == "mlp" else (2, 8, 8, 2)
    kx, kv = jax.random.split(jax.random.key(2))
    x = jax.random.normal(kx, shape, jnp.float64)
    dx = jax.random.normal(kv, shape, jnp.float64)
    return x, dx


def _check(fn, primals, tangents):
    out, tangent = jax.jvp(fn, primals, tangents)
    plus = fn(*(p + H * t for p, t in zip(primals, tangents)))
    minus = fn(*(p - H * t for p, t in zip(primals, tangents)))
    fd = (plus - minus) / (2 * H)
    assert out.dtype == jnp.float64 and tangent.dtype == jnp.float64
    scale = float(jnp.max(jnp.abs(tangent)))
    assert scale > 1e-2  # the derivative is not trivially zero
    np.testing.assert_allclose(tangent, fd, rtol=0, atol=RTOL * scale)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in ("ncsnpp", "ddpm", "ddpmpp") else n for n in NETS]
)  # the U-Nets take 20-30 s each on 2 cores: slow; the MLP stays in the default run (the tangent test covers DDPM)
def test_jvp_of_every_two_time_network_matches_central_differences_in_float64(name):
    with jax.enable_x64(True):
        x, dx = _point(name)
        t = jnp.array([0.3, 0.8], jnp.float64)
        r = jnp.array([0.1, 0.5], jnp.float64)
        # the two-time network in (x, t, r); the one-time network's (x, t) is the test below
        two = _perturbed(name, second_time=True)
        _check(lambda x, t, r: two(x, t, r=r), (x, t, r), (dx, jnp.ones_like(t), jnp.array([0.7, -0.4])))
        # r alone moves the output: its embedding is live
        assert float(jnp.max(jnp.abs(two(x, t, r=r) - two(x, t, r=t)))) > 1e-3


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n == "ddpm" else n for n in NETS]
)  # DDPM: 21 s on 2 cores
def test_consistency_tangent_of_every_network_is_the_total_time_derivative(name):
    """sCM's tangent ``df/dt`` of ``f(x, t) = cos t x - sin t σ_d F(x/σ_d, t)`` along ``x' = v`` is the central
    difference of ``f`` along the same path."""
    sigma_data = 0.5
    with jax.enable_x64(True):
        x, v = _point(name)
        t = jnp.array([0.4, 1.1], jnp.float64)
        graphdef, params = nnx.split(_perturbed(name))
        net_fn = lambda p, x_in, s: nnx.merge(graphdef, p)(x_in, s)
        f_minus, dfdt = scm.consistency_tangent(net_fn, params, x, t, v, sigma_data=sigma_data)
        assert f_minus.shape == x.shape and dfdt.shape == x.shape

        def f(x, s):
            cos, sin = jnp.cos(s).reshape(-1, *[1] * (x.ndim - 1)), jnp.sin(s).reshape(-1, *[1] * (x.ndim - 1))
            return cos * x - sin * sigma_data * net_fn(params, x / sigma_data, s)

        fd = (f(x + H * v, t + H) - f(x - H * v, t - H)) / (2 * H)
        scale = float(jnp.max(jnp.abs(dfdt)))
        assert scale > 1e-2
        np.testing.assert_allclose(dfdt, fd, rtol=0, atol=RTOL * scale)
