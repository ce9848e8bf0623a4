"""``--mode=posthoc_ema`` on a real 6-step toy 2-D run that tracks σ_rel 0.05 and 0.10: a tracked σ_rel comes back
exactly, another is the recorded combination of the snapshots, and what it writes is a checkpoint the other modes
load. (The synthesis against a directly tracked EMA is in ``tests/test_posthoc_ema.py``.)"""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from scoresde import build, posthoc_ema
from scoresde.checkpointing import Checkpointer
from scoresde.main import resolve_mode
from scoresde.modes import train
from scoresde.modes.posthoc_ema import output_dir, posthoc_ema_mode

from conftest import load_config


def _config():
    config = load_config("toy2d_vp", "smoke")
    with config.unlocked():
        config.training.n_iters = 6
        config.training.snapshot_freq = 2
        config.training.snapshot_freq_for_preemption = 2
        config.training.snapshot_sampling = False
        config.training.eval_freq = 0
        config.ema.track_sigma_rels = "0.05,0.10"
    return config


def _flat(tree):
    return np.concatenate([np.ravel(np.asarray(a, np.float64)) for a in jax.tree.leaves(nnx.to_pure_dict(tree))])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    config = _config()
    workdir = str(tmp_path_factory.mktemp("phema"))
    train.train(config, workdir)
    return config, workdir


def _stored_profiles(config, workdir, step):
    from scoresde.modes.posthoc_ema import _targets

    params, opt_state = _targets(config)
    ckpt = Checkpointer(workdir, read_only=True)
    try:
        return posthoc_ema.find_power_ema_state(ckpt.restore(step, opt_state=opt_state)["opt_state"])
    finally:
        ckpt.close()


def test_posthoc_ema_reproduces_a_tracked_profile_and_combines_the_snapshots(trained):
    config, workdir = trained
    assert resolve_mode("posthoc_ema") is posthoc_ema_mode
    with config.unlocked():
        config.ema.sigma_rel = "0.10,0.07"
    out = posthoc_ema_mode(config, workdir)
    assert [s for s, _ in out["snapshots"]] == [2, 4, 6] and out["step"] == 6
    with open(out["record"]) as f:
        record = json.load(f)

    # sigma_rel 0.10 at the newest snapshot is the tracked profile itself
    newest = _stored_profiles(config, workdir, 6)
    assert int(newest.count) == 6
    model, step = build.load_model(output_dir(workdir, 0.10), config)
    assert step == 6
    np.testing.assert_allclose(_flat(nnx.state(model, nnx.Param)), _flat(newest.emas[1]), rtol=1e-6, atol=1e-7)
    assert out["residuals"]["0.1"] < 1e-6

    # 0.07 is the recorded combination of all six stored profiles
    target = record["targets"][1]
    assert target["sigma_rel"] == 0.07 and len(target["coefficients"]) == 6
    x = [c["x"] for c in target["coefficients"]]
    np.testing.assert_allclose(sum(x), 1.0, rtol=1e-12)
    trees = []
    for s in (2, 4, 6):
        ph = _stored_profiles(config, workdir, s)
        trees += [_flat(ph.emas[0]), _flat(ph.emas[1])]
    expected = np.asarray(x) @ np.stack(trees)
    synth, _ = build.load_model(output_dir(workdir, 0.07), config)
    np.testing.assert_allclose(_flat(nnx.state(synth, nnx.Param)), expected, rtol=1e-5, atol=1e-6)
    assert 0 < target["profile_residual"] < 0.5
    # a run again replaces the outputs whole (nothing left beside them)
    posthoc_ema_mode(config, workdir)
    assert sorted(os.listdir(os.path.join(workdir, "posthoc_ema"))) == [
        "posthoc_ema.json",
        "sigma_rel_0.070",
        "sigma_rel_0.100",
    ]


def test_posthoc_ema_refuses_what_it_cannot_do(trained, tmp_path):
    config, workdir = trained
    with config.unlocked():
        config.ema.sigma_rel = ""
    with pytest.raises(ValueError, match="needs config.ema.sigma_rel"):
        posthoc_ema_mode(config, workdir)
    with config.unlocked():
        config.ema.sigma_rel = "0.5"
    with pytest.raises(ValueError, match=r"sigma_rel=0.5"):
        posthoc_ema_mode(config, workdir)
    with config.unlocked():
        config.ema.sigma_rel = "0.08"
        config.ema.track_sigma_rels = ""
    with pytest.raises(ValueError, match="tracks no EMA profile"):
        posthoc_ema_mode(config, workdir)
    with config.unlocked():
        config.ema.track_sigma_rels = "0.05,0.10"
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        posthoc_ema_mode(config, str(tmp_path))
