"""The U-Nets' cross-attention layer against a naive per-example reference, and its padding invariance; the
repeated-block machinery (one trace per block shape, the optional scan over equal blocks) against plain calls."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scoresde.models import layers

B, H, W, C, D, L = 3, 4, 4, 8, 6, 5


def _layer(num_heads=2):
    layer = layers.CrossAttention(C, D, num_heads=num_heads, rngs=nnx.Rngs(0))
    # the output projection starts at zero (a new block is the identity); give it weights to test the attention
    layer.out.W[...] = jax.random.normal(jax.random.key(9), layer.out.W[...].shape)
    graphdef, state = nnx.split(layer)
    call = jax.jit(lambda s, x, c, m: nnx.merge(graphdef, s)(x, c, m))
    fn = lambda x, c, m: call(state, x, c, m)  # noqa: E731
    fn.layer = layer
    return fn


def _inputs():
    k = jax.random.split(jax.random.key(1), 2)
    x = jax.random.normal(k[0], (B, H, W, C))
    ctx = jax.random.normal(k[1], (B, L, D))
    mask = jnp.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]], bool)
    return x, ctx, mask


def _naive(fn, x, ctx, mask, num_heads):
    """Per example and head: softmax over the real tokens only, in float64 numpy."""
    layer = fn.layer
    p = lambda a: np.asarray(a, np.float64)  # noqa: E731
    hn = p(layer.GroupNorm_0(x))
    wq, bq = p(layer.query.W[...]), p(layer.query.b[...])
    wk, bk = p(layer.key.kernel[...]), p(layer.key.bias[...])
    wv, bv = p(layer.value.kernel[...]), p(layer.value.bias[...])
    wo, bo = p(layer.out.W[...]), p(layer.out.b[...])
    x, ctx, mask = p(x), p(ctx), np.asarray(mask)
    out = np.array(x)
    d = C // num_heads
    for i in range(B):
        real = ctx[i][mask[i]]
        if len(real) == 0:
            continue
        q = hn[i].reshape(H * W, C) @ wq + bq
        k, v = real @ wk + bk, real @ wv + bv
        heads = []
        for n in range(num_heads):
            s = q[:, n * d : (n + 1) * d] @ k[:, n * d : (n + 1) * d].T / np.sqrt(d)
            a = np.exp(s - s.max(-1, keepdims=True))
            heads.append((a / a.sum(-1, keepdims=True)) @ v[:, n * d : (n + 1) * d])
        out[i] += (np.concatenate(heads, -1) @ wo + bo).reshape(H, W, C)
    return out


@pytest.mark.parametrize("num_heads", [1, 2])
def test_cross_attention_equals_the_naive_reference(num_heads):
    layer = _layer(num_heads)
    x, ctx, mask = _inputs()
    np.testing.assert_allclose(layer(x, ctx, mask), _naive(layer, x, ctx, mask, num_heads), rtol=1e-5, atol=1e-5)


def test_cross_attention_is_invariant_to_padding_tokens():
    layer = _layer()
    x, ctx, mask = _inputs()
    ref = layer(x, ctx, mask)
    # what sits under the padding does not matter
    junk = jnp.where(mask[..., None], ctx, 1e3 * jax.random.normal(jax.random.key(2), ctx.shape))
    np.testing.assert_array_equal(layer(x, junk, mask), ref)
    # nor how much padding there is
    longer = jnp.concatenate([ctx, jax.random.normal(jax.random.key(3), (B, 4, D))], axis=1)
    longer_mask = jnp.concatenate([mask, jnp.zeros((B, 4), bool)], axis=1)
    np.testing.assert_allclose(layer(x, longer, longer_mask), ref, rtol=1e-6, atol=1e-6)


def test_cross_attention_to_no_token_is_the_identity_and_finite_in_gradient():
    layer = _layer()
    x, ctx, _ = _inputs()
    none = jnp.zeros((B, L), bool)
    np.testing.assert_array_equal(layer(x, ctx, none), x)
    g = jax.grad(lambda c: jnp.sum(layer(x, c, none.at[0, 0].set(True)) ** 2))(ctx)
    assert np.all(np.isfinite(g)) and np.all(np.asarray(g)[1:] == 0)


def test_new_cross_attention_starts_as_the_identity_and_checks_shapes():
    layer = layers.CrossAttention(C, D, rngs=nnx.Rngs(0))
    x, ctx, mask = _inputs()
    # zero-initialised output (the reference's init_scale=0, variance 1e-10): the identity up to ~1e-5
    np.testing.assert_allclose(layer(x, ctx, mask), x, atol=1e-3)
    with pytest.raises(ValueError, match="heads"):
        layers.CrossAttention(C, D, num_heads=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="context"):
        layer(x, ctx[:2], mask[:2])


class _Affine(nnx.Module):
    """``x -> tanh(x W + b)``: a block whose input and output widths can differ."""

    def __init__(self, n_in, n_out, seed):
        self.lin = nnx.Linear(n_in, n_out, rngs=nnx.Rngs(seed))

    def __call__(self, x, shift):
        return jnp.tanh(self.lin(x) + shift)


def _repeat(units, x, shifts, scan):
    def step(unit, h, s):
        h = layers.call_cached(unit[0], h, s)
        return h, 2.0 * h

    graphdef, state = nnx.split(units)

    def run(state, x, shifts):
        return layers.repeat_blocks(step, nnx.merge(graphdef, state), x, shifts, scan=scan)

    return jax.jit(run)(state, x, list(shifts)), str(jax.make_jaxpr(run)(state, x, list(shifts)))


def test_repeat_blocks_scan_equals_the_loop_and_scans_only_equal_blocks():
    # widths 3 -> 5 (changes the carry), then four 5 -> 5 blocks, then 5 -> 2: one scan of four at most
    units = [(_Affine(3, 5, 0),)] + [(_Affine(5, 5, s),) for s in range(1, 5)] + [(_Affine(5, 2, 9),)]
    x = jax.random.normal(jax.random.key(0), (4, 3))
    shifts = [0.1 * k for k in range(len(units))]
    (h0, ys0), plain = _repeat(units, x, shifts, scan=False)
    (h1, ys1), scanned = _repeat(units, x, shifts, scan=True)
    assert "scan[" not in plain and scanned.count("scan[") == 1 and "length=4" in scanned
    # float32 rounding of six chained blocks (~8 eps each): the scan and the unrolled loop are different programs,
    # which XLA may contract differently (2.3e-6 relative seen with the unoptimised back end the tests use)
    np.testing.assert_allclose(h1, h0, rtol=1e-5, atol=1e-6)
    assert [y.shape for y in ys1] == [y.shape for y in ys0] == [(4, 5)] * 5 + [(4, 2)]
    for a, b in zip(ys0, ys1):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    # and the loop is the plain composition of the blocks
    h = x
    for (u,), s in zip(units, shifts):
        h = u(h, s)
    np.testing.assert_allclose(h0, h, rtol=1e-6, atol=1e-7)


def test_call_cached_traces_each_block_shape_once(monkeypatch):
    calls = []
    original = _Affine.__call__

    def counting(self, x, shift):
        calls.append(x.shape)
        return original(self, x, shift)

    monkeypatch.setattr(_Affine, "__call__", counting)
    # widths and batch no other test uses: jit's cache is process-wide
    units = [(_Affine(7, 7, s),) for s in range(6)] + [(_Affine(7, 2, 9),)]
    x = jax.random.normal(jax.random.key(0), (3, 7))
    (h, _), _ = _repeat(units, x, [0.0] * 7, scan=False)
    # seven blocks of two structures: each structure traced once
    assert calls == [(3, 7), (3, 7)]
    calls.clear()
    monkeypatch.setattr(layers, "call_cached", lambda m, *a, **k: m(*a, **k))
    (h_plain, _), _ = _repeat(units, x, [0.0] * 7, scan=False)
    assert len(calls) == 7  # plain calls: every block traced
    np.testing.assert_allclose(h, h_plain, rtol=1e-6, atol=1e-7)
