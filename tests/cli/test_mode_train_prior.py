"""``--mode=train_prior`` end to end: a smoke CLIP, then the prior on its embedding pairs; exact resume; clear errors."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from scoresde import build

from conftest import cli_env, load_config


@pytest.fixture(scope="module")
def clip_workdir(tmp_path_factory):
    """A smoke CLIP checkpoint as --mode=train_clip writes it (untrained weights do for the wiring)."""
    from scoresde.checkpointing import save_model_checkpoint

    workdir = str(tmp_path_factory.mktemp("clip"))
    config = build.with_defaults(load_config("digits_clip", "smoke"))
    p = nnx.state(build.get_clip(config, rngs=nnx.Rngs(0)), nnx.Param)
    save_model_checkpoint(build.clip_dir(workdir), params=p, ema_params=p, step=2, config=config)
    return workdir


def _config(clip_workdir, n_iters=2):
    config = load_config("digits_unclip", "smoke")
    with config.unlocked():
        config.prior.clip_workdir = clip_workdir
        config.prior.n_iters = n_iters
    return config


def _prior_params(config, workdir):
    model, step = build.load_prior(config, workdir, int(config.clip.embed_dim), ema=False)
    return jax.tree.leaves(nnx.state(model, nnx.Param)), step


@pytest.mark.slow
def test_train_prior_writes_its_run_and_closing_line(clip_workdir, tmp_path, capsys):
    from scoresde import main as cli

    workdir = str(tmp_path / "run")
    out = cli.run(_config(clip_workdir), workdir, "train_prior")
    assert out["step"] == 2 and 0.0 <= out["digit_accuracy"] <= 1.0 and out["test_pairs"] == 180
    with open(os.path.join(workdir, "prior", "eval_results.json")) as f:
        assert json.load(f)["step"] == 2
    err = capsys.readouterr().err
    assert "scoresde train_prior: unCLIP prior over 8-d CLIP image embeddings" in err
    assert "prior trained to step 2" in err and "next: " in err and "--mode=sample" in err


@pytest.mark.slow
def test_train_prior_resumes_exactly(clip_workdir, tmp_path):
    from scoresde import main as cli

    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    cli.run(_config(clip_workdir, 4), straight, "train_prior")
    cli.run(_config(clip_workdir, 2), resumed, "train_prior")
    cli.run(_config(clip_workdir, 4), resumed, "train_prior")
    a, sa = _prior_params(_config(clip_workdir, 4), straight)
    b, sb = _prior_params(_config(clip_workdir, 4), resumed)
    assert sa == sb == 4
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_train_prior_refuses_a_changed_config_and_a_missing_clip(clip_workdir, tmp_path):
    from scoresde import main as cli

    workdir = str(tmp_path / "run")
    cli.run(_config(clip_workdir), workdir, "train_prior")
    changed = _config(clip_workdir, 3)
    with changed.unlocked():
        changed.prior.p_uncond = 0.3
    with pytest.raises(Exception, match="prior.p_uncond"):
        cli.run(changed, workdir, "train_prior")
    empty = _config("")
    with pytest.raises(ValueError, match="config.prior.clip_workdir is empty"):
        cli.run(empty, str(tmp_path / "other"), "train_prior")
    with pytest.raises(FileNotFoundError):
        cli.run(_config(str(tmp_path / "nowhere")), str(tmp_path / "other2"), "train_prior")


PARITY = r"""
import json, sys
import jax
from scoresde import build
from scoresde.modes.train_prior import train_prior
from scoresde.runlog import read_metrics
config = build.load_config("configs/digits_unclip.py:smoke")
config.prior.clip_workdir, config.prior.n_iters = sys.argv[1], 3
train_prior(config, sys.argv[2])
print("RESULT " + json.dumps({"devices": jax.device_count(), "losses": [r["loss"] for r in read_metrics(sys.argv[2] + "/prior")]}))
"""


def _parity_run(clip_workdir, workdir, devices):
    env = cli_env(devices)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run(
        [sys.executable, "-c", PARITY, clip_workdir, workdir], cwd=repo, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1][len("RESULT ") :])


@pytest.mark.slow
def test_train_prior_on_eight_devices_matches_one(clip_workdir, tmp_path):
    one = _parity_run(clip_workdir, str(tmp_path / "one"), 1)
    eight = _parity_run(clip_workdir, str(tmp_path / "eight"), 8)
    assert one["devices"] == 1 and eight["devices"] == 8 and len(one["losses"]) == 3
    np.testing.assert_allclose(eight["losses"], one["losses"], rtol=1e-5, atol=1e-6)
    assert len(set(one["losses"])) == 3  # the updates changed something: the comparison is not vacuous
