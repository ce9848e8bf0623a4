"""The U-Nets' building blocks and options: FIR resampling against direct oracles, conditioning,
dropout, centring, mixed precision. (Number-for-number agreement with the reference networks is in
``tests/test_convert.py``.)"""

import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from scoresde import build, convert
from scoresde.models import up_or_down_sampling as updown

from conftest import FIXTURES

# ----------------------------------------------------------------------------------------------
# FIR up/down-sampling against a direct NumPy transcription of StyleGAN2's upfirdn_2d algorithm.


def _upfirdn_oracle(x, k, up=1, down=1, pad0=0, pad1=0):
    """Zero-insert (with trailing zeros), pad, convolve with ``k`` (true convolution), decimate."""
    n, h, w, c = x.shape
    z = np.zeros((n, h * up, w * up, c), np.float64)
    z[:, ::up, ::up, :] = x
    z = np.pad(z, ((0, 0), (pad0, pad1), (pad0, pad1), (0, 0)))
    kf = np.asarray(k, np.float64)[::-1, ::-1]
    kh, kw = kf.shape
    oh, ow = z.shape[1] - kh + 1, z.shape[2] - kw + 1
    out = np.zeros((n, oh, ow, c))
    for a in range(kh):
        for b in range(kw):
            out += kf[a, b] * z[:, a : a + oh, b : b + ow, :]
    return out[:, ::down, ::down, :]


def _conv_valid_oracle(x, w, stride=1):
    kh, kw = w.shape[:2]
    oh, ow = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    out = np.zeros((x.shape[0], oh, ow, w.shape[3]))
    for a in range(kh):
        for b in range(kw):
            out += np.einsum("nhwi,io->nhwo", x[:, a : a + oh, b : b + ow, :], w[a, b])
    return out[:, ::stride, ::stride, :]


@pytest.fixture(scope="module")
def fir_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
    w = rng.normal(size=(3, 3, 3, 5)).astype(np.float32)
    # An asymmetric filter so that a missing flip would show.
    return x, w, (1.0, 2.0, 4.0, 1.0)


def test_upsample_and_downsample_2d_match_upfirdn(fir_data):
    x, _, k1 = fir_data
    k = updown.setup_kernel(k1)
    up = np.asarray(updown.upsample_2d(jnp.asarray(x), k1))
    np.testing.assert_allclose(up, _upfirdn_oracle(x, k * 4, up=2, pad0=2, pad1=1), rtol=1e-5, atol=1e-5)
    assert up.shape == (2, 16, 16, 3)
    down = np.asarray(updown.downsample_2d(jnp.asarray(x), k1))
    np.testing.assert_allclose(down, _upfirdn_oracle(x, k, down=2, pad0=1, pad1=1), rtol=1e-5, atol=1e-5)
    assert down.shape == (2, 4, 4, 3)
    # With the reference's [1, 3, 3, 1] filter constant images stay constant away from the border.
    ones = jnp.ones((1, 8, 8, 1))
    np.testing.assert_allclose(updown.upsample_2d(ones)[0, 2:-2, 2:-2], 1.0, rtol=1e-6)
    np.testing.assert_allclose(updown.downsample_2d(ones)[0, 1:-1, 1:-1], 1.0, rtol=1e-6)


def test_conv_downsample_matches_fir_then_strided_conv(fir_data):
    x, w, k1 = fir_data
    got = np.asarray(updown.conv_downsample_2d(jnp.asarray(x), jnp.asarray(w), k1))
    smoothed = _upfirdn_oracle(x, updown.setup_kernel(k1), pad0=2, pad1=2)
    np.testing.assert_allclose(got, _conv_valid_oracle(smoothed, w, stride=2), rtol=1e-4, atol=1e-4)
    assert got.shape == (2, 4, 4, 5)


