"""A small time-conditioned MLP score network in Flax NNX, for 2-D / low-dimensional data."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from scoresde.models.layers import check_second_time


def sinusoidal_embedding(labels: jax.Array, dim: int, max_positions: int = 10000) -> jax.Array:
    """Transformer-style sinusoidal embedding of ``(B,)`` labels into ``(B, dim)`` (Ho et al. 2020)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_positions) * jnp.arange(half, dtype=jnp.float32) / max(half - 1, 1))
    args = labels.astype(jnp.promote_types(labels.dtype, jnp.float32))[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class MLPScore(nnx.Module):
    """``out = MLP([x, emb(label)])`` with SiLU activations and a zero-initialised output layer.

    Args:
        dim: data dimension ``D`` (inputs have shape ``(B, D)`` or ``(B, *event)`` with ``prod == D``).
        hidden: width of the hidden layers.
        num_layers: number of hidden layers.
        embed_dim: width of the time embedding.
        num_classes: if > 0, a label embedding with ``num_classes + 1`` rows is added to the time
            embedding; label ``num_classes`` is the reserved null label (unconditional).
        cond_dim: if > 0, the network takes a float conditioning vector ``y`` ``(B, cond_dim)`` (unCLIP's prior:
            a CLIP text embedding, Ramesh et al. 2022), projected by a linear map and added to the time
            embedding; ``y = None`` is the null conditioning ``zeros`` of classifier-free guidance. Exclusive
            with ``num_classes``.
        augment_dim: if > 0, the call's ``augment_labels`` ``(B, augment_dim)`` (EDM's augmentation labels,
            :mod:`scoresde.augment`) pass through a bias-free linear map added to the embedding; zeros or
            ``None`` (sampling) change nothing.
        second_time: a two-time network ``u(x, r, t)`` (MeanFlow's average velocity, Geng et al. 2025,
            Sec. 4.3): called with ``r=`` (the second time, in the units of ``labels``), it adds an embedding of
            ``labels - r`` (the interval, the paper's best conditioning ``(t, t - r)``) made like the time
            embedding. Off: parameters and outputs are those of the one-time network.
        rngs: parameter initialisation RNGs.
    """

    def __init__(
        self,
        dim: int,
        *,
        hidden: int = 128,
        num_layers: int = 3,
        embed_dim: int = 64,
        num_classes: int = 0,
        augment_dim: int = 0,
        second_time: bool = False,
        cond_dim: int = 0,
        rngs: nnx.Rngs,
    ):
        if cond_dim > 0 and num_classes > 0:
            raise ValueError(
                f"an MLP takes class labels (num_classes={num_classes}) or a conditioning vector "
                f"(cond_dim={cond_dim}), not both; set one of them to 0"
            )
        self.dim, self.embed_dim, self.num_classes, self.cond_dim = dim, embed_dim, num_classes, cond_dim
        self.second_time = bool(second_time)
        self.temb = nnx.Linear(embed_dim, hidden, rngs=rngs)
        self.inp = nnx.Linear(dim, hidden, rngs=rngs)
        self.hidden = nnx.List([nnx.Linear(hidden, hidden, rngs=rngs) for _ in range(num_layers)])
        self.out = nnx.Linear(hidden, dim, kernel_init=nnx.initializers.zeros, rngs=rngs)
        self.label_emb = nnx.Embed(num_classes + 1, hidden, rngs=rngs) if num_classes > 0 else None
        self.augment_emb = nnx.Linear(augment_dim, hidden, use_bias=False, rngs=rngs) if augment_dim > 0 else None
        # created last: the one-time network's parameters do not depend on this flag
        self.gap_temb = nnx.Linear(embed_dim, hidden, rngs=rngs) if second_time else None
        # created after every other layer: a network without vector conditioning keeps its parameters
        self.cond_emb = nnx.Linear(cond_dim, hidden, rngs=rngs) if cond_dim > 0 else None

    @property
    def null_label(self) -> int:
        return self.num_classes

    def __call__(self, x, labels, y=None, *, r=None, train: bool = False, key=None, augment_labels=None):
        check_second_time(self.second_time, r, labels)
        shape = x.shape
        h = self.inp(x.reshape(shape[0], -1))
        emb = self.temb(sinusoidal_embedding(labels, self.embed_dim))
        if self.gap_temb is not None:
            emb = emb + self.gap_temb(sinusoidal_embedding(labels - r, self.embed_dim))
        if self.label_emb is not None:
            if y is None:
                y = jnp.full((shape[0],), self.null_label, dtype=jnp.int32)
            emb = emb + self.label_emb(y)
        elif self.cond_emb is not None:
            if y is None:
                y = jnp.zeros((shape[0], self.cond_dim), jnp.float32)
            if y.shape != (shape[0], self.cond_dim):
                raise ValueError(f"conditioning y must have shape ({shape[0]}, {self.cond_dim}); got {y.shape}")
            emb = emb + self.cond_emb(y.astype(jnp.float32))
        if self.augment_emb is not None and augment_labels is not None:
            emb = emb + self.augment_emb(augment_labels.astype(jnp.float32))
        elif augment_labels is not None:
            raise ValueError("augment_labels given to a network built with augment_dim=0")
        h = h + emb
        for layer in self.hidden:
            h = h + layer(nnx.silu(h))
        return self.out(nnx.silu(h)).reshape(shape)
