"""End to end: a class-conditional digits model trained through the CLI, sampled per class with CFG.

An independent classifier (scikit-learn SVC on the real digits' train split) must recognise the
requested class in most guided samples, and guidance (w = 3) must beat plain conditional sampling (w = 0)
— both from one jitted sampler whose guidance scale is a traced argument. A small MLP score network on
the flattened 8×8 images keeps this under ~1 minute of CPU (the U-Net of ``digits_vp_cond`` needs a few
minutes of training to draw digits).
"""

import os

import jax
import numpy as np
import pytest

from scoresde import main as cli

from conftest import load_config


def _config():
    c = load_config("digits_vp_cond")
    t = c.training
    t.n_iters, t.log_freq, t.eval_freq = 600, 100, 0
    t.snapshot_freq = t.snapshot_freq_for_preemption = 600
    t.snapshot_sampling, t.tensorboard, t.progress = False, False, False
    m = c.model
    m.name, m.hidden, m.num_layers, m.embed_dim, m.ema_rate, m.num_scales = "mlp", 256, 3, 64, 0.99, 100
    c.optim.lr, c.optim.warmup = 2e-3, 50
    c.sampling.method, c.sampling.steps = "dpm_solver++", 20
    c.sampling.guidance_scale = 3.0
    return c


@pytest.fixture(scope="module")
def svc():
    from sklearn.datasets import load_digits
    from sklearn.svm import SVC

    d = load_digits()
    x, y = d.images.reshape(-1, 64) / 16.0, d.target
    test = np.arange(len(x)) % 10 == 0  # the project's digits test split
    clf = SVC(gamma="scale").fit(x[~test], y[~test])
    assert clf.score(x[test], y[test]) > 0.95
    return clf


def _accuracy(clf, samples01):
    x = np.clip(np.asarray(samples01, np.float64), 0.0, 1.0)  # as the saved uint8 images
    pred = clf.predict(x.reshape(len(x), 64))
    y = np.arange(len(samples01)) * 10 // len(samples01)  # class_label=-1: ten blocks, classes 0..9
    per_class = [float(np.mean(pred[y == k] == k)) for k in range(10)]
    return float(np.mean(pred == y)), per_class


def test_class_conditional_digits_with_cfg_are_recognised(tmp_path, svc, capsys):
    config = _config()
    workdir = str(tmp_path / "digits_cond")
    cli.run(config, workdir, "train")
    out = cli.run(config, workdir, "sample")
    assert out["num_samples"] == 100
    assert os.path.exists(os.path.join(workdir, "samples", "samples_0.png"))
    cli_samples = np.load(os.path.join(workdir, "samples", "samples_0.npz"))["samples"]  # uint8, 10 per class
    acc_cli, per_class = _accuracy(svc, cli_samples / 255.0)

    # The same model, one jitted sampler, guidance scale as a traced argument: w = 0 vs w = 3.
    from flax import nnx

    from scoresde import build

    model, _ = build.load_model(workdir, config)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    fn = build.make_sample_fn(config, build.make_sde(config), graphdef, rest, 100)
    key = jax.random.key(3)
    acc = {w: _accuracy(svc, fn(params, key, np.float32(w))[0])[0] for w in (0.0, 3.0)}
    assert fn._cache_size() == 1  # one compilation for both scales
    with capsys.disabled():
        print(
            f"\n  digits CFG: SVC recognises the requested class in {acc_cli:.2f} of CLI samples (w=3; per class "
            f"{per_class}); in-process w=0: {acc[0.0]:.2f}, w=3: {acc[3.0]:.2f}"
        )
    assert acc_cli >= 0.75
    assert acc[3.0] >= 0.75 and acc[3.0] > acc[0.0] + 0.1