def test_upsample_conv_matches_the_reference_transposed_conv_formula(fir_data):
    """The reference: ``conv_transpose(x, flip(w)ᵀ, stride 2, VALID, transpose_kernel=True)`` then upfirdn."""
    x, w, k1 = fir_data
    wt = jnp.transpose(jnp.asarray(w)[::-1, ::-1], (0, 1, 3, 2))
    y = jax.lax.conv_transpose(
        jnp.asarray(x), wt, (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"), transpose_kernel=True
    )
    want = _upfirdn_oracle(np.asarray(y), updown.setup_kernel(k1) * 4, pad0=1, pad1=1)  # p = 0
    got = np.asarray(updown.upsample_conv_2d(jnp.asarray(x), jnp.asarray(w), k1))
    assert got.shape == (2, 16, 16, 5)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_naive_resampling():
    x = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3)
    up = updown.naive_upsample_2d(x)
    np.testing.assert_array_equal(up, jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))
    np.testing.assert_allclose(updown.naive_downsample_2d(up), x)


# ----------------------------------------------------------------------------------------------
# Tiny networks for behaviour tests.


def _tiny(name="ncsnpp", **model):
    base = dict(
        name=name,
        nf=8,
        ch_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(4,),
        dropout=0.1,
        resamp_with_conv=True,
        conditional=True,
        fir=False,
        fir_kernel=(1, 3, 3, 1),
        skip_rescale=True,
        resblock_type="biggan",
        progressive="none",
        progressive_input="none",
        progressive_combine="sum",
        embedding_type="positional",
        fourier_scale=16,
        init_scale=0.0,
        scale_by_sigma=False,
        sigma_min=0.01,
        sigma_max=50.0,
        num_scales=1000,
        nonlinearity="swish",
    )
    data = dict(image_size=8, num_channels=3, centered=model.pop("centered", True))
    base.update(model)
    return ml_collections.ConfigDict(dict(model=base, data=data, training=dict(continuous=True)))


def _perturbed(config, seed=0):
    """A network whose zero-initialised output layers are perturbed, so every path affects the output."""
    model = build.get_model(config, rngs=nnx.Rngs(seed))
    state = nnx.state(model, nnx.Param)
    leaves, tree = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    leaves = [v + 0.05 * jax.random.normal(k, v.shape) for v, k in zip(leaves, keys)]
    nnx.update(model, jax.tree.unflatten(tree, leaves))
    return model


# Tiny networks run eagerly: op-by-op dispatch is far cheaper than compiling each variant.
def _call(model, x, labels, y=None, *, train=False, key=None):
    return model(x, labels, y, train=train, key=key)


@functools.partial(jax.jit, static_argnames="graphdef")
def _run_jit(state, x, labels, *, graphdef):
    return nnx.merge(graphdef, state)(x, labels)


def _inputs(b=3):
    x = jax.random.uniform(jax.random.key(0), (b, 8, 8, 3))
    return x, jnp.linspace(10.0, 900.0, b)


OPTION_SETS = {
    # Paths no reference fixture covers (the PyTorch reference cannot run them on current PyTorch).
    "residual_pyramids_fir_ddpm_blocks": dict(
        progressive="residual", progressive_input="residual", fir=True, resblock_type="ddpm", resamp_with_conv=True
    ),
    "nearest_conv_resampling_cat": dict(
        progressive="output_skip",
        progressive_input="input_skip",
        progressive_combine="cat",
        resblock_type="ddpm",
        skip_rescale=False,
    ),
    "fourier_unconditional_biggan_fir": dict(
        embedding_type="fourier", conditional=False, fir=True, scale_by_sigma=True, centered=False
    ),
}


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(k, marks=pytest.mark.slow)
        if k in ("residual_pyramids_fir_ddpm_blocks", "nearest_conv_resampling_cat", "fourier_unconditional_biggan_fir")
        else k
        for k in OPTION_SETS
    ],
)
def test_option_combinations_build_and_run(options):
    config = _tiny(**OPTION_SETS[options])
    model = _perturbed(config)
    x, labels = _inputs()
    out = _call(model, x, labels)
    assert out.shape == x.shape and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))
    # The forward pass walks every module it built, in order (it asserts so itself); and the output
    # depends on the input pyramid / time label, not only on one path.
    assert float(jnp.max(jnp.abs(_call(model, x, labels[::-1]) - out))) > 1e-5


