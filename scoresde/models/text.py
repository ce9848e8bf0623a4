"""A small transformer text encoder for word tokens (Flax NNX), trained from scratch.

``enc(tokens) -> (features (B, L, width), pooled (B, width))`` for int tokens ``(B, L)`` with 0 = padding
(:mod:`scoresde.data.captions`). Learned token and position embeddings, ``depth`` pre-LayerNorm blocks of
multi-head self-attention and an MLP (Vaswani et al. 2017; the pre-LN order of GPT-2 / CLIP's text tower,
Radford et al. 2021), then a final LayerNorm. Attention ignores padding keys (mask ``tokens != 0``), the
features of padding positions are zero, and ``pooled`` is the mean of the non-padding features; a caption of
padding only (the null caption of classifier-free guidance) pools to a learned ``null`` vector. Appending
padding therefore changes neither the non-padding features nor ``pooled``.

Examples:
    >>> enc = TextEncoder(len(captions.VOCAB), captions.MAX_LEN, 64, 2, 4, rngs=nnx.Rngs(0))
    >>> features, pooled = enc(jnp.asarray(captions.tokenize(["a bold seven", ""])))
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["TextEncoder", "masked_attention"]


def masked_attention(q, k, v, key_mask):
    """Scaled dot-product attention ``softmax(q kᵀ / √d) v`` over the keys where ``key_mask`` is True.

    Args:
        q: ``(B, Lq, H, D)``; k, v: ``(B, Lk, H, D)``; key_mask: bool ``(B, Lk)``.

    Returns:
        ``(B, Lq, H, D)``. A query whose keys are all masked gets zeros (not NaN).
    """
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    mask = key_mask[:, None, None, :]
    logits = jnp.where(mask, logits, -jnp.inf)
    peak = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    weights = jnp.where(mask, jnp.exp(logits - jnp.where(jnp.isfinite(peak), peak, 0.0)), 0.0)
    weights = weights / jnp.maximum(jnp.sum(weights, axis=-1, keepdims=True), 1e-30)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


class _Block(nnx.Module):
    def __init__(self, width: int, num_heads: int, *, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.norm1 = nnx.LayerNorm(width, rngs=rngs)
        self.qkv = nnx.Linear(width, 3 * width, rngs=rngs)
        self.out = nnx.Linear(width, width, rngs=rngs)
        self.norm2 = nnx.LayerNorm(width, rngs=rngs)
        self.fc1 = nnx.Linear(width, 4 * width, rngs=rngs)
        self.fc2 = nnx.Linear(4 * width, width, rngs=rngs)

    def __call__(self, x, mask):
        b, length, width = x.shape
        q, k, v = jnp.split(self.qkv(self.norm1(x)), 3, axis=-1)
        heads = (b, length, self.num_heads, width // self.num_heads)
        h = masked_attention(q.reshape(heads), k.reshape(heads), v.reshape(heads), mask)
        x = x + self.out(h.reshape(b, length, width))
        return x + self.fc2(nnx.gelu(self.fc1(self.norm2(x))))


class TextEncoder(nnx.Module):
    """Token features and a pooled caption vector (module docstring).

    Args:
        vocab_size: number of token ids (``len(captions.VOCAB)``); id 0 is padding.
        max_len: the longest token sequence (learned positions ``0..max_len-1``).
        width: feature width; a multiple of ``num_heads``.
        depth: number of transformer blocks.
        num_heads: attention heads.
        rngs: parameter initialisation.

    Raises:
        ValueError: a non-positive size, or ``width`` not divisible by ``num_heads``.
    """

    def __init__(self, vocab_size: int, max_len: int, width: int, depth: int, num_heads: int, *, rngs: nnx.Rngs):
        for name, v in (("vocab_size", vocab_size), ("max_len", max_len), ("width", width), ("num_heads", num_heads)):
            if int(v) < 1:
                raise ValueError(f"TextEncoder {name}={v} must be a positive integer")
        if int(depth) < 0:
            raise ValueError(f"TextEncoder depth={depth} must be >= 0")
        if width % num_heads:
            raise ValueError(f"TextEncoder width={width} must be divisible by num_heads={num_heads}")
        self.vocab_size, self.max_len, self.width = int(vocab_size), int(max_len), int(width)
        init = nnx.initializers.normal(0.02)
        self.token_embed = nnx.Embed(vocab_size, width, embedding_init=init, rngs=rngs)
        self.pos_embed = nnx.Param(init(rngs.params(), (max_len, width)))
        self.blocks = nnx.List([_Block(width, num_heads, rngs=rngs) for _ in range(depth)])
        self.norm = nnx.LayerNorm(width, rngs=rngs)
        self.null = nnx.Param(init(rngs.params(), (width,)))

    def __call__(self, tokens):
        """``tokens`` int ``(B, L)``, ``L <= max_len`` -> ``(features (B, L, width), pooled (B, width))``."""
        if tokens.ndim != 2 or tokens.shape[1] > self.max_len:
            raise ValueError(f"tokens must be (B, L) with L <= max_len={self.max_len}; got shape {tokens.shape}")
        tokens = tokens.astype(jnp.int32)
        mask = tokens != 0
        x = self.token_embed(tokens) + self.pos_embed[...][None, : tokens.shape[1]]
        for block in self.blocks:
            x = block(x, mask)
        features = self.norm(x) * mask[..., None]
        count = jnp.sum(mask, axis=1, keepdims=True)
        pooled = jnp.sum(features, axis=1) / jnp.maximum(count, 1)
        pooled = jnp.where(count > 0, pooled, self.null[...][None])
        return features, pooled
