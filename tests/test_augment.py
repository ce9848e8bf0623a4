"""EDM's augmentation pipeline (scoresde.augment): each transform against its inverse or an exact oracle, the
labels against the transform applied, and p = 0 as the identity."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import augment as A

N, H, W = 6, 12, 12


@pytest.fixture(scope="module")
def noise():
    return jax.random.normal(jax.random.key(0), (N, H, W, 3))


S = 24  # the smooth images' size


@pytest.fixture(scope="module")
def smooth():
    """Band-limited ``(N, S, S, 3)`` images ``cos(2π a x) cos(2π b y)`` and their frequencies ``(N, 3, 2)``."""
    ys, xs = np.meshgrid(np.arange(S), np.arange(S), indexing="ij")
    freqs = np.random.default_rng(1).uniform(0.02, 0.06, size=(N, 3, 2))
    out = np.zeros((N, S, S, 3), np.float32)
    for n in range(N):
        for c in range(3):
            a, b = freqs[n, c]
            out[n, :, :, c] = np.cos(2 * np.pi * a * (xs - 11.5)) * np.cos(2 * np.pi * b * (ys - 11.5))
    return jnp.asarray(out), freqs


def _ones(v, dtype=jnp.int32):
    return jnp.full((N,), v, dtype)


ALL = A.AugmentSettings(**{name: 1.0 for name, _ in A.LABEL_WIDTHS})


def test_flips_are_their_own_inverse(noise):
    w = jnp.arange(N) % 2
    np.testing.assert_array_equal(A.flip_x(A.flip_x(noise, w), w), noise)
    np.testing.assert_array_equal(A.flip_y(A.flip_y(noise, w), w), noise)
    np.testing.assert_array_equal(A.flip_x(noise, _ones(1)), noise[:, :, ::-1])


def test_quarter_turns_compose_to_identity_and_match_rot90(noise):
    for k in range(4):
        turned = A.rotate_int(noise, _ones(k))
        np.testing.assert_array_equal(turned, np.rot90(np.asarray(noise), k, axes=(1, 2)))
        np.testing.assert_array_equal(A.rotate_int(turned, _ones((4 - k) % 4)), noise)


def test_integer_translation_inverse_is_exact_where_the_pixels_stay_in_frame(noise):
    tx, ty = jnp.asarray([2, -1, 0, 3, -3, 1]), jnp.asarray([1, 0, -2, 2, -1, 3])
    moved = A.translate_int(noise, tx, ty)
    back = A.translate_int(moved, -tx, -ty)
    for n in range(N):
        x, y = int(tx[n]), int(ty[n])
        inner = (slice(max(0, -y), H - max(0, y)), slice(max(0, -x), W - max(0, x)))
        np.testing.assert_array_equal(back[n][inner], noise[n][inner])
        # and the shift itself: the pixel at (r, c) moved to (r + y, c + x)
        np.testing.assert_array_equal(moved[n, 5 + y, 5 + x], noise[n, 5, 5])


def test_integer_translation_reflects_about_the_border(noise):
    moved = A.translate_int(noise, _ones(2), _ones(0))
    # columns 0 and 1 come from the mirror image: source x = -2 -> 2, x = -1 -> 1
    np.testing.assert_array_equal(moved[:, :, 0], noise[:, :, 2])
    np.testing.assert_array_equal(moved[:, :, 1], noise[:, :, 1])


def test_warp_by_the_identity_and_by_quarter_turns_is_exact(noise):
    np.testing.assert_array_equal(A.warp(noise, jnp.broadcast_to(jnp.eye(3), (N, 3, 3))), noise)
    # with y pointing down, the inverse map R(π/2) is one quarter turn of np.rot90 over axes (1, 2)
    turned = A.warp(noise, A.rotate2d(jnp.full((N,), math.pi / 2)))
    np.testing.assert_allclose(turned, np.rot90(np.asarray(noise), 1, axes=(1, 2)), atol=1e-5)
    shifted = A.warp(noise, A.translate2d(jnp.full((N,), -2.0), jnp.full((N,), 1.0)))
    np.testing.assert_allclose(shifted, A.translate_int(noise, _ones(2), _ones(-1)), atol=1e-6)


@pytest.mark.parametrize(
    "forward",
    [
        lambda v: A.rotate2d(v * 0.3),
        lambda v: A.scale2d(1.0 + 0.1 * v, 1.0 + 0.1 * v),
        lambda v: A.rotate2d(v) @ A.scale2d(1.1 + 0 * v, 1 / 1.1 + 0 * v) @ A.rotate2d(-v),
        lambda v: A.translate2d(0.4 * v, -0.3 * v),
    ],
    ids=["rotation", "isotropic_scale", "anisotropic_scale", "fractional_translation"],
)
def test_general_warp_round_trips_to_interpolation_tolerance_on_smooth_images(smooth, forward):
    images, freqs = smooth
    v = jnp.linspace(-1.0, 1.0, N)
    g = forward(v)
    back = A.warp(A.warp(images, g), jnp.linalg.inv(g))
    # bilinear interpolation errs by at most h²/8 (|f_xx| + |f_yy|) per pass (h = 1 pixel); a convex combination,
    # the second pass adds its own error to the first's without amplifying it
    bound = 2 * ((2 * np.pi * freqs) ** 2).sum(-1) / 8  # (N, 3)
    err = np.abs(np.asarray(back - images))[:, 6:-6, 6:-6].max(axis=(1, 2))  # the centre: no mirrored border
    assert np.all(err <= bound + 1e-5), (err, bound)
    # and the warp moved the image (a round trip that did nothing would pass trivially)
    assert float(jnp.abs(A.warp(images, g) - images)[1:].max()) > 0.01


def test_colour_matrix_on_rgb_and_luminance():
    x = jax.random.uniform(jax.random.key(3), (N, 4, 4, 3), minval=-1, maxval=1)
    lum_axis = np.ones(3) / math.sqrt(3)
    # luma flip reflects the colour along the grey axis: twice is the identity
    params = {"lumaflip": _ones(1)}
    np.testing.assert_allclose(A.apply_params(A.apply_params(x, params, ALL), params, ALL), x, atol=1e-6)
    flipped = np.asarray(A.apply_params(x, params, ALL))
    proj = np.asarray(x) @ lum_axis
    np.testing.assert_allclose(flipped @ lum_axis, -proj, atol=1e-5)
    # hue rotation keeps the grey component and the chroma norm
    h = np.asarray(A.apply_params(x, {"hue": jnp.full((N,), 0.7)}, ALL))
    np.testing.assert_allclose(h @ lum_axis, proj, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(h, axis=-1), np.linalg.norm(np.asarray(x), axis=-1), atol=1e-5)
    # brightness then contrast, on one channel: offset w·std, then gain 2^(w·std)
    g = x[..., :1]
    params = {"brightness": jnp.full((N,), 1.0), "contrast": jnp.full((N,), 1.0)}
    np.testing.assert_allclose(A.apply_params(g, params, ALL), (g + 0.2) * 2**0.5, atol=1e-6)


def test_p_zero_returns_the_input_and_zero_labels(noise):
    for p in (0.0,):
        out, labels = A.augment(noise, jax.random.key(1), ALL, p)
        np.testing.assert_array_equal(out, noise)
        assert labels.shape == (N, A.label_dim(ALL)) and not np.any(labels)
    # the drawn path with every gate closed (p > 0 but multipliers x p < every uniform draw) is also exact
    params, labels = A.draw_params(jax.random.key(1), noise.shape, ALL, 1e-12)
    np.testing.assert_array_equal(A.apply_params(noise, params, ALL), noise)
    assert not np.any(labels)


def test_edm_pipeline_has_nine_labels_and_parses():
    assert A.label_dim(A.EDM_PIPELINE) == 9
    assert A.parse_pipeline("xflip=1e8, yflip, scale, rotate_frac, aniso, translate_frac") == A.EDM_PIPELINE
    with pytest.raises(ValueError, match="did you mean scale"):
        A.parse_pipeline("scael")
    with pytest.raises(ValueError, match="expected a finite number >= 0"):
        A.parse_pipeline("scale=-1")


def _single(name, **kw):
    return A.AugmentSettings(**{name: 1e8}, **kw)


@pytest.mark.parametrize("name", ["xflip", "yflip", "rotate_int"])
def test_blit_labels_name_the_transform(noise, name):
    s = _single(name)
    out, labels = A.augment(noise, jax.random.key(4), s, 1.0)
    if name == "rotate_int":
        a, b = np.asarray(labels[:, 0]) == 1, np.asarray(labels[:, 1]) == 1
        k = np.where(a & ~b, 1, np.where(a & b, 2, np.where(b, 3, 0)))
        np.testing.assert_array_equal(out, A.rotate_int(noise, jnp.asarray(k)))
    else:
        op = A.flip_x if name == "xflip" else A.flip_y
        np.testing.assert_array_equal(out, op(noise, labels[:, 0].astype(jnp.int32)))
    assert 0 < float(jnp.mean(jnp.any(labels != 0, axis=1))) < 1  # both outcomes occur in this batch


def test_geometric_and_colour_labels_reconstruct_the_transform(smooth):
    """From the labels alone (and the settings' strengths), rebuild each transform and apply it: the output must
    be what the pipeline produced."""
    images = smooth[0]
    cases = {
        "translate_int": lambda lab, s: A.translate_int(
            images,
            jnp.round(lab[:, 0] * images.shape[2] * s.translate_int_max).astype(jnp.int32),
            jnp.round(lab[:, 1] * images.shape[1] * s.translate_int_max).astype(jnp.int32),
        ),
        "scale": lambda lab, s: A.warp(images, A.scale2d(*(2 ** (-lab[:, 0] * s.scale_std),) * 2)),
        "rotate_frac": lambda lab, s: A.warp(images, A.rotate2d(jnp.arctan2(lab[:, 1], lab[:, 0] + 1))),
        "aniso": lambda lab, s: A.warp(
            images, A.scale2d(2 ** (-lab[:, 0] * s.aniso_std), 2 ** (lab[:, 0] * s.aniso_std))
        ),
        "translate_frac": lambda lab, s: A.warp(
            images, A.translate2d(-lab[:, 0] * S * s.translate_frac_std, -lab[:, 1] * S * s.translate_frac_std)
        ),
        "brightness": lambda lab, s: images + (lab[:, 0] * s.brightness_std)[:, None, None, None],
        "contrast": lambda lab, s: images * (2 ** (lab[:, 0] * s.contrast_std))[:, None, None, None],
    }
    for name, rebuild in cases.items():
        s = _single(name, aniso_rotate_prob=0.0)  # r = 0: the aniso label (w, 0) names the stretch uniquely
        out, labels = A.augment(images, jax.random.key(5), s, 1.0)
        assert labels.shape == (N, A.label_dim(s)) and np.any(labels != 0), name
        np.testing.assert_allclose(out, rebuild(labels, s), atol=2e-5, err_msg=name)


def test_labels_are_zero_exactly_for_the_images_left_alone(noise):
    out, labels = A.augment(noise, jax.random.key(6), ALL, 0.1)
    untouched = ~np.any(np.asarray(labels) != 0, axis=1)
    assert 0 < untouched.sum() < N  # some images left alone, some augmented
    np.testing.assert_array_equal(np.asarray(out)[untouched], np.asarray(noise)[untouched])
    assert np.all(np.isfinite(out))


def test_bad_input_is_refused(noise):
    with pytest.raises(ValueError, match="expected a number in"):
        A.augment(noise, jax.random.key(0), ALL, 1.5)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        A.augment(jnp.zeros((2, 4, 4, 2)), jax.random.key(0), _single("brightness"), 1.0)
    with pytest.raises(ValueError, match="square"):
        A.augment(jnp.zeros((2, 4, 6, 3)), jax.random.key(0), _single("rotate_int"), 1.0)
