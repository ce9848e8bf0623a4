"""A bidirectional-GRU score network for point sequences ``(B, N, C)`` (ChiroDiff, Das et al., ICLR 2023).

ChiroDiff's score network is ``eps(X_t, t) = BiRNN([X_t(0), ..., X_t(N-1)], t)``: every point of the noisy
sequence is read with the time (and class) embedding by a bidirectional recurrent net, and the output at each
point is that point's noise. Nothing depends on ``N`` (no positional table), so a network trained on ``N``
points can be sampled at another length.

The GRU is Cho et al. (2014) in the convention of PyTorch / Flax (``r`` gates the hidden projection,
bias included): :func:`gru_step`. It runs through :func:`jax.lax.scan` over the sequence, forwards and backwards.

Masking: with ``mask`` ``(B, N)`` (1 = a real point), a masked step leaves the recurrent state unchanged and
outputs zeros, so the output at real positions does not depend on what the masked positions hold.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from scoresde.models.layers import timestep_embedding

__all__ = ["BiRNNScore", "GRU", "gru_step", "scan_gru"]


def gru_step(params: dict, h, x_proj):
    """One GRU step from the input projection ``x_proj = x W_i + b_i`` ``(B, 3H)`` (gates r, z, n in that order).

    ``r = σ(x_r + h W_hr + b_hr)``, ``z = σ(x_z + h W_hz + b_hz)``, ``n = tanh(x_n + r ⊙ (h W_hn + b_hn))``,
    ``h' = (1 - z) ⊙ n + z ⊙ h`` (Cho et al. 2014; PyTorch's ``nn.GRU``).
    """
    hp = h @ params["w_h"] + params["b_h"][None, :]
    xr, xz, xn = jnp.split(x_proj, 3, axis=-1)
    hr, hz, hn = jnp.split(hp, 3, axis=-1)
    r = jax.nn.sigmoid(xr + hr)
    z = jax.nn.sigmoid(xz + hz)
    n = jnp.tanh(xn + r * hn)
    return (1.0 - z) * n + z * h


def scan_gru(params: dict, x, mask, *, reverse: bool = False):
    """Runs a GRU over ``x`` ``(B, N, D)`` from a zero state; returns the states ``(B, N, H)`` (0 where masked).

    ``mask`` ``(B, N)``: a masked step keeps the state and outputs zeros. ``reverse``: from the last point.
    """
    b = x.shape[0]
    h0 = jnp.zeros((b, params["w_h"].shape[0]), x.dtype)
    proj = x @ params["w_i"] + params["b_i"][None, None, :]  # every step's input projection at once

    def step(h, inp):
        xp, m = inp
        new = gru_step(params, h, xp)
        keep = m[:, None] > 0
        h = jnp.where(keep, new, h)
        return h, jnp.where(keep, h, 0.0)

    _, hs = jax.lax.scan(step, h0, (jnp.swapaxes(proj, 0, 1), jnp.swapaxes(mask, 0, 1)), reverse=reverse)
    return jnp.swapaxes(hs, 0, 1)


class GRU(nnx.Module):
    """A GRU layer's parameters: ``w_i`` ``(D, 3H)``, ``w_h`` ``(H, 3H)``, biases ``(3H,)``; gates r, z, n."""

    def __init__(self, in_features: int, hidden: int, *, rngs: nnx.Rngs):
        lim_i = 1.0 / jnp.sqrt(in_features)
        self.w_i = nnx.Param(jax.random.uniform(rngs.params(), (in_features, 3 * hidden), minval=-lim_i, maxval=lim_i))
        self.w_h = nnx.Param(nnx.initializers.orthogonal()(rngs.params(), (hidden, 3 * hidden)))
        self.b_i = nnx.Param(jnp.zeros((3 * hidden,)))
        self.b_h = nnx.Param(jnp.zeros((3 * hidden,)))

    def params(self) -> dict:
        return {"w_i": self.w_i[...], "w_h": self.w_h[...], "b_i": self.b_i[...], "b_h": self.b_h[...]}

    def __call__(self, x, mask, *, reverse: bool = False):
        return scan_gru(self.params(), x, mask, reverse=reverse)


