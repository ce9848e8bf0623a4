"""The parameterisation layer: every output type gives the same exact score; reference conventions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import analytic
from scoresde import parameterization as P
from scoresde import sde as sde_lib

SDES = [sde_lib.VPSDE(), sde_lib.SubVPSDE(), sde_lib.VESDE()]


def _exact_outputs(gm, sde, x, t):
    """The exact network outputs of every type, derived from the exact score."""
    score = gm.score_fn(sde)(x, t)
    a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    x0 = (x + s**2 * score) / a
    eps = -s * score
    v = a * eps - s * x0
    return {"score": score, "eps": eps, "x0": x0, "v": v, "flow_velocity": eps - x0}


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
# "edm" is a preconditioned network (input scaled by c_in): tests/test_losses_flow.py checks it.
@pytest.mark.parametrize("output", [o for o in P.OUTPUTS if o != "edm"])
def test_every_output_type_recovers_the_score_and_denoiser(sde, output):
    gm = analytic.GaussianMixture(jnp.array([[1.0, -1.0], [-1.0, 0.5]]), jnp.array([0.3, 0.6]))
    x = gm.sample(jax.random.key(0), 8) + 0.2
    t = jnp.linspace(0.05, 0.95, 8)
    outs = _exact_outputs(gm, sde, x, t)
    # a "network" returning the exact output of this type, reading the time back from its label
    net = lambda xx, labels: _exact_outputs(gm, sde, xx, labels)[output]
    score_fn = P.model_score_fn(net, sde, output=output, time_label="t")
    np.testing.assert_allclose(score_fn(x, t), outs["score"], rtol=2e-4, atol=2e-4)
    denoiser = P.model_denoiser(net, sde, output=output, time_label="t")
    np.testing.assert_allclose(denoiser(x, t), outs["x0"], rtol=2e-4, atol=2e-4)
    # and target_from produces what a perfectly trained network would regress on
    x0, z = gm.sample(jax.random.key(1), 8), jax.random.normal(jax.random.key(2), (8, 2))
    a, s = sde.alpha(t), sde.sigma(t)
    xt = a[:, None] * x0 + s[:, None] * z
    tgt = P.target_from(x0, z, a, s, output)
    np.testing.assert_allclose(P.output_to_score(tgt, xt, a, s, output), -z / s[:, None], rtol=1e-4, atol=1e-4)


def test_reference_label_conventions():
    t = jnp.array([0.9, 0.5, 0.1, 1e-3])
    vp, ve = sde_lib.VPSDE(), sde_lib.VESDE()
    assert P.reference_convention(vp, True) == {"output": "eps", "time_label": "999t"}
    assert P.reference_convention(sde_lib.SubVPSDE(), True) == {"output": "eps", "time_label": "999t"}
    assert P.reference_convention(vp, False) == {"output": "eps", "time_label": "vp_discrete"}
    assert P.reference_convention(ve, True) == {"output": "score", "time_label": "sigma"}
    assert P.reference_convention(ve, False) == {"output": "score", "time_label": "ve_discrete"}
    np.testing.assert_allclose(P.time_labels(vp, t, "999t"), 999 * t, rtol=1e-6)
    np.testing.assert_allclose(P.time_labels(ve, t, "sigma"), ve.sigma(t), rtol=1e-6)
    np.testing.assert_allclose(P.time_labels(vp, t, "vp_discrete"), t * 999, rtol=1e-6)
    np.testing.assert_array_equal(P.time_labels(ve, t, "ve_discrete"), np.round((1 - np.asarray(t)) * 999).astype(int))
    with pytest.raises(ValueError, match="discrete training"):
        P.reference_convention(sde_lib.SubVPSDE(), False)


def test_continuous_vp_reference_score_is_minus_out_over_std():
    vp = sde_lib.VPSDE()
    out = jax.random.normal(jax.random.key(0), (4, 3))
    seen = {}

    def net(x, labels):
        seen["labels"] = labels
        return out

    t = jnp.array([0.9, 0.5, 0.1, 1e-3])
    score = P.model_score_fn(net, vp, **P.reference_convention(vp))(jnp.zeros((4, 3)), t)
    np.testing.assert_allclose(seen["labels"], 999 * t, rtol=1e-6)
    np.testing.assert_allclose(score, -out / vp.marginal_prob(jnp.zeros((4, 3)), t)[1][:, None], rtol=1e-6)


def test_discrete_vp_uses_the_ddpm_schedule():
    vp = sde_lib.VPSDE()
    out = jnp.ones((2, 1))
    t = jnp.array([0.5, 0.25])
    score = P.model_score_fn(lambda x, l: out, vp, output="eps", time_label="vp_discrete")(jnp.zeros((2, 1)), t)
    idx = (np.asarray(t) * 999).astype(int)
    np.testing.assert_allclose(score[:, 0], -1 / vp.sqrt_1m_alphas_cumprod[idx], rtol=1e-6)


def test_bad_names_are_clear_errors():
    with pytest.raises(ValueError, match="unknown network output 'noise'"):
        P.model_score_fn(lambda x, l: x, sde_lib.VPSDE(), output="noise", time_label="t")
    with pytest.raises(ValueError, match="unknown time label"):
        P.model_score_fn(lambda x, l: x, sde_lib.VPSDE(), output="eps", time_label="1000t")
