"""ECT: easy consistency tuning's shrinking-``Δt`` curriculum and weighting (pure math).

Geng, Pokle, Luo, Lin, Kolter, "Consistency Models Made Easy" (ICLR 2025). In EDM's noise levels
(``x_t = x_0 + t ε``, :class:`scoresde.sde.EDMSDE`) consistency training compares ``f(x_t, t)`` with the
stop-gradient ``f(x_r, r)`` at a smaller level ``r`` on the same noise (``x_r = x_0 + r ε``), and shrinks the gap
``Δt = t - r`` over training, so that training starts as diffusion pretraining (``r = 0``, where
``f(x_0, 0) = x_0`` is the data itself) and ends as consistency training with ``Δt → 0`` (paper Sec. 3):

* the mapping function (the paper's "sigmoid" variant): ``r = max(0, t - Δt)``, ``Δt = t n(t) / q^{a}``,
  ``n(t) = 1 + k sigmoid(-b t)``, with stage ``a = ⌊iteration / d⌋ + 1`` (``q = 2``, ``k = 8``, ``b = 1``;
  :func:`ect_r`). ``n(t)`` makes the gap relatively larger at small ``t``;
* the weighting ``w(t, r) = 1 / (t - r)`` (the continuous-time limit of CT's ``1/Δt``) and the metric
  ``sqrt(‖·‖² + c²) - c`` (pseudo-Huber; ``c = 0`` gives the L2 norm) (:func:`ect_loss`);
* the log-normal proposal ``log t ~ N(P_mean, P_std²)`` with ``P_mean = -1.1``, ``P_std = 2.0`` (iCT's).

Examples:
    >>> r = ect_r(jnp.array([0.5, 2.0, 20.0]), stage=3)
    >>> bool(jnp.all(r < jnp.array([0.5, 2.0, 20.0])))
    True
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from scoresde.sde import batch_mul

P_MEAN = -1.1
P_STD = 2.0

__all__ = ["P_MEAN", "P_STD", "ect_stage", "ect_delta_t", "ect_r", "ect_weight", "sample_noise_level", "ect_loss"]


def ect_stage(step, steps_per_stage: int):
    """The stage index ``⌊step / d⌋`` (``step`` may be traced); stage 0 uses ``Δt = t n(t) / q``."""
    return jnp.asarray(step, jnp.int32) // steps_per_stage


def ect_delta_t(t, stage, *, q: float = 2.0, k: float = 8.0, b: float = 1.0):
    """``Δt(t, stage) = t (1 + k sigmoid(-b t)) / q^{stage + 1}`` before clipping at ``r = 0``."""
    n = 1.0 + k * jax.nn.sigmoid(-b * t)
    return t * n / jnp.power(q, jnp.asarray(stage, t.dtype) + 1.0)


def ect_r(t, stage, *, q: float = 2.0, k: float = 8.0, b: float = 1.0):
    """``r = max(0, t - Δt(t, stage))``: the smaller noise level paired with ``t``."""
    return jnp.maximum(t - ect_delta_t(t, stage, q=q, k=k, b=b), 0.0)


def ect_weight(t, r):
    """``w(t, r) = 1 / (t - r)``."""
    return 1.0 / (t - r)


def sample_noise_level(key, batch: int, *, p_mean=P_MEAN, p_std=P_STD, dtype=jnp.float32):
    """``t = exp(N(P_mean, P_std²))`` of shape ``(batch,)``."""
    return jnp.exp(p_mean + p_std * jax.random.normal(key, (batch,), dtype))


def _pseudo_huber(d2, c):
    """``sqrt(d2 + c²) - c`` with a finite gradient at ``d2 = 0`` also for ``c = 0`` (the plain L2 norm)."""
    if c > 0:
        return jnp.sqrt(d2 + c * c) - c
    # sqrt'(0) = inf would turn a zero error into a NaN gradient; its subgradient 0 is the right one here
    positive = d2 > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, d2, 1.0)), 0.0)


def ect_loss(
    f_fn: Callable,
    params,
    batch,
    key,
    *,
    stage,
    q: float = 2.0,
    k: float = 8.0,
    b: float = 1.0,
    huber_c: float = 0.0,
    p_mean=P_MEAN,
    p_std=P_STD,
):
    """ECT's loss ``E[w(t, r) d(f_θ(x_0 + t ε, t), sg f_θ(x_0 + r ε, r))]`` on EDM noise levels.

    Where ``r = 0`` the target is the data ``x_0`` itself (the boundary condition ``f(x, 0) = x``; the network
    is not evaluated there), so stage 0 at small ``t`` is a denoising loss.

    Args:
        f_fn: ``f_fn(params, x, t) -> x_0`` with ``t`` the EDM noise level of shape ``(B,)`` (e.g. an EDM
            preconditioned denoiser, whose ``c_skip = 1``, ``c_out = 0`` at ``t = 0``).
        params: the parameters that are differentiated (the target uses them under ``stop_gradient``).
        batch: data ``(B, ...)``; key: PRNG key.
        stage: the curriculum stage (:func:`ect_stage`; may be traced).
        q, k, b: the mapping's constants.
        huber_c: ``c`` of the metric ``sqrt(‖·‖² + c²) - c``.
        p_mean, p_std: the log-normal proposal.

    Returns:
        ``(loss, aux)`` with per-example ``losses`` and the levels ``t`` and ``r``.
    """
    k_t, k_eps = jax.random.split(key)
    t = sample_noise_level(k_t, batch.shape[0], p_mean=p_mean, p_std=p_std, dtype=batch.dtype)
    r = ect_r(t, stage, q=q, k=k, b=b)
    eps = jax.random.normal(k_eps, batch.shape, batch.dtype)
    online = f_fn(params, batch + batch_mul(t, eps), t)
    target = f_fn(jax.lax.stop_gradient(params), batch + batch_mul(r, eps), r)
    target = jax.lax.stop_gradient(jnp.where((r > 0).reshape((-1,) + (1,) * (batch.ndim - 1)), target, batch))
    d2 = jnp.sum(jnp.square(online - target).reshape(batch.shape[0], -1), axis=-1)
    losses = _pseudo_huber(d2, huber_c) * ect_weight(t, r)
    return jnp.mean(losses), {"losses": losses, "t": t, "r": r}
