"""``sample(method="meanflow")`` against the exact average velocity of a Gaussian under rectified flow.

Oracle: :meth:`scoresde.analytic.GaussianMixture.flow_map` is the exact probability-flow map of one Gaussian, so
``u*(z, r, t) = (z - Φ_{t→r}(z)) / (t - r)`` is the exact average velocity and every MeanFlow jump with it lands
on the exact trajectory: 1, 2 or k jumps from ``ε`` all give ``Φ_{1→0}(ε)``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import sampling
from scoresde import sde as sde_lib
from scoresde.analytic import GaussianMixture, random_rotation
from scoresde.fewstep import meanflow as fewstep_meanflow

RF = sde_lib.RectifiedFlow()
GAUSS = GaussianMixture(
    np.array([[0.3, -0.2]]), np.array([[0.6, 0.25]]), rotation=np.asarray(random_rotation(jax.random.key(3), 2))
)


def _u_exact(z, r, t):
    return (z - GAUSS.flow_map(RF, z, t, r)) / (t - r)[:, None]


@pytest.mark.parametrize("options, nfe", [(dict(), 1), (dict(steps=2), 2), (dict(times=(0.8, 0.3)), 3)])
def test_exact_average_velocity_reproduces_the_flow_map_through_the_front_door(options, nfe):
    x_init = jax.random.normal(jax.random.key(1), (64, 2))
    exact = GAUSS.flow_map(RF, x_init, 1.0, 0.0)
    x, n = sampling.sample(_u_exact, RF, (64, 2), jax.random.key(0), method="meanflow", x_init=x_init, **options)
    assert int(n) == nfe
    # the map moves every point by far more than the tolerance
    assert float(jnp.min(jnp.max(jnp.abs(exact - x_init), axis=1))) > 0.05
    np.testing.assert_allclose(x, exact, atol=2e-5)
    # the library's own loop (fewstep.meanflow) is the same jumps
    if "times" not in options:
        y, m = fewstep_meanflow.meanflow_sample(_u_exact, jax.random.key(0), (64, 2), x_init=x_init, **options)
        np.testing.assert_allclose(y, x, atol=1e-6)
        assert int(m) == nfe


def test_instantaneous_velocity_is_not_an_average_velocity():
    """One jump with ``u(z, 1, 1) = v`` (an Euler step on a flow-matching model) misses the flow map by far."""
    x_init = jax.random.normal(jax.random.key(1), (64, 2))
    v_as_u = lambda z, r, t: _u_exact(z, t - 1e-3, t)
    x, _ = sampling.sample(v_as_u, RF, (64, 2), jax.random.key(0), method="meanflow", x_init=x_init)
    assert float(jnp.max(jnp.abs(x - GAUSS.flow_map(RF, x_init, 1.0, 0.0)))) > 0.05


def test_meanflow_refuses_other_processes_and_bad_times():
    with pytest.raises(ValueError, match="method 'meanflow' .* rectified flow.*got sde=VPSDE"):
        sampling.sample(_u_exact, sde_lib.VPSDE(), (4, 2), jax.random.key(0), method="meanflow")
    with pytest.raises(ValueError, match="steps = len\\(times\\) \\+ 1"):
        sampling.sample(_u_exact, RF, (4, 2), jax.random.key(0), method="meanflow", steps=2, times=(0.7, 0.3))
    with pytest.raises(ValueError, match="decrease strictly"):
        sampling.sample(_u_exact, RF, (4, 2), jax.random.key(0), method="meanflow", times=(0.3, 0.7))
    with pytest.raises(ValueError, match=r"score_fn\(x, r, t\) returns shape"):
        sampling.sample(lambda z, r, t: z[:, :1], RF, (4, 2), jax.random.key(0), method="meanflow")
    traits = sampling.method_traits("meanflow")
    assert traits.average_velocity and traits.deterministic and not traits.uses_grid
