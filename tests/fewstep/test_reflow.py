"""Reflow (``scoresde.fewstep.reflow``) against the optimal-transport map of 1-D Gaussians."""

import jax
import jax.numpy as jnp
import numpy as np

from scoresde import parameterization as P
from scoresde import sde as sde_lib
from scoresde.fewstep import reflow


def _fit_velocity(x0, z, key, degree=4):
    """Least-squares fit of v(x, t) = a(t) x + b(t) (polynomials in t) to the flow-matching target:
    the flow-matching loss is quadratic in (a, b), so its minimiser over the family is a linear solve."""
    t = jax.random.uniform(key, (x0.shape[0],), jnp.float64)
    xt = (1 - t) * x0 + t * z
    feats = jnp.stack([t**k * xt for k in range(degree + 1)] + [t**k for k in range(degree + 1)], axis=1)
    coef = jnp.linalg.lstsq(feats, z - x0)[0]
    return lambda x, tt: sum(coef[k] * tt**k * x + coef[degree + 1 + k] * tt**k for k in range(degree + 1))


def test_reflow_one_euler_step_of_2_rectified_flow_is_the_ot_map():
    """1-D N(0,1) -> N(m, s²): the OT map is m + s z. One Euler step of the 1-rectified flow (independent
    coupling) gives v(z, 1) = z - m, i.e. collapses to m; the 2-rectified flow, fitted on couplings from the
    ODE sampler, has straight paths and its one Euler step reaches the OT map."""
    with jax.enable_x64(True):
        m, s = 2.0, 0.5
        sde = sde_lib.RectifiedFlow()
        var = s**2
        tot = lambda t: (1 - t) ** 2 * var + t**2
        model = P.with_denoiser(
            lambda x, t: -(x - (1 - t)[:, None] * m) / tot(t)[:, None],
            lambda x, t: m + ((1 - t) * var / tot(t))[:, None] * (x - (1 - t)[:, None] * m),
        )
        n = 20_000
        noise, samples, nfe = reflow.make_couplings(
            model, sde, (n, 1), jax.random.key(0), method="unipc", steps=40, eps=1e-3
        )
        np.testing.assert_allclose(
            samples, (1 - 1e-3) * m + jnp.sqrt((1 - 1e-3) ** 2 * var + 1e-6) * noise, atol=1e-2
        )  # the 1-RF ODE map (to t = 1e-3) is affine here
        z, x0 = noise[:, 0], samples[:, 0]
        v2 = _fit_velocity(x0, z, jax.random.key(1))
        x_indep = m + s * jax.random.normal(jax.random.key(2), (n,), jnp.float64)
        v1 = _fit_velocity(x_indep, z, jax.random.key(1))
        z_test = jax.random.normal(jax.random.key(3), (1000,), jnp.float64)
        ot = m + s * z_test
        err2 = float(jnp.sqrt(jnp.mean((z_test - v2(z_test, 1.0) - ot) ** 2)))
        err1 = float(jnp.sqrt(jnp.mean((z_test - v1(z_test, 1.0) - ot) ** 2)))
        assert err2 < 0.01, err2  # observed ~2e-3 (the couplings' sampler error)
        assert err1 > 0.3, err1  # ~ s = 0.5: one step of the 1-RF collapses to the mean
        loss, _ = reflow.reflow_loss(lambda x, t: v2(x[:, 0], t)[:, None], noise, samples, jax.random.key(4))
        assert float(loss) < 1e-4
