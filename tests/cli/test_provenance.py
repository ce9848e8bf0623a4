"""Every result tied to everything that made it; a sample request owns its files.

Each test fails on the code before the fix: ``sample`` deleting files it did not write (or through a symlink),
concurrent requests and FID rounds mixing, request paths escaping ``samples/``, non-finite samples scored as
black images, read-only modes ignoring the checkpoint's config, a latent model or a distilled student silently
using a retrained autoencoder / teacher, likelihood partials and reference statistics of other data, and an
``.npz`` data set without a test split.
"""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from scoresde import build, checkpointing
from scoresde import data as data_lib
from scoresde.latent.space import write_autoencoder_record
from scoresde.metrics import protocol
from scoresde.modes import likelihood as likelihood_mode
from scoresde.modes.fid import evaluate_samples
from scoresde.modes.fid_stats import fid_stats
from scoresde.modes.sample import sample

from conftest import load_config


def _digits_mlp_config(tmp_path):
    config = load_config("digits_vp", "smoke")
    config.model.name = "mlp"
    config.model.num_scales = 20
    config.eval.num_samples = config.eval.sample_batch_size = 8
    config.eval.fid_stats_path = str(tmp_path / "stats.npz")
    config.eval.kid_subset_size = 4
    config.eval.kid_subsets = 2
    return config


def _standin_features(images):
    x = images.reshape(len(images), -1).astype(np.float64) / 255.0
    proj = np.random.default_rng(x.shape[1]).standard_normal((x.shape[1], 6))
    return (x @ proj).astype(np.float32), (x @ proj[:, :4]).astype(np.float32)


def _checkpoint(workdir, config, *, step=3, seed=0, scale=None):
    """A training checkpoint (not a model-only import) of ``config``'s network, written as a trainer does."""
    params = nnx.state(build.get_model(config, rngs=nnx.Rngs(seed)), nnx.Param)
    if scale is not None:
        params = jax.tree.map(lambda a: a * scale, params)
    ckpt = checkpointing.Checkpointer(workdir, async_save=False)
    try:
        ckpt.save(step, params=params, ema_params=params, config=config)
        ckpt.wait()
    finally:
        ckpt.close()
    return params


@pytest.fixture
def digits_run(tmp_path):
    config = _digits_mlp_config(tmp_path)
    workdir = str(tmp_path / "run")
    _checkpoint(workdir, config)
    return config, workdir


# a sample request owns its files ---------------------------------------------------------------------------


def test_sample_deletes_only_the_files_its_previous_request_lists(digits_run, tmp_path):
    config, workdir = digits_run
    out = os.path.join(workdir, "samples")
    os.makedirs(out)
    mine = os.path.join(out, "samples_mine.npz")
    np.savez(mine, samples=np.zeros((2, 8, 8, 1), np.uint8))
    sample(config, workdir)
    sample(config, workdir)
    assert os.path.exists(mine)
    with open(os.path.join(out, protocol.REQUEST_FILE)) as f:
        request = json.load(f)
    assert request["complete"] and request["files"] == ["samples_0.npz"]
    # a file of a name the request would write that no request wrote is the user's: refused, not overwritten
    os.remove(os.path.join(out, protocol.REQUEST_FILE))
    with pytest.raises(ValueError, match="no --mode=sample request wrote"):
        sample(config, workdir)


def test_sample_refuses_a_symlinked_samples_directory(tmp_path):
    config = _digits_mlp_config(tmp_path)
    workdir = str(tmp_path / "run")
    _checkpoint(workdir, config)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    np.savez(elsewhere / "samples_0.npz", samples=np.zeros((2, 8, 8, 1), np.uint8))
    (elsewhere / "samples_0.png").write_bytes(b"x")
    os.symlink(elsewhere, os.path.join(workdir, "samples"))
    with pytest.raises(ValueError, match="is a symlink"):
        sample(config, workdir)
    assert sorted(os.listdir(elsewhere)) == ["samples_0.npz", "samples_0.png"]


def test_request_paths_are_confined_to_samples(digits_run, tmp_path):
    config, workdir = digits_run
    fid_stats(config, workdir, feature_fn=_standin_features)
    outside = tmp_path / "outside.npz"
    np.savez(outside, samples=np.zeros((8, 8, 8, 1), np.uint8))
    out = os.path.join(workdir, "samples")
    os.makedirs(out)
    for name in ("../../outside.npz", str(outside)):
        with open(os.path.join(out, protocol.REQUEST_FILE), "w") as f:
            json.dump({"request": "x", "files": [name], "num_samples": 8}, f)
        with pytest.raises(ValueError, match="plain file names"):
            evaluate_samples(config, workdir, feature_fn=_standin_features)
        with pytest.raises(ValueError, match="plain file names"):
            sample(config, workdir)
    assert outside.exists()


