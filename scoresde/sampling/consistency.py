"""Consistency sampling (Song et al., "Consistency Models", ICML 2023, Algorithm 1): 1 to k network calls.

``f(x, t)`` is a consistency function: it maps a point at time ``t`` of a probability-flow trajectory to
the trajectory's point at the boundary time ``eps`` (see :mod:`scoresde.fewstep.consistency`). Given the prior draw
``x_T`` (``τ_0 = T``) and the paper's decreasing re-noising times ``τ_1 > ... > τ_{k-1}`` in ``(eps, T)``
(the ``times`` option of ``sample(method="consistency")``; ``steps = k = len(times) + 1``):

1. ``x ← f(x_{τ_0}, τ_0)``;
2. for ``n = 1 .. k-1``: re-noise ``x`` (a draw at ``eps``) to ``τ_n`` with the forward SDE's exact
   transition ``p(x_{τ_n} | x_eps) = N((alpha_n / alpha_eps) x, sigma_n² - (alpha_n / alpha_eps)² sigma_eps²)``
   (the paper's ``x + sqrt(τ_n² - eps²) z`` written in the SDE's own coordinates), then ``x ← f(x, τ_n)``.

With the exact consistency function every iterate is an exact draw from ``p_eps`` whatever the times: the
re-noising maps ``p_eps`` to ``p_{τ_n}`` and ``f`` maps that back. Default times: the ρ-grid
(:func:`scoresde.sampling.grids.time_grid`, ``kind="edm"``, ``rho = 7``) of ``k`` intervals from ``T`` to
``eps`` without its end points; e.g. for VP (``beta`` 0.1..20, ``eps = 1e-3``, noise levels ``σ̃ = sigma/alpha``
from 0.0105 to 152) and ``k = 2`` the one re-noising time is ``τ_1 = 0.592`` (``σ̃_1 = 5.81``).

The ``project_fn(x, t, key)`` hook (inpainting / colorization, :mod:`scoresde.guidance`) is applied after
each ``f``, at ``t = eps``; the re-noising then carries the replaced known part to its exact ``τ_n``-marginal,
which is the paper's zero-shot editing (Algorithm 4) for a replacement projection.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from scoresde.sampling.grids import project, score_call, time_grid
from scoresde.sde import batch_mul

__all__ = ["SCM_T_MID", "default_times", "scm_times", "consistency_sample", "resolve_times", "resolve_scm_steps"]

# sCM's 2-step sampler re-noises to this TrigFlow time (Lu & Song, ICLR 2025, Sec. 5 / App. G: t_mid = 1.1)
SCM_T_MID = 1.1


def default_times(sde, steps: int, eps, *, rho=7.0, dtype=jnp.float32):
    """All ``steps`` evaluation times ``τ_0 = T > τ_1 > ... > τ_{steps-1} > eps`` of the default (ρ-grid) schedule."""
    return time_grid(sde, steps, eps, kind="edm", rho=rho, dtype=dtype)[:-1]


def scm_times(T, steps: int, times=None, *, dtype=jnp.float32):
    """sCM's evaluation times ``(T, τ_1, ..., τ_{k-1})`` on TrigFlow: ``(T,)`` for 1 step, ``(T, 1.1)`` for 2
    (the paper's ``t_mid``, :data:`SCM_T_MID`), or ``T`` and the given decreasing re-noising times."""
    if times is None:
        inner = jnp.asarray([SCM_T_MID][: steps - 1], dtype)
    else:
        inner = jnp.asarray(times, dtype).reshape(-1)
    return jnp.concatenate([jnp.asarray([T], dtype), inner])


def resolve_scm_steps(sde, steps, times):
    """Checks ``steps`` / ``times`` of sCM sampling (boundary time 0) and returns ``k``.

    Raises:
        ValueError: more than 2 steps without ``times`` (the paper gives only ``t_mid`` for 2), or ``times`` as
            :func:`resolve_times` refuses them on ``(0, T)``.
    """
    if times is None and steps is not None and steps not in (1, 2):
        raise ValueError(
            f"method 'scm' takes steps 1 or 2 without times (2 re-noises at t_mid = {SCM_T_MID}); got steps={steps}; "
            "pass times=(τ_1, ..., τ_{k-1}) for more"
        )
    return resolve_times(sde, 0.0, steps, times)


def resolve_times(sde, eps, steps, times):
    """Checks ``steps`` / ``times`` (the re-noising times ``τ_1 > ... > τ_{k-1}``) and returns ``k``.

    Called outside ``jit`` by :func:`scoresde.sampling.sample`; values are checked when concrete.

    Raises:
        ValueError: if ``times`` is not 1-D, disagrees with ``steps`` (``steps == len(times) + 1``), is not
            strictly decreasing, or leaves ``(eps, T)``.
    """
    if times is None:
        return 1 if steps is None else steps
    arr = jnp.asarray(times)
    if arr.ndim != 1:
        raise ValueError(f"times must be a 1-D sequence of decreasing re-noising times; got shape {arr.shape}")
    if steps is not None and steps != arr.shape[0] + 1:
        raise ValueError(f"steps={steps} but {arr.shape[0]} re-noising times were given (steps = len(times) + 1)")
    if arr.shape[0] and not isinstance(arr, jax.core.Tracer) and not isinstance(eps, jax.core.Tracer):
        a = np.asarray(arr, np.float64)
        if np.any(np.diff(a) >= 0) or a[-1] <= float(eps) or a[0] >= sde.T:
            raise ValueError(f"times must decrease strictly within (eps={float(eps)}, T={sde.T}); got {a.tolist()}")
    return int(arr.shape[0]) + 1


def consistency_sample(consistency_fn, sde, x, ts, key, nfe, *, eps, project_fn=None):
    """Multistep consistency sampling (Algorithm 1) from ``x`` at ``ts[0]`` on the decreasing times ``ts``.

    Args:
        consistency_fn: ``f(x, t) -> x_eps``, ``t`` of shape ``(B,)``.
        sde: the linear SDE ``f`` was built for.
        x: the initial state at ``ts[0]``, ``(B, ...)``.
        ts: ``(k,)`` decreasing times ``(τ_0, τ_1, .., τ_{k-1})``, all ``> eps``; ``τ_0`` is the time of ``x``.
        key: PRNG key for the re-noising.
        nfe: the running count of network calls (int32 scalar).
        eps: the boundary time.
        project_fn: optional ``project_fn(x, t, key) -> x`` applied after every ``f`` (at ``t = eps``).

    Returns:
        ``(x_eps, nfe)``: the samples at ``eps`` and ``nfe + k``.
    """
    dtype = x.dtype
    b = x.shape[0]
    eps = jnp.asarray(eps, dtype)
    a_eps, s_eps = sde.alpha(jnp.full((b,), eps)), sde.sigma(jnp.full((b,), eps))

    x, nfe = score_call(consistency_fn, x, ts[0], nfe)
    x = project(project_fn, x, eps, key, 0)

    def step(carry, inp):
        x, nfe = carry
        i, t = inp
        tv = jnp.full((b,), t, dtype)
        ratio = sde.alpha(tv) / a_eps
        # sigma_n² - ratio² sigma_eps² >= 0 for t > eps (the kernel's variance grows); clamp rounding.
        std = jnp.sqrt(jnp.maximum(sde.sigma(tv) ** 2 - (ratio * s_eps) ** 2, 0.0))
        z = jax.random.normal(jax.random.fold_in(key, i), x.shape, dtype)
        x = batch_mul(ratio, x) + batch_mul(std, z)
        x, nfe = score_call(consistency_fn, x, t, nfe)
        return (project(project_fn, x, eps, key, i), nfe), None

    (x, nfe), _ = jax.lax.scan(step, (x, nfe), (jnp.arange(1, ts.shape[0]), ts[1:].astype(dtype)))
    return x, nfe
