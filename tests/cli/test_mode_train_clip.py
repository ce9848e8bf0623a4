"""``--mode=train_clip`` end to end: it trains, writes its figures, loads back, resumes (config-checked, exactly) and
gives the same losses on 1 and 8 devices."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from scoresde import build
from scoresde.build.run import ConfigMismatchError
from scoresde.data import captions
from scoresde.runlog import read_metrics

from conftest import REPO, cli_env, load_config


def test_train_clip_writes_figures_loads_back_and_refuses_a_changed_config(tmp_path):
    from scoresde import main as cli

    config = load_config("digits_clip", "smoke")
    workdir = str(tmp_path / "run")
    out = cli.run(config, workdir, "train_clip")
    assert out["step"] == 2
    with open(os.path.join(workdir, "clip", "eval_results.json")) as f:
        figures = json.load(f)["test"]
    assert set(figures) >= {"zero_shot_accuracy", "recall@1", "recall@5"} and figures["num_images"] == 180
    assert 0.0 <= figures["recall@1"] <= figures["recall@5"] <= 1.0
    clip, step, stored = build.load_clip(workdir)
    assert step == 2 and stored.clip.embed_dim == config.clip.embed_dim and not clip.noised
    assert clip.text.max_len == config.data.caption_len == captions.MAX_LEN
    with pytest.raises(FileNotFoundError, match="--mode=train_clip"):
        build.load_clip(workdir, noised=True)
    with config.unlocked():
        config.clip.n_iters = 3
        config.clip.lr = 5e-4
    with pytest.raises(ConfigMismatchError, match="clip.lr"):
        cli.run(config, workdir, "train_clip")


def test_train_clip_needs_caption_batches(tmp_path):
    from scoresde import main as cli

    config = load_config("digits_clip", "smoke")
    with config.unlocked():
        config.data.captions = False
    with pytest.raises(ValueError, match="config.data.captions=True"):
        cli.run(config, str(tmp_path), "train_clip")


def _resume_config(noised):
    config = load_config("digits_clip", "smoke,noised" if noised else "smoke")
    config.clip.n_iters = 4
    config.clip.snapshot_freq = 1  # a checkpoint after every step
    config.training.keep_checkpoints = 10
    return config


@pytest.mark.slow
@pytest.mark.parametrize("noised", [False, True])
def test_killed_run_resumes_exactly(tmp_path, noised):
    """Run 4 steps, drop the checkpoints after step 1 as a kill would, resume: the same losses, bit for bit."""
    from scoresde.modes.train_clip import train_clip

    workdir = str(tmp_path)
    clip_dir = build.clip_dir(workdir, noised)
    train_clip(_resume_config(noised), workdir)
    full = [r["loss"] for r in read_metrics(clip_dir)]
    for step in (2, 3, 4):
        shutil.rmtree(os.path.join(clip_dir, "checkpoints", str(step)))
    train_clip(_resume_config(noised), workdir)
    resumed = read_metrics(clip_dir)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    assert [r["loss"] for r in resumed] == full
    assert len(set(full)) == 4  # training changes something: the comparison is not vacuous


PARITY = r"""
import json, sys
import jax
jax.config.update("jax_numpy_rank_promotion", "raise")
from scoresde import build
from scoresde.modes.train_clip import train_clip
from scoresde.runlog import read_metrics
config = build.load_config("configs/digits_clip.py:smoke,noised")
config.clip.n_iters = 3
out = train_clip(config, sys.argv[1])
losses = [r["loss"] for r in read_metrics(build.clip_dir(sys.argv[1], True))]
print("RESULT " + json.dumps({"devices": jax.device_count(), "losses": losses, "test": out["test"]}))
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
    for t, figures in one["test"].items():
        for k in ("zero_shot_accuracy", "recall@1", "recall@5"):
            assert eight["test"][t][k] == pytest.approx(figures[k], abs=1 / 180)
