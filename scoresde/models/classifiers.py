"""Noise-conditional classifiers ``p_t(y | x_t)`` for classifier guidance (Flax NNX).

``clf(x, noise_level) -> (B, num_classes)`` logits on VE coordinates ``x_t / alpha(t)`` with
``noise_level = sigma(t) / alpha(t)``, so one classifier reads any linear SDE
(:func:`scoresde.guidance.classifier_log_prob_fn` converts). ``"wrn"`` is the reference's noise-conditional
Wide-ResNet, ``"mlp"`` a residual MLP for low-dimensional data (``docs/networks.md``).

Examples:
    >>> clf = build.get_classifier(config, rngs=nnx.Rngs(0))  # or WideResNet(...) / MLPClassifier(...)
    >>> log_prob_fn = guidance.classifier_log_prob_fn(clf, sde)
    >>> guided = guidance.classifier_guidance(score_fn, log_prob_fn, y=3, scale=2.0)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from scoresde.sde import batch_mul

__all__ = ["FourierEmbedding", "WideResNet", "MLPClassifier"]

# The reference's kaiming-normal (fan_out, gain 2) convolution init and U[-1/√n, 1/√n] final dense init.
_conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def _dense_out_init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -1.0, 1.0) / math.sqrt(shape[1])


class FourierEmbedding(nnx.Module):
    """``[sin(2π W s), cos(2π W s)]`` with fixed ``W ~ N(0, scale²)`` (stored as a parameter, never trained)."""

    def __init__(self, size: int = 128, scale: float = 16.0, *, rngs: nnx.Rngs):
        self.W = nnx.Param(jax.random.normal(rngs.params(), (size,)) * scale)

    def __call__(self, s):
        proj = s[:, None] * jax.lax.stop_gradient(self.W[...])[None, :] * (2.0 * math.pi)
        return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


def _group_norm(channels, rngs):
    return nnx.GroupNorm(channels, num_groups=min(channels // 4, 32), epsilon=1e-5, rngs=rngs)


class _WRNBlock(nnx.Module):
    def __init__(self, c_in, c_out, stride, activate_before_residual, temb_dim, *, rngs):
        self.abr = activate_before_residual
        self.stride = stride
        self.norm1 = _group_norm(c_in, rngs)
        self.conv1 = nnx.Conv(
            c_in,
            c_out,
            (3, 3),
            strides=(stride, stride),
            padding="SAME",
            use_bias=False,
            kernel_init=_conv_init,
            rngs=rngs,
        )
        self.temb = nnx.Linear(temb_dim, c_out, rngs=rngs)
        self.norm2 = _group_norm(c_out, rngs)
        self.conv2 = nnx.Conv(c_out, c_out, (3, 3), padding="SAME", use_bias=False, kernel_init=_conv_init, rngs=rngs)

    def __call__(self, x, temb):
        if self.abr:
            x = nnx.relu(self.norm1(x))
            block = x
        else:
            block = nnx.relu(self.norm1(x))
        block = self.conv1(block)
        block = block + self.temb(nnx.swish(temb))[:, None, None, :]
        block = self.conv2(nnx.relu(self.norm2(block)))
        # The reference's _output_add: average-pool and zero-pad the shortcut when the shape changes.
        if block.shape[-1] != x.shape[-1]:
            s = self.stride
            x = nnx.avg_pool(x, (s, s), strides=(s, s))
            x = jnp.pad(x, [(0, 0), (0, 0), (0, 0), (0, block.shape[-1] - x.shape[-1])])
        return block + x


class WideResNet(nnx.Module):
    """The reference's noise-conditional WRN-``depth``-``width`` (depth = 6 n + 4).

    Args:
        num_classes: number of outputs.
        in_channels: image channels.
        depth: total depth (28 for WRN-28-10); ``(depth - 4) / 6`` blocks per group.
        width: the channel multiplier (10 for WRN-28-10).
        embed_size: Fourier frequencies of the noise-level embedding (128 in the reference).
        fourier_scale: std of the Fourier frequencies (16 in the reference).
        rngs: parameter initialisation RNGs.

    Raises:
        ValueError: if ``depth`` is not ``6 n + 4``.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 3,
        depth: int = 28,
        width: int = 10,
        embed_size: int = 128,
        fourier_scale: float = 16.0,
        rngs: nnx.Rngs,
    ):
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6 n + 4 with n >= 1 (e.g. 10, 16, 28); got {depth}")
        n = (depth - 4) // 6
        temb_dim = 4 * embed_size
        self.embed = FourierEmbedding(embed_size, fourier_scale, rngs=rngs)
        self.temb0 = nnx.Linear(2 * embed_size, temb_dim, rngs=rngs)
        self.temb1 = nnx.Linear(temb_dim, temb_dim, rngs=rngs)
        self.init_conv = nnx.Conv(
            in_channels, 16, (3, 3), padding="SAME", use_bias=False, kernel_init=_conv_init, rngs=rngs
        )
        blocks, c_in = [], 16
        for g, (c, stride) in enumerate(((16 * width, 1), (32 * width, 2), (64 * width, 2))):
            for i in range(n):
                blocks.append(_WRNBlock(c_in, c, stride if i == 0 else 1, g == 0 and i == 0, temb_dim, rngs=rngs))
                c_in = c
        self.blocks = nnx.List(blocks)
        self.final_norm = _group_norm(c_in, rngs)
        self.out = nnx.Linear(c_in, num_classes, kernel_init=_dense_out_init, rngs=rngs)
        self.num_classes = num_classes

    def __call__(self, x, noise_level):
        d = math.prod(x.shape[1:])
        mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
        std = jnp.maximum(jnp.std(x, axis=(1, 2, 3), keepdims=True), 1.0 / math.sqrt(d))
        x = (x - mean) / std
        temb = self.temb0(self.embed(jnp.log(noise_level)))
        temb = self.temb1(nnx.swish(temb))
        h = self.init_conv(x)
        for block in self.blocks:
            h = block(h, temb)
        h = nnx.relu(self.final_norm(h))
        return self.out(jnp.mean(h, axis=(1, 2)))


