"""Checkpoint import: every reference fixture (PyTorch .pth and Flax msgpack) reproduces number for number.

The fixtures (../shared/fixtures/*/README.md) hold shrunk reference networks with perturbed weights,
an input batch, the reference's network output on its labels (``raw_nhwc``) and its score function
with the raw and the EMA weights. Errors are ``max |ours - ref| / max |ref|``.
"""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scoresde import build, convert, parameterization

from conftest import FIXTURES

TOL = 1e-4
VARIANTS = [
    ("score_sde_pytorch", "ddpmpp_vp_continuous"),
    ("score_sde_pytorch", "ncsnpp_ve_continuous"),
    ("score_sde_pytorch", "ncsnpp_ve_skip_pyramid"),
    ("score_sde_pytorch", "ncsnpp_ve_ddpm_blocks_cat"),
    ("score_sde_pytorch", "ddpm_vp_discrete"),
    ("score_sde_jax", "ddpmpp_vp_continuous"),
    ("score_sde_jax", "ncsnpp_ve_continuous"),
]


def _path(src, name):
    return os.path.join(FIXTURES, src, name + (".pth" if src == "score_sde_pytorch" else ".msgpack"))


def _skip_without(src):
    if not os.path.exists(os.path.join(FIXTURES, src)):
        pytest.skip(f"fixtures {src} not present")
    if src == "score_sde_pytorch":
        pytest.importorskip("torch")


def _rel(ours, ref):
    return float(np.max(np.abs(np.asarray(ours, np.float64) - ref)) / np.max(np.abs(ref)))


@functools.partial(jax.jit, static_argnames="graphdef")
def _apply(state, x, labels, *, graphdef):
    return nnx.merge(graphdef, state)(x, labels)


@functools.cache
def _load(src, name):
    with open(os.path.join(FIXTURES, src, name + ".json")) as f:
        cfg = json.load(f)
    data = dict(np.load(os.path.join(FIXTURES, src, name + ".npz")))
    model = convert.abstract_model(cfg)
    loaded = convert.load_reference_checkpoint(_path(src, name), cfg, model=model)
    graphdef, _ = nnx.split(convert.model_with_params(cfg, loaded["params"], model=model))
    # Copy the leaves: the same abstract model is filled twice.
    states = {
        k: jax.tree.map(jnp.array, nnx.state(convert.model_with_params(cfg, loaded[k], model=model)))
        for k in ("params", "ema_params")
    }
    return cfg, data, graphdef, states, loaded["step"]


def _reference_f32_sigma_factor(cfg, t):
    """Reference σ(t) / exact σ(t) for continuous VP, else 1.

    The reference computes the continuous VP std as ``sqrt(1 - exp(2 log_mean_coeff))`` in float32,
    which loses digits to cancellation at small t (1.2e-4 relative at t = 1e-3); our SDE uses expm1.
    The fixture's score at t = 1e-3 carries that rounding error, so the comparison rescales it by this
    factor (computed here from the reference's own float32 formula, not fitted).
    """
    if not (cfg["training"]["continuous"] and cfg["training"]["sde"] == "vpsde"):
        return np.ones_like(t, dtype=np.float64)
    b0, b1 = np.float32(cfg["model"]["beta_min"]), np.float32(cfg["model"]["beta_max"])
    t32 = t.astype(np.float32)
    lmc = np.float32(-0.25) * t32**2 * (b1 - b0) - np.float32(0.5) * t32 * b0
    ref = np.sqrt(np.float32(1.0) - np.exp(np.float32(2.0) * lmc)).astype(np.float64)
    exact = np.sqrt(-np.expm1(2.0 * lmc.astype(np.float64)))
    return ref / exact


@pytest.mark.parametrize("src,name", VARIANTS, ids=[f"{s.split('_')[-1]}-{n}" for s, n in VARIANTS])
def test_fixture_reproduces(src, name):
    _skip_without(src)
    cfg, data, graphdef, states, step = _load(src, name)
    assert step == 12345
    x, t = jnp.asarray(data["x_nhwc"]), jnp.asarray(data["t"])

    raw = _apply(states["params"], x, jnp.asarray(data["labels"]), graphdef=graphdef)
    assert raw.shape == data["raw_nhwc"].shape and raw.dtype == jnp.float32
    assert _rel(raw, data["raw_nhwc"]) < TOL

    sde = build.make_sde(build.as_config(cfg))
    convention = parameterization.reference_convention(sde, cfg["training"]["continuous"])
    labels = parameterization.time_labels(sde, t, convention["time_label"])
    np.testing.assert_allclose(np.asarray(labels), data["labels"], rtol=1e-5, atol=1e-5)

    factor = _reference_f32_sigma_factor(cfg, data["t"])
    assert np.all(np.abs(factor[data["t"] >= 0.1] - 1) < 1e-6)  # the correction only matters near t = 0
    for key, ref in (("params", data["score_nhwc"]), ("ema_params", data["score_ema_nhwc"])):
        score_fn = parameterization.model_score_fn(
            functools.partial(_apply, states[key], graphdef=graphdef), sde, **convention
        )
        score = np.asarray(score_fn(x, t))
        assert _rel(score, ref * factor[:, None, None, None]) < TOL, key
    # The EMA weights differ from the raw ones, so the two scores must too.
    assert _rel(data["score_ema_nhwc"], data["score_nhwc"]) > 10 * TOL


