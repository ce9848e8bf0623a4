"""Drawings of ``(x, y, pen)`` point sequences: rasters (numpy), PNG grids (matplotlib) and SVG text.

A sequence is cut into strokes after each point whose pen channel is positive
(:func:`scoresde.data.strokes.strokes_of`); consecutive points of a stroke are joined by straight segments.
The drawing space is the data's: the glyph box is about ``[-1, 1]²``, ``y`` up.
"""

from __future__ import annotations

import os

import numpy as np

from scoresde.data.strokes import strokes_of

__all__ = ["rasterize", "save_png_grid", "to_svg", "save_svg_grid"]


def _segments(sequence, mask=None) -> np.ndarray:
    """``(S, 2, 2)`` segments of one sequence (a lone point is a zero-length segment)."""
    segs = []
    for p in strokes_of(sequence, mask):
        if len(p) == 1:
            p = np.repeat(p, 2, axis=0)
        segs.append(np.stack([p[:-1], p[1:]], axis=1))
    return np.concatenate(segs) if segs else np.zeros((0, 2, 2))


def rasterize(sequences, size: int = 28, *, width: float = 0.06, extent: float = 1.3, masks=None) -> np.ndarray:
    """Greyscale rasters ``(B, size, size)`` in ``[0, 1]`` of ``(B, N, 3)`` sequences.

    A pixel's value is ``exp(-d² / (2 width²))`` with ``d`` its distance to the nearest segment, over the
    square ``[-extent, extent]²`` (row 0 at the top, ``y = +extent``). Non-finite points draw nothing.
    """
    sequences = np.asarray(sequences, np.float64)
    c = (np.arange(size) + 0.5) / size * 2 * extent - extent
    px = np.stack(np.meshgrid(c, c[::-1], indexing="xy"), -1).reshape(-1, 2)  # (P, 2)
    out = np.zeros((len(sequences), size * size), np.float32)
    for i, seq in enumerate(sequences):
        segs = _segments(seq, None if masks is None else masks[i])
        segs = segs[np.all(np.isfinite(segs), axis=(1, 2))]
        if not len(segs):
            continue
        a, b = segs[:, 0], segs[:, 1]  # (S, 2)
        ab = b - a
        denom = np.maximum((ab**2).sum(-1), 1e-12)
        u = np.clip(((px[:, None, :] - a[None]) * ab[None]).sum(-1) / denom[None], 0.0, 1.0)  # (P, S)
        d2 = ((px[:, None, :] - (a[None] + u[..., None] * ab[None])) ** 2).sum(-1).min(1)
        out[i] = np.exp(-d2 / (2 * width**2))
    return out.reshape(-1, size, size)


def save_png_grid(path: str, sequences, *, ncol: int | None = None, masks=None, titles=None, cell: float = 1.0) -> str:
    """A grid of drawings, one per sequence, written to ``path`` (PNG); returns the path."""
    import matplotlib  # noqa: PLC0415  (rendering only)

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # noqa: PLC0415

    sequences = np.asarray(sequences)
    n = len(sequences)
    ncol = ncol or int(np.ceil(np.sqrt(n)))
    nrow = int(np.ceil(n / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(cell * ncol, cell * nrow), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        for p in strokes_of(sequences[i], None if masks is None else masks[i]):
            ax.plot(p[:, 0], p[:, 1], "-", color="black", lw=1.2, solid_capstyle="round")
        ax.set_xlim(-1.3, 1.3)
        ax.set_ylim(-1.3, 1.3)
        ax.set_aspect("equal")
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=6)
    fig.subplots_adjust(0.01, 0.01, 0.99, 0.99, 0.05, 0.05 if titles is None else 0.3)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=64)
    plt.close(fig)
    return path


def to_svg(sequence, *, size: int = 64, mask=None, extent: float = 1.3) -> str:
    """One drawing as an SVG document (``size`` px square), one ``<polyline>`` per stroke."""
    scale = size / (2 * extent)
    lines = []
    for p in strokes_of(sequence, mask):
        pts = " ".join(
            f"{(x + extent) * scale:.2f},{(extent - y) * scale:.2f}" for x, y in p if np.isfinite([x, y]).all()
        )
        lines.append(f'<polyline points="{pts}" fill="none" stroke="black" stroke-width="1.5"/>')
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" viewBox="0 0 {size} {size}">'
        + "".join(lines)
        + "</svg>"
    )


def save_svg_grid(path: str, sequences, *, ncol: int | None = None, size: int = 64, masks=None) -> str:
    """A grid of drawings in one SVG file (each a nested ``<svg>``); returns the path."""
    sequences = np.asarray(sequences)
    n = len(sequences)
    ncol = ncol or int(np.ceil(np.sqrt(n)))
    nrow = int(np.ceil(n / ncol))
    cells = [
        to_svg(sequences[i], size=size, mask=None if masks is None else masks[i]).replace(
            "<svg ", f'<svg x="{(i % ncol) * size}" y="{(i // ncol) * size}" ', 1
        )
        for i in range(n)
    ]
    doc = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{ncol * size}" height="{nrow * size}">'
        + "".join(cells)
        + "</svg>"
    )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(doc)
    return path
