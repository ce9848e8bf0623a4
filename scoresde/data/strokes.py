"""Pen-stroke drawings of glyphs: point sequences ``(x, y, pen)`` from the outlines of matplotlib's shipped fonts.

The continuous-sequence data of ChiroDiff (Das et al., "ChiroDiff: Modelling chirographic data with Diffusion
Models", ICLR 2023): a drawing is a sequence of points ``X = [x(0), ..., x(N-1)]``, diffused point-wise like an
image. Here every drawing is a glyph (digits ``0``–``9``, and optionally letters) of one of the fonts matplotlib
ships (DejaVu, STIX, Computer Modern; no download), its outline contours (``matplotlib.textpath.TextPath``)
taken as strokes, each resampled uniformly by arc length, the ``N`` points shared between strokes in proportion
to their lengths. Every example gets a random affine map and a smooth elastic displacement (a few random
low-frequency sinusoids), drawn from ``numpy.random.default_rng([seed, index])``: the data set is a pure function
of its seed.

Channels: ``x``, ``y`` (the glyph centred, its larger side spanning about ``[-1, 1]``) and ``pen`` in
``{-1, +1}``: ``+1`` at the last point of a stroke, where the pen lifts before the next one (the stroke-3 format
of Ha & Eck 2018, with ±1 rather than 0/1 so every channel has unit scale). Sequences shorter than ``N``
(:func:`to_sequence` with ``spacing``) are padded by repeating their last point with the pen up, and their
``mask`` is 0 there.

Split: as the scikit-learn digits the project uses, every tenth block of ten examples (one of each class)
is the test split, so both splits hold every class and font equally often.

Examples:
    >>> x, mask, labels = make_dataset(100, 32, seed=0)
    >>> x.shape, mask.shape, labels.shape
    ((100, 32, 3), (100, 32), (100,))
"""

from __future__ import annotations

import functools
import os

import numpy as np

__all__ = [
    "DIGITS",
    "LETTERS",
    "FONTS",
    "CHANNELS",
    "glyph_contours",
    "resample",
    "to_sequence",
    "augment",
    "make_dataset",
    "split",
    "strokes_of",
    "resample_sequence",
]

DIGITS = "0123456789"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Font files of matplotlib's mpl-data (always installed with it): several styles of the same glyph.
FONTS = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "STIXGeneral.ttf", "cmr10.ttf", "cmss10.ttf")
CHANNELS = 3  # x, y, pen


@functools.cache
def glyph_contours(char: str, font: str = "DejaVuSans.ttf") -> tuple[np.ndarray, ...]:
    """The closed outline contours of ``char`` in ``font`` (a file of matplotlib's ``fonts/ttf``), as ``(k, 2)`` arrays.

    Centred on the bounding box and scaled so the larger side spans ``[-1, 1]``; each contour closed (its first
    point repeated at the end). Contours are ordered by their starting point (top to bottom, left to right).

    Raises:
        ValueError: a font that is not shipped with matplotlib, or a character with no outline.
    """
    import matplotlib  # noqa: PLC0415  (only where glyphs are made)
    from matplotlib.font_manager import FontProperties  # noqa: PLC0415
    from matplotlib.textpath import TextPath  # noqa: PLC0415

    path = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", font)
    if not os.path.exists(path):
        raise ValueError(f"font {font!r} is not among matplotlib's shipped fonts; expected one of: {', '.join(FONTS)}")
    polys = [
        np.asarray(p, np.float64)
        for p in TextPath((0, 0), char, size=1.0, prop=FontProperties(fname=path)).to_polygons()
    ]
    polys = [p for p in polys if len(p) >= 3]
    if not polys:
        raise ValueError(f"character {char!r} has no outline in {font!r}")
    allp = np.concatenate(polys)
    lo, hi = allp.min(0), allp.max(0)
    centre, half = (lo + hi) / 2, (hi - lo).max() / 2
    out = []
    for p in polys:
        p = (p - centre) / half
        if np.linalg.norm(p[0] - p[-1]) > 1e-9:
            p = np.concatenate([p, p[:1]])
        out.append(p)
    out.sort(key=lambda p: (-round(p[0, 1], 3), round(p[0, 0], 3)))
    return tuple(out)


