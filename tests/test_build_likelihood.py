"""The config edge's bits/dim settings: what --mode=likelihood computes for a config."""

import dataclasses

import pytest

from scoresde import build

from conftest import load_config


def _with(config, **eval_fields):
    with config.unlocked():
        config.eval.update(eval_fields)
    return config


def test_vector_data_default_to_a_continuous_density_and_one_pass():
    config = load_config("toy2d_vp", "smoke")
    s = build.likelihood_settings(config)
    assert s == build.LikelihoodSettings(
        split="test",
        batch_size=64,
        num_eval_batches=10,
        num_repeats=1,
        dequantization="none",
        num_bits=None,
        hutchinson="rademacher",
        n_probes=1,
        rtol=1e-5,
        atol=1e-5,
        eps=1e-5,
        solver="tsit5",
        max_steps=16384,
        seed=42,
        conditional=False,
    )


def test_image_data_default_to_the_references_dequantised_8_bit_five_passes():
    s = build.likelihood_settings(load_config("digits_vp", "smoke"))
    assert (s.dequantization, s.num_bits, s.num_repeats) == ("uniform", 8, 5)


def test_explicit_fields_win_over_the_data_defaults():
    config = _with(
        load_config("digits_vp", "smoke"),
        bpd_dequantization="None",
        bpd_batch_size=16,
        bpd_dataset="Train",
        bpd_num_bits=5,
        bpd_hutchinson="Gaussian",
        bpd_n_probes=3,
        bpd_rtol=1e-3,
        bpd_atol=1e-4,
        bpd_eps=1e-3,
        bpd_solver="DOPRI5",
        bpd_max_steps=99,
        num_eval_batches=2,
    )
    s = build.likelihood_settings(config)
    assert s == dataclasses.replace(
        s,
        split="train",
        batch_size=16,
        num_eval_batches=2,
        num_repeats=1,
        dequantization="none",
        num_bits=5,
        hutchinson="gaussian",
        n_probes=3,
        rtol=1e-3,
        atol=1e-4,
        eps=1e-3,
        solver="dopri5",
        max_steps=99,
    )
    assert build.likelihood_settings(_with(config, bpd_num_repeats=3)).num_repeats == 3


def test_fewer_than_one_repeat_is_refused():
    config = _with(load_config("toy2d_vp", "smoke"), bpd_num_repeats=-1)
    with pytest.raises(ValueError, match="config.eval.bpd_num_repeats must be >= 1; got -1"):
        build.likelihood_settings(config)


def test_the_recorded_settings_keep_their_names_and_order():
    # partial results and reports record these keys: renaming one would orphan every partial file
    s = build.likelihood_settings(load_config("toy2d_vp", "smoke"))
    assert list(s.as_dict()) == [
        "split",
        "batch_size",
        "num_eval_batches",
        "num_repeats",
        "dequantization",
        "num_bits",
        "hutchinson",
        "n_probes",
        "rtol",
        "atol",
        "eps",
        "solver",
        "max_steps",
        "seed",
    ]


def test_conditional_likelihood_is_recorded_and_needs_a_label_or_caption_model():
    plain = build.likelihood_settings(load_config("digits_vp", "smoke"))
    assert "conditional" not in plain.as_dict() and plain.report_fields()["conditional"] is False
    cond = build.likelihood_settings(_with(load_config("digits_vp_cond", "smoke"), bpd_conditional=True))
    assert cond.as_dict()["conditional"] is True and cond.report_fields()["conditional"] is True
    assert build.likelihood_settings(_with(load_config("digits_t2i", "smoke"), bpd_conditional=True)).conditional
    with pytest.raises(ValueError, match="bpd_conditional=True measures log p.x . c. of a class- or caption"):
        build.likelihood_settings(_with(load_config("digits_vp", "smoke"), bpd_conditional=True))
