"""The config edge's run concerns: loading configs, the defaults table, resume checks, RNG purposes."""

import glob
import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from scoresde import build, config_defaults

from conftest import CONFIGS, load_config


def _toy(variant=None):
    return os.path.join(CONFIGS, "toy2d_vp.py") + (f":{variant}" if variant else "")


# ------------------------------------------------------------------------------------------------- load_config


def test_load_config_applies_variants_in_order():
    full = build.load_config(_toy())
    assert (full.training.n_iters, full.model.hidden, full.data.dataset) == (4000, 256, "gmm_grid")
    smoke = build.load_config(_toy("smoke"))
    assert (smoke.training.n_iters, smoke.model.hidden, smoke.model.num_scales) == (2, 32, 20)
    both = build.load_config(_toy("smoke,two_moons"))
    assert (both.training.n_iters, both.data.dataset) == (2, "two_moons")


def test_load_config_rejects_an_unknown_variant_by_name():
    with pytest.raises(ValueError, match=r"unknown variant 'tiny' of toy2d_vp; expected one of: smoke, gmm_grid"):
        build.load_config(_toy("smoke,tiny"))


def test_load_config_errors_name_the_file(tmp_path):
    missing = str(tmp_path / "nope.py")
    with pytest.raises(FileNotFoundError, match="nope.py"):
        build.load_config(missing)
    text = tmp_path / "config.yaml"
    text.write_text("a: 1\n")
    with pytest.raises(ValueError, match=r"unknown config file .*config\.yaml.*expected a \.py"):
        build.load_config(str(text))
    empty = tmp_path / "empty.py"
    empty.write_text("X = 1\n")
    with pytest.raises(ValueError, match=r"empty\.py.* defines no get_config\(\)"):
        build.load_config(str(empty))


def test_load_config_reads_a_json_dump_and_fills_what_an_older_run_lacked(tmp_path):
    config = build.load_config(_toy("smoke"))
    dump = json.loads(config.to_json_best_effort())
    path = tmp_path / "config.json"
    path.write_text(json.dumps(dump))
    again = build.load_config(str(path))
    assert json.loads(again.to_json_best_effort()) == dump

    # An older run's dump: fields added to the code since then take the table's values, the rest stays.
    del dump["training"]["max_nonfinite"], dump["eval"]["bpd_max_steps"], dump["inverse"]
    dump["training"]["n_iters"] = 77
    path.write_text(json.dumps(dump))
    old = build.load_config(str(path))
    assert old.training.max_nonfinite == 10
    assert old.eval.bpd_max_steps == 16384
    assert (old.inverse.operator, old.inverse.num_images) == ("none", 64)
    assert old.training.n_iters == 77


def test_every_shipped_config_is_complete_without_the_loader():
    # The recipes start from get_default_configs(): nothing is left for with_defaults to add, so what a run
    # stores is what its config file says, and --config.<field> overrides reach every field.
    for path in sorted(glob.glob(os.path.join(CONFIGS, "*.py"))):
        raw = config_defaults.load_module(path).get_config()
        assert config_defaults.missing_fields(raw) == [], os.path.basename(path)


# --------------------------------------------------------------------------------------------- with_defaults


def _hand_made(**sections):
    config = ml_collections.ConfigDict(sections)
    config.lock()
    return config


def test_with_defaults_fills_a_missing_field_with_the_table_value():
    config = _hand_made(training={"sde": "vesde", "max_nonfinite": 3}, model={"name": "mlp", "sigma_max": 9.0})
    full = build.with_defaults(config)
    assert full.training.sde == "vesde" and full.training.max_nonfinite == 3  # what it has is kept
    assert full.model.sigma_max == 9.0
    assert full.training.snapshot_freq_for_preemption == 10000  # what it lacks comes from the table
    assert full.model.sigma_data == 0.5 and full.model.sigma_min == 0.01 and full.model.rf_T == 1.0
    assert full.optim.beta2 == 0.999 and full.optim.grad_clip == 1.0
    assert full.eval.bpd_solver == "tsit5" and full.eval.bpd_max_steps == 16384
    assert full.seed == 42
    assert (full.model.hidden, full.model.num_layers, full.model.embed_dim) == (128, 3, 64)  # mlp's own fields
    assert "nf" not in full.model and "fir" not in full.model  # not a U-Net: no U-Net fields