def test_a_second_sample_request_is_refused_while_one_is_written(digits_run):
    config, workdir = digits_run
    out = os.path.join(workdir, "samples")
    os.makedirs(out)
    with protocol.RequestLock(out, what="a request"):
        with pytest.raises(protocol.RequestBusyError, match="being written by pid"):
            sample(config, workdir)
    assert not os.path.exists(os.path.join(out, "samples_0.npz"))


def test_fid_checks_the_request_of_every_file(digits_run):
    config, workdir = digits_run
    fid_stats(config, workdir, feature_fn=_standin_features)
    sample(config, workdir)
    path = os.path.join(workdir, "samples", "samples_0.npz")
    with np.load(path) as f:
        arrays = dict(f)
    # another request's file (NFE 6 instead of 20) under the same name, the manifest unchanged
    np.savez(path, **{**arrays, "request": np.array("another"), "nfe": np.int64(6)})
    with pytest.raises(ValueError, match="belongs to another, not to request"):
        evaluate_samples(config, workdir, feature_fn=_standin_features)


def test_fid_rounds_are_locked_and_each_round_is_checked(digits_run):
    config, workdir = digits_run
    fid_stats(config, workdir, feature_fn=_standin_features)
    first = evaluate_samples(config, workdir, feature_fn=_standin_features)
    rounds = os.path.join(workdir, "eval_samples", "step_3")
    path = os.path.join(rounds, "round_00000.npz")
    # a round written by a run with another sampler (settings.json left as this run's)
    np.savez(path, samples=np.zeros((8, 8, 8, 1), np.uint8), nfe=np.int64(6), settings=np.array("other"))
    again = evaluate_samples(config, workdir, feature_fn=_standin_features)
    assert again["fid"] == pytest.approx(first["fid"], rel=1e-6) and again["nfe"] == first["nfe"]
    assert again["sampling"]["resumed_rounds"] == 0
    with protocol.RequestLock(rounds, what="rounds"):
        with pytest.raises(protocol.RequestBusyError):
            evaluate_samples(config, workdir, feature_fn=_standin_features)


# non-finite outputs and invalid values ---------------------------------------------------------------------


def test_non_finite_samples_are_an_error_not_black_images(tmp_path):
    config = _digits_mlp_config(tmp_path)
    workdir = str(tmp_path / "run")
    _checkpoint(workdir, config, scale=np.nan)
    fid_stats(config, workdir, feature_fn=_standin_features)
    with pytest.raises(FloatingPointError, match="non-finite.*config.sampling.method"):
        sample(config, workdir)
    assert not os.path.exists(os.path.join(workdir, "samples", "samples_0.npz"))
    with pytest.raises(FloatingPointError, match="non-finite"):
        evaluate_samples(config, workdir, feature_fn=_standin_features)


def test_an_ode_out_of_steps_is_an_error_naming_max_steps(digits_run):
    config, workdir = digits_run
    with config.unlocked():
        config.sampling.method, config.sampling.max_steps = "ode", 1
    with pytest.raises(FloatingPointError, match="non-finite.*config.sampling.max_steps=1"):
        sample(config, workdir)
    assert not [f for f in os.listdir(os.path.join(workdir, "samples")) if not f.startswith(".")]


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_guidance_scale_must_be_finite(value):
    config = load_config("toy2d_vp", "smoke")
    config.sampling.guidance_scale = value
    with pytest.raises(ValueError, match="guidance_scale=.* must be a finite number"):
        build.sampling_options(config)


# read-only modes compare the checkpoint's config -----------------------------------------------------------


def test_sample_and_likelihood_refuse_another_sde_unless_allowed(digits_run):
    config, workdir = digits_run
    config.model.beta_max = 5.0
    with pytest.raises(build.ConfigMismatchError, match=r"--mode=sample .*model\.beta_max: checkpoint 20\.0, now 5\.0"):
        sample(config, workdir)
    with pytest.raises(build.ConfigMismatchError, match=r"--mode=likelihood .*model\.beta_max"):
        likelihood_mode.likelihood(config, workdir)
    config.distill.method = "cd"
    with pytest.raises(build.ConfigMismatchError, match=r"distill\.method"):
        sample(config, workdir)
    config.distill.method = ""
    config.training.allow_config_change = True
    assert sample(config, workdir)["num_samples"] == 8
    # what only changes how a checkpoint is used may differ
    config.model.beta_max, config.training.allow_config_change = 20.0, False
    config.sampling.method, config.training.batch_size, config.optim.lr = "ddim", 7, 1e-1
    assert sample(config, workdir)["num_samples"] == 8


def test_likelihood_partial_of_other_data_is_never_reused(tmp_path):
    config = _digits_mlp_config(tmp_path)
    config.eval.bpd_num_repeats, config.eval.bpd_batch_size, config.eval.num_eval_batches = 1, 8, 2
    config.eval.bpd_max_steps = 64
    workdir = str(tmp_path / "run")
    _checkpoint(workdir, config)
    assert likelihood_mode.likelihood(config, workdir, stop_after=1) is None
    config.data.centered = not config.data.centered
    config.training.allow_config_change = True
    with pytest.raises(ValueError, match="written with settings that differ.*config_hash"):
        likelihood_mode.likelihood(config, workdir, stop_after=1)


