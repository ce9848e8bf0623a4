"""Residual blocks, resampling layers and skip combiners of NCSN++ / DDPM++ / DDPM (NHWC, Flax NNX).

Submodule attribute names (``GroupNorm_0``, ``Conv_0``, ``Dense_0``, ``NIN_0``, ``Conv2d_0`` ...) are
the reference's, in both of its code bases, so checkpoints map onto these modules by name.
Residual blocks take ``key``: a dropout PRNG key in training, ``None`` in evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax.numpy as jnp
from flax import nnx

from scoresde.models import up_or_down_sampling as updown
from scoresde.models.layers import NIN, Conv, Dense, GroupNorm, accumulation_dtype, compute_dtype, dropout


class Upsample(nnx.Module):
    """2x upsampling: nearest (+3x3 conv) or FIR (+ fused transposed conv)."""

    linen_name = "Upsample"

    def __init__(
        self,
        in_ch: int,
        out_ch: int | None = None,
        *,
        with_conv: bool = False,
        fir: bool = False,
        fir_kernel=(1, 3, 3, 1),
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        out_ch = out_ch or in_ch
        self.fir, self.with_conv, self.fir_kernel, self.dtype = fir, with_conv, tuple(fir_kernel), dtype
        if with_conv and not fir:
            self.Conv_0 = Conv(in_ch, out_ch, 3, dtype=dtype, rngs=rngs)
        elif with_conv:
            self.Conv2d_0 = updown.Conv2d(in_ch, out_ch, 3, up=True, resample_kernel=fir_kernel, dtype=dtype, rngs=rngs)
        elif out_ch != in_ch:
            raise ValueError(f"Upsample without a convolution cannot change channels ({in_ch} -> {out_ch})")

    def __call__(self, x):
        if not self.fir:
            h = updown.naive_upsample_2d(x)
            return self.Conv_0(h) if self.with_conv else h
        if self.with_conv:
            return self.Conv2d_0(x)
        return updown.upsample_2d(
            x.astype(compute_dtype(self.dtype, x)), self.fir_kernel
        )  # the FIR filter is a convolution


class Downsample(nnx.Module):
    """2x downsampling: average pool / stride-2 3x3 conv, or FIR (+ fused conv)."""

    linen_name = "Downsample"

    def __init__(
        self,
        in_ch: int,
        out_ch: int | None = None,
        *,
        with_conv: bool = False,
        fir: bool = False,
        fir_kernel=(1, 3, 3, 1),
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        out_ch = out_ch or in_ch
        self.fir, self.with_conv, self.fir_kernel, self.dtype = fir, with_conv, tuple(fir_kernel), dtype
        if with_conv and not fir:
            self.Conv_0 = Conv(in_ch, out_ch, 3, stride=2, dtype=dtype, rngs=rngs)
        elif with_conv:
            self.Conv2d_0 = updown.Conv2d(
                in_ch, out_ch, 3, down=True, resample_kernel=fir_kernel, dtype=dtype, rngs=rngs
            )
        elif out_ch != in_ch:
            raise ValueError(f"Downsample without a convolution cannot change channels ({in_ch} -> {out_ch})")

    def __call__(self, x):
        if not self.fir:
            # 'SAME' stride-2 conv pads (0, 1), as the reference's explicit pad; even sizes only.
            return self.Conv_0(x) if self.with_conv else updown.naive_downsample_2d(x)
        if self.with_conv:
            return self.Conv2d_0(x)
        return updown.downsample_2d(
            x.astype(compute_dtype(self.dtype, x)), self.fir_kernel
        )  # the FIR filter is a convolution


class Combine(nnx.Module):
    """Merges the input pyramid into the main path: 1x1 conv, then concatenate or sum."""

    linen_name = "Combine"

    def __init__(self, dim1: int, dim2: int, *, method: str = "cat", dtype=jnp.float32, rngs: nnx.Rngs):
        if method not in ("cat", "sum"):
            raise ValueError(f"unknown progressive_combine {method!r}; expected one of: cat, sum")
        self.Conv_0 = Conv(dim1, dim2, 1, dtype=dtype, rngs=rngs)
        self.method = method

    def __call__(self, x, y):
        h = self.Conv_0(x)
        return jnp.concatenate([h, y.astype(h.dtype)], axis=-1) if self.method == "cat" else h + y


def _residual(x, h, skip_rescale: bool):
    # The residual stream is kept in float32 in mixed precision; only the block's interior is bf16.
    acc = accumulation_dtype(x.dtype)
    y = x.astype(acc) + h.astype(acc)
    return y / math.sqrt(2.0) if skip_rescale else y


class ResnetBlockDDPMpp(nnx.Module):
    """The DDPM residual block with optional 1/√2 skip rescaling (DDPM++ ``ResnetBlockDDPMpp``)."""

    linen_name = "ResnetBlockDDPMpp"

    def __init__(
        self,
        act: Callable,
        in_ch: int,
        out_ch: int | None = None,
        *,
        temb_dim: int | None = None,
        conv_shortcut: bool = False,
        dropout: float = 0.1,
        skip_rescale: bool = False,
        init_scale: float = 0.0,
        num_groups: int | None = None,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        out_ch = out_ch or in_ch
        self.GroupNorm_0 = GroupNorm(in_ch, num_groups, dtype=dtype)
        self.Conv_0 = Conv(in_ch, out_ch, 3, dtype=dtype, rngs=rngs)
        if temb_dim is not None:
            self.Dense_0 = Dense(temb_dim, out_ch, rngs=rngs)  # float32: negligible cost
        self.GroupNorm_1 = GroupNorm(out_ch, num_groups, dtype=dtype)
        self.Conv_1 = Conv(out_ch, out_ch, 3, init_scale=init_scale, dtype=dtype, rngs=rngs)
        if in_ch != out_ch:
            if conv_shortcut:
                self.Conv_2 = Conv(in_ch, out_ch, 3, dtype=dtype, rngs=rngs)
            else:
                self.NIN_0 = NIN(in_ch, out_ch, dtype=dtype, rngs=rngs)
        self.act, self.rate, self.skip_rescale = act, dropout, skip_rescale
        self.has_temb, self.reshape_skip, self.conv_shortcut = temb_dim is not None, in_ch != out_ch, conv_shortcut

    def __call__(self, x, temb=None, *, key=None):
        h = self.Conv_0(self.act(self.GroupNorm_0(x)))
        if temb is not None and self.has_temb:
            h = h + self.Dense_0(self.act(temb))[:, None, None, :]
        h = dropout(self.act(self.GroupNorm_1(h)), self.rate, key)
        h = self.Conv_1(h)
        if self.reshape_skip:
            x = self.Conv_2(x) if self.conv_shortcut else self.NIN_0(x)
        return _residual(x, h, self.skip_rescale)


class ResnetBlockDDPM(ResnetBlockDDPMpp):
    """Ho et al.'s DDPM residual block (32 groups, zero-init output conv, plain sum), ``ResnetBlockDDPM``."""

    linen_name = "ResnetBlockDDPM"

    def __init__(
        self,
        act: Callable,
        in_ch: int,
        out_ch: int | None = None,
        *,
        temb_dim: int | None = None,
        conv_shortcut: bool = False,
        dropout: float = 0.1,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        super().__init__(
            act,
            in_ch,
            out_ch,
            temb_dim=temb_dim,
            conv_shortcut=conv_shortcut,
            dropout=dropout,
            skip_rescale=False,
            init_scale=0.0,
            num_groups=32,
            dtype=dtype,
            rngs=rngs,
        )


class ResnetBlockBigGANpp(nnx.Module):
    """BigGAN-style residual block that can also resample (naive or FIR), ``ResnetBlockBigGANpp``."""

    linen_name = "ResnetBlockBigGANpp"

    def __init__(
        self,
        act: Callable,
        in_ch: int,
        out_ch: int | None = None,
        *,
        temb_dim: int | None = None,
        up: bool = False,
        down: bool = False,
        dropout: float = 0.1,
        fir: bool = False,
        fir_kernel=(1, 3, 3, 1),
        skip_rescale: bool = True,
        init_scale: float = 0.0,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        out_ch = out_ch or in_ch
        self.GroupNorm_0 = GroupNorm(in_ch, dtype=dtype)
        self.Conv_0 = Conv(in_ch, out_ch, 3, dtype=dtype, rngs=rngs)
        if temb_dim is not None:
            self.Dense_0 = Dense(temb_dim, out_ch, rngs=rngs)  # float32: negligible cost
        self.GroupNorm_1 = GroupNorm(out_ch, dtype=dtype)
        self.Conv_1 = Conv(out_ch, out_ch, 3, init_scale=init_scale, dtype=dtype, rngs=rngs)
        self.reshape_skip = in_ch != out_ch or up or down
        if self.reshape_skip:
            self.Conv_2 = Conv(in_ch, out_ch, 1, dtype=dtype, rngs=rngs)
        self.act, self.rate, self.skip_rescale = act, dropout, skip_rescale
        self.up, self.down, self.fir, self.fir_kernel = up, down, fir, tuple(fir_kernel)
        self.has_temb, self.dtype = temb_dim is not None, dtype

    def _resample(self, x):
        # Into the compute dtype first: the FIR filter is a convolution, and both resampled tensors go
        # straight into a convolution (Conv_0 / Conv_2) that would round them to ``dtype`` anyway.
        if self.fir and (self.up or self.down):
            x = x.astype(compute_dtype(self.dtype, x))
        if self.up:
            return updown.upsample_2d(x, self.fir_kernel) if self.fir else updown.naive_upsample_2d(x)
        if self.down:
            return updown.downsample_2d(x, self.fir_kernel) if self.fir else updown.naive_downsample_2d(x)
        return x

    def __call__(self, x, temb=None, *, key=None):
        h = self._resample(self.act(self.GroupNorm_0(x)))
        x = self._resample(x)
        h = self.Conv_0(h)
        if temb is not None and self.has_temb:
            h = h + self.Dense_0(self.act(temb))[:, None, None, :]
        h = dropout(self.act(self.GroupNorm_1(h)), self.rate, key)
        h = self.Conv_1(h)
        if self.reshape_skip:
            x = self.Conv_2(x)
        return _residual(x, h, self.skip_rescale)
