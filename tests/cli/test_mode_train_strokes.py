"""The strokes configs through the run modes: train, sample (another resolution), likelihood; exact resume and
1-vs-8-device parity (slow, run explicitly)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from scoresde.modes import likelihood as likelihood_mode
from scoresde.modes import train
from scoresde.modes.sample import sample
from scoresde.runlog import read_metrics

from conftest import REPO, cli_env, load_config


@pytest.mark.slow
def test_train_sample_at_another_length_and_likelihood(tmp_path):
    config = load_config("strokes_vp_cond", "smoke")
    workdir = str(tmp_path)
    out = train.train(config, workdir)
    assert out["step"] == 2 and not out["preempted"]
    records = read_metrics(workdir)
    assert [r["step"] for r in records] == [1, 2] and all(np.isfinite(r["loss"]) for r in records)

    config.sampling.num_points = 24  # trained on 16 points: ChiroDiff's resolution change
    result = sample(config, workdir)
    assert result["num_samples"] == 10 and result["nfe"] > 0
    with np.load(os.path.join(workdir, "samples", "samples_0.npz")) as f:
        s = f["samples"]
    assert s.dtype == np.float32 and s.shape == (10, 24, 3) and np.all(np.isfinite(s))
    for ext in ("png", "svg"):
        assert os.path.getsize(os.path.join(workdir, "samples", f"samples_0.{ext}")) > 0
    with open(os.path.join(workdir, "samples", "request.json")) as f:
        assert sorted(json.load(f)["visuals"]) == ["samples_0.png", "samples_0.svg"]

    config.sampling.num_points = 0
    config.eval.num_eval_batches = 1
    report = likelihood_mode.likelihood(config, workdir)
    numbers = [v for v in report.values() if isinstance(v, float)]
    assert numbers and all(np.isfinite(v) for v in numbers), report


def test_num_points_on_image_data_is_a_clear_error(tmp_path):
    config = load_config("digits_vp", "smoke")
    config.sampling.num_points = 24  # refused before any checkpoint is read
    with pytest.raises(ValueError, match="num_points=24 changes the length of sequence data"):
        sample(config, str(tmp_path))


def _resume_config():
    config = load_config("strokes_vp_cond", "smoke")
    t = config.training
    t.n_iters, t.snapshot_freq, t.snapshot_freq_for_preemption, t.keep_checkpoints = 4, 4, 1, 10
    t.snapshot_sampling = False
    t.eval_freq = 0
    return config


@pytest.mark.slow
def test_killed_run_resumes_exactly(tmp_path):
    """Run 4 steps, drop the checkpoints after step 1 as a kill would, resume: the same losses, bit for bit."""
    workdir = str(tmp_path)
    train.train(_resume_config(), workdir)
    full = [r["loss"] for r in read_metrics(workdir)]
    for step in (2, 3, 4):
        shutil.rmtree(os.path.join(workdir, "checkpoints", str(step)))
    train.train(_resume_config(), workdir)
    resumed = read_metrics(workdir)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    assert [r["loss"] for r in resumed] == full
    assert len(set(full)) == 4  # training changes something: the comparison is not vacuous


PARITY = r"""
import json, sys
import jax
jax.config.update("jax_numpy_rank_promotion", "raise")
from scoresde import build
from scoresde.modes import train
from scoresde.runlog import read_metrics
config = build.load_config("configs/strokes_vp_cond.py:smoke")
config.training.n_iters = 3
config.training.snapshot_sampling = False
train.train(config, sys.argv[1])
print("RESULT " + json.dumps({"devices": jax.device_count(), "losses": [r["loss"] for r in read_metrics(sys.argv[1])]}))
"""


def _parity_run(workdir, devices):
    env = cli_env(devices)
    proc = subprocess.run(
        [sys.executable, "-c", PARITY, workdir], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


@pytest.mark.slow
def test_eight_devices_match_one_device(tmp_path):
    one = _parity_run(str(tmp_path / "one"), 1)
    eight = _parity_run(str(tmp_path / "eight"), 8)
    assert one["devices"] == 1 and eight["devices"] == 8
    np.testing.assert_allclose(eight["losses"], one["losses"], rtol=1e-5, atol=1e-6)
    assert len(set(one["losses"])) == 3
