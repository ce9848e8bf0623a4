"""Checkpoints: exact resume after SIGTERM, corrupt checkpoints skipped, model-only import round trip."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx

from scoresde import build, checkpointing
from scoresde.modes import train
from scoresde.runlog import read_metrics

from conftest import cli_env, load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def toy_config(n_iters):
    config = load_config("toy2d_vp", "smoke")
    config.training.n_iters = n_iters
    config.training.snapshot_sampling = False
    config.training.eval_freq = 0
    config.training.snapshot_freq_for_preemption = 10**6
    return config


N_ITERS = 300


@pytest.mark.slow  # over 20 s on 2 cores: run with -m slow
def test_sigterm_then_resume_gives_identical_losses(tmp_path):
    workdir = str(tmp_path / "killed")
    cmd = [
        sys.executable,
        "-m",
        "scoresde.main",
        "--config=configs/toy2d_vp.py:smoke",
        f"--workdir={workdir}",
        f"--config.training.n_iters={N_ITERS}",
        "--config.training.snapshot_sampling=False",
        "--config.training.eval_freq=0",
        "--config.training.snapshot_freq=100000",
        "--config.training.snapshot_freq_for_preemption=100000",
    ]
    env = cli_env()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(metrics) and sum(1 for _ in open(metrics)) >= 20:
            break
        time.sleep(0.05)
    t_kill = time.time()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert time.time() - t_kill < 30, "SIGTERM should save and exit within seconds"
    assert proc.returncode == 143, err[-3000:]
    saved = checkpointing.Checkpointer(workdir, read_only=True).all_steps()
    assert len(saved) == 1 and 20 <= saved[0] < N_ITERS  # only the preemption checkpoint
    resumed = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed" in resumed.stderr

    train.train(toy_config(N_ITERS), str(tmp_path / "straight"))
    a, b = read_metrics(workdir), read_metrics(str(tmp_path / "straight"))
    assert [r["step"] for r in a] == list(range(1, N_ITERS + 1))  # no duplicated or missing steps
    assert [r["loss"] for r in a] == [r["loss"] for r in b]  # bitwise identical, before and after the kill


def _corrupt(step_dir):
    for f in glob.glob(os.path.join(step_dir, "*", "**", "*"), recursive=True):
        if os.path.isfile(f) and ("ocdbt" in f or "/d/" in f):
            with open(f, "wb") as fh:
                fh.write(b"garbage")


def test_corrupt_checkpoint_is_skipped_with_a_warning(tmp_path, caplog):
    workdir = str(tmp_path / "run")
    config = toy_config(3)
    config.training.snapshot_freq_for_preemption = 1
    train.train(config, workdir)
    ckpt_dir = checkpointing.checkpoint_dir(workdir)
    assert sorted(int(s) for s in os.listdir(ckpt_dir) if s.isdigit()) == [1, 2, 3]
    _corrupt(os.path.join(ckpt_dir, "3"))
    model, step = build.load_model(workdir, config)
    assert step == 2
    assert any("skipping checkpoint" in r.getMessage() and "/3" in r.getMessage() for r in caplog.records)
    assert os.path.isdir(os.path.join(ckpt_dir, "3"))  # a reader renames nothing: read-only
    # training resumes from step 2 and redoes step 3; the writer moves the unreadable one aside
    config.training.n_iters = 4
    train.train(config, workdir)
    assert os.path.isdir(os.path.join(ckpt_dir, "corrupt_3"))
    assert [r["step"] for r in read_metrics(workdir)] == [1, 2, 3, 4]

    for s in os.listdir(ckpt_dir):
        if s.isdigit():
            _corrupt(os.path.join(ckpt_dir, s))
    with pytest.raises(checkpointing.CorruptCheckpointError, match="could be loaded"):
        build.load_model(workdir, config)
    with pytest.raises(checkpointing.CorruptCheckpointError):
        train.train(config, workdir)


def test_model_checkpoint_round_trip_and_fresh_optimizer(tmp_path):
    config = toy_config(2)
    model = build.build_model(config, seed=3)
    params = nnx.state(model, nnx.Param)
    ema = jax.tree.map(lambda x: x + 1.0, params)
    checkpointing.save_model_checkpoint(str(tmp_path), params=params, ema_params=ema, step=7, config=config)
    loaded, step = build.load_model(str(tmp_path), config)
    assert step == 7
    for a, b in zip(jax.tree.leaves(nnx.state(loaded, nnx.Param)), jax.tree.leaves(ema)):
        np.testing.assert_array_equal(a, b)
    raw, _ = build.load_model(str(tmp_path), config, ema=False)
    for a, b in zip(jax.tree.leaves(nnx.state(raw, nnx.Param)), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    with open(os.path.join(tmp_path, "checkpoints", "7", "meta", "metadata")) as f:
        assert json.load(f)["config"]["model"]["name"] == "mlp"
    # an imported checkpoint has no optimizer state: training continues from it with a fresh optimizer
    config.training.n_iters = 9
    out = train.train(config, str(tmp_path))
    assert out["step"] == 9 and np.isfinite(out["loss"])
    assert [r["step"] for r in read_metrics(str(tmp_path))] == [8, 9]


def test_load_model_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint found"):
        build.load_model(str(tmp_path), toy_config(1))


def _flip_a_value_byte(step_dir, item, value):
    """Flips the exponent byte of the first element of ``value`` in every stored copy of its raw float32 bytes
    in ``item``'s data: a single-byte storage fault that decodes without error."""
    raw = np.asarray(value, np.float32).tobytes()[:64]  # the codec splits a long raw run into blocks
    flipped = 0
    for f in glob.glob(os.path.join(step_dir, item, "**", "d", "*"), recursive=True):
        with open(f, "rb") as fh:
            data = bytearray(fh.read())
        at = data.find(raw)
        if at >= 0:
            data[at + 3] ^= 0x7F
            with open(f, "wb") as fh:
                fh.write(bytes(data))
            flipped += 1
    assert flipped, f"no raw copy of the value in {step_dir}/{item}"


