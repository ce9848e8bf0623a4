"""A run directory nobody can corrupt: one test per defect of a hostile-user review.

Each test fails on the code before the fix: stale likelihood partials reused, read-only modes deleting a
trainer's in-flight saves, unlocked workdirs, silent resume under another config, stale samples in FID,
NaN pixels, impossible sampler inputs, storage errors that hang, incomplete checkpoints used as resume
points, and unhelpful error messages.
"""

import json
import os
import pickle
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scoresde import build, checkpointing, likelihood, sampling
from scoresde import data as data_lib
from scoresde import sde as sde_lib
from scoresde.modes import likelihood as likelihood_mode
from scoresde.modes import train
from scoresde.modes.fid import evaluate_samples
from scoresde.modes.fid_stats import fid_stats
from scoresde.modes.sample import sample
from scoresde.runlog import read_metrics

from conftest import REPO, cli_env, load_config


def toy_config(n_iters, **training):
    config = load_config("toy2d_vp", "smoke")
    config.training.n_iters = n_iters
    config.training.snapshot_sampling = False
    config.training.eval_freq = 0
    config.training.update(training)
    return config


def _cli(*args, timeout=240):
    env = cli_env()
    return subprocess.run(
        [sys.executable, "-m", "scoresde.main", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# 1. likelihood reported another checkpoint's numbers ------------------------------------------------------


@pytest.mark.slow  # over 20 s on 2 cores: run with -m slow
def test_likelihood_after_more_training_gives_the_new_steps_numbers(tmp_path):
    config = toy_config(2)
    config.eval.bpd_batch_size, config.eval.num_eval_batches, config.eval.bpd_num_repeats = 8, 1, 1
    config.eval.bpd_rtol = config.eval.bpd_atol = 1e-3
    workdir = str(tmp_path / "run")
    train.train(config, workdir)
    first = likelihood_mode.likelihood(config, workdir)
    config.training.n_iters = 30  # more training: another checkpoint
    train.train(config, workdir)
    again = likelihood_mode.likelihood(config, workdir)
    assert first["checkpoint_step"] == 2 and again["checkpoint_step"] == 30
    assert again["batches_this_session"] == 1  # computed afresh, not read from step 2's partial file
    fresh_dir = str(tmp_path / "fresh")
    os.makedirs(fresh_dir)
    os.symlink(os.path.join(workdir, "checkpoints"), os.path.join(fresh_dir, "checkpoints"))
    fresh = likelihood_mode.likelihood(config, fresh_dir)
    assert again["mean_bpd"] == fresh["mean_bpd"] != first["mean_bpd"]


# 2. one writer per workdir; read-only modes touch nothing --------------------------------------------------


@pytest.mark.slow  # over 20 s on 2 cores: run with -m slow
def test_second_trainer_is_refused_and_the_first_is_unharmed(tmp_path):
    workdir = str(tmp_path / "run")
    args = [
        "--config=configs/toy2d_vp.py:smoke",
        f"--workdir={workdir}",
        "--config.training.n_iters=400",
        "--config.training.snapshot_sampling=False",
        "--config.training.eval_freq=0",
        "--config.training.log_freq=1",
    ]
    env = cli_env()
    first = subprocess.Popen(
        [sys.executable, "-m", "scoresde.main", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 180
    while time.time() < deadline and first.poll() is None and not os.path.exists(metrics):
        time.sleep(0.05)
    assert first.poll() is None, "the first trainer should still be running"
    second = _cli(*args)
    assert second.returncode != 0
    assert "is in use by pid" in second.stderr and "Traceback" not in second.stderr
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    steps = [r["step"] for r in read_metrics(workdir)]
    assert steps == list(range(1, 401))  # one run's records, no duplicates


def test_read_only_modes_neither_delete_nor_create_checkpoint_files(tmp_path):
    config = toy_config(2)
    workdir = str(tmp_path / "run")
    train.train(config, workdir)
    # a trainer's save in flight: orbax writes into a temporary directory and renames it when complete
    in_flight = os.path.join(workdir, "checkpoints", "4.orbax-checkpoint-tmp-1234")
    os.makedirs(os.path.join(in_flight, "params"))
    config.eval.num_samples = config.eval.sample_batch_size = 8
    sample(config, workdir)
    build.load_model(workdir, config)
    assert os.path.isdir(in_flight)
    empty = str(tmp_path / "empty")
    os.makedirs(empty)
    with pytest.raises(FileNotFoundError, match="no checkpoint found"):
        sample(config, empty)
    assert not os.path.exists(os.path.join(empty, "checkpoints"))


# 3. resume under another config ------------------------------------------------------------------------------


@pytest.mark.slow  # over 20 s on 2 cores: run with -m slow
def test_resume_with_a_changed_sde_is_refused_and_a_changed_n_iters_is_fine(tmp_path):
    workdir = str(tmp_path / "run")
    train.train(toy_config(2), workdir)
    changed = toy_config(4)
    changed.training.sde = "subvpsde"
    changed.optim.lr = 1e-2
    with pytest.raises(build.ConfigMismatchError) as e:
        train.train(changed, workdir)
    assert "training.sde: checkpoint 'vpsde', now 'subvpsde'" in str(e.value)
    assert "optim.lr" in str(e.value)
    assert train.train(toy_config(4), workdir)["step"] == 4  # n_iters is safe to change
    changed.training.n_iters = 6
    changed.training.allow_config_change = True  # deliberate: fine-tuning
    assert train.train(changed, workdir)["step"] == 6
    record = [r for r in read_metrics(workdir) if "config_change" in r]
    assert len(record) == 1 and record[0]["step"] == 4
    assert {c["field"] for c in record[0]["config_change"]} == {"training.sde", "optim.lr"}


@pytest.mark.slow  # about 40 s on 2 cores; the same check for --mode=train is a default test
def test_distill_reflow_and_autoencoder_resume_under_another_config_are_refused(tmp_path):
    """Every trainer, not only train, checks the stored config on resume."""
    from scoresde.modes.distill import distill
    from scoresde.modes.reflow import reflow_mode
    from scoresde.modes.train_autoencoder import train_autoencoder

    teacher, student = str(tmp_path / "teacher"), str(tmp_path / "cd")
    train.train(toy_config(2), teacher)
    cd = load_config("toy2d_cd", "smoke")
    cd.distill.teacher_workdir, cd.training.snapshot_sampling = teacher, False
    distill(cd, student)
    cd.distill.num_scales = 9
    with pytest.raises(build.ConfigMismatchError, match="distill.num_scales: checkpoint 18, now 9"):
        distill(cd, student)
    cd.distill.num_scales, cd.training.n_iters = 18, 3  # n_iters is safe to change
    assert distill(cd, student)["step"] == 3

    source, flow = str(tmp_path / "source"), str(tmp_path / "reflow")
    rf = load_config("toy2d_reflow", "smoke")
    params = nnx.to_pure_dict(nnx.state(build.get_model(rf, rngs=nnx.Rngs(0)), nnx.Param))
    checkpointing.save_model_checkpoint(source, params=params, ema_params=params, step=1, config=rf)
    rf.reflow.source_workdir, rf.training.snapshot_sampling = source, False
    reflow_mode(rf, flow)
    rf.optim.lr = 0.5
    with pytest.raises(build.ConfigMismatchError, match="optim.lr: checkpoint .*, now 0.5"):
        reflow_mode(rf, flow)

    ae = str(tmp_path / "ae")
    config = load_config("digits_ae", "smoke")
    train_autoencoder(config, ae)
    config.autoencoder.kl_weight = 1.0
    with pytest.raises(build.ConfigMismatchError, match="autoencoder.kl_weight: checkpoint 1e-06, now 1.0"):
        train_autoencoder(config, ae)
    stored = json.loads(load_config("digits_ae", "smoke").to_json_best_effort())
    safe = load_config("digits_ae", "smoke")
    safe.autoencoder.n_iters, safe.autoencoder.eval_freq, safe.training.n_iters = 10, 5, 99  # training.: not its run
    assert build.config_differences(stored, safe, kind="autoencoder") == []


# 4. fid evaluated stale samples ------------------------------------------------------------------------------


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


def test_fid_evaluates_exactly_the_samples_of_the_last_request(tmp_path):
    config = _digits_mlp_config(tmp_path)
    workdir = str(tmp_path / "run")
    model = build.get_model(config, rngs=nnx.Rngs(0))
    p = nnx.state(model, nnx.Param)
    checkpointing.save_model_checkpoint(workdir, params=p, ema_params=p, step=3, config=config)
    fid_stats(config, workdir, feature_fn=_standin_features)
    # an interrupted larger request left three files and its unfinished request.json
    os.makedirs(os.path.join(workdir, "samples"))
    for i in range(3):
        np.savez(
            os.path.join(workdir, "samples", f"samples_{i}.npz"),
            samples=np.zeros((8, 8, 8, 1), np.uint8),
            nfe=np.int64(20),
            request=np.array("old"),
        )
    with pytest.raises(ValueError, match="did not finish"):
        evaluate_samples(config, workdir, feature_fn=_standin_features)
    with open(os.path.join(workdir, "samples", "request.json"), "w") as f:
        json.dump({"request": "old", "files": [f"samples_{i}.npz" for i in range(3)], "complete": False}, f)
    with pytest.raises(ValueError, match="did not finish"):
        evaluate_samples(config, workdir, feature_fn=_standin_features)
    sample(config, workdir)
    report = evaluate_samples(config, workdir, feature_fn=_standin_features)
    assert report["num_samples"] == 8 and report["step"] == 3
    assert sorted(f for f in os.listdir(os.path.join(workdir, "samples")) if f.endswith(".npz")) == ["samples_0.npz"]


def test_fid_fails_on_missing_inception_weights_before_sampling(tmp_path, monkeypatch):
    from scoresde.metrics import weights

    config = _digits_mlp_config(tmp_path)
    monkeypatch.setenv(weights.ENV_OFFLINE, "1")
    monkeypatch.setenv(weights.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.delenv(weights.ENV_WEIGHTS, raising=False)
    workdir = str(tmp_path / "run")
    with pytest.raises(weights.InceptionWeightsError):
        evaluate_samples(config, workdir)
    assert not os.path.exists(os.path.join(workdir, "eval_samples"))


# 5. NaN pixels, 9. unclear data errors ----------------------------------------------------------------------


def _npz_config(path, image_size=4):
    config = load_config("digits_vp", "smoke")
    config.data.dataset, config.data.path = "npz", str(path)
    config.data.image_size, config.data.num_channels = image_size, 1
    return config


def _batches(config):
    return next(data_lib.get_dataset(config, split="train", batch_size=2))


def test_nan_pixels_in_an_npz_are_a_clear_error(tmp_path):
    images = np.random.default_rng(0).uniform(size=(4, 4, 4)).astype(np.float32)
    images[2, 1, 3] = np.nan
    np.savez(tmp_path / "d.npz", images=images)
    with pytest.raises(ValueError, match=r"d\.npz: 1 non-finite pixel value.*image 2 at \(1, 3"):
        _batches(_npz_config(tmp_path / "d.npz"))


def test_malformed_datasets_name_the_file_and_the_problem(tmp_path):
    np.savez(tmp_path / "empty.npz", images=np.zeros((0, 4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"empty\.npz: 'images' has shape \(0, 4, 4\)"):
        _batches(_npz_config(tmp_path / "empty.npz"))
    np.savez(tmp_path / "labels.npz", images=np.zeros((4, 4, 4), np.uint8), labels=np.zeros(3, np.int64))
    with pytest.raises(ValueError, match=r"labels\.npz: 'labels' has shape \(3,\).*expected 4 integer labels"):
        _batches(_npz_config(tmp_path / "labels.npz"))
    np.savez(tmp_path / "objects.npz", images=np.array([{"a": 1}] * 4, dtype=object))
    with pytest.raises(ValueError, match="hold Python objects"):
        _batches(_npz_config(tmp_path / "objects.npz"))
    (tmp_path / "notnpz.npz").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(ValueError, match="is not a numpy .npz: it is a Python pickle"):
        _batches(_npz_config(tmp_path / "notnpz.npz"))
    folder = tmp_path / "images" / "cls"
    folder.mkdir(parents=True)
    from PIL import Image

    Image.fromarray(np.zeros((4, 4), np.uint8)).save(folder / "ok.png")
    (folder / "broken.png").write_bytes(b"not a png")
    config = _npz_config(tmp_path / "images")
    config.data.dataset = "folder"
    with pytest.raises(ValueError, match=r"cannot read image '.*broken\.png'"):
        _batches(config)
    with pytest.raises(ValueError, match="image_size=0 .* must be positive"):
        _batches(_npz_config(tmp_path / "labels.npz", image_size=0))


def test_tfds_config_without_the_extra_says_what_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorflow(name, *args, **kwargs):
        if name.split(".")[0] in ("tensorflow", "tensorflow_datasets"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorflow)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'scoresde\[tfds\]'"):
        data_lib.get_dataset(load_config("cifar10_vp", "smoke"), split="train", batch_size=2)


# 6. impossible inputs to the Python API ----------------------------------------------------------------------

VP = sde_lib.VPSDE()


def _score(x, t):
    return -x


def test_sampler_eps_outside_zero_T_is_an_error():
    for eps in (-0.1, 0.0, 1.0, 2.0):
        with pytest.raises(ValueError, match=f"eps={eps:g} must lie in \\(0, T=1\\)"):
            sampling.sample(_score, VP, (4, 2), jax.random.key(0), method="ddim", steps=4, eps=eps)


def test_score_of_the_wrong_shape_is_an_error_at_trace_time():
    with pytest.raises(ValueError, match=r"returns shape \(4, 1\) for a state of shape \(4, 2\)"):
        sampling.sample(lambda x, t: -x[:, :1], VP, (4, 2), jax.random.key(0), method="dpm_solver++", steps=4)
    with pytest.raises(ValueError, match=r"returns shape \(1, 1\) for a state of shape \(1, 2\)"):  # per example
        likelihood.log_likelihood(lambda x, t: -x[:, :1], VP, jnp.zeros((4, 2)), jax.random.key(0))


def test_bits_per_dim_refuses_data_outside_unit_interval():
    x = np.random.default_rng(0).integers(0, 256, (2, 4)).astype(np.float32)
    for data, hint in ((x, "x / 255"), (x / 127.5 - 1.0, r"\(x \+ 1\) / 2")):
        with pytest.raises(ValueError, match=f"8-bit data in \\[0, 1\\].*{hint}"):
            likelihood.bits_per_dim(_score, VP, data, jax.random.key(0))


# 7. storage errors: fail fast, one message, no hang ----------------------------------------------------------


def _mount_tmpfs(path, options):
    os.makedirs(path, exist_ok=True)
    return (
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode == 0
    )


@pytest.mark.parametrize("kind", ["read_only", "disk_full"])
def test_storage_errors_exit_within_seconds_with_one_message(tmp_path, kind):
    workdir = tmp_path / "run"
    target = workdir / "checkpoints"
    options = "ro,size=1m" if kind == "read_only" else "size=64k"
    if not _mount_tmpfs(target, options):
        pytest.skip("mounting a tmpfs needs root (CI and this machine have it)")
    try:
        t0 = time.time()
        out = _cli(
            "--config=configs/toy2d_vp.py:smoke",
            f"--workdir={workdir}",
            "--config.training.n_iters=50",
            "--config.model.hidden=256",
            "--config.training.snapshot_freq_for_preemption=10",
            "--config.training.snapshot_sampling=False",
            "--config.training.eval_freq=0",
            timeout=200,
        )
        elapsed = time.time() - t0
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)
    assert out.returncode == 1, out.stderr[-2000:]
    assert elapsed < 120
    errors = [ln.strip() for ln in out.stderr.splitlines() if ln.strip().startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    if kind == "read_only":
        assert "checkpoints' is not writable" in errors[0]
    else:
        assert "saving checkpoint" in errors[0] and "last complete checkpoint" in errors[0]


# 8. a checkpoint without optimizer state is not a resume point ----------------------------------------------


def test_training_checkpoint_without_optimizer_state_is_skipped(tmp_path, caplog):
    import shutil

    workdir = str(tmp_path / "run")
    train.train(toy_config(4, snapshot_freq_for_preemption=2, keep_checkpoints=5), workdir)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "4", "opt_state"))
    with caplog.at_level("INFO"):
        out = train.train(toy_config(6, snapshot_freq_for_preemption=2, keep_checkpoints=5), workdir)
    assert out["step"] == 6
    assert "resumed from" in caplog.text and "at step 2" in caplog.text
    assert "item 'opt_state' missing" in caplog.text
    assert [r["step"] for r in read_metrics(workdir)] == [1, 2, 3, 4, 5, 6]


# 9. a shape mismatch says what differs and does not advise deleting anything ---------------------------------


def test_shape_mismatch_on_resume_names_the_parameter_and_both_shapes(tmp_path):
    workdir = str(tmp_path / "run")
    train.train(toy_config(2), workdir)
    wider = toy_config(4, allow_config_change=True)
    wider.model.hidden = 48  # the smoke MLP has 32
    with pytest.raises(checkpointing.IncompatibleCheckpointError) as e:
        train.train(wider, workdir)
    msg = str(e.value)
    assert "stored (" in msg and "vs expected (" in msg and "48" in msg
    assert "move" not in msg and "delete" not in msg
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]  # nothing moved aside


def test_quiet_stderr_drops_only_the_closed_event_loop_noise():
    """The noise reaches stderr as "Exception ignored" reports (from a callback on a closed loop); after the filter
    is flushed (when the error line is printed) it must still be dropped, and any other report kept."""
    script = textwrap.dedent("""
        import sys
        from scoresde import runlog

        class Raises:
            def __init__(self, msg):
                self.msg = msg
            def __del__(self):
                raise RuntimeError(self.msg)

        quiet = runlog.QuietStderr()
        Raises("Event loop is closed")
        print("progress line", file=sys.stderr)
        quiet.flush()
        Raises("Event loop is closed")  # after the pipe is gone
        Raises("something else")
        print("error: the one message", file=sys.stderr)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Event loop is closed" not in out.stderr, out.stderr
    assert "progress line" in out.stderr and "error: the one message" in out.stderr
    assert "RuntimeError: something else" in out.stderr


# 10. values that crashed deep in a run, deleted every checkpoint or did nothing are refused at load ----------


def test_an_out_of_range_value_is_one_line_naming_the_field_before_anything_runs(tmp_path):
    workdir = tmp_path / "run"
    out = _cli("--config=configs/toy2d_vp.py:smoke", f"--workdir={workdir}", "--config.training.log_freq=0")
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "config.training.log_freq=0 (expected an integer >= 1)" in errors[0]
    assert not os.path.exists(workdir / "checkpoints")


def test_a_batch_that_cannot_fit_in_memory_is_refused_naming_the_field(tmp_path):
    from scoresde import training

    config = toy_config(2)
    config.training.batch_size = 10**12  # terabytes of float32 pairs
    with pytest.raises(ValueError, match=r"config.training.batch_size=1000000000000 needs about .* use at most"):
        training.prepare(config, str(tmp_path / "run"))


# 11. a teacher is read, never locked; the teacher's own workdir is not a student's --------------------------


def test_distill_reads_a_teacher_that_is_training_and_refuses_the_teachers_own_workdir(tmp_path):
    from scoresde.modes.distill import distill

    teacher = str(tmp_path / "teacher")
    train.train(toy_config(2), teacher)
    cd = load_config("toy2d_cd", "smoke")
    cd.distill.teacher_workdir, cd.training.snapshot_sampling = teacher, False
    with pytest.raises(ValueError, match="teacher_workdir=.* is the distill workdir itself"):
        distill(cd, teacher)
    holder = checkpointing.WorkdirLock(teacher).acquire()  # the teacher's trainer, still running
    try:
        assert distill(cd, str(tmp_path / "cd"))["step"] == cd.training.n_iters
    finally:
        holder.release()
    assert sorted(os.listdir(os.path.join(teacher, "checkpoints"))) == ["2"]


# 12. another optimizer structure is a config change, not corrupt checkpoints ---------------------------------


def test_switching_gradient_clipping_is_a_config_mismatch_and_allowed_with_a_fresh_optimizer(tmp_path):
    workdir = str(tmp_path / "run")
    train.train(toy_config(2), workdir)  # the smoke optimizer clips (optim.grad_clip=1.0)
    unclipped = toy_config(4)
    unclipped.optim.grad_clip = -1.0  # no clipping stage in the optimizer chain
    with pytest.raises(build.ConfigMismatchError, match=r"optim.grad_clip: checkpoint 1.0, now -1.0"):
        train.train(unclipped, workdir)
    unclipped.training.allow_config_change = True
    assert train.train(unclipped, workdir)["step"] == 4
    record = [r for r in read_metrics(workdir) if "config_change" in r]
    assert len(record) == 1 and record[0]["step"] == 2
    assert [c["field"] for c in record[0]["config_change"]] == ["optim.grad_clip"]
    assert record[0]["optimizer_state"].startswith("fresh: ")
    assert [r["step"] for r in read_metrics(workdir) if "loss" in r] == [1, 2, 3, 4]


def test_a_full_disk_under_the_metrics_file_names_the_last_complete_checkpoint(tmp_path, monkeypatch):
    import errno

    from scoresde import runlog

    write = runlog.MetricsLogger.write

    def full_at_step_3(self, step, metrics):
        if step == 3:
            raise OSError(errno.ENOSPC, "No space left on device", self.path)
        return write(self, step, metrics)

    monkeypatch.setattr(runlog.MetricsLogger, "write", full_at_step_3)
    workdir = str(tmp_path / "run")
    with pytest.raises(OSError, match=r"metrics.jsonl failed: No space left on device; last complete checkpoint: 2 in"):
        train.train(toy_config(5, snapshot_freq_for_preemption=1), workdir)


def test_another_optimizer_structure_with_the_same_config_is_refused_not_dropped(tmp_path, monkeypatch):
    import optax

    workdir = str(tmp_path / "run")
    train.train(toy_config(2), workdir)
    monkeypatch.setattr(build, "optimizer_from_config", lambda config: optax.adam(1e-3))  # e.g. changed code
    config = toy_config(4, allow_config_change=True)
    with pytest.raises(
        checkpointing.IncompatibleCheckpointError, match="optimizer state does not fit .* no config field differs"
    ):
        train.train(config, workdir)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]
