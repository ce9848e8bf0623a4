"""The fast path of the U-Nets: bf16 compute checked on the lowered HLO, attention through
``jax.nn.dot_product_attention`` against the explicit formula, and per-level rematerialisation
against the plain network (equal outputs and gradients)."""

import collections
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scoresde.models import layers
from scoresde.models.ddpm import DDPM
from scoresde.models.ncsnpp import NCSNpp

# Tiny DDPM++ (the reference's cifar10_ddpmpp_continuous layout, 2 levels) and a tiny NCSN++ with every
# FIR / progressive path on, the one where resampling filters are convolutions.
DDPMPP = dict(
    image_size=8,
    nf=8,
    ch_mult=(1, 2),
    num_res_blocks=1,
    attn_resolutions=(4,),
    resblock_type="biggan",
    embedding_type="positional",
)
NCSNPP = dict(DDPMPP, fir=True, progressive="output_skip", progressive_input="input_skip", embedding_type="fourier")

_DEF = re.compile(r"^\s*(?:ROOT\s+)?([\w.\-]+)\s*=\s*(\w+)\[([\d,]*)\]\S*\s+([\w\-]+)\((.*?)\)")


def _hlo_ops(text):
    """``[(opcode, result dtype, [(operand dtype, operand rank), ...])]`` of an HLO module's text."""
    types, ops = {}, []
    for line in text.splitlines():
        m = _DEF.match(line)
        if not m:
            continue
        name, dtype, dims, opcode, args = m.groups()
        types[name] = (dtype, len([d for d in dims.split(",") if d]))
        operands = [types.get(a.strip().split(" ")[-1].lstrip("%")) for a in args.split(",")]
        operands = [o for o in operands if o is not None]
        if "algorithm=dot_bf16_bf16_f32" in line:
            # An f32 cotangent times a bf16 operand (attention backward) computed as bf16 x bf16 -> f32.
            operands = [("bf16", r) for _, r in operands]
        ops.append((opcode, dtype, operands))
    return ops


def _train_step_hlo(net, x, t):
    graphdef, params, rest = nnx.split(net, nnx.Param, ...)

    def loss(p, key):
        return jnp.mean(jnp.square(nnx.merge(graphdef, p, rest)(x, t, train=True, key=key)))

    return jax.jit(jax.value_and_grad(loss)).lower(params, jax.random.key(0)).as_text(dialect="hlo")


@pytest.mark.parametrize("arch", ["ddpmpp", "ncsnpp_fir"])
def test_bf16_network_runs_convs_and_matmuls_in_bf16(arch):
    kw = DDPMPP if arch == "ddpmpp" else NCSNPP
    x, t = jnp.full((2, 8, 8, 3), 0.3), jnp.array([0.2, 0.9])
    counts = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        ops = _hlo_ops(_train_step_hlo(NCSNpp(**kw, dtype=dtype, rngs=nnx.Rngs(0)), x, t))
        c = collections.Counter()
        for opcode, out, operands in ops:
            in_dtypes = {d for d, _ in operands}
            big = max((r for _, r in operands), default=0) >= 3  # activations, not the (B, C) time MLP
            if opcode in ("convolution", "dot"):
                c[(opcode, "big" if big else "small", "/".join(sorted(in_dtypes)))] += 1
            elif opcode == "reduce" and big:  # group-norm statistics, softmax max/sum, their gradients
                c[("reduce", next(iter(sorted(in_dtypes - {"f32"})), "f32"))] += 1
            elif opcode == "convert":
                c[("convert", "/".join(sorted(in_dtypes)), out)] += 1
        counts[dtype] = c
    f32, bf16 = counts[jnp.float32], counts[jnp.bfloat16]
    n_conv, n_dot = f32[("convolution", "big", "f32")], f32[("dot", "big", "f32")]
    assert n_conv > 40 and n_dot > 10  # forward + both gradients of every conv / NIN / attention product
    # bf16: every convolution and every activation-sized matmul takes bf16 operands; none was left in f32.
    assert bf16[("convolution", "big", "bf16")] == n_conv and bf16[("dot", "big", "bf16")] == n_dot
    assert bf16[("convolution", "big", "f32")] == 0 and bf16[("dot", "big", "f32")] == 0
    assert not any(k[0] in ("convolution", "dot") and "bf16" in k[2] and "f32" in k[2] for k in bf16)
    # Only the (B, 4 nf) time-embedding MLP stays in f32, the same number of small dots in both modes.
    assert bf16[("dot", "small", "f32")] == f32[("dot", "small", "f32")]
    # Normalisation statistics and the softmax reduce in f32: no reduction over bf16 activations.
    assert bf16[("reduce", "f32")] == f32[("reduce", "f32")] > 0
    assert not any(k[0] == "reduce" and k[1] != "f32" for k in bf16)
    # Converts are bounded by the bf16 ops: per conv/matmul at most its input, its kernel and bias, and
    # the way back to f32 of its output (residual stream / norm) -- no round trips inside the network.
    n_bf16_ops = n_conv + n_dot
    to_bf16, to_f32 = bf16[("convert", "f32", "bf16")], bf16[("convert", "bf16", "f32")]
    assert 0 < to_bf16 <= 3 * n_bf16_ops and 0 < to_f32 <= 2 * n_bf16_ops, (to_bf16, to_f32, n_bf16_ops)
    assert f32[("convert", "f32", "bf16")] == 0


