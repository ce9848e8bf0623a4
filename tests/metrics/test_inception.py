"""FID Inception: layout, converter round trip, forward against an independent torch reference, weights."""

import os

import numpy as np
import pytest

from scoresde.metrics import weights as W


# The pytorch-fid layout, written out from torchvision's Inception3 + pytorch-fid's FID blocks:
# name -> (in, out, kernel (h, w), stride, padding (h, w)). Independent of our module's code.
def _a(p, cin, pool):
    return {
        f"{p}.branch1x1": (cin, 64, (1, 1), 1, (0, 0)),
        f"{p}.branch5x5_1": (cin, 48, (1, 1), 1, (0, 0)),
        f"{p}.branch5x5_2": (48, 64, (5, 5), 1, (2, 2)),
        f"{p}.branch3x3dbl_1": (cin, 64, (1, 1), 1, (0, 0)),
        f"{p}.branch3x3dbl_2": (64, 96, (3, 3), 1, (1, 1)),
        f"{p}.branch3x3dbl_3": (96, 96, (3, 3), 1, (1, 1)),
        f"{p}.branch_pool": (cin, pool, (1, 1), 1, (0, 0)),
    }


def _c(p, c7):
    return {
        f"{p}.branch1x1": (768, 192, (1, 1), 1, (0, 0)),
        f"{p}.branch7x7_1": (768, c7, (1, 1), 1, (0, 0)),
        f"{p}.branch7x7_2": (c7, c7, (1, 7), 1, (0, 3)),
        f"{p}.branch7x7_3": (c7, 192, (7, 1), 1, (3, 0)),
        f"{p}.branch7x7dbl_1": (768, c7, (1, 1), 1, (0, 0)),
        f"{p}.branch7x7dbl_2": (c7, c7, (7, 1), 1, (3, 0)),
        f"{p}.branch7x7dbl_3": (c7, c7, (1, 7), 1, (0, 3)),
        f"{p}.branch7x7dbl_4": (c7, c7, (7, 1), 1, (3, 0)),
        f"{p}.branch7x7dbl_5": (c7, 192, (1, 7), 1, (0, 3)),
        f"{p}.branch_pool": (768, 192, (1, 1), 1, (0, 0)),
    }


def _e(p, cin):
    return {
        f"{p}.branch1x1": (cin, 320, (1, 1), 1, (0, 0)),
        f"{p}.branch3x3_1": (cin, 384, (1, 1), 1, (0, 0)),
        f"{p}.branch3x3_2a": (384, 384, (1, 3), 1, (0, 1)),
        f"{p}.branch3x3_2b": (384, 384, (3, 1), 1, (1, 0)),
        f"{p}.branch3x3dbl_1": (cin, 448, (1, 1), 1, (0, 0)),
        f"{p}.branch3x3dbl_2": (448, 384, (3, 3), 1, (1, 1)),
        f"{p}.branch3x3dbl_3a": (384, 384, (1, 3), 1, (0, 1)),
        f"{p}.branch3x3dbl_3b": (384, 384, (3, 1), 1, (1, 0)),
        f"{p}.branch_pool": (cin, 192, (1, 1), 1, (0, 0)),
    }


