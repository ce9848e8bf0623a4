"""``--mode=sample`` with CLIP guidance and with the unCLIP pipeline (text -> prior -> decoder), on smoke checkpoints
(untrained weights: these check the wiring; the numbers are in BENCHMARKS.md)."""

import os

import numpy as np
import pytest
from flax import nnx

from scoresde import build
from scoresde.checkpointing import save_model_checkpoint

from conftest import load_config


def _save_clip(workdir, noised):
    config = build.with_defaults(load_config("digits_clip", "smoke,noised" if noised else "smoke"))
    p = nnx.state(build.get_clip(config, rngs=nnx.Rngs(0)), nnx.Param)
    save_model_checkpoint(build.clip_dir(workdir, noised), params=p, ema_params=p, step=2, config=config)


def _save_model(config, workdir):
    p = nnx.state(build.get_model(config, rngs=nnx.Rngs(0)), nnx.Param)
    save_model_checkpoint(workdir, params=p, ema_params=p, step=0, config=config)


def _samples(workdir):
    return np.load(os.path.join(workdir, "samples", "samples_0.npz"))["samples"]


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["smoke", "smoke,clean"])
def test_sample_mode_guides_an_unconditional_model_by_clip(tmp_path, variant, capsys):
    from scoresde import main as cli

    clip_dir = str(tmp_path / "clip")
    _save_clip(clip_dir, noised=variant == "smoke")
    config = load_config("digits_clip_guided", variant)
    with config.unlocked():
        config.sampling.clip_workdir = clip_dir
        config.sampling.prompt = "a bold seven"
        config.eval.num_samples = config.eval.sample_batch_size = 4
    workdir = str(tmp_path / "run")
    _save_model(build.with_defaults(config), workdir)
    cli.run(config, workdir, "sample")
    assert np.all(np.isfinite(_samples(workdir)))
    assert "guidance   clip" in capsys.readouterr().err


@pytest.mark.slow
def test_sample_mode_runs_text_prior_decoder(tmp_path):
    from scoresde import main as cli

    clip_dir = str(tmp_path / "clip")
    _save_clip(clip_dir, noised=False)
    config = load_config("digits_unclip", "smoke")
    with config.unlocked():
        config.prior.clip_workdir = clip_dir
        config.sampling.prompt = "a thin two"
        config.eval.num_samples = config.eval.sample_batch_size = 4
    config = build.with_defaults(config)
    workdir = str(tmp_path / "run")
    _save_model(config, workdir)
    prior = build.get_prior(config, int(config.clip.embed_dim), rngs=nnx.Rngs(1))
    p = nnx.state(prior, nnx.Param)
    save_model_checkpoint(build.prior_dir(workdir), params=p, ema_params=p, step=2, config=config)
    cli.run(config, workdir, "sample")
    assert np.all(np.isfinite(_samples(workdir)))
    bare = str(tmp_path / "no_prior")
    _save_model(config, bare)
    with pytest.raises(FileNotFoundError):
        cli.run(config, bare, "sample")
