"""Inverse problems and ParaDiGMS from the config edge and the CLI (``config.inverse``, ``sampling.parallel_*``).

The restore path runs through ``python -m scoresde.main --mode=sample`` on the smoke digits config with an
untrained (randomly perturbed) network: files, report keys, shapes, NFE and the naive baseline are checked
against values computed here from the test split; quality is the end-to-end benchmark's business.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scoresde import build, checkpointing, images
from scoresde import sde as sde_lib
from scoresde.analytic import GaussianMixture
from scoresde.guidance import inverse
from scoresde.modes import sample as sample_mode

from conftest import REPO, cli_env, load_config


def _checkpoint(workdir, config):
    model = build.get_model(config, rngs=nnx.Rngs(0))
    leaves, tree = jax.tree.flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    keys = jax.random.split(jax.random.key(1), len(leaves))
    # the output layer starts at zero: perturb everything so the score depends on x and t
    pure = jax.tree.unflatten(tree, [p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
    checkpointing.save_model_checkpoint(workdir, params=pure, ema_params=pure, step=3, config=config)


def _test_digits01(n):
    from sklearn.datasets import load_digits

    d = load_digits()
    test = np.arange(len(d.images)) % 10 == 0
    return (d.images[test][:n] / 16.0).astype(np.float32)[..., None], d.target[test][:n]


@pytest.mark.slow  # 35 s on 2 cores; the CLI's inpainting test stays in the default run
def test_restore_through_the_cli_writes_grids_and_a_report(tmp_path):
    workdir = str(tmp_path / "run")
    _checkpoint(workdir, load_config("digits_inverse", "smoke"))
    env = cli_env()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "scoresde.main",
            "--config=configs/digits_inverse.py:sr4,smoke",
            f"--workdir={workdir}",
            "--mode=sample",
            "--config.inverse.sigma_y=0.02",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "restored 8 test images (super_resolution, pigdm" in proc.stderr
    out = os.path.join(workdir, "inverse", "super_resolution_pigdm")
    for name in (
        "report.json",
        "restorations.npz",
        "measurement.png",
        "restoration.png",
        "ground_truth.png",
        "comparison.png",
    ):
        assert os.path.exists(os.path.join(out, name)), name
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    for key in (
        "operator",
        "method",
        "sigma_y",
        "scale",
        "nfe",
        "step",
        "num_images",
        "psnr_mean",
        "psnr",
        "baseline",
        "baseline_psnr_mean",
        "baseline_psnr",
        "labels",
        "sampler",
        "sampler_options",
    ):
        assert key in report, key
    assert report["operator"] == "super_resolution" and report["method"] == "pigdm" and report["step"] == 3
    assert (
        report["sigma_y"] == 0.02
        and report["scale"] == 5.0
        and report["data_var"] == 1e4
        and report["baseline"] == "A+y"
    )
    # ddim, 4 steps + the final Tweedie step, each a forward pass and its VJP
    assert report["nfe"] == (4 + 1) * 2
    assert report["num_images"] == 8 and len(report["psnr"]) == 8 and len(report["baseline_psnr"]) == 8

    truth, labels = _test_digits01(8)
    with np.load(os.path.join(out, "restorations.npz")) as f:
        assert f["restoration"].shape == f["ground_truth"].shape == f["measurement_pinv"].shape == (8, 8, 8, 1)
        assert f["measurement"].shape == (8, 2, 2, 1)  # y itself, model space
        np.testing.assert_allclose(f["ground_truth"], truth, atol=1e-6)  # the first test digits, in order
        np.testing.assert_array_equal(f["labels"], labels)
        naive = f["measurement_pinv"]
        np.testing.assert_allclose(report["psnr"], np.asarray(images.psnr(f["restoration"], truth)), atol=1e-4)
        assert np.all(np.isfinite(f["restoration"]))
    # A⁺y is the 4x4 block mean of the truth (nearest-upsampled) up to the noise: sigma_y = 0.02 in [-1, 1]
    block_mean = truth.reshape(8, 2, 4, 2, 4, 1).mean(axis=(2, 4))
    naive_blocks = naive.reshape(8, 2, 4, 2, 4, 1)
    np.testing.assert_allclose(
        naive_blocks, np.broadcast_to(block_mean[:, :, None, :, None], naive_blocks.shape), atol=6 * 0.01
    )
    np.testing.assert_allclose(report["baseline_psnr"], np.asarray(images.psnr(naive, truth)), atol=1e-4)


def test_noiseless_replacement_inpainting_keeps_the_observed_pixels(tmp_path):
    workdir = str(tmp_path / "run")
    config = load_config("digits_inverse", "inpaint,smoke")
    config.inverse.method, config.inverse.sigma_y = "replacement", 0.0
    _checkpoint(workdir, config)
    report = sample_mode.sample(config, workdir)
    assert report["operator"] == "inpainting" and report["method"] == "replacement"
    assert report["nfe"] == 4 + 1  # no gradient passes
    with np.load(os.path.join(report["dir"], "restorations.npz")) as f:
        restored, truth = f["restoration"], f["ground_truth"]
    # the upper half is measured exactly and replaced after the last step; the lower half is generated
    np.testing.assert_allclose(restored[:, :4], truth[:, :4], atol=1e-5)
    assert np.max(np.abs(restored[:, 4:] - truth[:, 4:])) > 0.05


def test_several_posterior_samples_share_one_measurement_and_give_a_posterior_mean(tmp_path):
    workdir = str(tmp_path / "run")
    config = load_config("digits_inverse", "inpaint,smoke")
    config.inverse.samples_per_image, config.inverse.jacobian, config.inverse.data_var = 3, "isotropic", 1.0
    _checkpoint(workdir, config)
    report = sample_mode.sample(config, workdir)
    assert report["dir"].endswith("inpainting_pigdm_isotropic") and report["jacobian"] == "isotropic"
    assert report["nfe"] == 4 + 1  # the isotropic Jacobian needs no VJP: one evaluation per step
    assert report["samples_per_image"] == 3 and len(report["posterior_mean_psnr"]) == 8
    with np.load(os.path.join(report["dir"], "restorations.npz")) as f:
        samples, mean, std, truth = f["samples"], f["posterior_mean"], f["posterior_std"], f["ground_truth"]
        assert samples.shape == (8, 3, 8, 8, 1) and int(f["checkpoint_step"]) == report["step"]
        np.testing.assert_array_equal(f["restoration"], samples[:, 0])
    np.testing.assert_allclose(mean, samples.mean(1), atol=1e-6)
    np.testing.assert_allclose(std, samples.std(1), atol=1e-6)
    assert float(np.min(std[:, :, 4:].max(axis=(1, 2, 3)))) > 1e-3  # distinct draws for the missing half
    all_psnr = [np.asarray(images.psnr(samples[:, k], truth)) for k in range(3)]
    np.testing.assert_allclose(report["psnr_mean"], float(np.mean(all_psnr)), atol=1e-4)
    np.testing.assert_allclose(report["posterior_mean_psnr"], np.asarray(images.psnr(mean, truth)), atol=1e-4)
    assert os.path.exists(os.path.join(report["dir"], "posterior_mean.png"))

    config.inverse.samples_per_image = 0
    with pytest.raises(ValueError, match="config.inverse.samples_per_image must be >= 1; got 0"):
        sample_mode.sample(config, workdir)
    config.inverse.samples_per_image, config.inverse.jacobian = 1, "exact"
    with pytest.raises(ValueError, match="unknown config.inverse.jacobian 'exact'; expected 'network' or 'isotropic'"):
        sample_mode.sample(config, workdir)


def test_operators_from_plain_values_and_their_errors():
    shape = (8, 8, 1)
    op = inverse.make_operator("inpainting", shape, mask="random", mask_fraction=0.5, seed=3)
    assert op.mask.shape == (1, 8, 8, 1) and 20 <= int(op.mask.sum()) <= 44  # ~half of 64 observed
    half = inverse.make_operator("inpainting", shape).mask
    assert half[0, :4].min() == 1.0 and half[0, 4:].max() == 0.0
    assert inverse.make_operator("super_resolution", shape, factor=4).forward(jnp.ones((2,) + shape)).shape == (
        2,
        2,
        2,
        1,
    )
    assert inverse.make_operator("deblur", shape, blur_sigma=0.8, blur_size=3).size == 3
    rp = inverse.make_operator("random_projection", shape, seed=1)
    assert rp.matrix.shape == (16, 64)
    assert inverse.make_operator("colorization", (8, 8, 3)).channels == 3

    bad = [
        (dict(name="inpaint"), "unknown inverse operator 'inpaint'; expected one of: inpainting, super_resolution"),
        (dict(name="inpainting", mask="box"), "unknown inpainting mask 'box'; expected one of: half, random"),
        (dict(name="inpainting", mask="random", mask_fraction=1.5), r"mask_fraction must be in \[0, 1\); got 1.5"),
        (dict(name="super_resolution", factor=3), "factor 3 must be a positive int dividing the image size 8x8"),
        (dict(name="deblur", blur_size=4), "blur_size must be a positive odd int; got 4"),
        (dict(name="deblur", blur_sigma=0.0), "blur_sigma must be > 0 pixels; got 0.0"),
        (dict(name="colorization"), r"'colorization' needs 3 colour channels; got data shape \(8, 8, 1\)"),
        (dict(name="random_projection", num_measurements=65), r"num_measurements must be in 1..64 \(D\)"),
    ]
    for kwargs, message in bad:
        name = kwargs.pop("name")
        with pytest.raises(ValueError, match=message):
            inverse.make_operator(name, shape, **kwargs)
    with pytest.raises(
        ValueError, match=r"operator 'super_resolution' needs image data \(H, W, C\); got data shape \(2,\)"
    ):
        inverse.make_operator("super_resolution", (2,))

    config = load_config("digits_inverse", "smoke")
    config.inverse.operator = "superres"
    with pytest.raises(
        ValueError, match="unknown config.inverse.operator 'superres'; expected one of: none, inpainting"
    ):
        build.operator_from_config(config)
    config = load_config("digits_inverse", "smoke")
    config.inverse.method = "ddrm"
    with pytest.raises(
        ValueError, match="unknown config.inverse.method 'ddrm'; expected one of: replacement, dps, pigdm"
    ):
        build.posterior_settings(config)
    config.inverse.method, config.inverse.weighting = "dps", "l1"
    with pytest.raises(ValueError, match="unknown config.inverse.weighting 'l1'"):
        build.posterior_settings(config)
    config.inverse.weighting, config.inverse.sigma_y = "gaussian", -0.1
    with pytest.raises(ValueError, match="config.inverse.sigma_y must be >= 0; got -0.1"):
        build.posterior_settings(config)
    config = load_config("digits_inverse", "smoke")
    assert build.inverse_operator_name(load_config("digits_vp", "smoke")) == "none"
    config.sampling.parallel_window = 4
    with pytest.raises(ValueError, match="parallel_window > 0 .* set it to 0 for config.inverse.operator"):
        build.make_restore_fn(config, build.make_sde(config), None, None, build.operator_from_config(config))


def test_paradigms_from_the_config_matches_the_sequential_sampler():
    config = load_config("digits_inverse", "paradigms")
    config.sampling.steps, config.sampling.noise_removal, config.sampling.eta = 40, True, 0.0
    assert build.parallel_settings(config) == (8, 1e-3)
    vp = sde_lib.VPSDE()
    gm = GaussianMixture(np.linspace(-1.0, 1.0, 16)[None], np.linspace(0.2, 1.0, 16)[None])
    score_fn = gm.score_fn(vp)
    shape, key = (8, 16), jax.random.key(0)
    par = build.sampler_from_config(config, vp, shape, with_rounds=True)
    config.sampling.parallel_window = 0
    seq = build.sampler_from_config(config, vp, shape, with_rounds=True)
    x_ref, nfe_ref, rounds_ref = seq(key, score_fn)
    assert int(nfe_ref) == int(rounds_ref) == 40 + 1  # sequential: every evaluation waits on the last
    x, nfe, rounds = par(key, score_fn)  # the same prior draw and noise from the same key
    print(f"paradigms W=8 tol=1e-3: rounds {int(rounds)} (steps 40 + 1), nfe {int(nfe)}")
    assert int(rounds) < 30 and int(nfe) == 8 * (int(rounds) - 1) + 1
    assert float(jnp.max(jnp.abs(x - x_ref))) < 1e-2
    config.sampling.parallel_window, config.sampling.parallel_tol = 8, 0.0
    x0, _, _ = build.sampler_from_config(config, vp, shape, with_rounds=True)(key, score_fn)
    np.testing.assert_allclose(np.asarray(x0), np.asarray(x_ref), atol=1e-5)  # tol 0: the sequential answer

    config.sampling.method = "pc"
    with pytest.raises(
        ValueError, match="parallel_window=8 \\(ParaDiGMS\\) needs config.sampling.method='ddim'; got 'pc'"
    ):
        build.parallel_settings(config)
    config.sampling.method, config.sampling.step_capacity = "ddim", 64
    with pytest.raises(ValueError, match="step_capacity=64 pads the sequential sampler's grid"):
        build.parallel_settings(config)
    config.sampling.step_capacity, config.sampling.parallel_window = 0, -1
    with pytest.raises(ValueError, match="parallel_window=-1 / parallel_tol=0.0 must be >= 0"):
        build.parallel_settings(config)


def test_sample_mode_reports_paradigms_rounds(tmp_path):
    workdir = str(tmp_path / "run")
    config = load_config("digits_inverse", "paradigms,smoke")
    config.sampling.steps = 6
    _checkpoint(workdir, config)
    result = sample_mode.sample(config, workdir)
    assert result["num_samples"] == 8 and os.path.exists(os.path.join(result["dir"], "samples_0.npz"))
    assert 1 < result["rounds"] <= 6 + 1 and result["nfe"] == 8 * (result["rounds"] - 1) + 1