LAYOUT = {
    "Conv2d_1a_3x3": (3, 32, (3, 3), 2, (0, 0)),
    "Conv2d_2a_3x3": (32, 32, (3, 3), 1, (0, 0)),
    "Conv2d_2b_3x3": (32, 64, (3, 3), 1, (1, 1)),
    "Conv2d_3b_1x1": (64, 80, (1, 1), 1, (0, 0)),
    "Conv2d_4a_3x3": (80, 192, (3, 3), 1, (0, 0)),
    **_a("Mixed_5b", 192, 32),
    **_a("Mixed_5c", 256, 64),
    **_a("Mixed_5d", 288, 64),
    "Mixed_6a.branch3x3": (288, 384, (3, 3), 2, (0, 0)),
    "Mixed_6a.branch3x3dbl_1": (288, 64, (1, 1), 1, (0, 0)),
    "Mixed_6a.branch3x3dbl_2": (64, 96, (3, 3), 1, (1, 1)),
    "Mixed_6a.branch3x3dbl_3": (96, 96, (3, 3), 2, (0, 0)),
    **_c("Mixed_6b", 128),
    **_c("Mixed_6c", 160),
    **_c("Mixed_6d", 160),
    **_c("Mixed_6e", 192),
    "Mixed_7a.branch3x3_1": (768, 192, (1, 1), 1, (0, 0)),
    "Mixed_7a.branch3x3_2": (192, 320, (3, 3), 2, (0, 0)),
    "Mixed_7a.branch7x7x3_1": (768, 192, (1, 1), 1, (0, 0)),
    "Mixed_7a.branch7x7x3_2": (192, 192, (1, 7), 1, (0, 3)),
    "Mixed_7a.branch7x7x3_3": (192, 192, (7, 1), 1, (3, 0)),
    "Mixed_7a.branch7x7x3_4": (192, 192, (3, 3), 2, (0, 0)),
    **_e("Mixed_7b", 1280),
    **_e("Mixed_7c", 2048),
}


def random_torch_state_dict(seed=0, with_num_batches_tracked=True):
    """A randomly initialised state dict in pytorch-fid's layout, as numpy arrays (torch not needed)."""
    rng = np.random.default_rng(seed)
    sd = {}
    for name, (cin, cout, (kh, kw), _, _) in LAYOUT.items():
        sd[f"{name}.conv.weight"] = rng.standard_normal((cout, cin, kh, kw)) * np.sqrt(2.0 / (cin * kh * kw))
        sd[f"{name}.bn.weight"] = rng.uniform(0.5, 1.5, cout)
        sd[f"{name}.bn.bias"] = rng.normal(0.0, 0.1, cout)
        sd[f"{name}.bn.running_mean"] = rng.normal(0.0, 0.1, cout)
        sd[f"{name}.bn.running_var"] = rng.uniform(0.5, 1.5, cout)
        if with_num_batches_tracked:
            sd[f"{name}.bn.num_batches_tracked"] = np.array(0, np.int64)
    sd["fc.weight"] = rng.standard_normal((1008, 2048)) / np.sqrt(2048)
    sd["fc.bias"] = rng.normal(0.0, 0.1, 1008)
    return {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in sd.items()}


def test_layout_matches_pytorch_fid():
    sd = random_torch_state_dict()
    n = sum(v.size for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    assert n == 23_885_392  # pytorch-fid's FID Inception: parameters + batch-norm statistics
    shapes = W.expected_param_shapes()
    assert sum(int(np.prod(s)) for s in shapes.values()) == n
    assert len(shapes) == len([k for k in sd if not k.endswith("num_batches_tracked")])


def test_converter_round_trip():
    sd = random_torch_state_dict(seed=1)
    params = W.torch_state_dict_to_params(sd)
    assert params["Mixed_5b"]["branch5x5_2"]["conv"]["kernel"].shape == (5, 5, 48, 64)  # HWIO
    assert params["fc"]["kernel"].shape == (2048, 1008)
    np.testing.assert_array_equal(
        params["Mixed_7c"]["branch3x3_2a"]["conv"]["kernel"][0, :, 3, 5],
        sd["Mixed_7c.branch3x3_2a.conv.weight"][5, 3, 0, :],
    )
    np.testing.assert_array_equal(params["Conv2d_1a_3x3"]["bn"]["var"], sd["Conv2d_1a_3x3.bn.running_var"])
    back = W.params_to_torch_state_dict(params)
    expected = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    assert set(back) == set(expected)
    for k, v in expected.items():
        np.testing.assert_array_equal(back[k], v, err_msg=k)


def test_converter_rejects_wrong_layout():
    sd = random_torch_state_dict(seed=2, with_num_batches_tracked=False)
    bad = dict(sd)
    bad["fc.weight"] = bad["fc.weight"][:1000]
    with pytest.raises(ValueError, match="bad shapes.*fc.weight"):
        W.torch_state_dict_to_params(bad)
    missing = {k: v for k, v in sd.items() if not k.startswith("Mixed_7c.branch_pool.")}
    with pytest.raises(ValueError, match="Mixed_7c/branch_pool"):
        W.torch_state_dict_to_params(missing)
    torchvision_aux = dict(sd, **{"AuxLogits.fc.weight": np.zeros((1000, 768), np.float32)})
    with pytest.raises(ValueError, match="unknown keys.*AuxLogits"):
        W.torch_state_dict_to_params(torchvision_aux)


@pytest.mark.parametrize("ext", ["npz", "msgpack"])
def test_params_file_round_trip(tmp_path, ext):
    params = W.torch_state_dict_to_params(random_torch_state_dict(seed=3))
    path = str(tmp_path / f"w.{ext}")
    W.save_params(path, params)
    loaded = W.load_params(path)
    for k, v in W.flatten(params).items():
        np.testing.assert_array_equal(W.flatten(loaded)[k], v)
    other = str(tmp_path / f"wrong.{ext}")
    W.save_params(other, {"fc": {"kernel": np.zeros((3, 3))}})
    with pytest.raises(ValueError, match="not FID Inception parameters"):
        W.load_params(other)


def test_pth_file_is_converted_on_load(tmp_path):
    torch = pytest.importorskip("torch")
    sd = random_torch_state_dict(seed=4)
    path = str(tmp_path / "pt_inception.pth")
    torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}, path)
    params = W.load_params(path)
    np.testing.assert_array_equal(params["fc"]["kernel"], sd["fc.weight"].T)


