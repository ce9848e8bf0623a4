"""MeanFlow sampling (Geng et al., "Mean Flows for One-step Generative Modeling", 2025, Algorithm 2): k network calls.

A MeanFlow model is an *average velocity* ``u(z, r, t) = (1/(t - r)) ∫_r^t v(z_τ, τ) dτ`` of the rectified flow
``z_t = (1 - t) x + t ε`` (:class:`scoresde.sde.RectifiedFlow`; data at ``t = 0``, noise at ``t = 1``). One jump
``z_r = z_t - (t - r) u(z_t, r, t)`` lands exactly on the probability-flow trajectory when ``u`` is exact, so
``k`` jumps down a decreasing grid ``1 = t_0 > t_1 > ... > t_k = 0`` cost ``k`` network calls and, with the exact
``u``, reproduce the flow map ``Φ_{1→0}`` whatever the grid (the paper's 1-NFE sample is ``x = ε - u(ε, 0, 1)``).

The model is called as ``u_fn(z, r, t)`` with ``z`` of shape ``(B, ...)`` and ``r``, ``t`` of shape ``(B,)`` in
rectified-flow time (how a network embeds them, e.g. ``(t, t - r)``, is its own business; see
:mod:`scoresde.models`). The pure training math is :mod:`scoresde.fewstep.meanflow`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from scoresde.sde import batch_mul

__all__ = ["meanflow_step", "meanflow_times", "meanflow_sample"]


def meanflow_step(u_fn, z, r, t):
    """``z_r = z_t - (t - r) u(z_t, r, t)`` (exact for the exact ``u``); ``r``, ``t`` of shape ``(B,)``."""
    return z - batch_mul(t - r, u_fn(z, r, t))


def meanflow_times(T, steps: int, times=None, *, dtype=jnp.float32):
    """The grid ``(T, τ_1, ..., τ_{k-1}, 0)``: uniform in ``t`` with ``steps`` jumps, or through the given
    decreasing intermediate times ``τ_1 > ... > τ_{k-1}`` in ``(0, T)``."""
    if times is None:
        return jnp.linspace(jnp.asarray(T, dtype), 0.0, steps + 1, dtype=dtype)
    inner = jnp.asarray(times, dtype).reshape(-1)
    return jnp.concatenate([jnp.asarray([T], dtype), inner, jnp.zeros((1,), dtype)])


def meanflow_sample(u_fn, sde, x, ts, key, nfe):
    """MeanFlow jumps from ``x`` at ``ts[0]`` down the decreasing grid ``ts`` (last entry the end time, ``0``).

    Args:
        u_fn: the average velocity ``u_fn(z, r, t) -> u``, ``r``, ``t`` of shape ``(B,)``.
        sde: the process (:class:`scoresde.sde.RectifiedFlow`; its times are the grid's).
        x: the state at ``ts[0]``, ``(B, ...)``.
        ts: ``(k + 1,)`` decreasing times ``t_0 > ... > t_k``.
        key: unused (the jumps draw no noise); the front door's uniform signature.
        nfe: the running count of network calls (int32 scalar).

    Returns:
        ``(x, nfe)``: the state at ``ts[-1]`` and ``nfe + k``, counted in the loop.
    """
    del sde, key  # the grid is in the process's own time; the jumps need nothing else and draw no noise
    dtype, b = x.dtype, x.shape[0]

    def body(carry, inp):
        z, nfe = carry
        t, r = inp
        return (meanflow_step(u_fn, z, jnp.full((b,), r, dtype), jnp.full((b,), t, dtype)), nfe + 1), None

    ts = ts.astype(dtype)
    (x, nfe), _ = jax.lax.scan(body, (x, nfe), (ts[:-1], ts[1:]))
    return x, nfe