class BiRNNLayer(nnx.Module):
    """``h + Linear([GRU→(h + e), GRU←(h + e)])``: a residual bidirectional GRU layer, ``e`` the embedding."""

    def __init__(self, hidden: int, *, rngs: nnx.Rngs):
        self.cond = nnx.Linear(hidden, hidden, rngs=rngs)
        self.fwd = GRU(hidden, hidden, rngs=rngs)
        self.bwd = GRU(hidden, hidden, rngs=rngs)
        self.mix = nnx.Linear(2 * hidden, hidden, rngs=rngs)
        self.norm = nnx.LayerNorm(hidden, rngs=rngs)

    def __call__(self, h, emb, mask):
        u = self.norm(h) + self.cond(emb)[:, None, :]
        both = jnp.concatenate([self.fwd(u, mask), self.bwd(u, mask, reverse=True)], axis=-1)
        return h + self.mix(nnx.silu(both)) * mask[..., None]


class BiRNNScore(nnx.Module):
    """ChiroDiff's score network: per-point input projection, residual bidirectional GRU layers, per-point output.

    Args:
        channels: ``C``, the features of one point (3 for ``(x, y, pen)``).
        hidden: GRU width ``H``.
        num_layers: bidirectional layers.
        embed_dim: width of the sinusoidal time embedding.
        num_classes: if > 0, a label embedding of ``num_classes + 1`` rows (the last is the null label of
            classifier-free guidance) added to the time embedding.
        rngs: parameter initialisation RNGs.

    Called as ``net(x (B, N, C), labels (B,), y=None, *, train=False, key=None, mask=None)`` like every network
    of :mod:`scoresde.models`; ``mask`` ``(B, N)`` marks the real points (default: all).
    """

    def __init__(
        self,
        channels: int,
        *,
        hidden: int = 128,
        num_layers: int = 2,
        embed_dim: int = 64,
        num_classes: int = 0,
        rngs: nnx.Rngs,
    ):
        self.channels, self.embed_dim, self.num_classes = channels, embed_dim, num_classes
        self.temb1 = nnx.Linear(embed_dim, hidden, rngs=rngs)
        self.temb2 = nnx.Linear(hidden, hidden, rngs=rngs)
        self.label_emb = nnx.Embed(num_classes + 1, hidden, rngs=rngs) if num_classes > 0 else None
        self.inp = nnx.Linear(channels, hidden, rngs=rngs)
        self.layers = nnx.List([BiRNNLayer(hidden, rngs=rngs) for _ in range(num_layers)])
        self.out_norm = nnx.LayerNorm(hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, channels, kernel_init=nnx.initializers.zeros, rngs=rngs)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def __call__(self, x, labels, y=None, *, train: bool = False, key=None, mask=None):
        del train, key  # no dropout
        if x.ndim != 3 or x.shape[-1] != self.channels:
            raise ValueError(f"BiRNNScore takes sequences (B, N, {self.channels}); got shape {x.shape}")
        b, n, _ = x.shape
        mask = jnp.ones((b, n), x.dtype) if mask is None else jnp.asarray(mask, x.dtype)
        emb = self.temb2(nnx.silu(self.temb1(timestep_embedding(labels, self.embed_dim))))
        if self.label_emb is not None:
            if y is None:
                y = jnp.full((b,), self.null_label, dtype=jnp.int32)
            emb = emb + self.label_emb(y)
        emb = nnx.silu(emb)
        h = self.inp(jnp.where(mask[..., None] > 0, x, 0.0)) * mask[..., None]
        for layer in self.layers:
            h = layer(h, emb, mask)
        return self.out(nnx.silu(self.out_norm(h))) * mask[..., None]