def test_a_flipped_byte_is_a_skipped_checkpoint_never_nan(tmp_path, caplog):
    workdir = str(tmp_path / "run")
    config = toy_config(2)
    config.model.hidden = 256  # arrays too large to sit inline in orbax's (checksummed) index nodes
    model = build.build_model(config, seed=0)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    checkpointing.save_model_checkpoint(workdir, params=params, ema_params=params, step=1, config=config)
    # step 2 holds random bits (incompressible, so stored raw in a data file, where one flipped byte decodes to a
    # wrong number rather than failing in the codec)
    rng = np.random.default_rng(0)
    noisy = jax.tree.map(lambda x: rng.integers(0, 2**32, size=x.shape, dtype=np.uint32).view(np.float32), params)
    checkpointing.save_model_checkpoint(workdir, params=noisy, ema_params=noisy, step=2, config=config)
    step_2 = os.path.join(checkpointing.checkpoint_dir(workdir), "2")
    _flip_a_value_byte(step_2, "ema_params", noisy["hidden"][1]["kernel"])
    loaded, step = build.load_model(workdir, config)
    assert step == 1  # the previous complete checkpoint, with a warning naming the damage
    for a, b in zip(jax.tree.leaves(nnx.to_pure_dict(nnx.state(loaded, nnx.Param))), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    assert any(
        "/2" in r.getMessage() and "'ema_params' is corrupt" in r.getMessage() and "sha256" in r.getMessage()
        for r in caplog.records
    )

    _flip_a_value_byte(step_2, "params", noisy["hidden"][1]["kernel"])
    caplog.clear()
    with caplog.at_level("INFO"):
        train.train(config, workdir)  # the trainer resumes from step 1, not from damaged parameters
    assert "at step 1" in caplog.text and "'params' is corrupt" in caplog.text
    assert [r["step"] for r in read_metrics(workdir)] == [2]


def test_a_checkpoint_deleted_while_being_read_sends_the_reader_to_the_newer_one(tmp_path, caplog):
    """A reader lists [1]; the trainer then finishes 2 and its retention deletes 1 while the reader reads it."""
    import shutil

    workdir = str(tmp_path / "run")
    config = toy_config(2)
    config.training.snapshot_freq_for_preemption = 1
    train.train(config, workdir)
    ckpt_dir = checkpointing.checkpoint_dir(workdir)
    in_flight = os.path.join(ckpt_dir, "2.orbax-checkpoint-tmp-7")
    os.rename(os.path.join(ckpt_dir, "2"), in_flight)
    reader = checkpointing.Checkpointer(workdir, read_only=True)
    assert reader.all_steps() == [1]
    read = reader._restore_step

    def trainer_moves_on_while_reading(step, *args):
        if step == 1 and os.path.isdir(in_flight):
            os.rename(in_flight, os.path.join(ckpt_dir, "2"))
            shutil.rmtree(os.path.join(ckpt_dir, "1"))
        return read(step, *args)

    reader._restore_step = trainer_moves_on_while_reading
    target = nnx.to_pure_dict(nnx.state(build.build_model(config, seed=0), nnx.Param))
    restored = reader.restore_latest(ema_params=target)
    reader.close()
    assert restored["meta"]["step"] == 2
    assert "checkpoint" in caplog.text and "/1 was deleted while being read" in caplog.text
    assert "could not be loaded" not in caplog.text


def test_a_checkpointer_that_would_keep_no_checkpoint_is_refused(tmp_path):
    with pytest.raises(ValueError, match="max_to_keep=0 would delete every checkpoint"):
        checkpointing.Checkpointer(str(tmp_path), max_to_keep=0)
    assert not os.path.exists(tmp_path / ".lock")