def resample(polyline: np.ndarray, n: int) -> np.ndarray:
    """``n`` points equally spaced by arc length along ``polyline`` ``(k, 2)``, both ends included.

    Raises:
        ValueError: ``n < 2`` or fewer than two points.
    """
    polyline = np.asarray(polyline, np.float64)
    if n < 2 or len(polyline) < 2:
        raise ValueError(f"resample needs n >= 2 and a polyline of >= 2 points; got n={n}, {len(polyline)} points")
    seg = np.linalg.norm(np.diff(polyline, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    if s[-1] == 0:
        return np.repeat(polyline[:1], n, axis=0)
    target = np.linspace(0.0, s[-1], n)
    return np.stack([np.interp(target, s, polyline[:, d]) for d in range(polyline.shape[1])], axis=1)


def _lengths(strokes) -> np.ndarray:
    return np.array([np.linalg.norm(np.diff(p, axis=0), axis=1).sum() for p in strokes])


def _share(total: int, lengths: np.ndarray) -> np.ndarray:
    """``total`` points split between strokes in proportion to their lengths (largest remainder), >= 2 each."""
    k = len(lengths)
    if total < 2 * k:
        raise ValueError(f"{total} points cannot hold {k} strokes of at least 2 points each; use num_points >= {2 * k}")
    spare = total - 2 * k
    ideal = spare * lengths / max(lengths.sum(), 1e-12)
    counts = np.floor(ideal).astype(int)
    rest = spare - counts.sum()
    counts[np.argsort(-(ideal - counts), kind="stable")[:rest]] += 1
    return counts + 2


def to_sequence(strokes, num_points: int, *, spacing: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Strokes (a list of ``(k, 2)`` polylines) as one ``(num_points, 3)`` sequence ``(x, y, pen)`` and its mask.

    Args:
        strokes: the polylines, drawn in order.
        num_points: the sequence length ``N``.
        spacing: ``None``: all ``N`` points are used, shared between strokes by length. Else points about
            ``spacing`` apart (at least two a stroke); the sequence is then padded to ``N`` with its last point,
            pen up, and ``mask = 0`` there.

    Returns:
        ``(sequence (N, 3) float32, mask (N,) float32)``.

    Raises:
        ValueError: ``N`` too small for the strokes (each needs two points) or for the requested spacing.
    """
    lengths = _lengths(strokes)
    if spacing is None:
        used = num_points
    else:
        used = int(sum(max(2, int(round(length / spacing)) + 1) for length in lengths))
        if used > num_points:
            raise ValueError(f"spacing={spacing} needs {used} points; num_points={num_points} is fewer")
    counts = _share(used, lengths)
    pts, pen = [], []
    for p, c in zip(strokes, counts):
        pts.append(resample(p, int(c)))
        pen.append(np.r_[-np.ones(c - 1), 1.0])
    seq = np.concatenate([np.concatenate(pts), np.concatenate(pen)[:, None]], axis=1)
    mask = np.ones(num_points, np.float32)
    if used < num_points:
        seq = np.concatenate([seq, np.repeat(seq[-1:], num_points - used, axis=0)])
        mask[used:] = 0.0
    return seq.astype(np.float32), mask


def augment(strokes, rng: np.random.Generator, *, strength: float = 1.0):
    """A random affine map and a smooth elastic displacement of the strokes (the same for all of them).

    Affine: rotation ±0.15 rad, anisotropic scale in [0.85, 1.1], shear ±0.15, shift ±0.05, all times
    ``strength``. Elastic: ``d(p) = Σ_j a_j sin(ω_j·p + φ_j)`` with 3 random frequencies ``|ω| ≤ 3`` and
    amplitudes up to 0.04 ``strength``: a displacement field smooth in space, so nearby points move together.
    """
    s = float(strength)
    th = rng.uniform(-0.15, 0.15) * s
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    scale = np.diag(1.0 + s * rng.uniform([-0.15, -0.15], [0.1, 0.1]))
    shear = np.array([[1.0, s * rng.uniform(-0.15, 0.15)], [0.0, 1.0]])
    a = rot @ shear @ scale
    shift = s * rng.uniform(-0.05, 0.05, size=2)
    omega = rng.uniform(-3.0, 3.0, size=(3, 2))
    phase = rng.uniform(0.0, 2 * np.pi, size=3)
    amp = s * rng.uniform(-0.04, 0.04, size=(3, 2))

    def warp(p):
        q = p @ a.T + shift
        return q + np.sin(q @ omega.T + phase) @ amp

    return [warp(p) for p in strokes]


def make_dataset(
    num_examples: int,
    num_points: int,
    *,
    seed: int = 0,
    chars: str = DIGITS,
    fonts: tuple[str, ...] = FONTS,
    strength: float = 1.0,
    spacing: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``num_examples`` augmented glyph drawings, example ``i`` of class ``i % len(chars)``.

    Example ``i`` is the glyph ``chars[i % C]`` in font ``fonts[(i // C) % len(fonts)]``, augmented with
    ``default_rng([seed, i])`` (:func:`augment`), so it does not depend on ``num_examples``.

    Returns:
        ``(sequences (M, N, 3) float32, masks (M, N) float32, labels (M,) int32)``.
    """
    c = len(chars)
    xs, ms, ys = [], [], []
    for i in range(num_examples):
        label = i % c
        strokes = augment(
            glyph_contours(chars[label], fonts[(i // c) % len(fonts)]),
            np.random.default_rng([seed, i]),
            strength=strength,
        )
        x, m = to_sequence(strokes, num_points, spacing=spacing)
        xs.append(x)
        ms.append(m)
        ys.append(label)
    return np.stack(xs), np.stack(ms), np.asarray(ys, np.int32)


def split(num_examples: int, num_classes: int = 10) -> np.ndarray:
    """The test-split indicator: every tenth block of ``num_classes`` consecutive examples (one per class)."""
    return (np.arange(num_examples) // num_classes) % 10 == 0


def strokes_of(sequence: np.ndarray, mask: np.ndarray | None = None) -> list[np.ndarray]:
    """The polylines ``(k, 2)`` of one ``(N, 3)`` sequence: cut after each point whose pen channel is > 0.

    Masked points (``mask == 0``) are dropped first. A single point is kept as a stroke (a dot).
    """
    seq = np.asarray(sequence, np.float64)
    if mask is not None:
        seq = seq[np.asarray(mask) > 0]
    out, start = [], 0
    for i in range(len(seq)):
        if seq[i, 2] > 0 or i == len(seq) - 1:
            out.append(seq[start : i + 1, :2])
            start = i + 1
    return [p for p in out if len(p)]


def resample_sequence(sequence: np.ndarray, num_points: int) -> np.ndarray:
    """A ``(N, 3)`` sequence re-drawn with ``num_points`` points (strokes kept, points shared by length)."""
    seq, _ = to_sequence([p if len(p) > 1 else np.repeat(p, 2, axis=0) for p in strokes_of(sequence)], num_points)
    return seq
