"""The config edge's inverse problems: operator names, posterior settings, restore counts."""

import pytest

from scoresde import build

from conftest import load_config


def _inverse(variant="smoke", **fields):
    config = load_config("digits_inverse", variant)
    with config.unlocked():
        config.inverse.update(fields)
    return config


def test_operator_names():
    assert build.inverse_operator_name(load_config("digits_vp", "smoke")) == "none"
    assert build.inverse_operator_name(_inverse("smoke,deblur", operator="Deblur")) == "deblur"
    with pytest.raises(ValueError, match="unknown config.inverse.operator 'blur'; expected one of: none, inpainting"):
        build.inverse_operator_name(_inverse(operator="blur"))
    assert build.operator_from_config(load_config("digits_vp", "smoke")) is None


def test_posterior_settings_per_method():
    assert build.posterior_settings(_inverse()) == dict(
        method="pigdm", sigma_y=0.05, scale=5.0, data_var=1e4, cg_steps=5, jacobian="network"
    )
    assert build.posterior_settings(_inverse(method="DPS", sigma_y=0.1)) == dict(
        method="dps", sigma_y=0.1, scale=5.0, weighting="normalized"
    )
    assert build.posterior_settings(_inverse(method="replacement")) == dict(method="replacement", sigma_y=0.05)


@pytest.mark.parametrize(
    "fields,message",
    [
        (dict(method="ddrm"), "unknown config.inverse.method 'ddrm'; expected one of: replacement, dps, pigdm"),
        (dict(sigma_y=-0.1), "config.inverse.sigma_y must be >= 0; got -0.1"),
        (dict(method="dps", weighting="l1"), "unknown config.inverse.weighting 'l1'"),
        (dict(jacobian="exact"), "unknown config.inverse.jacobian 'exact'"),
    ],
)
def test_bad_posterior_settings_are_named(fields, message):
    with pytest.raises(ValueError, match=message):
        build.posterior_settings(_inverse(**fields))


def test_restore_counts():
    assert build.restore_counts(_inverse()) == (8, 1)
    assert build.restore_counts(_inverse(samples_per_image=4, num_images=3)) == (3, 4)
    with pytest.raises(ValueError, match="config.inverse.samples_per_image must be >= 1; got 0"):
        build.restore_counts(_inverse(samples_per_image=0))
    with pytest.raises(ValueError, match="config.inverse.num_images must be >= 1; got 0"):
        build.restore_counts(_inverse(num_images=0))
