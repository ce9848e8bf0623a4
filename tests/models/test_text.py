"""The text encoder: shapes, padding invariance, the null caption."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scoresde.data import captions
from scoresde.models.text import TextEncoder, masked_attention


class _Jitted:
    """The encoder under one ``nnx.jit`` (one compile per token shape instead of one per eager op)."""

    def __init__(self, enc):
        self.null = enc.null
        self._enc = enc
        self._fwd = nnx.jit(lambda m, t: m(t))

    def __call__(self, tokens):
        return self._fwd(self._enc, tokens)


@pytest.fixture(scope="module")
def encoder():
    return _Jitted(TextEncoder(len(captions.VOCAB), captions.MAX_LEN, 32, 2, 4, rngs=nnx.Rngs(0)))


def test_shapes_and_padding_features_are_zero(encoder):
    tokens = jnp.asarray(captions.tokenize(["a bold seven", "the digit 7 in thin strokes"]))
    features, pooled = encoder(tokens)
    assert features.shape == (2, captions.MAX_LEN, 32) and pooled.shape == (2, 32)
    assert float(jnp.abs(features[0, 3:]).max()) == 0.0
    np.testing.assert_allclose(pooled[0], features[0, :3].mean(0), rtol=1e-6, atol=1e-7)


def test_appending_padding_changes_nothing(encoder):
    short = jnp.asarray(captions.tokenize(["a bold seven, leaning left", "nine"], max_len=8))
    long = jnp.asarray(captions.tokenize(["a bold seven, leaning left", "nine"], max_len=captions.MAX_LEN))
    f_short, p_short = encoder(short)
    f_long, p_long = encoder(long)
    np.testing.assert_allclose(f_long[:, :8], f_short, atol=1e-6)
    np.testing.assert_allclose(p_long, p_short, atol=1e-6)
    assert float(jnp.abs(p_long[0] - p_long[1]).max()) > 1e-3  # different captions, different vectors


def test_null_caption_pools_to_the_learned_null_vector(encoder):
    features, pooled = encoder(jnp.zeros((2, captions.MAX_LEN), jnp.int32))
    assert bool(jnp.isfinite(features).all()) and float(jnp.abs(features).max()) == 0.0
    np.testing.assert_array_equal(pooled, jnp.broadcast_to(encoder.null[...], (2, 32)))


def test_masked_attention_matches_attention_over_the_kept_keys():
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(1, 3, 2, 4)), jnp.float32) for _ in range(3))
    mask = jnp.asarray([[True, False, True]])
    out = masked_attention(q, k, v, mask)
    keep = jnp.asarray([0, 2])
    ref = masked_attention(q, k[:, keep], v[:, keep], jnp.ones((1, 2), bool))
    np.testing.assert_allclose(out, ref, rtol=1e-6)
    logits = np.einsum("qhd,khd->hqk", q[0], k[0, keep]) / 2.0
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    np.testing.assert_allclose(ref[0], np.einsum("hqk,khd->qhd", w, v[0, keep]), rtol=1e-5)
    assert float(jnp.abs(masked_attention(q, k, v, jnp.zeros((1, 3), bool))).max()) == 0.0


def test_bad_sizes_are_clear_errors():
    with pytest.raises(ValueError, match="divisible by num_heads=3"):
        TextEncoder(10, 4, 32, 1, 3, rngs=nnx.Rngs(0))
    enc = TextEncoder(10, 4, 8, 0, 2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="L <= max_len=4"):
        enc(jnp.zeros((1, 5), jnp.int32))
