"""The Inception-v3 variant of the standard FID, in Flax NNX.

A port of the TF FID network (``inception-2015-12-05``) as pytorch-fid rebuilds it for its weights, with
the FID patches of the mixed blocks. Parameter names follow the PyTorch state dict (``Mixed_5b.branch1x1.
conv.weight`` is ``Mixed_5b/branch1x1/conv/kernel``). Inputs: NHWC, ``[0, 255]``, any size, resized
bilinearly to 299×299. Details: ``docs/metrics.md``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

FID_INPUT_SIZE = 299
POOL_DIM = 2048
NUM_LOGITS = 1008


# --------------------------------------------------------------------------- resizing


@functools.lru_cache(maxsize=32)
def resize_matrix(in_size: int, out_size: int, method: str = "pytorch_fid") -> np.ndarray:
    """The ``(out_size, in_size)`` matrix of 1-D bilinear interpolation.

    Args:
        in_size, out_size: lengths of the input and output axes.
        method: ``"pytorch_fid"`` (torch's bilinear ``interpolate``, half-pixel centres, no antialiasing) or
            ``"tf_legacy"`` (``tf.compat.v1.image.resize_bilinear``); ``docs/metrics.md``.

    Returns:
        float64 weights; every row sums to one, so constant images stay constant.

    Raises:
        ValueError: for an unknown ``method``.
    """
    scale = in_size / out_size
    i = np.arange(out_size, dtype=np.float64)
    if method == "pytorch_fid":
        src = np.maximum((i + 0.5) * scale - 0.5, 0.0)
    elif method == "tf_legacy":
        src = i * scale
    else:
        raise ValueError(f"unknown resize method {method!r}; expected 'pytorch_fid' or 'tf_legacy'")
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    frac = src - i0
    m = np.zeros((out_size, in_size))
    np.add.at(m, (np.arange(out_size), i0), 1.0 - frac)
    np.add.at(m, (np.arange(out_size), i1), frac)
    return m


def resize_bilinear(x: jax.Array, size: int, method: str = "pytorch_fid") -> jax.Array:
    """Bilinearly resizes NHWC images to ``size × size`` (identity when already that size)."""
    h, w = x.shape[1], x.shape[2]
    if h == size and w == size:
        return x
    mh = jnp.asarray(resize_matrix(h, size, method), x.dtype)
    mw = jnp.asarray(resize_matrix(w, size, method), x.dtype)
    return jnp.einsum("oh,bhwc,pw->bopc", mh, x, mw, precision=jax.lax.Precision.HIGHEST)


# --------------------------------------------------------------------------- pooling


def _max_pool(x, window: int, stride: int, pad: int = 0):
    pads = ((0, 0), (pad, pad), (pad, pad), (0, 0))
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1), (1, stride, stride, 1), pads)


def _avg_pool_3x3_same_exclude_pad(x):
    """3×3 stride-1 average pool over the valid pixels only (``count_include_pad=False``)."""
    pads = ((0, 0), (1, 1), (1, 1), (0, 0))
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pads)
    ones = jnp.ones((1, x.shape[1], x.shape[2], 1), x.dtype)
    count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pads)
    return total / count


# --------------------------------------------------------------------------- layers


class BasicConv2d(nnx.Module):
    """Convolution without bias, batch norm (eps 1e-3, running statistics) and ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel, stride: int = 1, padding=(0, 0), *, rngs: nnx.Rngs):
        kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
        padding = (padding, padding) if isinstance(padding, int) else tuple(padding)
        self.conv = nnx.Conv(
            in_ch,
            out_ch,
            kernel,
            strides=(stride, stride),
            padding=((padding[0], padding[0]), (padding[1], padding[1])),
            use_bias=False,
            precision=jax.lax.Precision.HIGHEST,
            rngs=rngs,
        )
        self.bn = nnx.BatchNorm(out_ch, epsilon=1e-3, use_running_average=True, rngs=rngs)

    def __call__(self, x):
        return jax.nn.relu(self.bn(self.conv(x)))


class InceptionA(nnx.Module):
    """35×35 block (FID variant: pool branch averages without padding)."""

    def __init__(self, in_ch: int, pool_features: int, *, rngs: nnx.Rngs):
        self.branch1x1 = BasicConv2d(in_ch, 64, 1, rngs=rngs)
        self.branch5x5_1 = BasicConv2d(in_ch, 48, 1, rngs=rngs)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2, rngs=rngs)
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 64, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1, rngs=rngs)
        self.branch_pool = BasicConv2d(in_ch, pool_features, 1, rngs=rngs)

    def __call__(self, x):
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool_3x3_same_exclude_pad(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nnx.Module):
    """35→17 reduction block (``Mixed_6a``)."""

    def __init__(self, in_ch: int, *, rngs: nnx.Rngs):
        self.branch3x3 = BasicConv2d(in_ch, 384, 3, stride=2, rngs=rngs)
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 64, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2, rngs=rngs)

    def __call__(self, x):
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return jnp.concatenate([b3, bd, _max_pool(x, 3, 2)], axis=-1)


