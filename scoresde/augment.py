"""Non-leaking augmentation with conditioning labels (Karras et al. 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models", Sec. 5 and App. F.2; the pipeline of Karras et al. 2020, "Training
Generative Adversarial Networks with Limited Data", App. B; NVlabs/edm ``training/augment.py``).

Each transform is applied to each image with probability ``multiplier · p`` (clipped to 1). The network is
told what was applied through a label vector (``augment_labels``), and is sampled with all labels zero, so the
augmentations do not leak into the generated images. A label is zero when its transform was not applied.

Images are ``(N, H, W, C)``, centred at 0 (EDM's ``[-1, 1]``; colour transforms scale and shift about 0).
Geometric transforms act in pixel coordinates about the image centre, on the image mirror-reflected about its
border pixels. The sub-pixel resampling is bilinear (EDM also upsamples 2× with a wavelet filter before it
and low-passes after it, for less aliasing; this module does not).

The label layout is fixed: every transform with a multiplier > 0 contributes, in :data:`LABEL_WIDTHS` order,

======================  ==  ======================================================
``xflip``               1   1 if flipped left-right
``yflip``               1   1 if flipped upside-down
``rotate_int``          2   ``(k ∈ {1, 2}, k ∈ {2, 3})`` for ``k`` quarter turns
``translate_int``       2   ``(tx / (W·max), ty / (H·max))``, integer pixel shifts
``scale``               1   ``w``, scale ``s = 2^(w·scale_std)``
``rotate_frac``         2   ``(cos θ − 1, sin θ)``
``aniso``               2   ``(w cos r, w sin r)``, stretch ``2^(w·aniso_std)`` along angle ``r``
``translate_frac``      2   ``(wx, wy)``, shift ``(wx·W, wy·H)·translate_frac_std`` pixels
``brightness``          1   ``w``, offset ``w·brightness_std``
``contrast``            1   ``w``, gain ``2^(w·contrast_std)``
``lumaflip``            1   1 if the luma axis was flipped
``hue``                 2   ``(cos θ − 1, sin θ)`` of the rotation about the luma axis
``saturation``          1   ``w``, chroma gain ``2^(w·saturation_std)``
======================  ==  ======================================================

EDM's CIFAR-10 pipeline (:data:`EDM_PIPELINE`, ``p = 0.12``) enables xflip (always drawn), yflip, scale,
rotate_frac, aniso and translate_frac: 9 labels (``augment_dim=9`` in its networks).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

__all__ = [
    "AugmentSettings",
    "EDM_PIPELINE",
    "LABEL_WIDTHS",
    "label_dim",
    "parse_pipeline",
    "draw_params",
    "apply_params",
    "augment",
    "flip_x",
    "flip_y",
    "rotate_int",
    "translate_int",
    "warp",
    "color_transform",
    "translate2d",
    "scale2d",
    "rotate2d",
]

# (transform, number of labels), in the order the labels are concatenated and the transforms applied
LABEL_WIDTHS = (
    ("xflip", 1),
    ("yflip", 1),
    ("rotate_int", 2),
    ("translate_int", 2),
    ("scale", 1),
    ("rotate_frac", 2),
    ("aniso", 2),
    ("translate_frac", 2),
    ("brightness", 1),
    ("contrast", 1),
    ("lumaflip", 1),
    ("hue", 2),
    ("saturation", 1),
)
_GEOMETRIC = ("scale", "rotate_frac", "aniso", "translate_frac")
_COLOUR = ("brightness", "contrast", "lumaflip", "hue", "saturation")


@dataclasses.dataclass(frozen=True)
class AugmentSettings:
    """Probability multipliers (0 = off) and strengths; the strengths default to EDM's values.

    ``translate_int_max``: integer shifts up to this fraction of the size; ``*_std`` of scale, aniso, contrast and
    saturation are log2 standard deviations; ``rotate_frac_max`` and ``hue_max`` are fractions of a half turn;
    ``aniso_rotate_prob`` the probability that the stretch axis is rotated; ``translate_frac_std`` a fraction of
    the size.
    """

    xflip: float = 0.0
    yflip: float = 0.0
    rotate_int: float = 0.0
    translate_int: float = 0.0
    scale: float = 0.0
    rotate_frac: float = 0.0
    aniso: float = 0.0
    translate_frac: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    lumaflip: float = 0.0
    hue: float = 0.0
    saturation: float = 0.0
    translate_int_max: float = 0.125
    scale_std: float = 0.2
    rotate_frac_max: float = 1.0
    aniso_std: float = 0.2
    aniso_rotate_prob: float = 0.5
    translate_frac_std: float = 0.125
    brightness_std: float = 0.2
    contrast_std: float = 0.5
    hue_max: float = 1.0
    saturation_std: float = 1.0

    def enabled(self) -> tuple[str, ...]:
        """The transforms with a multiplier > 0, in label order."""
        return tuple(name for name, _ in LABEL_WIDTHS if getattr(self, name) > 0)


EDM_PIPELINE = AugmentSettings(xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)


def label_dim(settings: AugmentSettings) -> int:
    """The length of the label vector ``settings`` produces (9 for :data:`EDM_PIPELINE`)."""
    widths = dict(LABEL_WIDTHS)
    return sum(widths[name] for name in settings.enabled())


def parse_pipeline(spec: str) -> AugmentSettings:
    """Settings from ``"name[=value],..."``: a bare transform name sets its multiplier to 1.

    Examples:
        >>> parse_pipeline("xflip=1e8,yflip,scale,rotate_frac,aniso,translate_frac") == EDM_PIPELINE
        True

    Raises:
        ValueError: an unknown name (with the nearest valid one) or a value that is not a number >= 0.
    """
    fields = {f.name for f in dataclasses.fields(AugmentSettings)}
    values = {}
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in fields:
            import difflib  # noqa: PLC0415  (error path only)

            near = difflib.get_close_matches(name, sorted(fields), n=1)
            raise ValueError(
                f"unknown augmentation {name!r} in {spec!r}; expected names from: {', '.join(n for n, _ in LABEL_WIDTHS)}"
                + (f" (did you mean {near[0]}?)" if near else "")
            )
        try:
            v = float(value) if value else 1.0
        except ValueError:
            v = -1.0
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"augmentation {name}={value!r}: expected a finite number >= 0")
        values[name] = v
    return AugmentSettings(**values)


# ---------------------------------------------------------------------------------------------------------
# Matrices (batched, ``(N, 3, 3)`` for 2-D homogeneous pixel coordinates, ``(N, 4, 4)`` for RGB + 1).


def _matrix(rows) -> jax.Array:
    """``(N, R, C)`` from nested rows of ``(N,)`` arrays or scalars."""
    n = next(jnp.shape(x)[0] for row in rows for x in row if jnp.ndim(x) > 0)
    return jnp.stack(
        [jnp.stack([jnp.broadcast_to(jnp.asarray(x, jnp.float32), (n,)) for x in row], -1) for row in rows], -2
    )


def translate2d(tx, ty) -> jax.Array:
    """``(N, 3, 3)``: shift by ``(tx, ty)`` pixels."""
    return _matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]])


def scale2d(sx, sy) -> jax.Array:
    """``(N, 3, 3)``: scale by ``(sx, sy)`` about the centre."""
    return _matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]])


def rotate2d(theta) -> jax.Array:
    """``(N, 3, 3)``: rotate by ``theta`` radians about the centre."""
    c, s = jnp.cos(theta), jnp.sin(theta)
    return _matrix([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _translate3d(t) -> jax.Array:
    return _matrix([[1, 0, 0, t], [0, 1, 0, t], [0, 0, 1, t], [0, 0, 0, 1]])


def _scale3d(s) -> jax.Array:
    return _matrix([[s, 0, 0, 0], [0, s, 0, 0], [0, 0, s, 0], [0, 0, 0, 1]])


def _rotate3d(v, theta) -> jax.Array:
    """Rotation by ``theta`` about the unit axis ``v`` (Rodrigues)."""
    vx, vy, vz = (float(a) for a in v)
    s, c = jnp.sin(theta), jnp.cos(theta)
    cc = 1 - c
    return _matrix(
        [
            [vx * vx * cc + c, vx * vy * cc - vz * s, vx * vz * cc + vy * s, 0],
            [vy * vx * cc + vz * s, vy * vy * cc + c, vy * vz * cc - vx * s, 0],
            [vz * vx * cc - vy * s, vz * vy * cc + vx * s, vz * vz * cc + c, 0],
            [0, 0, 0, 1],
        ]
    )


_LUMA = (1 / math.sqrt(3),) * 3
_LUMA_OUTER = jnp.asarray([[*(_LUMA[i] * a for a in _LUMA), 0] for i in range(3)] + [[0, 0, 0, 0]], jnp.float32)


# ---------------------------------------------------------------------------------------------------------
# Image operations (``(N, H, W, C)``), each a public function so a test can invert it.


def flip_x(images: jax.Array, w: jax.Array) -> jax.Array:
    """Left-right flip of the images where ``w`` (``(N,)``) is 1."""
    return jnp.where((w == 1)[:, None, None, None], images[:, :, ::-1], images)


def flip_y(images: jax.Array, w: jax.Array) -> jax.Array:
    """Upside-down flip of the images where ``w`` (``(N,)``) is 1."""
    return jnp.where((w == 1)[:, None, None, None], images[:, ::-1], images)


def rotate_int(images: jax.Array, k: jax.Array) -> jax.Array:
    """Each image turned counter-clockwise by ``k`` (``(N,)`` in 0..3) quarter turns (square images)."""
    if images.shape[1] != images.shape[2]:
        raise ValueError(f"rotate_int needs square images; got H x W = {images.shape[1]} x {images.shape[2]}")
    turns = jnp.stack([jnp.rot90(images, j, axes=(1, 2)) for j in range(4)])
    return jnp.take_along_axis(turns, k.astype(jnp.int32)[None, :, None, None, None], axis=0)[0]


def _mirror(u, size: int):
    """Coordinates reflected about the border pixel centres into ``[0, size - 1]`` (``size >= 2``)."""
    period = 2 * (size - 1)
    m = jnp.mod(u, period)
    return (size - 1) - jnp.abs((size - 1) - m)


def _gather(images, y, x):
    """``images[n, y[n, p], x[n, p]]`` for integer ``(N, P)`` coordinates: ``(N, P, C)``."""
    n, h, w, c = images.shape
    flat = images.reshape(n, h * w, c)
    return jnp.take_along_axis(flat, (y * w + x)[..., None], axis=1)


def translate_int(images: jax.Array, tx: jax.Array, ty: jax.Array) -> jax.Array:
    """Images shifted by integer ``(tx, ty)`` pixels (``(N,)`` each; +x right, +y down), mirror-reflected at the
    border: pixels that stay inside the frame are moved exactly."""
    n, h, w, _ = images.shape
    ys, xs = jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing="ij")
    x = _mirror(xs.reshape(1, -1) - tx.astype(jnp.int32)[:, None], w)
    y = _mirror(ys.reshape(1, -1) - ty.astype(jnp.int32)[:, None], h)
    return _gather(images, y, x).reshape(images.shape)


def warp(images: jax.Array, g_inv: jax.Array) -> jax.Array:
    """Images resampled through the inverse map ``g_inv`` (``(N, 3, 3)``, output pixel → input pixel, in pixel
    coordinates about the image centre): bilinear, on the image mirror-reflected about its border pixels."""
    n, h, w, c = images.shape
    if h < 2 or w < 2:
        raise ValueError(f"geometric augmentation needs images of at least 2 x 2 pixels; got {h} x {w}")
    cx, cy = (w - 1) / 2, (h - 1) / 2
    ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
    pts = jnp.stack([xs.ravel() - cx, ys.ravel() - cy, jnp.ones(h * w, jnp.float32)], -1)
    src = jnp.einsum("nij,pj->npi", g_inv.astype(jnp.float32), pts)
    sx, sy = _mirror(src[..., 0] + cx, w), _mirror(src[..., 1] + cy, h)
    x0, y0 = jnp.floor(sx), jnp.floor(sy)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
    x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
    x1, y1 = jnp.minimum(x0 + 1, w - 1), jnp.minimum(y0 + 1, h - 1)
    top = (1 - fx) * _gather(images, y0, x0) + fx * _gather(images, y0, x1)
    bottom = (1 - fx) * _gather(images, y1, x0) + fx * _gather(images, y1, x1)
    return ((1 - fy) * top + fy * bottom).astype(images.dtype).reshape(images.shape)


def color_transform(images: jax.Array, m: jax.Array) -> jax.Array:
    """Images through the colour matrix ``m`` (``(N, 4, 4)`` acting on ``(r, g, b, 1)``); a one-channel image
    gets the mean of its rows (EDM's rule for luminance images)."""
    c = images.shape[-1]
    if c == 3:
        return jnp.einsum("nij,nhwj->nhwi", m[:, :3, :3], images) + m[:, None, None, :3, 3]
    if c == 1:
        row = jnp.mean(m[:, :3, :], axis=1)
        return images * jnp.sum(row[:, :3], -1)[:, None, None, None] + row[:, None, None, 3:]
    raise ValueError(f"colour augmentation needs 1 or 3 channels; got {c}")


# ---------------------------------------------------------------------------------------------------------
# The pipeline.


def draw_params(key, shape, settings: AugmentSettings, p: float) -> tuple[dict, jax.Array]:
    """The random parameters of one batch and their labels.

    Args:
        key: a JAX key.
        shape: the batch shape ``(N, H, W, C)``.
        settings: which transforms, how strong.
        p: the overall probability (EDM: 0.12); each transform is applied with ``min(1, multiplier · p)``.

    Returns:
        ``(params, labels)``: ``params[name]`` the transform's parameters, all zero (the identity) where it was not
        applied; ``labels`` of shape ``(N, label_dim(settings))``.
    """
    n, h, w = shape[0], shape[1], shape[2]
    params, labels = {}, []
    for i, name in enumerate(settings.enabled()):
        k_gate, k_a, k_b = jax.random.split(jax.random.fold_in(key, i), 3)
        on = jax.random.uniform(k_gate, (n,)) < getattr(settings, name) * p

        def gate(x, on=on):
            return jnp.where(on, x, jnp.zeros_like(x))

        if name in ("xflip", "yflip", "lumaflip"):
            v = gate(jax.random.randint(k_a, (n,), 0, 2))
            params[name], lab = v, [v]
        elif name == "rotate_int":
            v = gate(jax.random.randint(k_a, (n,), 0, 4))
            params[name], lab = v, [(v == 1) | (v == 2), (v == 2) | (v == 3)]
        elif name == "translate_int":
            u = gate(jax.random.uniform(k_a, (2, n), minval=-1.0, maxval=1.0))
            tx = jnp.round(u[0] * w * settings.translate_int_max).astype(jnp.int32)
            ty = jnp.round(u[1] * h * settings.translate_int_max).astype(jnp.int32)
            params[name] = (tx, ty)
            lab = [tx / (w * settings.translate_int_max), ty / (h * settings.translate_int_max)]
        elif name in ("scale", "brightness", "contrast", "saturation"):
            v = gate(jax.random.normal(k_a, (n,)))
            params[name], lab = v, [v]
        elif name in ("rotate_frac", "hue"):
            most = settings.rotate_frac_max if name == "rotate_frac" else settings.hue_max
            v = gate(jax.random.uniform(k_a, (n,), minval=-1.0, maxval=1.0) * (math.pi * most))
            params[name], lab = v, [jnp.cos(v) - 1, jnp.sin(v)]
        elif name == "aniso":
            v = gate(jax.random.normal(k_a, (n,)))
            r = jax.random.uniform(k_b, (n,), minval=-math.pi, maxval=math.pi)
            r = gate(jnp.where(jax.random.uniform(jax.random.fold_in(k_b, 1), (n,)) < settings.aniso_rotate_prob, r, 0))
            params[name], lab = (v, r), [v * jnp.cos(r), v * jnp.sin(r)]
        else:  # translate_frac
            v = gate(jax.random.normal(k_a, (2, n)))
            params[name], lab = (v[0], v[1]), [v[0], v[1]]
        labels += [jnp.asarray(x, jnp.float32).reshape(n, 1) for x in lab]
    labels = jnp.concatenate(labels, axis=1) if labels else jnp.zeros((n, 0), jnp.float32)
    return params, labels


def _geometry(params, settings: AugmentSettings, h: int, w: int):
    """The inverse map of the fractional geometric transforms and whether any was applied (per image)."""
    g_inv, applied = None, None

    def then(m, on):
        nonlocal g_inv, applied
        g_inv = m if g_inv is None else g_inv @ m
        applied = on if applied is None else applied | on

    if "scale" in params:
        s = jnp.exp2(params["scale"] * settings.scale_std)
        then(scale2d(1 / s, 1 / s), params["scale"] != 0)
    if "rotate_frac" in params:
        then(rotate2d(params["rotate_frac"]), params["rotate_frac"] != 0)
    if "aniso" in params:
        v, r = params["aniso"]
        s = jnp.exp2(v * settings.aniso_std)
        then(rotate2d(-r) @ scale2d(1 / s, s) @ rotate2d(r), v != 0)
    if "translate_frac" in params:
        wx, wy = params["translate_frac"]
        std = settings.translate_frac_std
        then(translate2d(-wx * w * std, -wy * h * std), (wx != 0) | (wy != 0))
    return g_inv, applied


def _colour(params, settings: AugmentSettings):
    """The colour matrix of the colour transforms and whether any was applied (per image)."""
    m, applied = None, None

    def then(t, on):
        nonlocal m, applied
        m = t if m is None else t @ m
        applied = on if applied is None else applied | on

    if "brightness" in params:
        then(_translate3d(params["brightness"] * settings.brightness_std), params["brightness"] != 0)
    if "contrast" in params:
        then(_scale3d(jnp.exp2(params["contrast"] * settings.contrast_std)), params["contrast"] != 0)
    if "lumaflip" in params:
        f = params["lumaflip"].astype(jnp.float32)
        then(jnp.eye(4)[None] - 2 * _LUMA_OUTER[None] * f[:, None, None], params["lumaflip"] != 0)
    if "hue" in params:
        then(_rotate3d(_LUMA, params["hue"]), params["hue"] != 0)
    if "saturation" in params:
        g = jnp.exp2(params["saturation"] * settings.saturation_std)[:, None, None]
        then(_LUMA_OUTER[None] + (jnp.eye(4) - _LUMA_OUTER)[None] * g, params["saturation"] != 0)
    return m, applied


def apply_params(images: jax.Array, params: dict, settings: AugmentSettings) -> jax.Array:
    """``images`` (``(N, H, W, C)``) through the transforms of ``params`` (from :func:`draw_params`): pixel
    blitting (flips, quarter turns, integer shifts), then the fractional geometric transforms in one resampling,
    then the colour matrix. An image none of whose transforms was applied comes back bit for bit."""
    if "xflip" in params:
        images = flip_x(images, params["xflip"])
    if "yflip" in params:
        images = flip_y(images, params["yflip"])
    if "rotate_int" in params:
        images = rotate_int(images, params["rotate_int"])
    if "translate_int" in params:
        images = translate_int(images, *params["translate_int"])
    g_inv, moved = _geometry(params, settings, images.shape[1], images.shape[2])
    if g_inv is not None:
        images = jnp.where(moved[:, None, None, None], warp(images, g_inv), images)
    m, recoloured = _colour(params, settings)
    if m is not None:
        images = jnp.where(recoloured[:, None, None, None], color_transform(images, m), images)
    return images


def augment(images: jax.Array, key, settings: AugmentSettings, p: float) -> tuple[jax.Array, jax.Array]:
    """EDM's augmentation of a batch: ``(augmented images, labels)`` with labels ``(N, label_dim(settings))``.

    With ``p == 0`` (or nothing enabled) the images come back unchanged and the labels are all zero.

    Raises:
        ValueError: ``p`` outside ``[0, 1]``, or images the enabled transforms cannot take (see the functions).
    """
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"augmentation probability p={p!r}: expected a number in [0, 1]")
    if images.ndim != 4:
        raise ValueError(f"augmentation needs (N, H, W, C) images; got shape {images.shape}")
    if float(p) == 0.0:
        return images, jnp.zeros((images.shape[0], label_dim(settings)), jnp.float32)
    params, labels = draw_params(key, images.shape, settings, p)
    return apply_params(images, params, settings), labels
