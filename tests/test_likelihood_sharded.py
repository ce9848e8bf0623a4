"""Data-parallel likelihood: 8 CPU devices give the per-example values of 1 device, whatever the NFE."""

import json
import os
import subprocess
import sys

import numpy as np

SCRIPT = r"""
import json
import jax, jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from scoresde import analytic, likelihood, sde as sde_lib

jax.config.update("jax_numpy_rank_promotion", "raise")
assert jax.device_count() == 8, jax.devices()
sde = sde_lib.VESDE()
# A two-component mixture: examples need different numbers of steps, so devices finish at different times.
gm = analytic.GaussianMixture(jnp.array([[-3.0, 0.0, 1.0, 0.0], [3.0, 1.0, 0.0, -1.0]]), jnp.array([0.2, 1.0]))
x = gm.sample(jax.random.key(0), 16)
score = gm.score_fn(sde)
run = lambda mesh: jax.jit(lambda x, k: likelihood.log_likelihood(score, sde, x, k, mesh=mesh))(x, jax.random.key(1))
one = run(None)
mesh = Mesh(np.asarray(jax.devices()), ("data",))
eight = run(mesh)
assert len(eight[0].sharding.device_set) == 8, eight[0].sharding
print(json.dumps({k: [np.asarray(a).tolist() for a in v] for k, v in (("one", one), ("eight", eight))}))
"""


def test_eight_devices_match_one():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    (logp1, z1, nfe1), (logp8, z8, nfe8) = res["one"], res["eight"]
    np.testing.assert_allclose(logp8, logp1, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(z8, z1, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(nfe8, nfe1)
    # The devices really had different amounts of work (the point of solving each example on its own).
    assert len(set(nfe1)) > 1, nfe1
    assert np.all(np.isfinite(logp1))
