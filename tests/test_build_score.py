"""The config edge's score concerns: the SDE of a config and the network's output convention."""

import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import build
from scoresde import sde as sde_lib

from conftest import load_config


def _with(config, **fields):
    """``config`` with dotted fields set, e.g. ``_with(c, **{"training.sde": "vesde"})``."""
    with config.unlocked():
        for dotted, value in fields.items():
            section, name = dotted.split(".")
            config[section][name] = value
    return config


@pytest.mark.parametrize(
    "name,cls,expected",
    [
        ("vpsde", sde_lib.VPSDE, dict(beta_min=0.2, beta_max=15.0, N=40)),
        ("VP", sde_lib.VPSDE, dict(beta_min=0.2, beta_max=15.0, N=40)),
        ("subvpsde", sde_lib.SubVPSDE, dict(beta_min=0.2, beta_max=15.0, N=40)),
        ("vesde", sde_lib.VESDE, dict(sigma_min=0.05, sigma_max=30.0, N=40)),
        ("edm", sde_lib.EDMSDE, dict(sigma_min=0.05, sigma_max=30.0, N=40)),
        ("rectified_flow", sde_lib.RectifiedFlow, dict(T=0.999, N=40)),
    ],
)
def test_make_sde_reads_the_model_constants_of_its_family(name, cls, expected):
    config = _with(
        load_config("toy2d_vp", "smoke"),
        **{
            "training.sde": name,
            "model.beta_min": 0.2,
            "model.beta_max": 15.0,
            "model.sigma_min": 0.05,
            "model.sigma_max": 30.0,
            "model.num_scales": 40,
            "model.rf_T": 0.999,
        },
    )
    sde = build.make_sde(config)
    assert type(sde) is cls
    assert {k: getattr(sde, k) for k in expected} == expected


def test_make_sde_names_an_unknown_sde():
    config = _with(load_config("toy2d_vp", "smoke"), **{"training.sde": "vpp"})
    with pytest.raises(ValueError, match="unknown sde 'vpp'; expected one of: vpsde, subvpsde, vesde"):
        build.make_sde(config)


def test_reference_conventions_of_dsm_configs():
    vp = load_config("digits_vp")
    assert build.score_convention(vp, build.make_sde(vp)) == {"output": "eps", "time_label": "999t"}
    ve = load_config("cifar10_ve")
    assert build.score_convention(ve, build.make_sde(ve)) == {"output": "score", "time_label": "sigma"}
    discrete = _with(load_config("digits_vp"), **{"training.continuous": False})
    assert build.score_convention(discrete, build.make_sde(discrete)) == {"output": "eps", "time_label": "vp_discrete"}


def test_an_objective_fixes_the_output_and_the_config_may_choose_the_label():
    fm = load_config("toy2d_fm")
    assert build.score_convention(fm, build.make_sde(fm)) == {"output": "flow_velocity", "time_label": "t"}
    edm = load_config("cifar10_edm")
    assert build.score_convention(edm, build.make_sde(edm))["output"] == "edm"
    relabelled = _with(load_config("toy2d_fm"), **{"model.time_label": "999t"})
    assert build.score_convention(relabelled, build.make_sde(relabelled)) == {
        "output": "flow_velocity",
        "time_label": "999t",
    }
    contradicting = _with(load_config("toy2d_fm"), **{"model.output": "eps"})
    with pytest.raises(ValueError, match="config.model.output='eps' contradicts config.training.objective="):
        build.score_convention(contradicting, build.make_sde(contradicting))


def test_an_explicit_output_and_label_replace_the_reference_convention():
    config = _with(load_config("toy2d_vp", "smoke"), **{"model.output": "x0", "model.time_label": "t"})
    assert build.score_convention(config, build.make_sde(config)) == {"output": "x0", "time_label": "t"}


def test_make_score_model_carries_sigma_data_and_the_convention():
    config = _with(load_config("cifar10_edm"), **{"model.sigma_data": 0.25})
    model = build.make_score_model(config)
    assert isinstance(model.sde, sde_lib.EDMSDE)
    assert (model.output, model.time_label, model.sigma_data) == ("edm", "edm_noise", 0.25)
    assert model.eps == build.sampling_eps(model.sde)


def test_score_fn_of_an_eps_network_is_minus_eps_over_sigma():
    config = load_config("toy2d_vp", "smoke")
    model = build.make_score_model(config)
    x, t = jnp.ones((3, 2)), jnp.array([0.1, 0.5, 1.0])
    eps = jnp.full((3, 2), 0.3)
    seen = {}

    def net(xx, labels):
        seen["labels"] = labels
        return eps

    score = model.net_score_fn(net)(x, t)
    np.testing.assert_allclose(seen["labels"], 999.0 * t, rtol=1e-6)
    np.testing.assert_allclose(score, -eps / model.sde.sigma(t)[:, None], rtol=1e-5)


def test_training_objective():
    assert build.training_objective(load_config("toy2d_vp", "smoke")) == "dsm"
    assert build.training_objective(load_config("toy2d_fm")) == "flow_matching"
    empty = _with(load_config("toy2d_vp", "smoke"), **{"training.objective": ""})
    assert build.training_objective(empty) == "dsm"
    bad = _with(load_config("toy2d_vp", "smoke"), **{"training.objective": "sm"})
    with pytest.raises(ValueError, match="unknown objective 'sm'; expected one of: dsm, flow_matching, edm, ct"):
        build.training_objective(bad)


def test_class_labels_only_for_class_conditional_configs():
    unconditional = load_config("toy2d_vp", "smoke")
    assert (build.num_classes(unconditional), build.guidance_kind(unconditional)) == (0, "none")
    batch = {"label": np.array([0, 4, 8])}
    assert build.class_labels(unconditional, batch, None) is None
    conditional = _with(load_config("toy2d_vp_cond", "smoke"), **{"training.p_uncond": 0.0})
    assert (build.num_classes(conditional), build.guidance_kind(conditional)) == (9, "cfg")
    np.testing.assert_array_equal(build.class_labels(conditional, batch, None), [0, 4, 8])


def test_caption_conditioning_comes_from_the_batch_with_whole_captions_dropped():
    import jax

    config = load_config("digits_t2i")
    assert build.conditioning_kind(config) == "text"
    tokens = np.arange(1, 1 + 4000 * 3, dtype=np.int32).reshape(4000, 3)
    y = np.asarray(build.class_labels(config, {"image": None, "caption": tokens}, jax.random.key(0)))
    dropped = np.all(y == 0, axis=1)
    assert np.all(dropped | np.all(y == tokens, axis=1))
    p = float(config.training.p_uncond)
    assert abs(dropped.mean() - p) < 4 * np.sqrt(p * (1 - p) / len(y))
    with pytest.raises(ValueError, match=r"batch\['caption'\].*config.data.captions=True"):
        build.class_labels(config, {"image": None, "label": None}, jax.random.key(0))
