"""Real 2-step training runs of the smoke configs, eval / sample modes, non-finite handling, bad inputs."""

import json
import os

import numpy as np
import pytest

from scoresde.modes import evaluate, train
from scoresde.modes.sample import sample
from scoresde.runlog import read_metrics

from conftest import load_config


def check_run(workdir, n_steps=2):
    records = read_metrics(workdir)
    assert [r["step"] for r in records] == list(range(1, n_steps + 1))
    for r in records:
        assert np.isfinite(r["loss"]) and r["loss"] > 0
        for key in ("grad_norm", "lr", "steps_per_sec", "img_per_sec"):
            assert key in r
    assert "eval_loss" in records[-1] and np.isfinite(records[-1]["eval_loss"])
    assert os.path.isdir(os.path.join(workdir, "checkpoints", str(n_steps)))
    return records


def test_toy_smoke_train_then_sample_and_eval(tmp_path):
    config = load_config("toy2d_vp", "smoke")
    workdir = str(tmp_path)
    out = train.train(config, workdir)
    assert out["step"] == 2 and not out["preempted"]
    records = check_run(workdir)
    assert records[0]["grad_norm"] > 0
    assert os.path.exists(os.path.join(workdir, "samples", "snapshot_00000002.png"))  # scatter plot

    result = sample(config, workdir)
    assert result["num_samples"] == config.eval.num_samples and result["nfe"] > 0
    with np.load(os.path.join(workdir, "samples", "samples_0.npz")) as f:
        s = f["samples"]
    assert s.dtype == np.float32 and s.shape == (config.eval.sample_batch_size, 2) and np.all(np.isfinite(s))
    assert os.path.exists(os.path.join(workdir, "samples", "samples_0.png"))

    res = evaluate.evaluate(config, workdir)
    assert res["step"] == 2 and np.isfinite(res["eval_loss"])
    with open(os.path.join(workdir, "eval_results.json")) as f:
        assert json.load(f)["eval_loss"] == res["eval_loss"]


def test_digits_smoke_train_and_sample_images(tmp_path):
    config = load_config("digits_vp", "smoke")
    workdir = str(tmp_path)
    train.train(config, workdir)
    check_run(workdir)
    assert os.path.exists(os.path.join(workdir, "samples", "snapshot_00000002.png"))
    sample(config, workdir)
    with np.load(os.path.join(workdir, "samples", "samples_0.npz")) as f:
        s = f["samples"]
    assert s.dtype == np.uint8 and s.shape == (config.eval.sample_batch_size, 8, 8, 1)


def test_cifar10_smoke_on_mock_tfds(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    config = load_config("cifar10_vp", "smoke")
    config.data.download = True  # a no-op under mock_data
    config.training.snapshot_sampling = False
    with tfds.testing.mock_data(num_examples=32):
        train.train(config, str(tmp_path))
    check_run(str(tmp_path))


def test_nonfinite_steps_are_skipped_then_stop(tmp_path, monkeypatch):
    import optax

    from scoresde import build

    config = load_config("toy2d_vp", "smoke")
    # every update is non-finite (a NaN learning rate in the config is refused at load, so the optimizer is swapped)
    monkeypatch.setattr(
        build, "optimizer_from_config", lambda config: optax.chain(optax.scale_by_adam(), optax.scale(float("nan")))
    )
    config.optim.warmup = 0
    config.optim.grad_clip = -1.0
    config.training.n_iters = 50
    config.training.max_nonfinite = 3
    config.training.snapshot_sampling = False
    config.training.eval_freq = 0
    with pytest.raises(train.NonFiniteError, match="3 consecutive steps had a non-finite loss or gradient"):
        train.train(config, str(tmp_path))
    records = read_metrics(str(tmp_path))
    assert 3 <= records[-1]["step"] <= 5  # stopped promptly, not at n_iters
    assert records[-1]["nonfinite_total"] == 3  # the gate holds further steps to no-ops
    assert all(np.isfinite(r["loss"]) for r in records)  # skipped updates never reached the parameters


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("training.sde", "vpp", "unknown sde 'vpp'; expected one of: vpsde, vp_cosine, subvpsde, vesde"),
        ("model.name", "unet9000", "unknown model 'unet9000'; expected one of"),
        ("data.dataset", "imagenet", "unknown dataset 'imagenet'; expected one of"),
    ],
)
def test_unknown_names_are_clear_errors(tmp_path, field, value, message):
    config = load_config("toy2d_vp", "smoke")
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(ValueError, match=message):
        train.train(config, str(tmp_path))


def test_image_size_the_network_cannot_take(tmp_path):
    config = load_config("digits_vp", "smoke")
    config.data.image_size = 7  # the U-Net halves the resolution once; 7 is odd
    with pytest.raises(ValueError, match="cannot take data of shape"):
        train.train(config, str(tmp_path))


def test_unwritable_workdir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(PermissionError, match="is not writable"):
        train.train(load_config("toy2d_vp", "smoke"), str(blocker / "run"))


def test_bad_batch_sizes_are_clear_errors(tmp_path):
    # batch sizes the device count does not divide: see test_parallel (8 fake devices). A mode checks the
    # ranges of every field again on entry (config_defaults.validate), so a value set after loading is caught.
    config = load_config("toy2d_vp", "smoke")
    config.training.batch_size = 0
    with pytest.raises(ValueError, match=r"config.training.batch_size=0 \(expected an integer >= 1\)"):
        train.train(config, str(tmp_path))