def _attention_by_formula(block, x):
    """The AttnBlockpp forward as written before dot_product_attention (explicit einsums, f32 softmax)."""
    b, h, w, c = x.shape
    hn = block.GroupNorm_0(x)
    q, k, v = (m(hn).reshape(b, h * w, c) for m in (block.NIN_0, block.NIN_1, block.NIN_2))
    logits = jnp.einsum("bic,bjc->bij", q, k, preferred_element_type=jnp.float32) * (c**-0.5)
    weights = jax.nn.softmax(logits, axis=-1).astype(block.dtype)
    out = block.NIN_3(jnp.einsum("bij,bjc->bic", weights, v).reshape(b, h, w, c))
    y = x + out.astype(jnp.float32)
    return y / np.sqrt(2.0) if block.skip_rescale else y


@pytest.mark.parametrize("skip_rescale", [True, False])
def test_attention_block_equals_the_explicit_formula(skip_rescale):
    block = layers.AttnBlockpp(16, skip_rescale=skip_rescale, init_scale=1.0, rngs=nnx.Rngs(3))
    x = jax.random.normal(jax.random.key(1), (2, 4, 4, 16))
    got, want = jax.jit(block)(x), jax.jit(lambda x: _attention_by_formula(block, x))(x)
    assert float(jnp.max(jnp.abs(want - x))) > 0.1  # the attention branch is not negligible
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * float(jnp.max(jnp.abs(want))))


def _value_and_grad(net_cls, kw, remat, **extra):
    net = (
        net_cls(**kw, init_scale=1.0, remat=remat, **extra, rngs=nnx.Rngs(0))
        if net_cls is NCSNpp
        else net_cls(**kw, remat=remat, **extra, rngs=nnx.Rngs(0))
    )
    graphdef, params, rest = nnx.split(net, nnx.Param, ...)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    t = jnp.array([0.3, 0.7])

    def loss(p):
        out = nnx.merge(graphdef, p, rest)(x, t, train=True, key=jax.random.key(2))  # dropout on
        return jnp.sum(jnp.sin(out))

    fn = jax.jit(jax.value_and_grad(loss))
    return fn(params), str(fn.lower(params).as_text())


@pytest.mark.parametrize(
    "arch", [pytest.param("ncsnpp_fir", marks=pytest.mark.slow), pytest.param("ddpm", marks=pytest.mark.slow)]
)
def test_remat_gives_the_same_outputs_and_gradients(arch):
    net_cls, kw = {
        "ncsnpp_fir": (NCSNpp, NCSNPP),
        "ddpm": (DDPM, dict(image_size=8, nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))),
    }[arch]
    (v0, g0), text0 = _value_and_grad(net_cls, kw, False)
    (v1, g1), text1 = _value_and_grad(net_cls, kw, True)
    # jax.checkpoint leaves an optimisation barrier around each recomputed level; the plain net has none.
    assert "optimization_barrier" in text1 and "optimization_barrier" not in text0
    np.testing.assert_allclose(v1, v0, rtol=1e-6)
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(g0))
    assert scale > 1e-2
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * scale)


_DDPM3 = dict(image_size=8, nf=32, ch_mult=(1, 2), num_res_blocks=3, attn_resolutions=(4,))


def _assert_same(v0, g0, v1, g1):
    np.testing.assert_allclose(v1, v0, rtol=1e-6)
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(g0))
    assert scale > 1e-2
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * scale)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["ddpm", "ncsnpp_fir"])
def test_scanned_blocks_give_the_same_outputs_and_gradients(arch):
    net_cls, kw = {"ncsnpp_fir": (NCSNpp, {**NCSNPP, "num_res_blocks": 3}), "ddpm": (DDPM, _DDPM3)}[arch]
    (v0, g0), text0 = _value_and_grad(net_cls, kw, False, scan_blocks=False)
    (v1, g1), text1 = _value_and_grad(net_cls, kw, False, scan_blocks=True)
    # three equal down blocks and four up blocks per level: the scanned program loops over them
    assert text1.count("stablehlo.while") > text0.count("stablehlo.while")
    _assert_same(v0, g0, v1, g1)


@pytest.mark.slow
def test_blocks_traced_once_per_shape_give_the_plain_calls_outputs_and_gradients(monkeypatch):
    (v0, g0), _ = _value_and_grad(DDPM, _DDPM3, False)
    monkeypatch.setattr(layers, "call_cached", lambda m, *a, **k: m(*a, **k))
    (v1, g1), _ = _value_and_grad(DDPM, _DDPM3, False)
    _assert_same(v0, g0, v1, g1)