def test_with_defaults_adds_the_fields_of_the_named_architecture_only():
    unet = build.with_defaults(_hand_made(model={"name": "ncsnpp", "nf": 8}))
    assert (unet.model.fir, tuple(unet.model.fir_kernel), unet.model.resblock_type) == (False, (1, 3, 3, 1), "biggan")
    assert (unet.model.progressive_combine, unet.model.fourier_scale, unet.model.init_scale) == ("sum", 16.0, 0.0)
    assert unet.model.nf == 8 and "hidden" not in unet.model
    ddpm = build.with_defaults(_hand_made(model={"name": "ddpm"}))
    assert ddpm.model.scale_by_sigma is False and "fir" not in ddpm.model


def test_with_defaults_keeps_a_locked_config_locked_and_the_callers_config_unchanged():
    config = _hand_made(training={"sde": "vpsde"})
    full = build.with_defaults(config)
    assert full is not config and list(config.keys()) == ["training"] and list(config.training) == ["sde"]
    assert full.is_locked
    with pytest.raises(AttributeError, match="max_nonfinte"):
        full.training.max_nonfinte = 5  # a typo is still an error
    full.training.max_nonfinite = 5  # a known field may change
    assert build.with_defaults(full) is full  # complete: nothing to do, no copy


def test_with_defaults_leaves_optional_sections_absent_and_completes_present_ones():
    full = build.with_defaults(_hand_made(model={"name": "mlp"}))
    assert "classifier" not in full and "autoencoder" not in full
    cls = build.with_defaults(_hand_made(classifier={"name": "mlp", "num_classes": 9, "lr": 1e-3}))
    c = cls.classifier
    assert (c.lr, c.num_classes, c.beta1, c.max_nonfinite, c.snapshot_freq, c.batch_size) == (1e-3, 9, 0.9, 10, 0, 0)
    assert (c.hidden, c.num_layers, c.embed_size, c.fourier_scale) == (128, 3, 32, 4.0)
    wrn = build.with_defaults(_hand_made(classifier={"name": "wrn", "num_classes": 10})).classifier
    assert (wrn.depth, wrn.width, wrn.embed_size, wrn.fourier_scale) == (28, 10, 128, 16.0)
    ae = config_defaults.section_with_defaults({"latent_channels": 2, "f": 2, "lr": 1e-4}, "autoencoder")
    assert (ae.latent_channels, ae.base_width, ae.disc_layers, ae.grad_clip, ae.max_nonfinite) == (2, 64, 3, -1.0, 10)


def test_missing_fields_names_what_with_defaults_adds():
    config = build.load_config(_toy("smoke"))
    dump = json.loads(config.to_json_best_effort())
    del dump["training"]["max_nonfinite"], dump["model"]["embed_dim"]
    assert build.missing_fields(ml_collections.ConfigDict(dump)) == ["model.embed_dim", "training.max_nonfinite"]
    assert build.missing_fields(config) == []


def test_add_classifier_starts_from_the_table():
    config = config_defaults.get_default_configs()
    config_defaults.add_classifier(config, "wrn", 10, depth=10, lr=1e-3)
    c = config.classifier
    assert (c.depth, c.width, c.lr, c.n_iters, c.snapshot_freq, c.batch_size) == (10, 10, 1e-3, 100000, 10000, 128)
    assert [f for f in config_defaults.missing_fields(config) if f.startswith("classifier.")] == []


def test_as_config_accepts_dicts_and_configdicts_and_completes_them():
    from_dict = build.as_config({"training": {"sde": "vesde"}})
    assert isinstance(from_dict, ml_collections.ConfigDict)
    assert from_dict.training.sde == "vesde" and from_dict.model.sigma_max == 50.0
    complete = build.load_config(_toy("smoke"))
    assert build.as_config(complete) is complete
    with pytest.raises(TypeError, match="ConfigDict or a dict; got list"):
        build.as_config([("training", {})])


