"""The CLIP config edge: what it builds from config.clip, and its errors."""

import json

import pytest

from scoresde import build

from conftest import load_config


def test_get_clip_needs_a_clip_section_and_images():
    from flax import nnx

    with pytest.raises(ValueError, match="no clip section"):
        build.get_clip(load_config("digits_vp", "smoke"), rngs=nnx.Rngs(0))
    config = load_config("digits_clip", "smoke")
    with config.unlocked():
        config.data.dataset = "two_moons"
    with pytest.raises(ValueError, match="needs image data"):
        build.get_clip(config, rngs=nnx.Rngs(0))


def test_clip_config_defaults_and_directories(tmp_path):
    config = load_config("digits_clip")
    assert config.data.captions and not config.clip.noised and config.clip.n_iters == 2000
    assert load_config("digits_clip", "noised").clip.noised
    assert build.clip_dir("w") == "w/clip" and build.clip_dir("w", noised=True) == "w/clip_noised"
    with pytest.raises(
        FileNotFoundError, match="no CLIP checkpoint in .*clip_noised; train one with --mode=train_clip"
    ):
        build.load_clip(str(tmp_path), noised=True)
    with pytest.raises(ValueError, match="config.clip.text_heads=0"):
        with config.unlocked():
            config.clip.text_heads = 0
        build.with_defaults(config)


def test_a_score_model_resume_ignores_the_clip_section():
    config = load_config("digits_clip")
    stored = json.loads(config.to_json_best_effort())  # as a checkpoint stores it
    with config.unlocked():
        config.clip.lr = 1.0
    assert build.config_differences(stored, config, kind="train") == []
    assert [d["field"] for d in build.config_differences(stored, config, kind="clip")] == ["clip.lr"]