def test_offline_without_file_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(W.ENV_CACHE, str(tmp_path))
    monkeypatch.delenv(W.ENV_WEIGHTS, raising=False)
    monkeypatch.setenv(W.ENV_OFFLINE, "1")
    with pytest.raises(W.InceptionWeightsError, match=r"(?s)not available.*sha256.*SCORESDE_INCEPTION_WEIGHTS"):
        W.resolve_weights_path()
    with pytest.raises(W.InceptionWeightsError, match="is not a file"):
        W.resolve_weights_path(str(tmp_path / "nope.npz"))
    # A failing download (no network) is the same clear error, and leaves nothing in the cache.
    monkeypatch.delenv(W.ENV_OFFLINE)

    def no_network(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(W.urllib.request, "urlopen", no_network)
    with pytest.raises(W.InceptionWeightsError, match="downloading .* failed"):
        W.resolve_weights_path()
    assert os.listdir(tmp_path) == []


def test_download_checks_checksum_and_caches(tmp_path, monkeypatch):
    import hashlib
    import io

    payload = b"not really weights"

    class Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(W.urllib.request, "urlopen", lambda url, timeout: Response(payload))
    with pytest.raises(W.InceptionWeightsError, match="checksum mismatch"):
        W.download_weights(str(tmp_path))
    assert os.listdir(tmp_path) == []
    path = W.download_weights(str(tmp_path), sha256=hashlib.sha256(payload).hexdigest())
    assert open(path, "rb").read() == payload
    # Found in the cache from now on, without a download.
    monkeypatch.setenv(W.ENV_CACHE, str(tmp_path))
    monkeypatch.delenv(W.ENV_WEIGHTS, raising=False)
    monkeypatch.setenv(W.ENV_OFFLINE, "1")
    assert W.resolve_weights_path() == path
    monkeypatch.setenv(W.ENV_WEIGHTS, path)
    assert W.resolve_weights_path() == path


# ---------------------------------------------------------------- forward


def _torch_reference(sd, images_uint8, size):
    """pytorch-fid's forward written functionally in torch from the state dict (NCHW)."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    t = {k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}

    def conv(x, name):
        _, _, _, stride, pad = LAYOUT[name]
        x = F.conv2d(x, t[f"{name}.conv.weight"], stride=stride, padding=pad)
        x = F.batch_norm(
            x,
            t[f"{name}.bn.running_mean"],
            t[f"{name}.bn.running_var"],
            t[f"{name}.bn.weight"],
            t[f"{name}.bn.bias"],
            training=False,
            eps=1e-3,
        )
        return F.relu(x)

    def avg(x):
        return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)

    def block_a(x, p):
        return torch.cat(
            [
                conv(x, f"{p}.branch1x1"),
                conv(conv(x, f"{p}.branch5x5_1"), f"{p}.branch5x5_2"),
                conv(conv(conv(x, f"{p}.branch3x3dbl_1"), f"{p}.branch3x3dbl_2"), f"{p}.branch3x3dbl_3"),
                conv(avg(x), f"{p}.branch_pool"),
            ],
            1,
        )

    def block_c(x, p):
        b7 = conv(conv(conv(x, f"{p}.branch7x7_1"), f"{p}.branch7x7_2"), f"{p}.branch7x7_3")
        bd = x
        for i in range(1, 6):
            bd = conv(bd, f"{p}.branch7x7dbl_{i}")
        return torch.cat([conv(x, f"{p}.branch1x1"), b7, bd, conv(avg(x), f"{p}.branch_pool")], 1)

    def block_e(x, p, pool):
        b3 = conv(x, f"{p}.branch3x3_1")
        bd = conv(conv(x, f"{p}.branch3x3dbl_1"), f"{p}.branch3x3dbl_2")
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if pool == "max" else avg(x)
        return torch.cat(
            [
                conv(x, f"{p}.branch1x1"),
                torch.cat([conv(b3, f"{p}.branch3x3_2a"), conv(b3, f"{p}.branch3x3_2b")], 1),
                torch.cat([conv(bd, f"{p}.branch3x3dbl_3a"), conv(bd, f"{p}.branch3x3dbl_3b")], 1),
                conv(pooled, f"{p}.branch_pool"),
            ],
            1,
        )

    with torch.no_grad():
        x = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float() / 255.0
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"):
            x = conv(x, name)
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(conv(conv(x, "Conv2d_3b_1x1"), "Conv2d_4a_3x3"), 3, stride=2)
        for p in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
            x = block_a(x, p)
        x = torch.cat(
            [
                conv(x, "Mixed_6a.branch3x3"),
                conv(conv(conv(x, "Mixed_6a.branch3x3dbl_1"), "Mixed_6a.branch3x3dbl_2"), "Mixed_6a.branch3x3dbl_3"),
                F.max_pool2d(x, 3, stride=2),
            ],
            1,
        )
        for p in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
            x = block_c(x, p)
        b7 = x
        for i in range(1, 5):
            b7 = conv(b7, f"Mixed_7a.branch7x7x3_{i}")
        x = torch.cat(
            [conv(conv(x, "Mixed_7a.branch3x3_1"), "Mixed_7a.branch3x3_2"), b7, F.max_pool2d(x, 3, stride=2)], 1
        )
        x = block_e(x, "Mixed_7b", "avg")
        x = block_e(x, "Mixed_7c", "max")
        pool = F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)
        logits = F.linear(pool, t["fc.weight"], t["fc.bias"])
    return pool.numpy(), logits.numpy()


@pytest.fixture(scope="module")
def converted():
    sd = random_torch_state_dict(seed=5)
    return sd, W.build_inception(W.torch_state_dict_to_params(sd))


def _apply(model, images, size):
    return model(images, resize_to=size)


_JITTED = {}


def _forward(model, images, size):
    """One jitted function for the module, so repeated calls reuse the compilation."""
    if "fn" not in _JITTED:
        from flax import nnx

        _JITTED["fn"] = nnx.jit(_apply, static_argnums=2)
    return _JITTED["fn"](model, images, size)


@pytest.mark.parametrize("size,hw", [(299, 32), pytest.param(107, 48, marks=pytest.mark.slow)])
def test_forward_matches_torch_reference(converted, size, hw):
    sd, model = converted
    images = np.random.default_rng(size).integers(0, 256, (2, hw, hw, 3), dtype=np.uint8)
    pool, logits = (np.asarray(a) for a in _forward(model, images, size))
    assert pool.shape == (2, 2048) and logits.shape == (2, 1008)
    ref_pool, ref_logits = _torch_reference(sd, images, size)
    assert ref_pool.std() > 0.1  # the random weights keep activations O(1): a real comparison
    np.testing.assert_allclose(pool, ref_pool, rtol=1e-3, atol=1e-3 * ref_pool.std())
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-3, atol=1e-3 * ref_logits.std())
    # Deterministic: the same call gives bit-identical features; another image gives other features.
    pool2, logits2 = (np.asarray(a) for a in _forward(model, images, size))
    np.testing.assert_array_equal(pool, pool2)
    np.testing.assert_array_equal(logits, logits2)
    assert np.abs(pool[0] - pool[1]).max() > 1e-3


def test_resize_matrices_match_torch_interpolate():
    torch = pytest.importorskip("torch")
    from scoresde.metrics.inception import resize_matrix

    for n_in, n_out in [(32, 299), (8, 299), (512, 299), (299, 299), (7, 3)]:
        eye = torch.eye(n_in, dtype=torch.float64)[None]  # (1, n_in, n_in): columns are unit impulses
        ref = torch.nn.functional.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].T.numpy()
        np.testing.assert_allclose(resize_matrix(n_in, n_out), ref, atol=1e-12, err_msg=f"{n_in}->{n_out}")
    np.testing.assert_allclose(resize_matrix(4, 8, "tf_legacy").sum(1), 1.0)


@pytest.mark.slow
def test_grey_images_are_repeated_to_rgb(converted):
    _, model = converted
    grey = np.random.default_rng(0).integers(0, 256, (1, 8, 8, 1), dtype=np.uint8)
    a = np.asarray(_forward(model, grey, 107)[0])
    b = np.asarray(_forward(model, np.repeat(grey, 3, axis=-1), 107)[0])
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_missing_weights_error_names_the_ways_to_place_them(tmp_path, monkeypatch):
    monkeypatch.setenv(W.ENV_CACHE, str(tmp_path))
    monkeypatch.delenv(W.ENV_WEIGHTS, raising=False)
    monkeypatch.delenv(W.ENV_OFFLINE, raising=False)
    monkeypatch.setattr(W.urllib.request, "urlopen", lambda *a, **k: (_ for _ in ()).throw(OSError("no route")))
    with pytest.raises(W.InceptionWeightsError) as e:
        W.resolve_weights_path()
    message = str(e.value)
    assert "\n" not in message and W.ENV_OFFLINE not in message  # never set: not mentioned
    assert f"python -m scoresde.metrics.weights --convert=PATH_TO/{W.FID_WEIGHTS_FILENAME}" in message
    assert "config.eval.inception_weights" in message and W.ENV_WEIGHTS in message
    monkeypatch.setenv(W.ENV_OFFLINE, "1")
    with pytest.raises(W.InceptionWeightsError, match=f"\\${W.ENV_OFFLINE} is set"):
        W.resolve_weights_path()


def test_convert_places_a_local_copy_in_the_cache(tmp_path, monkeypatch, capsys):
    torch = pytest.importorskip("torch")
    monkeypatch.setenv(W.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.delenv(W.ENV_WEIGHTS, raising=False)
    monkeypatch.setenv(W.ENV_OFFLINE, "1")
    assert W.local_weights_path() is None
    src = str(tmp_path / W.FID_WEIGHTS_FILENAME)
    sd = random_torch_state_dict(seed=3)
    torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}, src)
    # not the release's checksum: refused, nothing cached
    assert W.main([f"--convert={src}"]) == 1
    assert "not the pytorch-fid release" in capsys.readouterr().err
    assert W.local_weights_path() is None
    monkeypatch.setattr(W, "FID_WEIGHTS_SHA256", W.sha256_of(src))
    assert W.main([f"--convert={src}"]) == 0
    cached = os.path.join(str(tmp_path / "cache"), W.CONVERTED_FILENAME)
    assert W.local_weights_path() == cached == W.resolve_weights_path()
    np.testing.assert_array_equal(W.load_params(cached)["fc"]["kernel"], sd["fc.weight"].T)
    assert W.main(["--help"]) == 0 and "--convert=" in capsys.readouterr().err
