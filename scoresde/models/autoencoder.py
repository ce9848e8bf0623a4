"""A KL-regularised convolutional autoencoder and a patch discriminator (Flax NNX), for latent diffusion.

LDM's first stage (Rombach et al., CVPR 2022, Sec. 3.1, App. G) and the pix2pix patch discriminator (Isola
et al. 2017), with group norm in place of batch norm. The losses live in :mod:`scoresde.latent`; the
architecture notes in ``docs/latent.md``.

Examples:
    >>> ae = AutoencoderKL(in_channels=1, latent_channels=2, downsample_factor=2, rngs=nnx.Rngs(0))
    >>> mean, logvar = ae.encode(jnp.zeros((4, 16, 16, 1)))   # (4, 8, 8, 2) each
    >>> x_rec = ae.decode(mean)                                # (4, 16, 16, 1)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from scoresde.models.layers import NIN, Conv, GroupNorm

__all__ = [
    "DOWNSAMPLE_FACTORS",
    "ResnetBlock",
    "Encoder",
    "Decoder",
    "AutoencoderKL",
    "PatchDiscriminator",
    "AutoencoderTrainee",
]

DOWNSAMPLE_FACTORS = (1, 2, 4, 8)
# LDM clamps the predicted log-variance to keep exp() finite early in training.
LOGVAR_RANGE = (-30.0, 20.0)


def _levels(downsample_factor: int) -> int:
    if downsample_factor not in DOWNSAMPLE_FACTORS:
        raise ValueError(f"downsample_factor must be one of {DOWNSAMPLE_FACTORS}; got {downsample_factor!r}")
    return int(math.log2(downsample_factor)) + 1


def _channel_multipliers(levels: int, ch_mult) -> tuple[int, ...]:
    if ch_mult is None:
        return tuple(min(2**i, 4) for i in range(levels))  # 1, 2, 4, 4 (LDM's kl-f8 uses 1, 2, 4, 4)
    ch_mult = tuple(int(m) for m in ch_mult)
    if len(ch_mult) != levels or min(ch_mult) < 1:
        raise ValueError(f"ch_mult needs {levels} positive entries for this downsample_factor; got {ch_mult}")
    return ch_mult


class ResnetBlock(nnx.Module):
    """``x + conv(silu(norm(conv(silu(norm(x))))))``, a 1×1 projection on the skip when widths differ."""

    def __init__(self, in_ch: int, out_ch: int, *, rngs: nnx.Rngs):
        self.norm_0 = GroupNorm(in_ch)
        self.conv_0 = Conv(in_ch, out_ch, 3, rngs=rngs)
        self.norm_1 = GroupNorm(out_ch)
        self.conv_1 = Conv(out_ch, out_ch, 3, init_scale=0.0, rngs=rngs)  # starts as the identity map
        self.skip = NIN(in_ch, out_ch, rngs=rngs) if in_ch != out_ch else None

    def __call__(self, x):
        h = self.conv_0(jax.nn.silu(self.norm_0(x)))
        h = self.conv_1(jax.nn.silu(self.norm_1(h)))
        return (x if self.skip is None else self.skip(x)) + h


class Encoder(nnx.Module):
    """Image ``(B, H, W, in_channels)`` to posterior ``(mean, logvar)``, each ``(B, H/f, W/f, latent_channels)``.

    Args:
        in_channels: image channels.
        latent_channels: channels ``c_z`` of the latent.
        downsample_factor: ``f`` ∈ {1, 2, 4, 8}; ``H`` and ``W`` must be divisible by it.
        base_width: channels of the first level; level ``i`` has ``base_width * ch_mult[i]``.
        num_res_blocks: residual blocks per level.
        ch_mult: per-level width multipliers, ``log2(f) + 1`` of them (default ``1, 2, 4, 4``, truncated).
        rngs: parameter initialisation RNGs.
    """

    def __init__(
        self,
        in_channels: int,
        latent_channels: int,
        downsample_factor: int,
        *,
        base_width: int = 32,
        num_res_blocks: int = 1,
        ch_mult=None,
        rngs: nnx.Rngs,
    ):
        levels = _levels(downsample_factor)
        widths = [base_width * m for m in _channel_multipliers(levels, ch_mult)]
        self.downsample_factor = downsample_factor
        self.conv_in = Conv(in_channels, widths[0], 3, rngs=rngs)
        blocks, downs = [], []
        ch = widths[0]
        for i, w in enumerate(widths):
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(ch, w, rngs=rngs))
                ch = w
            if i < levels - 1:
                downs.append(Conv(ch, ch, 3, stride=2, rngs=rngs))
        self.blocks = nnx.List(blocks)
        self.downs = nnx.List(downs)
        self.num_res_blocks = num_res_blocks
        self.mid = ResnetBlock(ch, ch, rngs=rngs)
        self.norm_out = GroupNorm(ch)
        self.conv_out = Conv(ch, 2 * latent_channels, 3, rngs=rngs)

    def __call__(self, x):
        f = self.downsample_factor
        if x.ndim != 4 or x.shape[1] % f or x.shape[2] % f:
            raise ValueError(f"encoder input must be (B, H, W, C) with H, W divisible by f={f}; got {x.shape}")
        h = self.conv_in(x)
        for i, block in enumerate(self.blocks):
            h = block(h)
            level, last_in_level = divmod(i, self.num_res_blocks)
            if last_in_level == self.num_res_blocks - 1 and level < len(self.downs):
                h = self.downs[level](h)
        h = self.conv_out(jax.nn.silu(self.norm_out(self.mid(h))))
        mean, logvar = jnp.split(h, 2, axis=-1)
        return mean, jnp.clip(logvar, *LOGVAR_RANGE)


class Decoder(nnx.Module):
    """Latent ``(B, h, w, latent_channels)`` to image ``(B, f h, f w, out_channels)``; mirrors :class:`Encoder`.

    :meth:`features` / :meth:`head` expose the last layer for :func:`scoresde.latent.adaptive_weight`.
    """

    def __init__(
        self,
        out_channels: int,
        latent_channels: int,
        downsample_factor: int,
        *,
        base_width: int = 32,
        num_res_blocks: int = 1,
        ch_mult=None,
        rngs: nnx.Rngs,
    ):
        levels = _levels(downsample_factor)
        widths = [base_width * m for m in _channel_multipliers(levels, ch_mult)][::-1]
        self.conv_in = Conv(latent_channels, widths[0], 3, rngs=rngs)
        self.mid = ResnetBlock(widths[0], widths[0], rngs=rngs)
        blocks, ups = [], []
        ch = widths[0]
        for i, w in enumerate(widths):
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(ch, w, rngs=rngs))
                ch = w
            if i < levels - 1:
                ups.append(Conv(ch, ch, 3, rngs=rngs))
        self.blocks = nnx.List(blocks)
        self.ups = nnx.List(ups)
        self.num_res_blocks = num_res_blocks
        self.norm_out = GroupNorm(ch)
        self.conv_out = Conv(ch, out_channels, 3, rngs=rngs)

    def features(self, z):
        """Everything before the last convolution: ``(B, H, W, base_width * ch_mult[0])``, activated."""
        h = self.mid(self.conv_in(z))
        for i, block in enumerate(self.blocks):
            h = block(h)
            level, last_in_level = divmod(i, self.num_res_blocks)
            if last_in_level == self.num_res_blocks - 1 and level < len(self.ups):
                b, hh, ww, c = h.shape
                h = jax.image.resize(h, (b, 2 * hh, 2 * ww, c), "nearest")
                h = self.ups[level](h)
        return jax.nn.silu(self.norm_out(h))

    def head(self, h, kernel=None):
        """The last convolution applied to :meth:`features`, optionally with a substitute ``kernel``."""
        if kernel is None:
            return self.conv_out(h)
        y = jax.lax.conv_general_dilated(h, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + self.conv_out.bias[...].reshape(1, 1, 1, -1)

    def __call__(self, z):
        return self.head(self.features(z))


class AutoencoderKL(nnx.Module):
    """Encoder to a diagonal Gaussian posterior and a decoder (LDM's ``AutoencoderKL``).

    Args:
        in_channels: image channels (also the decoder's output channels).
        latent_channels: latent channels ``c_z``.
        downsample_factor: ``f`` ∈ {1, 2, 4, 8}; the latent of an ``H × W`` image is ``H/f × W/f × c_z``.
        base_width, num_res_blocks, ch_mult: the width of the first level, residual blocks per level and
            per-level width multipliers, shared by encoder and decoder (see :class:`Encoder`).
        rngs: parameter initialisation RNGs.

    Raises:
        ValueError: for a ``downsample_factor`` outside {1, 2, 4, 8} or a ``ch_mult`` of the wrong length.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        latent_channels: int,
        downsample_factor: int,
        base_width: int = 32,
        num_res_blocks: int = 1,
        ch_mult=None,
        rngs: nnx.Rngs,
    ):
        kw = dict(base_width=base_width, num_res_blocks=num_res_blocks, ch_mult=ch_mult, rngs=rngs)
        self.encoder = Encoder(in_channels, latent_channels, downsample_factor, **kw)
        self.decoder = Decoder(in_channels, latent_channels, downsample_factor, **kw)
        self.in_channels, self.latent_channels, self.downsample_factor = in_channels, latent_channels, downsample_factor

    def latent_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """``(H, W, C)`` of an image to ``(H/f, W/f, c_z)`` of its latent."""
        h, w, _ = image_shape
        f = self.downsample_factor
        return (h // f, w // f, self.latent_channels)

    def encode(self, x):
        """``(mean, logvar)`` of ``q(z | x)``, each ``(B, H/f, W/f, c_z)``."""
        return self.encoder(x)

    def decode(self, z):
        """Decoded image ``(B, H, W, in_channels)`` of latents ``z`` (unscaled, as the encoder gives them)."""
        return self.decoder(z)

    def __call__(self, x, *, key=None):
        """``(x_rec, mean, logvar)``: reconstructs from a posterior sample (``key``) or the mean (``None``)."""
        mean, logvar = self.encode(x)
        z = mean if key is None else mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)
        return self.decode(z), mean, logvar


class PatchDiscriminator(nnx.Module):
    """pix2pix "NLayerDiscriminator": ``(B, H, W, C)`` images to ``(B, H/2^n, W/2^n, 1)`` patch logits.

    Args:
        in_channels: image channels.
        base_width: channels of the first convolution; doubled per layer up to ``8 * base_width``.
        num_layers: number of stride-2 convolutions ``n`` (LDM uses 3; ``H`` must be divisible by ``2^n``).
        rngs: parameter initialisation RNGs.
    """

    def __init__(self, in_channels: int, *, base_width: int = 64, num_layers: int = 3, rngs: nnx.Rngs):
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1; got {num_layers}")
        widths = [base_width * min(2**i, 8) for i in range(num_layers + 1)]
        self.conv_in = Conv(in_channels, widths[0], 4, stride=2, rngs=rngs)
        convs, norms = [], []
        for i in range(1, num_layers + 1):
            stride = 2 if i < num_layers else 1  # as in pix2pix: the last feature layer keeps the resolution
            convs.append(Conv(widths[i - 1], widths[i], 4, stride=stride, rngs=rngs))
            norms.append(GroupNorm(widths[i]))
        self.convs, self.norms = nnx.List(convs), nnx.List(norms)
        self.conv_out = Conv(widths[-1], 1, 4, rngs=rngs)

    def __call__(self, x):
        h = jax.nn.leaky_relu(self.conv_in(x), 0.2)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = jax.nn.leaky_relu(norm(conv(h)), 0.2)
        return self.conv_out(h)


class AutoencoderTrainee(nnx.Module):
    """What ``--mode=train_autoencoder`` trains and checkpoints: ``ae`` and, optionally, ``disc``.

    One module, so the parameters are one state that checkpoints and EMA handle like a score network's.
    """

    def __init__(self, ae: AutoencoderKL, disc: PatchDiscriminator | None = None):
        self.ae = ae
        # assigned once: NNX fixes an attribute's kind (None is static, a Module is data) at first assignment
        self.disc = disc
