"""Flow matching, EDM preconditioning and the new processes' likelihood, against closed forms.
(Reflow is in ``fewstep/test_reflow.py``.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import analytic, losses
from scoresde import parameterization as P
from scoresde import sde as sde_lib
from scoresde.likelihood import log_likelihood

MU = np.array([0.4, -0.3])
VAR = np.array([0.2, 0.7]) ** 2


def _gauss64(sde):
    mu, var = jnp.asarray(MU), jnp.asarray(VAR)

    def tot(t):
        return sde.alpha(t)[:, None] ** 2 * var[None] + sde.sigma(t)[:, None] ** 2

    score = lambda x, t: -(x - sde.alpha(t)[:, None] * mu[None]) / tot(t)
    den = lambda x, t: mu[None] + sde.alpha(t)[:, None] * var[None] / tot(t) * (x - sde.alpha(t)[:, None] * mu[None])
    return score, den


def test_flow_velocity_from_tweedie_is_the_flow_maps_time_derivative():
    """v = E[z - x0 | x_t] = -t s - (x + t² s)/(1 - t) from the exact score; it is d/dt of the exact flow map, and
    model_score_fn(output='flow_velocity') turns it back into the exact score and denoiser."""
    with jax.enable_x64(True):
        sde = sde_lib.RectifiedFlow()
        score, den = _gauss64(sde)
        x = jax.random.normal(jax.random.key(0), (6, 2), jnp.float64)
        t = jnp.full((6,), 0.37)
        s = score(x, t)
        v = -t[:, None] * s - (x + t[:, None] ** 2 * s) / (1 - t[:, None])
        mu, var = jnp.asarray(MU)[None], jnp.asarray(VAR)[None]

        def flow(x, t0, t1):
            return (1 - t1) * mu + (x - (1 - t0) * mu) * jnp.sqrt(
                ((1 - t1) ** 2 * var + t1**2) / ((1 - t0) ** 2 * var + t0**2)
            )

        d = 1e-5
        fd = (flow(x, 0.37, 0.37 + d) - flow(x, 0.37, 0.37 - d)) / (2 * d)
        np.testing.assert_allclose(v, fd, rtol=1e-8, atol=1e-8)
        model = P.model_score_fn(
            lambda xx, labels: (
                -labels[:, None] * score(xx, labels)
                - (xx + labels[:, None] ** 2 * score(xx, labels)) / (1 - labels[:, None])
            ),
            sde,
            output="flow_velocity",
            time_label="t",
        )
        np.testing.assert_allclose(model(x, t), s, rtol=1e-10)
        np.testing.assert_allclose(model.denoiser(x, t), den(x, t), rtol=1e-10)
        # at t = 1 the velocity model's denoiser is x - v, finite (E[x0] for the exact v = x - E[x0])
        one = jnp.ones((6,))
        vel_at_1 = lambda xx, labels: xx - mu
        m1 = P.model_score_fn(vel_at_1, sde, output="flow_velocity", time_label="t")
        np.testing.assert_allclose(m1.denoiser(x, one), jnp.broadcast_to(mu, x.shape), rtol=1e-12)
        np.testing.assert_allclose(P.target_from(x, 2 * x, 1 - t, t, "flow_velocity"), x)


def test_flow_matching_loss_at_exact_velocity_equals_closed_form_minimum():
    with jax.enable_x64(True):
        sde = sde_lib.RectifiedFlow()
        score, _ = _gauss64(sde)

        def velocity(x, t):
            s = score(x, t)
            return -t[:, None] * s - (x + t[:, None] ** 2 * s) / (1 - t[:, None])

        batch = jnp.asarray(MU)[None] + jnp.sqrt(jnp.asarray(VAR))[None] * jax.random.normal(
            jax.random.key(1), (200_000, 2), jnp.float64
        )
        loss, aux = losses.flow_matching_loss(velocity, batch, jax.random.key(2))
        expected = losses.gaussian_flow_matching_minimum(VAR)
        se = float(jnp.std(aux["losses"])) / np.sqrt(batch.shape[0])
        assert abs(float(loss) - expected) < 4 * se, (float(loss), expected, se)
        # a wrong velocity (ignoring x0's mean) is many standard errors worse
        worse, _ = losses.flow_matching_loss(lambda x, t: velocity(x, t) + 0.3, batch, jax.random.key(2))
        assert float(worse) - expected > 20 * se
        ln, aux_ln = losses.flow_matching_loss(velocity, batch[:1000], jax.random.key(3), time_sampling="logit_normal")
        assert bool(jnp.all((aux_ln["t"] > 0) & (aux_ln["t"] < 1)))


def test_edm_preconditioned_denoiser_with_exact_score_is_posterior_mean_and_loss_minimum():
    with jax.enable_x64(True):
        sde, sd = sde_lib.EDMSDE(), 0.5
        score, den = _gauss64(sde)

        def net(x_in, c_noise):  # the F that makes D exact: F = (D - c_skip x) / c_out
            sigma = jnp.exp(4 * c_noise)
            c_skip, c_out, c_in, _ = P.edm_preconditioning(sigma, sd)
            x = x_in / c_in[:, None]
            d = x + sigma[:, None] ** 2 * score(x, sigma)  # Tweedie with alpha = 1
            return (d - c_skip[:, None] * x) / c_out[:, None]

        model = P.model_score_fn(net, sde, output="edm", time_label="edm_noise", sigma_data=sd)
        x = 3 * jax.random.normal(jax.random.key(0), (5, 2), jnp.float64)
        sig = jnp.array([0.002, 0.1, 1.0, 10.0, 80.0])
        np.testing.assert_allclose(model.denoiser(x, sig), den(x, sig), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(model(x, sig), score(x, sig), rtol=1e-9)
        c_skip, c_out, c_in, c_noise = P.edm_preconditioning(jnp.asarray(2.0), sd)
        np.testing.assert_allclose(
            [c_skip, c_out, c_in, c_noise], [0.25 / 4.25, 1.0 / np.sqrt(4.25), 1 / np.sqrt(4.25), np.log(2.0) / 4]
        )
        # EDM loss at the exact denoiser: E_sigma[lambda(sigma) mean_d v sigma² / (v + sigma²)]
        batch = jnp.asarray(MU)[None] + jnp.sqrt(jnp.asarray(VAR))[None] * jax.random.normal(
            jax.random.key(1), (200_000, 2), jnp.float64
        )
        loss, aux = losses.edm_loss(model.denoiser, batch, jax.random.key(2), sigma_data=sd)
        n = np.linspace(-8, 8, 20001)
        s2 = np.exp(2 * (-1.2 + 1.2 * n))
        lam = (s2 + sd**2) / (s2 * sd**2)
        per = lam * np.mean(VAR[None] * s2[:, None] / (VAR[None] + s2[:, None]), axis=1)
        expected = np.trapezoid(per * np.exp(-0.5 * n**2) / np.sqrt(2 * np.pi), n)
        se = float(jnp.std(aux["losses"])) / np.sqrt(batch.shape[0])
        assert abs(float(loss) - expected) < 4 * se, (float(loss), expected, se)


@pytest.mark.slow  # 15-35 s on 2 shared CPU cores
def test_likelihood_of_exact_model_equals_closed_form_plus_prior_mismatch():
    """log_likelihood = log p_eps(x) + [log N(z; 0, prior²) - log p_T(z)] exactly (the prior-mismatch term),
    for RectifiedFlow(T=0.999) (t = 1 is singular for the ODE) and EDMSDE."""
    gm = analytic.GaussianMixture(jnp.array([[0.5, -0.5], [-0.5, 0.3]]), jnp.array([0.3, 0.5]))
    for sde, eps in ((sde_lib.RectifiedFlow(T=0.999), 1e-3), (sde_lib.EDMSDE(sigma_max=20.0), 0.002)):
        x = gm.sample(jax.random.key(0), 4)
        logp, z, _ = log_likelihood(
            gm.score_fn(sde), sde, x, jax.random.key(1), hutchinson="exact", eps=eps, rtol=1e-6, atol=1e-6
        )
        t_eps, t_T = jnp.full((4,), eps), jnp.full((4,), sde.T)
        mismatch = sde.prior_logp(z) - gm.log_prob_t(sde, z, t_T)
        np.testing.assert_allclose(logp, gm.log_prob_t(sde, x, t_eps) + mismatch, atol=2e-3)
        assert float(jnp.max(jnp.abs(mismatch))) < 0.5  # the stated term is small but not zero
        assert float(jnp.max(jnp.abs(mismatch))) > 0
