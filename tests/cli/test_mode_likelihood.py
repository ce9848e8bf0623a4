"""The dataset-split likelihood run: JSON report, and a preempted run resumes to the same numbers."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from scoresde import build, checkpointing
from scoresde.modes import likelihood as likelihood_mode

from conftest import load_config


def _config():
    config = load_config("toy2d_vp", "smoke")
    config.eval.bpd_batch_size = 8
    config.eval.num_eval_batches = 2
    config.eval.bpd_num_repeats = 2  # continuous data: repeats average fresh Hutchinson probes
    config.eval.bpd_rtol = 1e-4
    config.eval.bpd_atol = 1e-4
    return config


def _checkpoint(workdir, config):
    model = build.get_model(config, rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    # Perturb every parameter (the output layer starts at zero) so the score depends on x and t and
    # the probes matter: a resumed run with the wrong randomness would then give other numbers.
    leaves, tree = jax.tree.flatten(params.to_pure_dict())
    keys = jax.random.split(jax.random.key(1), len(leaves))
    leaves = [p + 0.3 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
    pure = jax.tree.unflatten(tree, leaves)
    checkpointing.save_model_checkpoint(workdir, params=pure, ema_params=pure, step=7, config=config)


def test_report_and_resume(tmp_path):
    config = _config()
    full, resumed = str(tmp_path / "full"), str(tmp_path / "resumed")
    _checkpoint(full, config)
    shutil.copytree(full, resumed)

    report = likelihood_mode.likelihood(config, full)
    with open(os.path.join(full, "likelihood", "bpd_test.json")) as f:
        on_disk = json.load(f)
    assert on_disk == json.loads(json.dumps(report))
    for key in (
        "mean_bpd",
        "stderr",
        "N",
        "split",
        "eps",
        "solver",
        "rtol",
        "atol",
        "hutchinson",
        "n_probes",
        "num_repeats",
        "dequantization",
        "offset_bits_per_dim",
        "mean_nfe",
        "checkpoint_step",
    ):
        assert key in report, key
    assert report["N"] == 16 and report["split"] == "test" and report["checkpoint_step"] == 7
    assert report["hutchinson"] == "rademacher" and report["n_probes"] == 1 and report["rtol"] == 1e-4
    assert np.isfinite(report["mean_bpd"]) and report["stderr"] > 0
    # Continuous 2-D data: no dequantisation and no bit depth, so no offset.
    assert report["dequantization"] == "none" and report["offset_bits_per_dim"] == 0.0

    # Preempted after one of the four (repeat, batch) units, then started again.
    assert likelihood_mode.likelihood(config, resumed, stop_after=1) is None
    with np.load(os.path.join(resumed, "likelihood", "bpd_test_partial.npz")) as f:
        assert f["done"].sum() == 1
    again = likelihood_mode.likelihood(config, resumed)
    assert again["batches_this_session"] == 3
    with (
        np.load(os.path.join(full, "likelihood", "bpd_test_partial.npz")) as a,
        np.load(os.path.join(resumed, "likelihood", "bpd_test_partial.npz")) as b,
    ):
        np.testing.assert_array_equal(a["bpd"], b["bpd"])
        # The two repeats used different probes (the randomness is per repeat, not reused).
        assert np.any(a["bpd"][0] != a["bpd"][1])
    assert again["mean_bpd"] == report["mean_bpd"]


def test_header_says_how_many_examples_and_why(capsys):
    # The digits default: one whole batch of 128 of the 180 test digits (the pipeline yields whole batches).
    config = build.with_defaults(load_config("digits_vp"))
    s = build.likelihood_settings(config)
    likelihood_mode._announce(config, s, "runs/digits", 7, likelihood_mode._count_batches(config, s), "bits/dim")
    err = capsys.readouterr().err
    assert "scoresde likelihood: bits/dim at step 7" in err
    assert "examples   128 of 180 test examples: whole batches of config.eval.bpd_batch_size=128" in err
    config.eval.bpd_batch_size = 60
    s = build.likelihood_settings(config)
    likelihood_mode._announce(config, s, "runs/digits", 7, likelihood_mode._count_batches(config, s), "bits/dim")
    assert "examples   all 180 test examples" in capsys.readouterr().err


def test_a_garbage_partial_file_is_one_clear_error(tmp_path):
    """Not numpy's advice to allow pickles: the path, what it is not, and what to do."""
    from scoresde.modes import likelihood as likelihood_mode

    path = tmp_path / "bpd_test_partial.npz"
    path.write_bytes(b"\x80\x04garbage, not an npz")
    with pytest.raises(ValueError, match=r"bpd_test_partial\.npz is not a partial likelihood file .*move it away"):
        likelihood_mode._load_partial(str(path), {}, {})