def test_fourier_features_are_frozen():
    from scoresde.models.layers import GaussianFourierProjection

    proj = GaussianFourierProjection(8, 16.0, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(proj)
    s = jnp.log(jnp.array([0.1, 1.0, 10.0]))
    emb = proj(s)
    assert emb.shape == (3, 16)
    np.testing.assert_allclose(emb[:, :8] ** 2 + emb[:, 8:] ** 2, 1.0, rtol=1e-5)
    grads = jax.grad(lambda st: jnp.sum(nnx.merge(graphdef, st)(s) ** 2))(state)
    assert not bool(jnp.any(grads["W"][...] != 0))


@pytest.mark.slow  # 28 s on 2 cores
def test_centered_input_handling():
    x, labels = _inputs()
    uncentred = _perturbed(_tiny(centered=False))
    centred = _perturbed(_tiny(centered=True))
    np.testing.assert_allclose(_call(uncentred, x, labels), _call(centred, 2 * x - 1, labels), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["ncsnpp", pytest.param("ddpm", marks=pytest.mark.slow)])
def test_class_conditional_null_label(name):
    model = _perturbed(_tiny(name=name, num_classes=4, nf=32) if name == "ddpm" else _tiny(num_classes=4))
    assert model.null_label == 4
    x, labels = _inputs()
    null = jnp.full((3,), 4, jnp.int32)
    np.testing.assert_allclose(_call(model, x, labels), _call(model, x, labels, null), rtol=1e-6, atol=1e-6)
    classes = jnp.array([0, 1, 2], jnp.int32)
    assert float(jnp.max(jnp.abs(_call(model, x, labels, classes) - _call(model, x, labels, null)))) > 1e-4
    unconditional = _perturbed(_tiny())
    with pytest.raises(ValueError, match="num_classes=0"):
        unconditional(x, labels, classes)


@pytest.mark.slow  # 17 s on 2 cores
def test_dropout_only_in_training_with_a_key():
    model = _perturbed(_tiny(dropout=0.3))
    x, labels = _inputs()
    key = jax.random.key(3)
    eval_out = _call(model, x, labels)
    np.testing.assert_array_equal(_call(model, x, labels, key=key), eval_out)  # key ignored in eval mode
    a = _call(model, x, labels, key=key, train=True)
    b = _call(model, x, labels, key=jax.random.key(4), train=True)
    np.testing.assert_array_equal(a, _call(model, x, labels, key=key, train=True))
    assert float(jnp.max(jnp.abs(a - eval_out))) > 1e-4 and float(jnp.max(jnp.abs(a - b))) > 1e-4
    with pytest.raises(ValueError, match="key"):
        model(x, labels, train=True)


def test_unknown_options_are_rejected():
    with pytest.raises(ValueError, match="progressive"):
        build.get_model(_tiny(progressive="pyramid"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="resblock_type"):
        build.get_model(_tiny(resblock_type="wide"), rngs=nnx.Rngs(0))
    cfg = _tiny(embedding_type="fourier")
    cfg.training.continuous = False
    with pytest.raises(ValueError, match="continuous"):
        build.get_model(cfg, rngs=nnx.Rngs(0))


# ----------------------------------------------------------------------------------------------
# Mixed precision on a reference fixture.


def test_bf16_forward_is_close_to_f32_on_a_fixture():
    src, name = "score_sde_jax", "ddpmpp_vp_continuous"
    if not os.path.exists(os.path.join(FIXTURES, src)):
        pytest.skip("fixtures not present")
    with open(os.path.join(FIXTURES, src, name + ".json")) as f:
        cfg = json.load(f)
    data = np.load(os.path.join(FIXTURES, src, name + ".npz"))
    params = convert.load_reference_checkpoint(os.path.join(FIXTURES, src, name + ".msgpack"), cfg)["params"]
    outs = {}
    for dtype in ("float32", "bfloat16"):
        cfg["model"]["dtype"] = dtype
        model = convert.model_with_params(cfg, params)
        assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
        graphdef, state = nnx.split(model)
        outs[dtype] = np.asarray(
            _run_jit(state, jnp.asarray(data["x_nhwc"]), jnp.asarray(data["labels"]), graphdef=graphdef)
        )
    assert outs["bfloat16"].dtype == np.float32
    np.testing.assert_allclose(outs["float32"], data["raw_nhwc"], rtol=1e-4, atol=1e-4 * np.abs(data["raw_nhwc"]).max())
    err = np.max(np.abs(outs["bfloat16"] - outs["float32"])) / np.max(np.abs(outs["float32"]))
    assert 1e-4 < err < 2e-2  # bf16 really ran (not silently f32), and stays within 2e-2