# reference statistics --------------------------------------------------------------------------------------


def test_fid_refuses_reference_statistics_of_another_extractor_or_dataset(digits_run):
    config, workdir = digits_run
    fid_stats(config, workdir, feature_fn=_standin_features)
    sample(config, workdir)

    def other_features(images):
        return _standin_features(images)

    with pytest.raises(ValueError, match="feature_extractor '_standin_features'.*'other_features'"):
        evaluate_samples(config, workdir, feature_fn=other_features)
    with np.load(config.eval.fid_stats_path) as f:
        stats = dict(f)
    np.savez(config.eval.fid_stats_path, **{**stats, "dataset": np.array("cifar10")})
    with pytest.raises(ValueError, match="dataset 'cifar10'.*'digits'"):
        evaluate_samples(config, workdir, feature_fn=_standin_features)


# the autoencoder of a latent model, the teacher of a student -----------------------------------------------


def test_resume_and_read_adopt_pinned_fields_and_refuse_other_ones():
    config = load_config("toy2d_vp", "smoke")
    stored = json.loads(config.to_json_best_effort())
    stored["latent"]["autoencoder_step"], stored["latent"]["autoencoder_hash"] = 2, "aaaa"
    assert build.check_resume_config(stored, config) == []
    assert (config.latent.autoencoder_step, config.latent.autoencoder_hash) == (2, "aaaa")
    config.latent.autoencoder_step, config.latent.autoencoder_hash = 4, "bbbb"
    with pytest.raises(build.ConfigMismatchError, match=r"latent\.autoencoder_step: checkpoint 2, now 4"):
        build.check_resume_config(stored, config)
    with pytest.raises(build.ConfigMismatchError, match=r"latent\.autoencoder_hash: checkpoint 'aaaa'"):
        build.check_checkpoint_config(stored, config, mode="sample")


def test_a_retrained_autoencoder_is_refused_naming_both_steps(tmp_path):
    config = load_config("digits_vp", "smoke")
    ae = str(tmp_path / "ae")
    os.makedirs(ae)
    write_autoencoder_record(
        ae,
        {
            "step": 4,
            "scale_factor": 0.653,
            "decoder_std": 0.1,
            "image_shape": list(data_lib.data_shape(config)),
            "latent_shape": [4, 4, 4],
            "centered": bool(config.data.centered),
            "autoencoder": {},
        },
    )
    config.latent.autoencoder_workdir = ae
    assert build.model_data_shape(config) == (4, 4, 4)
    config.latent.autoencoder_step = 2  # what the latent model's checkpoint recorded
    with pytest.raises(ValueError, match="at step 2, now step 4"):
        build.model_data_shape(config)


def test_a_teacher_trained_on_is_refused_on_resume(tmp_path):
    teacher_cfg = load_config("toy2d_vp", "smoke")
    teacher = str(tmp_path / "teacher")
    p = nnx.state(build.get_model(teacher_cfg, rngs=nnx.Rngs(0)), nnx.Param)
    checkpointing.save_model_checkpoint(teacher, params=p, ema_params=p, step=3000, config=teacher_cfg)
    config = load_config("toy2d_vp", "smoke")
    config.distill.method, config.distill.teacher_workdir = "cd", teacher
    t = build.load_teacher(config)
    assert config.distill.teacher_step == 3000 and config.distill.teacher_hash == t.params_hash != ""
    stored = json.loads(config.to_json_best_effort())  # what the student's checkpoint records
    p2 = nnx.state(build.get_model(teacher_cfg, rngs=nnx.Rngs(1)), nnx.Param)
    checkpointing.save_model_checkpoint(teacher, params=p2, ema_params=p2, step=3300, config=teacher_cfg)
    with pytest.raises(ValueError, match="at step 3000 .*newest checkpoint is step 3300"):
        build.load_teacher(config)
    resumed = load_config("toy2d_vp", "smoke")
    resumed.distill.method, resumed.distill.teacher_workdir = "cd", teacher
    build.load_teacher(resumed)  # the distill trainer loads the teacher, then resumes
    with pytest.raises(build.ConfigMismatchError, match=r"distill\.teacher_step: checkpoint 3000, now 3300"):
        build.check_resume_config(stored, resumed)


# data sets ------------------------------------------------------------------------------------------------


def test_an_npz_without_test_images_has_no_test_split(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(8, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=images)
    config = load_config("digits_vp", "smoke")
    config.data.dataset, config.data.path = "npz", str(tmp_path / "d.npz")
    next(data_lib.get_dataset(config, split="train", batch_size=4))
    with pytest.raises(ValueError, match="no 'test_images' array"):
        next(data_lib.get_dataset(config, split="test", batch_size=4))
