"""The augmentation edge (scoresde.build.augment) and the power-EMA edge (scoresde.build.ema): config to pipeline,
network width and training-batch transform; config to tracked profiles in the optimizer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import augment, build, posthoc_ema

from conftest import load_config


def _digits(p=0.0, pipeline=None):
    config = load_config("digits_vp", "smoke")
    with config.unlocked():
        config.data.augment_p = p
        if pipeline is not None:
            config.data.augment_pipeline = pipeline
    return config


def test_off_by_default_and_edm_width_when_on():
    assert build.augment_settings(_digits()) is None and build.augment_dim(_digits()) == 0
    assert build.augment_settings(_digits(0.12)) == augment.EDM_PIPELINE
    assert build.augment_dim(_digits(0.12)) == 9
    assert build.augment_dim(_digits(0.12, "xflip,brightness,hue")) == 4


def test_the_training_batch_transform_augments_and_labels_only_when_asked():
    config = _digits(1.0, "xflip=1e8,brightness")
    with config.unlocked():
        config.data.centered = False  # images in [0, 1]: augmented in [-1, 1] (EDM's range), mapped back
    images = jax.random.uniform(jax.random.key(0), (16, 8, 8, 1))
    batch = {"image": images, "label": jnp.arange(16)}
    key = jax.random.key(3)
    assert build.batch_transform(config)(batch, key) is batch  # eval steps: never augmented
    out = build.batch_transform(config, augment=True)(batch, key)
    assert out["label"] is batch["label"] and out["augment_labels"].shape == (16, 2)
    # the same draw through the library, in [-1, 1]
    settings, k = build.augment_settings(config), build.purpose_key(key, "augment")
    expected, labels = augment.augment(2 * images - 1, k, settings, 1.0)
    np.testing.assert_array_equal(out["augment_labels"], labels)
    np.testing.assert_allclose(out["image"], (expected + 1) / 2, atol=1e-6)
    with config.unlocked():
        config.data.centered = True  # already in [-1, 1]: augmented as they are
    centred = build.batch_transform(config, augment=True)({"image": 2 * images - 1}, key)
    np.testing.assert_allclose(centred["image"], expected, atol=1e-6)
    assert not np.allclose(out["image"], images)
    off = build.batch_transform(_digits(0.0), augment=True)(batch, key)
    assert off is batch  # augment_p = 0: no labels, the batch untouched


def test_the_network_gets_the_conditioning_width():
    model = build.abstract_model(_digits(0.12))
    assert model.augment_embed is not None and model.augment_embed.kernel.shape[0] == 9
    assert build.abstract_model(_digits()).augment_embed is None


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="needs image data"):
        config = load_config("toy2d_vp", "smoke")
        with config.unlocked():
            config.data.augment_p = 0.1
        build.augment_settings(config)
    with pytest.raises(ValueError, match="enables no transform"):
        build.augment_settings(_digits(0.1, ""))
    with pytest.raises(ValueError, match="did you mean rotate_frac"):
        build.augment_settings(_digits(0.1, "rotate_fract"))
    with pytest.raises(ValueError, match=r"augment_p=1.5.*\[0, 1\]"):
        build.with_defaults(_digits(1.5))


def test_tracked_profiles_ride_in_the_optimizer_state():
    config = load_config("toy2d_vp", "smoke")
    params = {"w": jnp.ones(3)}
    assert posthoc_ema.find_power_ema_state(build.optimizer_from_config(config).init(params)) is None
    with config.unlocked():
        config.ema.track_sigma_rels = "0.05, 0.10"
    assert build.tracked_sigma_rels(config) == (0.05, 0.10)
    state = build.optimizer_from_config(config).init(params)
    ph = posthoc_ema.find_power_ema_state(state)
    assert int(ph.count) == 0 and len(ph.emas) == 2
    with config.unlocked():
        config.ema.track_sigma_rels = "0.05,x"
    with pytest.raises(ValueError, match="'x' is not a number"):
        build.tracked_sigma_rels(config)
    with config.unlocked():
        config.ema.sigma_rel = "0.1,0.1"
    with pytest.raises(ValueError, match="twice"):
        build.posthoc_sigma_rels(config)


@pytest.mark.slow  # a real 2-step digits run: minutes on a loaded 2-core box
def test_train_mode_with_augmentation_runs_and_samples(tmp_path):
    from scoresde.modes import train
    from scoresde.modes.sample import sample
    from scoresde.runlog import read_metrics

    config = _digits(0.5)
    with config.unlocked():
        config.training.snapshot_sampling = False
    train.train(config, str(tmp_path))
    records = read_metrics(str(tmp_path))
    assert [r["step"] for r in records] == [1, 2] and all(np.isfinite(r["loss"]) for r in records)
    model, _ = build.load_model(str(tmp_path), config)
    assert model.augment_embed.kernel.shape == (9, 4 * config.model.nf)
    out = sample(config, str(tmp_path))  # sampling passes no labels: augmentation off
    assert out["num_samples"] == config.eval.num_samples


@pytest.mark.parametrize(
    "mode,config_name",
    [
        ("distill", "digits_ct"),
        ("reflow", "digits_reflow"),
        ("train_classifier", "cifar10_ve_classifier"),
        ("train_autoencoder", "digits_ae"),
    ],
)
def test_trainers_that_do_not_augment_refuse_augment_p(tmp_path, mode, config_name):
    """Only --mode=train feeds the augmentation labels; every other trainer refuses augment_p > 0 before it
    writes anything, instead of ignoring it."""
    import importlib

    from scoresde import main

    module, fn = main.MODES[mode].split(":")
    config = load_config(config_name, "smoke")
    with config.unlocked():
        config.data.augment_p = 0.12
    with pytest.raises(ValueError, match=rf"augment_p=0.12: .* --mode={mode} does not augment"):
        getattr(importlib.import_module(module), fn)(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
