"""``--mode=train_classifier`` end to end: it trains and resumes, and the sample mode guides with its classifier."""

import json
import os

import numpy as np
from flax import nnx

from scoresde import build

from conftest import load_config


def _load_config(name, variant=None):
    return load_config(name, variant)


def test_train_classifier_mode_resumes_and_guides_the_sample_mode(tmp_path):
    from scoresde import main as cli
    from scoresde.checkpointing import save_model_checkpoint

    config = _load_config("toy2d_vp_cond", "smoke,classifier")
    workdir = str(tmp_path / "run")
    out = cli.run(config, workdir, "train_classifier")
    assert out["step"] == 2 and set(out["test_accuracy"]) == {"t=0.001", "t=0.25", "t=0.5"}
    with open(os.path.join(workdir, "classifier", "eval_results.json")) as f:
        assert json.load(f)["step"] == 2
    clf, step = build.load_classifier(workdir, config)
    assert step == 2
    # a longer run resumes from step 2
    with config.unlocked():
        config.classifier.n_iters = 3
    assert cli.run(config, workdir, "train_classifier")["step"] == 3
    assert build.load_classifier(workdir, config)[1] == 3
    # sample mode with classifier guidance: needs a score model; an untrained one will do for the wiring
    score_model = build.get_model(config, rngs=nnx.Rngs(0))
    p = nnx.state(score_model, nnx.Param)
    save_model_checkpoint(workdir, params=p, ema_params=p, step=0, config=config)
    with config.unlocked():
        config.sampling.class_label = 3
    res = cli.run(config, workdir, "sample")
    samples = np.load(os.path.join(workdir, "samples", "samples_0.npz"))["samples"]
    assert res["num_samples"] == config.eval.num_samples and np.all(np.isfinite(samples))
