"""Images and arrays on disk: uint8 conversion, PNG grids and scatter plots, atomic ``.npz`` writes.

One of each: every mode that writes samples, snapshots or partial results goes through these.
"""

from __future__ import annotations

import json
import math
import os

import jax.numpy as jnp
import numpy as np

__all__ = ["to_uint8", "image_grid", "save_image_grid", "save_scatter", "save_npz_atomic", "save_json_atomic", "psnr"]


def save_json_atomic(path: str, obj) -> None:
    """Writes ``obj`` as JSON to ``path`` atomically (the old file or the complete new one)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, default=str)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_npz_atomic(path: str, **arrays) -> None:
    """Writes ``path`` (``.npz``) so that it is either the old file or the complete new one, never half of it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.npz"
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def to_uint8(images01: np.ndarray) -> np.ndarray:
    """Images in [0, 1] (clipped) to uint8, rounding as the reference does (``x * 255`` clipped)."""
    return np.clip(np.asarray(images01, np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def image_grid(images: np.ndarray, ncol: int | None = None, padding: int = 2) -> np.ndarray:
    """Tiles ``(N, H, W, C)`` uint8 images into one ``(rows H', cols W', 3)`` grid (like ``make_grid``)."""
    images = np.asarray(images)
    n, h, w, c = images.shape
    if c == 1:
        images = np.repeat(images, 3, axis=-1)
    ncol = ncol or int(math.ceil(math.sqrt(n)))
    nrow = int(math.ceil(n / ncol))
    grid = np.zeros((nrow * (h + padding) + padding, ncol * (w + padding) + padding, 3), np.uint8)
    for i in range(n):
        r, col = divmod(i, ncol)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[y : y + h, x : x + w] = images[i]
    return grid


def save_image_grid(path: str, images_uint8: np.ndarray, *, upscale: int = 1, ncol: int | None = None) -> np.ndarray:
    """Writes a PNG grid of uint8 NHWC images (optionally upscaled by pixel repetition); returns the grid."""
    from PIL import Image  # noqa: PLC0415  (Pillow only when a PNG is written)

    grid = image_grid(images_uint8, ncol)
    if upscale > 1:
        grid = grid.repeat(upscale, axis=0).repeat(upscale, axis=1)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(grid).save(path)
    return grid


def save_scatter(path: str, points: np.ndarray, *, reference: np.ndarray | None = None, title: str = "") -> None:
    """Writes a scatter plot PNG of 2-D samples (and, faintly, reference data)."""
    # The object API with an Agg canvas: no pyplot, so a notebook's backend is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415  (matplotlib only for plots)
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(4, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if reference is not None:
        ax.scatter(reference[:, 0], reference[:, 1], s=2, c="0.75", label="data")
    ax.scatter(points[:, 0], points[:, 1], s=2, c="C0", label="samples")
    ax.set_aspect("equal")
    ax.set_title(title)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, bbox_inches="tight")


def psnr(x, reference, data_range=1.0):
    """Peak signal-to-noise ratio per example, ``10 log10(range² / MSE)`` in dB, shape ``(B,)``."""
    mse = jnp.mean(jnp.square(x - reference).reshape(x.shape[0], -1), axis=-1)
    return 10.0 * jnp.log10(jnp.asarray(data_range, mse.dtype) ** 2 / mse)