class MLPClassifier(nnx.Module):
    """``logits = MLP([x, emb(log noise_level)])`` with residual SiLU layers, for low-dimensional data.

    Args:
        dim: data dimension (inputs ``(B, D)`` or ``(B, *event)`` with ``prod == D``).
        num_classes: number of outputs.
        hidden, num_layers: width and number of residual hidden layers.
        embed_size, fourier_scale: the noise-level Fourier embedding.
        rngs: parameter initialisation RNGs.
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        *,
        hidden: int = 128,
        num_layers: int = 3,
        embed_size: int = 32,
        fourier_scale: float = 4.0,
        rngs: nnx.Rngs,
    ):
        self.embed = FourierEmbedding(embed_size, fourier_scale, rngs=rngs)
        self.temb = nnx.Linear(2 * embed_size, hidden, rngs=rngs)
        self.inp = nnx.Linear(dim, hidden, rngs=rngs)
        self.hidden = nnx.List([nnx.Linear(hidden, hidden, rngs=rngs) for _ in range(num_layers)])
        self.out = nnx.Linear(hidden, num_classes, rngs=rngs)
        self.num_classes = num_classes

    def __call__(self, x, noise_level):
        # EDM-style input scaling 1/sqrt(1 + level²) (unit data scale assumed): keeps the input O(1) at
        # every noise level (the VE coordinates reach |x| ~ 150 at the end of a VP SDE).
        x = batch_mul(1.0 / jnp.sqrt(1.0 + noise_level**2), x.reshape(x.shape[0], -1))
        h = self.inp(x) + self.temb(self.embed(jnp.log(noise_level)))
        for layer in self.hidden:
            h = h + layer(nnx.silu(h))
        return self.out(nnx.silu(h))
