"""The prompts of a caption-conditioned model: one caption, a file of them, or every digit; bad prompts refused."""

import numpy as np
import pytest

from scoresde import build
from scoresde.data import captions

from conftest import load_config


def _config(**sampling):
    config = load_config("digits_t2i")
    for k, v in sampling.items():
        config.sampling[k] = v
    return config


def test_every_digit_in_turn_by_default_one_prompt_or_a_file_a_row_each(tmp_path):
    tokens, prompts = build.sample_prompts(_config(), 100)
    assert prompts[0] == "a zero" and prompts[99] == "a nine" and prompts[80] == "an eight"
    assert all(len(set(prompts[10 * k : 10 * k + 10])) == 1 for k in range(10))  # one caption a grid row
    np.testing.assert_array_equal(np.asarray(tokens), captions.tokenize(prompts, tokens.shape[1]))
    _, one = build.sample_prompts(_config(prompt="a bold seven"), 8)
    assert one == ["a bold seven"] * 8
    path = tmp_path / "prompts.txt"
    path.write_text("a bold seven\nthe digit 3, slanted to the left\n\n")
    _, rows = build.sample_prompts(_config(prompts_file=str(path)), 4)
    assert rows == ["a bold seven"] * 2 + ["the digit 3, slanted to the left"] * 2


def test_empty_unknown_and_too_many_prompts_are_refused(tmp_path):
    with pytest.raises(ValueError, match="empty prompt"):
        build.sample_prompts(_config(prompt=" , "), 4)
    with pytest.raises(ValueError, match=r"unknown word 'purple'.*vocabulary is: "):
        build.sample_prompts(_config(prompt="a purple seven"), 4)
    path = tmp_path / "prompts.txt"
    path.write_text("a seven\n\na three\n")
    with pytest.raises(ValueError, match="line 2 .* empty prompt"):
        build.sample_prompts(_config(prompts_file=str(path)), 4)
    with pytest.raises(ValueError, match="both set"):
        build.sample_prompts(_config(prompt="a seven", prompts_file=str(path)), 4)
    with pytest.raises(ValueError, match="10 prompts but 4 samples"):
        build.sample_prompts(_config(), 4)
    with pytest.raises(ValueError, match="not a file"):
        build.sample_prompts(_config(prompts_file=str(tmp_path / "missing.txt")), 4)


def test_step_capacity_reaches_the_sampler_options_from_the_config():
    config = load_config("digits_vp")
    config.sampling.method, config.sampling.steps = "dpm_solver++", 20
    assert "step_capacity" not in build.sampling_options(config)[1]  # 0: one program per step count
    config.sampling.step_capacity = 64
    method, options = build.sampling_options(config)
    assert method == "dpm_solver++" and options["steps"] == 20 and options["step_capacity"] == 64
    config.sampling.steps = 80
    with pytest.raises(ValueError, match="steps=80 does not fit step_capacity=64"):
        build.sampling_options(config)
    config.sampling.method, config.sampling.steps = "pc", 0
    with pytest.raises(ValueError, match="step_capacity=64 pads a time grid; config.sampling.method='pc' runs its own"):
        build.sampling_options(config)