class InceptionC(nnx.Module):
    """17×17 block with factorised 7×7 convolutions (FID variant: padding-free average pool)."""

    def __init__(self, in_ch: int, channels_7x7: int, *, rngs: nnx.Rngs):
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_ch, 192, 1, rngs=rngs)
        self.branch7x7_1 = BasicConv2d(in_ch, c7, 1, rngs=rngs)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_1 = BasicConv2d(in_ch, c7, 1, rngs=rngs)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch_pool = BasicConv2d(in_ch, 192, 1, rngs=rngs)

    def __call__(self, x):
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = layer(bd)
        bp = self.branch_pool(_avg_pool_3x3_same_exclude_pad(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nnx.Module):
    """17→8 reduction block (``Mixed_7a``)."""

    def __init__(self, in_ch: int, *, rngs: nnx.Rngs):
        self.branch3x3_1 = BasicConv2d(in_ch, 192, 1, rngs=rngs)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2, rngs=rngs)
        self.branch7x7x3_1 = BasicConv2d(in_ch, 192, 1, rngs=rngs)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2, rngs=rngs)

    def __call__(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return jnp.concatenate([b3, b7, _max_pool(x, 3, 2)], axis=-1)


class InceptionE(nnx.Module):
    """8×8 block; ``pool="avg"`` is FIDInceptionE_1 (``Mixed_7b``), ``pool="max"`` FIDInceptionE_2 (``Mixed_7c``)."""

    def __init__(self, in_ch: int, pool: str, *, rngs: nnx.Rngs):
        if pool not in ("avg", "max"):
            raise ValueError(f"unknown pool {pool!r}; expected 'avg' or 'max'")
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_ch, 320, 1, rngs=rngs)
        self.branch3x3_1 = BasicConv2d(in_ch, 384, 1, rngs=rngs)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 448, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
        self.branch_pool = BasicConv2d(in_ch, 192, 1, rngs=rngs)

    def __call__(self, x):
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = jnp.concatenate([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], axis=-1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = jnp.concatenate([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], axis=-1)
        pooled = _max_pool(x, 3, 1, pad=1) if self.pool == "max" else _avg_pool_3x3_same_exclude_pad(x)
        return jnp.concatenate([b1, b3, bd, self.branch_pool(pooled)], axis=-1)


class InceptionV3FID(nnx.Module):
    """FID Inception-v3: ``uint8``-range NHWC images of any size → (pool_3 ``(B, 2048)``, logits ``(B, 1008)``).

    Args:
        resize_method: see :func:`resize_matrix`.
        rngs: initialiser keys (random weights; load the real ones with
            :func:`scoresde.metrics.weights.load_inception`).

    Call arguments:
        images: ``(B, H, W, C)``, values in ``[0, 255]`` (uint8 or float); ``C`` is 3, or 1 (grey images
            are repeated to RGB, the usual convention for FID on grey data).
        resize_to: the side the images are resized to; 299 is the FID standard. Smaller sides (>= 75) run
            the same network faster, for tests only.
    """

    def __init__(self, *, resize_method: str = "pytorch_fid", rngs: nnx.Rngs):
        resize_matrix(2, 3, resize_method)  # validates the name early
        self.resize_method = resize_method
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2, rngs=rngs)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3, rngs=rngs)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1, rngs=rngs)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1, rngs=rngs)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3, rngs=rngs)
        self.Mixed_5b = InceptionA(192, 32, rngs=rngs)
        self.Mixed_5c = InceptionA(256, 64, rngs=rngs)
        self.Mixed_5d = InceptionA(288, 64, rngs=rngs)
        self.Mixed_6a = InceptionB(288, rngs=rngs)
        self.Mixed_6b = InceptionC(768, 128, rngs=rngs)
        self.Mixed_6c = InceptionC(768, 160, rngs=rngs)
        self.Mixed_6d = InceptionC(768, 160, rngs=rngs)
        self.Mixed_6e = InceptionC(768, 192, rngs=rngs)
        self.Mixed_7a = InceptionD(768, rngs=rngs)
        self.Mixed_7b = InceptionE(1280, "avg", rngs=rngs)
        self.Mixed_7c = InceptionE(2048, "max", rngs=rngs)
        self.fc = nnx.Linear(POOL_DIM, NUM_LOGITS, precision=jax.lax.Precision.HIGHEST, rngs=rngs)

    def __call__(self, images, *, resize_to: int = FID_INPUT_SIZE):
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(f"expected NHWC images with 1 or 3 channels; got shape {images.shape}")
        if resize_to < 75:
            raise ValueError(f"resize_to must be >= 75 for Inception-v3's reductions; got {resize_to}")
        x = images.astype(jnp.float32) / 255.0
        if x.shape[-1] == 1:
            x = jnp.repeat(x, 3, axis=-1)
        x = resize_bilinear(x, resize_to, self.resize_method)
        x = 2.0 * x - 1.0
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = _max_pool(x, 3, 2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = _max_pool(x, 3, 2)
        for block in (
            self.Mixed_5b,
            self.Mixed_5c,
            self.Mixed_5d,
            self.Mixed_6a,
            self.Mixed_6b,
            self.Mixed_6c,
            self.Mixed_6d,
            self.Mixed_6e,
            self.Mixed_7a,
            self.Mixed_7b,
            self.Mixed_7c,
        ):
            x = block(x)
        pool = x.mean(axis=(1, 2))
        return pool, self.fc(pool)
