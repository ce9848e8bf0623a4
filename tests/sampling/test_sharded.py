"""Samplers on a batch sharded over a ('data',) mesh of 8 CPU devices equal the single-device run.

Runs in a subprocess because the device count is fixed when JAX starts. Both mesh axis types are
covered (Auto, as ``scoresde.parallel.make_mesh`` builds, and Explicit, ``jax.make_mesh``'s default);
the score function is a pytree (``jax.tree_util.Partial``) whose parameters are replicated arrays, as
a network's would be. Equality with the unsharded run also shows that the Langevin step size uses
norms over the global batch (per-device norms would give different samples).
"""

import os
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_numpy_rank_promotion", "raise")
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    from scoresde import analytic, sampling
    from scoresde import sde as sde_lib

    assert jax.device_count() == 8
    sde = sde_lib.VPSDE(N=40)
    gm = analytic.GaussianMixture(jnp.array([[-1.0, 0.5, 0.0, 1.0], [1.0, 0.0, 0.5, -1.0]]), jnp.array([0.3, 0.6]))
    base = gm.score_fn(sde)

    def score(scale, x, t):
        return scale * base(x, t)

    x0 = sde.prior_sampling(jax.random.key(1), (16, 4))
    cases = [("pc", {"predictor": "reverse_diffusion", "corrector": "langevin"}), ("ode", {}),
             ("ddim", {"steps": 8, "eta": 0.5}), ("dpm_solver++", {"steps": 8}),
             ("edm_heun", {"steps": 6, "S_churn": 5.0})]
    reference = {}
    for method, opts in cases:
        fn = jax.tree_util.Partial(score, jnp.asarray(1.0))
        reference[method, str(opts)] = sampling.sample(fn, sde, (16, 4), jax.random.key(0), method=method,
                                                       x_init=x0, **opts)
    for kind in (AxisType.Auto, AxisType.Explicit):
        mesh = jax.make_mesh((8,), ("data",), axis_types=(kind,))
        data = NamedSharding(mesh, P("data"))
        xs = jax.device_put(x0, data)
        scale = jax.device_put(jnp.asarray(1.0), NamedSharding(mesh, P()))
        for method, opts in cases:
            fn = jax.tree_util.Partial(score, scale)
            with jax.set_mesh(mesh):
                x, nfe = sampling.sample(fn, sde, (16, 4), jax.random.key(0), method=method, x_init=xs, **opts)
            ref_x, ref_nfe = reference[method, str(opts)]
            assert x.sharding.spec[0] == "data", (kind, method, x.sharding)
            assert len(x.sharding.device_set) == 8
            assert int(nfe) == int(ref_nfe), (kind, method, int(nfe), int(ref_nfe))
            err = float(jnp.max(jnp.abs(x - ref_x)))
            assert err < 1e-4, (kind, method, err)
        # prior drawn inside the sampler, placed by the `sharding` option
        with jax.set_mesh(mesh):
            x, _ = sampling.sample(base, sde, (16, 4), jax.random.key(0), method="ddim", steps=4, sharding=data)
        assert x.sharding.spec[0] == "data"
        # encode runs on the sharded batch too
        with jax.set_mesh(mesh):
            z, _ = sampling.encode(base, sde, xs, rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(z, sampling.encode(base, sde, x0, rtol=1e-3, atol=1e-3)[0], atol=1e-4)
    print("SHARDED_OK")
    """
)


@pytest.mark.slow  # over 20 s on 2 cores: run with -m slow
def test_samplers_on_8_device_mesh_match_single_device():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    env["JAX_PLATFORMS"] = "cpu"
    root = REPO
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=root, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0 and "SHARDED_OK" in out.stdout, out.stdout[-3000:] + out.stderr[-5000:]
