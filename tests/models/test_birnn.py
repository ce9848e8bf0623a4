"""The BiRNN score network: its GRU step against a plain-NumPy GRU, exact masking, conditioning, any length."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scoresde.models.birnn import BiRNNScore, gru_step, scan_gru


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _numpy_gru(p, xs, h):
    """Cho et al. (2014) GRU, PyTorch's gate convention, in float64 NumPy: ``xs`` (N, B, D) -> states (N, B, H)."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    hid = p["w_h"].shape[0]
    out = []
    for x in xs:
        gi = x @ p["w_i"] + p["b_i"][None]
        gh = h @ p["w_h"] + p["b_h"][None]
        r = _sigmoid(gi[:, :hid] + gh[:, :hid])
        z = _sigmoid(gi[:, hid : 2 * hid] + gh[:, hid : 2 * hid])
        n = np.tanh(gi[:, 2 * hid :] + r * gh[:, 2 * hid :])
        h = (1 - z) * n + z * h
        out.append(h)
    return np.stack(out)


def _params(key, d=3, hid=5):
    k = jax.random.split(key, 4)
    return {
        "w_i": jax.random.normal(k[0], (d, 3 * hid)),
        "w_h": jax.random.normal(k[1], (hid, 3 * hid)) * 0.7,
        "b_i": jax.random.normal(k[2], (3 * hid,)),
        "b_h": jax.random.normal(k[3], (3 * hid,)),
    }


def test_gru_step_and_scan_equal_a_numpy_gru():
    p = _params(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (2, 7, 3))
    h0 = jax.random.normal(jax.random.key(2), (2, 5))
    one = gru_step(p, h0, x[:, 0] @ p["w_i"] + p["b_i"][None])
    want = _numpy_gru(p, np.asarray(x, np.float64).swapaxes(0, 1)[:1], np.asarray(h0, np.float64))[0]
    np.testing.assert_allclose(np.asarray(one), want, rtol=1e-5, atol=1e-6)
    fwd = scan_gru(p, x, jnp.ones((2, 7)))
    want_f = _numpy_gru(p, np.asarray(x, np.float64).swapaxes(0, 1), np.zeros((2, 5))).swapaxes(0, 1)
    np.testing.assert_allclose(np.asarray(fwd), want_f, rtol=1e-5, atol=1e-6)
    bwd = scan_gru(p, x, jnp.ones((2, 7)), reverse=True)
    want_b = _numpy_gru(p, np.asarray(x, np.float64)[:, ::-1].swapaxes(0, 1), np.zeros((2, 5)))
    np.testing.assert_allclose(np.asarray(bwd), want_b.swapaxes(0, 1)[:, ::-1], rtol=1e-5, atol=1e-6)


@nnx.jit
def _apply(net, x, t, y=None, mask=None):
    return net(x, t, y, mask=mask)


def _net(num_classes=0, seed=0, num_layers=2):
    net = BiRNNScore(3, hidden=16, num_layers=num_layers, embed_dim=16, num_classes=num_classes, rngs=nnx.Rngs(seed))
    # the output layer starts at zero (a zero score); give it weights so the tests see the whole network
    net.out.kernel[...] = jax.random.normal(jax.random.key(seed + 1), net.out.kernel[...].shape)
    return net


def test_output_at_real_points_does_not_depend_on_the_padding():
    net = _net()
    b, n = 3, 12
    x = jax.random.normal(jax.random.key(0), (b, n, 3))
    mask = jnp.asarray(np.arange(n)[None, :] < np.array([12, 7, 4])[:, None], jnp.float32)
    t = jnp.array([10.0, 500.0, 990.0])
    garbage = jnp.where(mask[..., None] > 0, x, 1e4 * jax.random.normal(jax.random.key(1), x.shape))
    a = np.asarray(_apply(net, x, t, mask=mask))
    g = np.asarray(_apply(net, garbage, t, mask=mask))
    real = np.asarray(mask) > 0
    np.testing.assert_array_equal(a[real], g[real])  # bit for bit
    assert np.all(a[~real] == 0) and np.all(g[~real] == 0)
    # and the padding is invisible: a sequence cut to its real points gives the same outputs
    short = np.asarray(_apply(net, x[1:2, :7], t[1:2]))
    np.testing.assert_allclose(a[1, :7], short[0], rtol=1e-5, atol=1e-5)
    assert np.abs(a[real]).max() > 1e-3  # not a zero network


def test_both_directions_are_read():
    net = _net(num_layers=1)
    x = jax.random.normal(jax.random.key(0), (1, 10, 3))
    t = jnp.array([100.0])
    base = np.asarray(_apply(net, x, t))
    moved = np.asarray(_apply(net, x.at[:, 5].add(1.0), t))
    changed = np.abs(moved - base).max(-1)[0] > 1e-6
    assert changed[:5].all() and changed[6:].all()  # points before and after the change both see it


def test_time_and_class_condition_the_output_and_any_length_runs():
    net = _net(num_classes=4, num_layers=1)
    x = jnp.repeat(jax.random.normal(jax.random.key(0), (1, 9, 3)), 4, axis=0)
    t = jnp.array([100.0, 100.0, 500.0, 100.0])
    y = jnp.array([0, 1, 0, 4])  # 4 = the null label of classifier-free guidance
    out = np.asarray(_apply(net, x, t, y))
    assert np.abs(out[0] - out[1]).max() > 1e-4  # the class matters
    assert np.abs(out[0] - out[2]).max() > 1e-4  # the time matters
    np.testing.assert_allclose(np.asarray(_apply(net, x[:1], t[:1])), out[3:], rtol=1e-5, atol=1e-6)  # no labels = null
    assert _apply(net, jax.random.normal(jax.random.key(1), (2, 33, 3)), t[:2], y[:2]).shape == (2, 33, 3)


def test_wrong_input_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"sequences \(B, N, 3\)"):
        _net()(jnp.zeros((2, 8, 8, 3)), jnp.zeros((2,)))


def test_built_from_the_strokes_config():
    from scoresde import build

    from conftest import load_config

    config = load_config("strokes_vp_cond", "smoke")
    net = build.build_model(config, seed=0)
    assert isinstance(net, BiRNNScore) and net.num_classes == 10 and net.channels == 3
