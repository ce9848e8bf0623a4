"""Latent diffusion end to end on the digits smoke configs: ``--mode=train_autoencoder`` through the CLI (metrics,
record, the stored scale factor), its exact resume and 1-vs-8-device parity, and a latent score model on top of
it (training lowers its loss, the sample mode writes decoded images, the likelihood report has every term)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import build
from scoresde import data as data_lib
from scoresde.latent import space as latent_space
from scoresde.modes import train
from scoresde.modes.likelihood import likelihood
from scoresde.modes.sample import sample
from scoresde.modes.train_autoencoder import train_autoencoder
from scoresde.runlog import read_metrics

from conftest import REPO, cli_env, load_config


@pytest.fixture(scope="module")
def ae_workdir(tmp_path_factory):
    """A 3-step smoke autoencoder trained through the CLI."""
    workdir = str(tmp_path_factory.mktemp("ae"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "scoresde.main",
            "--config=configs/digits_ae.py:smoke",
            f"--workdir={workdir}",
            "--mode=train_autoencoder",
            "--config.autoencoder.n_iters=3",
        ],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "autoencoder trained to step 3" in proc.stderr and "autoencoder.json" in proc.stderr
    return workdir


def _ldm_config(ae_workdir, name="digits_ldm", **training):
    config = load_config(name, "smoke")
    config.latent.autoencoder_workdir = ae_workdir
    for k, v in training.items():
        config.training[k] = v
    return config


def test_train_autoencoder_cli_metrics_record_and_scale(ae_workdir):
    records = read_metrics(ae_workdir)
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        for key in ("loss", "reconstruction", "kl", "psnr", "grad_norm"):
            assert np.isfinite(r[key]), (key, r)
    assert "eval_psnr" in records[1] and "eval_reconstruction" in records[1]  # eval_freq=2
    assert os.path.exists(os.path.join(ae_workdir, "samples", "recon_00000002.png"))
    record = latent_space.read_autoencoder_record(ae_workdir)
    assert record["step"] == 3 and record["image_shape"] == [16, 16, 1] and record["latent_shape"] == [8, 8, 2]
    assert record["decoder_std"] > 0 and np.isfinite(record["eval_psnr"])
    # The stored scale factor is 1 / std of the posterior means of the first scale_num_examples training images.
    config = _ldm_config(ae_workdir)
    space = build.load_latent_space(config)
    x = next(
        data_lib.get_dataset(config, split="train", batch_size=record["num_examples"], shuffle=False, repeat=False)
    )["image"]
    mean, _ = jax.jit(space.encoder_fn)(jnp.asarray(x))
    assert record["num_examples"] == 16
    assert float(jnp.std(mean)) * space.scale_factor == pytest.approx(1.0, rel=1e-4)
    assert build.model_data_shape(config) == (8, 8, 2)


@pytest.mark.slow  # over 20 s on 2 cores: run with -m slow
def test_train_autoencoder_with_the_patch_discriminator(tmp_path):
    """The ``disc`` variant through the mode: the adversarial term and the discriminator switch on at
    ``disc_start``, both finite, and the run ends with its record (the crash this test was written for: the
    optional ``disc`` attribute was first assigned None, which NNX then refused to replace by a module)."""
    config = load_config("digits_ae", "smoke,disc")
    a = config.autoencoder
    a.n_iters, a.disc_start, a.eval_freq, a.snapshot_freq = 4, 2, 4, 4
    workdir = str(tmp_path)
    train_autoencoder(config, workdir)
    records = read_metrics(workdir)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for r in records:
        for key in ("generator", "adversarial_weight", "disc_loss"):
            assert np.isfinite(r[key]), (key, r)
    # off before disc_start (steps 0 and 1 ran as records 1 and 2), on from it
    assert records[0]["adversarial_weight"] == 0.0 and records[0]["disc_loss"] == 0.0
    assert records[2]["adversarial_weight"] > 0.0 and records[2]["disc_loss"] > 0.0
    record = latent_space.read_autoencoder_record(workdir)
    assert record["step"] == 4 and np.isfinite(record["scale_factor"])


def test_latent_config_errors_name_the_problem(ae_workdir, tmp_path):
    config = _ldm_config(str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="train the autoencoder first"):
        build.model_data_shape(config)
    config = _ldm_config(ae_workdir)
    config.data.image_size = 32
    with pytest.raises(ValueError, match=r"trained on images of shape \[16, 16, 1\].*\[32, 32, 1\]"):
        build.model_data_shape(config)


@pytest.fixture(scope="module")
def ldm_workdir(ae_workdir, tmp_path_factory):
    """A smoke latent score model trained on the smoke autoencoder (shared: its training is most of the cost)."""
    workdir = str(tmp_path_factory.mktemp("ldm"))
    train.train(_ldm_config(ae_workdir, snapshot_sampling=False), workdir)
    return workdir


def test_latent_sample_mode_writes_decoded_images(ae_workdir, ldm_workdir, tmp_path):
    import shutil

    config = _ldm_config(ae_workdir, snapshot_sampling=False)
    workdir = str(tmp_path / "run")
    shutil.copytree(ldm_workdir, workdir)
    result = sample(config, workdir)
    assert result["nfe"] == config.model.num_scales
    with np.load(os.path.join(workdir, "samples", "samples_0.npz")) as f:
        s = f["samples"]
    # decoded: the pixel shape of the data (16x16x1), not the 8x8x2 latent the model samples
    assert s.dtype == np.uint8 and s.shape == (config.eval.sample_batch_size, 16, 16, 1)
    assert os.path.exists(os.path.join(workdir, "samples", "samples_0.png"))


@pytest.mark.slow  # about 50 s on 2 cores; the pixel-space classifier path is a default test
def test_latent_classifier_trains_on_latents_and_guides_the_latent_sampler(ae_workdir, tmp_path):
    config = load_config("digits_ldm_cond", "smoke,classifier")
    config.latent.autoencoder_workdir = ae_workdir
    config.training.snapshot_sampling = False
    workdir = str(tmp_path)
    train.train(config, workdir)
    from scoresde.modes.train_classifier import train_classifier

    out = train_classifier(config, workdir)
    assert out["step"] == 2 and set(out["test_accuracy"]) == {"t=0.001", "t=0.25", "t=0.5"}
    clf, _ = build.load_classifier(workdir, config)
    latent_shape = build.model_data_shape(config)
    assert latent_shape != data_lib.data_shape(config)  # 8x8x2 latents, not 16x16x1 pixels
    logits = clf(jnp.zeros((2,) + latent_shape), jnp.ones((2,)))
    assert logits.shape == (2, 10)
    result = sample(config, workdir)
    with np.load(os.path.join(workdir, "samples", "samples_0.npz")) as f:
        s = f["samples"]
    assert result["num_samples"] == 10 and s.shape == (10, 16, 16, 1) and s.dtype == np.uint8


@pytest.mark.slow  # about 60 s on 2 cores; the pixel likelihood resume is a default test (test_mode_likelihood)
def test_latent_likelihood_resumes_to_the_uninterrupted_numbers(ae_workdir, ldm_workdir, tmp_path):
    """Preempted after one of the (repeat, batch) units, the latent likelihood resumes and ends equal (#13's rule)."""
    import shutil

    config = _ldm_config(ae_workdir, snapshot_sampling=False)
    config.eval.bpd_num_repeats, config.eval.num_eval_batches, config.eval.bpd_batch_size = 2, 2, 8
    config.eval.bpd_rtol = config.eval.bpd_atol = 1e-2
    full, resumed = str(tmp_path / "full"), str(tmp_path / "resumed")
    shutil.copytree(ldm_workdir, full)
    shutil.copytree(ldm_workdir, resumed)
    report = likelihood(config, full)
    assert report["N"] == 16 and report["num_repeats"] == 2 and report["batches_this_session"] == 4

    assert likelihood(config, resumed, stop_after=1) is None
    partial = os.path.join(resumed, "likelihood", "bpd_test_latent_partial.npz")
    with np.load(partial) as f:
        assert f["done"].sum() == 1 and json.loads(str(f["settings"]))["autoencoder_step"] == 3
    again = likelihood(config, resumed)
    assert again["batches_this_session"] == 3
    for key in ("mean_bpd", "stderr", "terms_bpd", "latent_nll_bpd", "mean_nfe"):
        assert again[key] == report[key], key
    with open(os.path.join(resumed, "likelihood", "bpd_test_latent.json")) as f:
        assert json.load(f)["mean_bpd"] == report["mean_bpd"]

    config.eval.bpd_rtol = 1e-4  # other settings: the partial results are not mixed in
    with pytest.raises(ValueError, match="bpd_test_latent_partial.npz was written with settings"):
        likelihood(config, resumed, stop_after=1)


@pytest.mark.slow
def test_train_autoencoder_resumes_exactly(tmp_path):
    config = load_config("digits_ae", "smoke")
    config.autoencoder.n_iters = 4
    config.autoencoder.snapshot_freq = 2
    full = train_autoencoder(config, str(tmp_path / "full"))
    config.autoencoder.n_iters = 2
    train_autoencoder(config, str(tmp_path / "split"))
    config.autoencoder.n_iters = 4
    resumed = train_autoencoder(config, str(tmp_path / "split"))
    a, b = read_metrics(str(tmp_path / "full")), read_metrics(str(tmp_path / "split"))
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for key in ("loss", "reconstruction", "kl", "psnr"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    assert len({r["loss"] for r in a}) == 4  # training changed something
    assert resumed["scale_factor"] == full["scale_factor"]


PARITY = r"""
import json, sys
import jax
jax.config.update("jax_numpy_rank_promotion", "raise")
from scoresde import build
from scoresde.modes.train_autoencoder import train_autoencoder
from scoresde.runlog import read_metrics
config = build.load_config("configs/digits_ae.py:smoke")
config.autoencoder.n_iters = 3
config.autoencoder.batch_size = 16
out = train_autoencoder(config, sys.argv[1])
print("RESULT " + json.dumps({"devices": jax.device_count(), "losses": [r["loss"] for r in read_metrics(sys.argv[1])],
                              "scale_factor": out["scale_factor"]}))
"""


def _parity_run(workdir, devices):
    env = cli_env(devices)
    proc = subprocess.run(
        [sys.executable, "-c", PARITY, workdir], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1][len("RESULT ") :])


@pytest.mark.slow
def test_train_autoencoder_eight_devices_match_one(tmp_path):
    one, eight = _parity_run(str(tmp_path / "one"), 1), _parity_run(str(tmp_path / "eight"), 8)
    assert one["devices"] == 1 and eight["devices"] == 8
    assert len(set(one["losses"])) == 3
    np.testing.assert_allclose(eight["losses"], one["losses"], rtol=1e-5)
    assert eight["scale_factor"] == pytest.approx(one["scale_factor"], rel=1e-5)


@pytest.mark.slow
def test_latent_model_lowers_its_loss_and_reports_likelihood_terms(ae_workdir, tmp_path):
    config = _ldm_config(
        ae_workdir,
        n_iters=60,
        batch_size=32,
        log_freq=1,
        eval_freq=1000,
        snapshot_freq=1000,
        snapshot_freq_for_preemption=1000,
        snapshot_sampling=False,
    )
    config.optim.lr = 2e-3
    workdir = str(tmp_path)
    train.train(config, workdir)
    losses = [r["loss"] for r in read_metrics(workdir)]
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    print(f"latent DSM loss: first 10 steps {first:.4f}, last 10 steps {last:.4f}")
    assert last < 0.8 * first, (first, last)

    config.eval.bpd_num_repeats = 1
    report = likelihood(config, workdir)
    terms = report["terms_bpd"]
    assert set(terms) == {"reconstruction_bpd", "log_q_bpd", "prior_bpd", "offset_bpd"}
    assert report["mean_bpd"] == pytest.approx(sum(terms.values()), rel=1e-5)
    assert terms["offset_bpd"] == pytest.approx(7.0, abs=1e-4)  # 8 bits, centred scaler 2u - 1: 8 - log2(2)
    assert np.isfinite(report["latent_nll_bpd"]) and report["N"] == config.eval.batch_size
    assert os.path.exists(os.path.join(workdir, "likelihood", "bpd_test_latent.json"))


@pytest.mark.parametrize("name", ["digits_ae", "digits_ldm", "digits_ldm_cond", "cifar10_ae", "cifar10_ldm"])
def test_latent_configs_have_a_command_and_a_smoke_variant(name):
    from conftest import config_module

    module = config_module(name)
    assert f"python -m scoresde.main --config=configs/{name}.py" in module.__doc__
    config, smoke = module.get_config(), module.get_config("smoke")
    assert smoke.training.n_iters <= 3 and smoke.training.batch_size <= 64
    if name.endswith("_ae"):
        assert config.autoencoder.f in (1, 2, 4, 8) and smoke.autoencoder.n_iters <= 3
        assert not config.latent.autoencoder_workdir
    else:
        assert config.latent.autoencoder_workdir
        assert config.latent.use_posterior_mean == (name != "cifar10_ldm")  # cifar10_ldm: LDM's posterior samples
    if name == "digits_ldm_cond":
        assert config.model.num_classes == 10 and config.training.p_uncond > 0 and config.sampling.guidance == "cfg"