@pytest.mark.parametrize(
    "src,name", [("score_sde_pytorch", "ncsnpp_ve_ddpm_blocks_cat"), ("score_sde_jax", "ddpmpp_vp_continuous")]
)
def test_reference_score_fn_contract(src, name):
    """``reference_score_fn(path, config, ema)`` with the config as a plain dict, batched NHWC."""
    _skip_without(src)
    cfg, data, *_ = _load(src, name)
    factor = _reference_f32_sigma_factor(cfg, data["t"])[:, None, None, None]
    for ema, ref in ((True, data["score_ema_nhwc"]), (False, data["score_nhwc"])):
        score_fn = convert.reference_score_fn(_path(src, name), cfg, ema=ema)
        score = score_fn(data["x_nhwc"], data["t"])
        assert score.shape == data["x_nhwc"].shape
        assert _rel(score, ref * factor) < TOL


def test_config_mismatch_is_reported():
    src, name = "score_sde_jax", "ncsnpp_ve_continuous"
    _skip_without(src)
    with open(os.path.join(FIXTURES, src, name + ".json")) as f:
        cfg = json.load(f)
    cfg["model"]["nf"] = 8
    with pytest.raises(ValueError, match="shape"):
        convert.load_reference_checkpoint(_path(src, name), cfg)
    cfg["model"]["nf"] = 16
    cfg["model"]["progressive_input"] = "none"
    with pytest.raises(ValueError, match="not used by the network"):
        convert.load_reference_checkpoint(_path(src, name), cfg)


def test_torch_module_order_skips_shared_pyramid_resamplers():
    """The PyTorch reference keeps its parameter-free pyramid resamplers outside ``all_modules``."""
    src, name = "score_sde_pytorch", "ncsnpp_ve_skip_pyramid"
    _skip_without(src)
    torch = pytest.importorskip("torch")
    cfg, *_ = _load(src, name)
    model = convert.abstract_model(cfg)
    idx = convert.torch_module_indices(model)
    assert idx.count(None) == len(model.torch_absent) == 2 * (len(cfg["model"]["ch_mult"]) - 1)
    sd = torch.load(_path(src, name), map_location="cpu", weights_only=False)["model"]
    n_torch = 1 + max(int(k.split(".")[2]) for k in sd if ".all_modules." in k)
    assert n_torch == len(model.all_modules) - idx.count(None)


def test_cli_writes_a_checkpoint_load_model_reads(tmp_path):
    """``python -m scoresde.convert`` -> orbax checkpoint -> ``build.load_model`` (EMA weights)."""
    src, name = "score_sde_jax", "ncsnpp_ve_continuous"
    _skip_without(src)
    cfg_path = os.path.join(FIXTURES, src, name + ".json")
    workdir = str(tmp_path / "imported")
    convert.main([f"--checkpoint={_path(src, name)}", f"--config={cfg_path}", f"--workdir={workdir}"])
    config = convert.load_config(cfg_path)
    model, step = build.load_model(workdir, config)
    assert step == 12345
    _, _, _, states, _ = _load(src, name)
    got = nnx.state(model, nnx.Param).to_pure_dict()
    want = states["ema_params"].to_pure_dict()
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), got, want)


def test_a_pth_that_names_code_is_refused_and_the_code_never_runs(tmp_path):
    """A .pth is a pickle: reading one must never run what it names (here os.system writing a marker)."""
    torch = pytest.importorskip("torch")
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    evil = str(tmp_path / "evil.pth")
    torch.save({"model": Payload(), "ema": {"shadow_params": []}, "step": 1}, evil)
    cfg = build.load_config(os.path.join(os.path.dirname(__file__), "..", "configs", "toy2d_vp.py") + ":smoke")
    with pytest.raises(ValueError, match="evil.pth is not a plain score_sde_pytorch checkpoint.*system"):
        convert.load_reference_checkpoint(evil, cfg)
    assert not marker.exists()
