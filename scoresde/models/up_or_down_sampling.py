"""FIR up/down-sampling (StyleGAN2's ``upfirdn2d``) and the fused resampling convolution, NHWC.

Each operation is a single XLA convolution: zero insertion is ``lhs_dilation``, decimation is the
window stride, and the per-channel FIR filter is a depthwise convolution, so nothing is transposed
to NCHW and nothing is materialised between the steps. The semantics (padding, kernel normalisation
and gain) are those of the reference's ``up_or_down_sampling`` module.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scoresde.models.layers import add_bias, compute_dtype, default_init

_DN = ("NHWC", "HWIO", "NHWC")


def setup_kernel(k: Sequence[float]) -> np.ndarray:
    """A 2-D FIR filter from a separable 1-D one (outer product), normalised to sum 1."""
    k = np.asarray(k, dtype=np.float32)
    if k.ndim == 1:
        k = np.outer(k, k)
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"FIR kernel must be 1-D or square 2-D; got shape {k.shape}")
    return k / np.sum(k)


def upfirdn2d(x, k: np.ndarray, *, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)):
    """Upsample by zero insertion, pad, convolve each channel with the 2-D filter ``k``, decimate.

    Same result as StyleGAN2's ``upfirdn_2d`` with equal x/y factors and pads (``pad = (pad0, pad1)``,
    non-negative).
    """
    p0, p1 = pad
    if p0 < 0 or p1 < 0:
        raise ValueError(f"upfirdn2d: negative padding {pad} is not supported")
    c = x.shape[-1]
    # The reference convolves (flips) the filter; cross-correlate with the flipped filter.
    w = np.ascontiguousarray(k[::-1, ::-1])
    w = jnp.asarray(np.tile(w[:, :, None, None], (1, 1, 1, c)), dtype=x.dtype)
    # Zero insertion by lhs_dilation leaves out the (up - 1) trailing zeros the reference appends.
    padding = ((p0, p1 + up - 1), (p0, p1 + up - 1))
    return jax.lax.conv_general_dilated(
        x, w, (down, down), padding, lhs_dilation=(up, up), dimension_numbers=_DN, feature_group_count=c
    )


def upsample_2d(x, k=(1, 3, 3, 1), factor: int = 2):
    """FIR upsampling by ``factor`` (``[N,H,W,C] -> [N,fH,fW,C]``); constant images keep their value."""
    kk = setup_kernel(k) * (factor**2)
    p = kk.shape[0] - factor
    return upfirdn2d(x, kk, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x, k=(1, 3, 3, 1), factor: int = 2):
    """FIR downsampling by ``factor`` (``[N,H,W,C] -> [N,H/f,W/f,C]``)."""
    kk = setup_kernel(k)
    p = kk.shape[0] - factor
    return upfirdn2d(x, kk, down=factor, pad=((p + 1) // 2, p // 2))


def naive_upsample_2d(x, factor: int = 2):
    """Nearest-neighbour upsampling."""
    n, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (n, h, factor, w, factor, c))
    return x.reshape(n, h * factor, w * factor, c)


def naive_downsample_2d(x, factor: int = 2):
    """Average pooling over ``factor x factor`` blocks."""
    n, h, w, c = x.shape
    return jnp.mean(x.reshape(n, h // factor, factor, w // factor, factor, c), axis=(2, 4))


def upsample_conv_2d(x, w, k=(1, 3, 3, 1), factor: int = 2):
    """Fused transposed convolution (stride ``factor``) with HWIO kernel ``w`` and FIR smoothing."""
    kk = setup_kernel(k) * (factor**2)
    cw = w.shape[0]
    p = (kk.shape[0] - factor) - (cw - 1)
    # Transposed convolution == correlation of the zero-inserted input with w, padded by (cw - 1).
    y = jax.lax.conv_general_dilated(
        x, w, (1, 1), ((cw - 1, cw - 1), (cw - 1, cw - 1)), lhs_dilation=(factor, factor), dimension_numbers=_DN
    )
    return upfirdn2d(y, kk, pad=((p + 1) // 2 + factor - 1, p // 2 + 1))


def conv_downsample_2d(x, w, k=(1, 3, 3, 1), factor: int = 2):
    """Fused FIR smoothing followed by a stride-``factor`` convolution with HWIO kernel ``w``."""
    kk = setup_kernel(k)
    cw = w.shape[0]
    p = (kk.shape[0] - factor) + (cw - 1)
    x = upfirdn2d(x, kk, pad=((p + 1) // 2, p // 2))
    return jax.lax.conv_general_dilated(x, w, (factor, factor), "VALID", dimension_numbers=_DN)


class Conv2d(nnx.Module):
    """Convolution with optional FIR up- or down-sampling (StyleGAN2 ``Conv2d``; params ``weight``, ``bias``)."""

    linen_name = "Conv2d"

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int = 3,
        *,
        up: bool = False,
        down: bool = False,
        resample_kernel=(1, 3, 3, 1),
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if up and down:
            raise ValueError("Conv2d: up and down are exclusive")
        if kernel < 1 or kernel % 2 != 1:
            raise ValueError(f"Conv2d: kernel must be odd and >= 1; got {kernel}")
        self.weight = nnx.Param(default_init()(rngs.params(), (kernel, kernel, in_ch, out_ch)))
        self.bias = nnx.Param(jnp.zeros((out_ch,)))
        self.up, self.down = up, down
        self.resample_kernel = tuple(resample_kernel)
        self.dtype = dtype

    def __call__(self, x):
        dtype = compute_dtype(self.dtype, x)
        x = x.astype(dtype)
        w = self.weight[...].astype(dtype)
        if self.up:
            y = upsample_conv_2d(x, w, self.resample_kernel)
        elif self.down:
            y = conv_downsample_2d(x, w, self.resample_kernel)
        else:
            y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=_DN)
        return add_bias(y, self.bias[...])
