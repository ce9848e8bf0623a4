"""MeanFlow: one-step generation by learning the average velocity of a flow (pure math).

Geng, Deng, Bai, Kolter, He, "Mean Flows for One-step Generative Modeling" (2025). Rectified-flow convention
(:class:`scoresde.sde.RectifiedFlow`): ``z_t = (1 - t) x + t ε`` with data ``x`` at ``t = 0`` and noise
``ε ~ N(0, I)`` at ``t = 1``; the conditional velocity is ``v = dz_t/dt = ε - x`` and the marginal velocity
``v(z_t, t) = E[ε - x | z_t]``.

* The average velocity over ``[r, t]`` is ``u(z_t, r, t) = (1/(t - r)) ∫_r^t v(z_τ, τ) dτ`` (paper Sec. 4.1),
  so ``z_r = z_t - (t - r) u(z_t, r, t)`` exactly and ``u(z_t, t, t) = v(z_t, t)``.
* Differentiating ``(t - r) u = ∫_r^t v`` in ``t`` gives the MeanFlow identity
  ``u = v - (t - r) du/dt`` with the total derivative ``du/dt = v ∂_z u + ∂_t u``, the
  jacobian-vector product of ``u`` at ``(z, r, t)`` with tangent ``(v, 0, 1)``.
* Training (Sec. 4.2, Algorithm 1): ``u_tgt = v - (t - r)(v ∂_z u_θ + ∂_t u_θ)`` from ONE ``jax.jvp``
  (which also returns ``u_θ``), ``L = ‖u_θ - sg(u_tgt)‖²``, with ``v`` the conditional velocity ``ε - x``
  (:func:`meanflow_loss`; its conditional mean given ``z_t`` is the marginal ``v`` and ``u_tgt`` is affine in
  ``v``, so the expected gradient is the one with the exact ``v``) or a teacher's velocity
  (``velocity_fn``, e.g. a guided or distilled flow).
* Adaptive loss weighting (Sec. 4.3 / appendix): ``w = 1 / (‖Δ‖² + c)^p`` under ``stop_gradient``, ``Δ = u_θ - u_tgt``
  (``p = 1``, ``c = 1e-3``: ``p = 0`` is plain L2; ``p = 1/2`` is close to a Pseudo-Huber loss).
* The ``(r, t)`` proposal (Table 1 ablations): two logit-normal draws ``sigmoid(N(P_mean, P_std²))``
  sorted so that ``r <= t``, then ``r = t`` for a fraction ``1 - ratio`` of the batch (those examples are
  plain flow matching); ImageNet defaults ``P_mean = -0.4``, ``P_std = 1.0``, ``ratio = 0.25``
  (CIFAR-10: ``-2.0``, ``2.0``, ``0.75`` with ``p = 0.75``).
* Sampling (:func:`meanflow_sample`): ``z_r = z_t - (t - r) u(z_t, r, t)`` on a grid from 1 to 0; 1 NFE is
  ``x = ε - u(ε, 0, 1)``.

Network convention: ``u_fn(params, z, r, t) -> u`` with ``r``, ``t`` of shape ``(B,)`` (how they are
embedded, e.g. as ``(t, t - r)``, is the network's business).

Examples:
    >>> u_fn = lambda params, z, r, t: params * z
    >>> loss, aux = meanflow_loss(u_fn, jnp.float32(0.5), jnp.ones((4, 2)), jax.random.key(0))
    >>> x, nfe = meanflow_sample(lambda z, r, t: u_fn(0.5, z, r, t), jax.random.key(1), (4, 2))
    >>> int(nfe)
    1
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from scoresde.sampling import meanflow as sampling_meanflow
from scoresde.sampling.meanflow import meanflow_step, meanflow_times
from scoresde.sde import batch_mul

P_MEAN = -0.4  # logit-normal location of the paper's ImageNet runs (Table 1d)
P_STD = 1.0
RATIO = 0.25  # fraction of the batch with r != t (Table 1a)
POWER = 1.0  # adaptive weighting power p (Table 1e)
WEIGHT_C = 1e-3

__all__ = [
    "P_MEAN",
    "P_STD",
    "RATIO",
    "POWER",
    "WEIGHT_C",
    "sample_times",
    "interpolate",
    "meanflow_target",
    "meanflow_loss_at",
    "meanflow_loss",
    "meanflow_step",
    "meanflow_sample",
]


def _sum_except_batch(x):
    return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def sample_times(key, batch: int, *, p_mean=P_MEAN, p_std=P_STD, ratio=RATIO, dtype=jnp.float32):
    """``(r, t)`` of shape ``(batch,)`` with ``0 < r <= t < 1``: MeanFlow's proposal (Table 1).

    Two logit-normal draws, sorted; then ``r = t`` with probability ``1 - ratio`` (``ratio`` may be traced).
    ``t`` is the larger draw also where ``r`` is then set to ``t`` (the paper sorts first, then replaces), so
    the flow-matching part of the batch sees ``t`` with CDF ``Φ((logit t - P_mean)/P_std)²``, not the
    logit-normal itself.
    """
    k_a, k_b, k_keep = jax.random.split(key, 3)
    a = jax.nn.sigmoid(p_mean + p_std * jax.random.normal(k_a, (batch,), dtype))
    b = jax.nn.sigmoid(p_mean + p_std * jax.random.normal(k_b, (batch,), dtype))
    t, r = jnp.maximum(a, b), jnp.minimum(a, b)
    distinct = jax.random.uniform(k_keep, (batch,), dtype) < ratio
    return jnp.where(distinct, r, t), t


def interpolate(x, eps, t):
    """``(z_t, v)``: the rectified-flow point ``(1 - t) x + t ε`` and its conditional velocity ``ε - x``."""
    return batch_mul(1.0 - t, x) + batch_mul(t, eps), eps - x


def meanflow_target(u_fn: Callable, z, r, t, v):
    """``(u, u_tgt)``: ``u(z, r, t)`` and the MeanFlow target ``v - (t - r)(v ∂_z u + ∂_t u)``.

    ONE ``jax.jvp`` of ``u_fn(z, r, t)`` with tangent ``(v, 0, 1)`` gives ``u`` and ``du/dt`` together.
    ``u`` keeps its dependence on the parameters ``u_fn`` closes over (it is the prediction); ``u_tgt`` is
    returned under ``stop_gradient``. For the exact average velocity and the exact ``v``, ``u_tgt = u``.

    Args:
        u_fn: ``u_fn(z, r, t) -> u`` (parameters closed over).
        z: states ``(B, ...)``; r, t: times ``(B,)``; v: the velocity ``dz_t/dt`` at ``z``, shape of ``z``.
    """
    v = jax.lax.stop_gradient(v)
    u, dudt = jax.jvp(u_fn, (z, r, t), (v, jnp.zeros_like(r), jnp.ones_like(t)))
    return u, jax.lax.stop_gradient(v - batch_mul(t - r, dudt))


def meanflow_loss_at(u_fn: Callable, params, z, r, t, v, *, power=POWER, weight_c=WEIGHT_C):
    """The adaptively weighted MeanFlow loss at given ``(z_t, r, t, v)``: mean of ``sg(w) ‖Δ‖²``.

    ``Δ = u_θ(z, r, t) - sg(u_tgt)`` (:func:`meanflow_target`), ``w = 1 / (‖Δ‖² + c)^p``, with
    ``‖·‖²`` the sum of squares over an example.

    Args:
        u_fn: ``u_fn(params, z, r, t) -> u``.
        params: the parameters that are differentiated.
        z, r, t, v: see :func:`meanflow_target`.
        power: ``p`` (``0`` for plain L2).
        weight_c: ``c``.

    Returns:
        ``(loss, aux)``; ``aux`` has per-example ``losses`` and squared errors ``sq_error``.
    """
    u, u_tgt = meanflow_target(lambda zz, rr, tt: u_fn(params, zz, rr, tt), z, r, t, v)
    sq = _sum_except_batch(jnp.square(u - u_tgt))
    w = jax.lax.stop_gradient(1.0 / (sq + weight_c) ** power)
    losses = w * sq
    return jnp.mean(losses), {"losses": losses, "sq_error": sq}


def meanflow_loss(
    u_fn: Callable,
    params,
    batch,
    key,
    *,
    velocity_fn: Callable | None = None,
    p_mean=P_MEAN,
    p_std=P_STD,
    ratio=RATIO,
    power=POWER,
    weight_c=WEIGHT_C,
):
    """MeanFlow training loss (Algorithm 1): ``(r, t)`` from :func:`sample_times`, ``z_t = (1 - t) x + t ε``.

    Args:
        u_fn: ``u_fn(params, z, r, t) -> u``.
        params: the parameters that are differentiated.
        batch: data ``x`` of shape ``(B, ...)``.
        key: PRNG key.
        velocity_fn: ``None`` for the conditional velocity ``ε - x`` (MeanFlow from scratch); else a
            teacher's marginal velocity ``velocity_fn(z, t)`` (distillation; stop-gradiented).
        p_mean, p_std, ratio: the time proposal.
        power, weight_c: the adaptive weighting.

    Returns:
        ``(loss, aux)`` as :func:`meanflow_loss_at`, plus ``r`` and ``t``.
    """
    k_t, k_eps = jax.random.split(key)
    r, t = sample_times(k_t, batch.shape[0], p_mean=p_mean, p_std=p_std, ratio=ratio, dtype=batch.dtype)
    eps = jax.random.normal(k_eps, batch.shape, batch.dtype)
    z, v = interpolate(batch, eps, t)
    if velocity_fn is not None:
        v = velocity_fn(z, t)
    loss, aux = meanflow_loss_at(u_fn, params, z, r, t, v, power=power, weight_c=weight_c)
    return loss, {**aux, "r": r, "t": t}


def meanflow_sample(u_fn: Callable, key, shape, *, steps: int = 1, times=None, x_init=None, dtype=jnp.float32):
    """MeanFlow sampling from ``ε ~ N(0, I)`` at ``t = 1`` to ``t = 0`` in ``steps`` jumps (the paper's 1- and 2-NFE).

    The loop is :func:`scoresde.sampling.meanflow.meanflow_sample` (also the front door's
    ``sample(method="meanflow")``).

    Args:
        u_fn: ``u_fn(z, r, t) -> u`` (parameters closed over).
        key: PRNG key for ``ε`` (unused with ``x_init``).
        shape: ``(B, ...)``.
        steps: number of network calls on the uniform grid ``1 = t_0 > ... > t_steps = 0``.
        times: alternatively the decreasing grid ``(t_0, ..., t_K)`` itself (``steps = K``), from ``1`` to ``0``
            for a full sample; may be traced.
        x_init: the state at ``t_0`` (default a standard normal draw).

    Returns:
        ``(x, nfe)`` with ``nfe`` the number of ``u_fn`` calls, counted in the loop.
    """
    ts = meanflow_times(1.0, steps, dtype=dtype) if times is None else jnp.asarray(times, dtype)
    z = jax.random.normal(key, shape, dtype) if x_init is None else x_init.astype(dtype)
    return sampling_meanflow.meanflow_sample(u_fn, None, z, ts, key, jnp.zeros((), jnp.int32))