# ------------------------------------------------------------------------------------------------ resume checks


def _stored(config, drop=()):
    dump = json.loads(config.to_json_best_effort())
    for field in drop:
        section, name = field.split(".")
        del dump[section][name]
    return dump


def test_an_older_checkpoint_does_not_differ_by_fields_it_never_had():
    config = build.load_config(_toy("smoke"))
    old = _stored(config, drop=("training.objective", "model.rf_T", "optim.beta2", "model.sigma_data"))
    with config.unlocked():
        config.training.objective = "flow_matching"  # the code's default changed after the run: not compared
    assert build.config_differences(old, config) == []
    assert build.check_resume_config(old, config) == []


def test_fields_that_change_the_run_are_reported_with_both_values():
    config = build.load_config(_toy("smoke"))
    stored = _stored(config)
    with config.unlocked():
        config.model.beta_max = 10.0
        config.optim.lr = 5e-4
        config.training.n_iters = 99  # safe: how long a run goes
        config.sampling.method = "ode"  # safe: how it samples
    assert build.config_differences(stored, config) == [
        {"field": "model.beta_max", "stored": 20.0, "now": 10.0},
        {"field": "optim.lr", "stored": 1e-3, "now": 5e-4},
    ]
    with pytest.raises(build.ConfigMismatchError, match=r"model\.beta_max: checkpoint 20\.0, now 10\.0; optim\.lr"):
        build.check_resume_config(stored, config, workdir="runs/x")
    with config.unlocked():
        config.training.allow_config_change = True
    assert [d["field"] for d in build.check_resume_config(stored, config)] == ["model.beta_max", "optim.lr"]


def test_a_classifier_resume_compares_only_what_the_classifier_depends_on():
    config = load_config("toy2d_vp_cond", "smoke,classifier")
    stored = _stored(config)
    with config.unlocked():
        config.optim.lr = 0.5  # the score model's optimiser: irrelevant to the classifier
        config.classifier.n_iters = 7  # safe
        config.classifier.lr = 0.25
    assert build.config_differences(stored, config, kind="classifier") == [
        {"field": "classifier.lr", "stored": 1e-3, "now": 0.25}
    ]


# ---------------------------------------------------------------------------------------------------------- RNG


def test_purpose_keys_are_fold_ins_of_the_table_numbers():
    root = build.root_key(build.load_config(_toy("smoke")))
    assert np.array_equal(jax.random.key_data(root), jax.random.key_data(jax.random.key(42)))
    assert np.array_equal(
        jax.random.key_data(build.purpose_key(root, "likelihood")), jax.random.key_data(jax.random.fold_in(root, 6))
    )
    assert len(set(build.PURPOSE.values())) == len(build.PURPOSE)
    with pytest.raises(KeyError, match="unknown RNG purpose 'dropout'"):
        build.purpose_key(root, "dropout")


# ------------------------------------------------------------------------------------------------- valid ranges


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("training.keep_checkpoints", 0, "an integer >= 1 (the newest complete checkpoint is always kept)"),
        ("training.log_freq", 0, "an integer >= 1"),
        ("training.n_iters", -1, "an integer >= 1"),
        ("optim.lr", float("nan"), "a finite number > 0"),
        ("eval.bpd_eps", 0.0, "a number in (0, 1)"),
    ],
)
def test_an_out_of_range_value_is_rejected_at_load_naming_the_field_and_the_range(field, value, expected):
    config = load_config("toy2d_vp", "smoke")
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(
        ValueError, match=f"config.{field}=.*expected {expected}".replace("(", r"\(").replace(")", r"\)")
    ):
        build.as_config(config)


def test_every_shipped_config_and_variant_is_in_range():
    for path in glob.glob(os.path.join(CONFIGS, "**", "*.py"), recursive=True):
        module = config_defaults.load_module(path)
        if hasattr(module, "get_config"):
            config_defaults.validate(module.get_config())
