"""The config edge's sample-quality settings: batch sizes, FID/IS/KID settings, reference statistics path."""

import os

import pytest

from scoresde import build

from conftest import load_config


def test_sample_batch_size_falls_back_to_the_eval_batch_size():
    config = load_config("digits_vp", "smoke")
    with config.unlocked():
        config.eval.batch_size = 24
        config.eval.sample_batch_size = 6
    assert build.sample_batch_size(config) == 6
    with config.unlocked():
        config.eval.sample_batch_size = 0
    assert build.sample_batch_size(config) == 24


def test_sample_quality_settings_of_a_config():
    config = load_config("digits_vp", "smoke")
    with config.unlocked():
        config.eval.num_samples = 12
        config.eval.kid_subset_size = 8
    assert build.sample_quality_settings(config) == build.SampleQualitySettings(
        num_samples=12,
        sample_batch_size=8,
        inception_batch_size=250,
        is_splits=10,
        kid_subsets=100,
        kid_subset_size=8,
        stats_split="train",
        stats_max_features=50000,
    )


def test_reference_stats_path(tmp_path):
    config = load_config("digits_vp", "smoke")
    workdir = str(tmp_path)
    size = int(config.data.image_size)
    assert build.reference_stats_path(config, workdir) == os.path.join(workdir, "fid_stats", f"digits_train_{size}.npz")
    assert build.reference_stats_path(config, workdir, "test").endswith(f"digits_test_{size}.npz")
    with config.unlocked():
        config.eval.fid_stats_path = "/data/stats.npz"
    assert build.reference_stats_path(config, workdir, "test") == "/data/stats.npz"


def test_unknown_feature_extractor():
    config = load_config("digits_vp", "smoke")
    with config.unlocked():
        config.eval.feature_extractor = "clip"
    with pytest.raises(ValueError, match="unknown config.eval.feature_extractor 'clip'; expected one of: inception"):
        build.get_feature_fn(config)


def test_inception_weights_found_looks_only_on_this_machine(tmp_path, monkeypatch):
    # What sample's closing line asks before it suggests --mode=fid: never a download.
    from scoresde.metrics import weights

    monkeypatch.setenv(weights.ENV_CACHE, str(tmp_path))
    monkeypatch.delenv(weights.ENV_WEIGHTS, raising=False)
    monkeypatch.setattr(weights.urllib.request, "urlopen", lambda *a, **k: pytest.fail("downloaded"))
    config = load_config("digits_vp", "smoke")
    assert not build.inception_weights_found(config)
    (tmp_path / weights.CONVERTED_FILENAME).write_bytes(b"")
    assert build.inception_weights_found(config)
    config.eval.inception_weights = str(tmp_path / "missing.npz")  # an explicit path that is not there
    assert not build.inception_weights_found(config)
