"""TrigFlow: the noise process of continuous-time consistency models, and its exact links to VP / EDM / flow.

Lu & Song, "Simplifying, Stabilizing and Scaling Continuous-Time Consistency Models" (ICLR 2025), Sec. 3:

* the process ``x_t = cos(t) x_0 + sin(t) σ_d z`` on ``t ∈ [0, π/2]`` with data std ``σ_d`` and ``z ~ N(0, I)``
  (the paper writes ``z ~ N(0, σ_d² I)``; here the noise is ``σ_d z``), as a
  :class:`~scoresde.sde.LinearSDE` (:class:`TrigFlow`): ``alpha = cos t``, ``sigma = σ_d sin t``, prior
  ``N(0, σ_d² I)``, exact at ``T = π/2``;
* the probability-flow ODE in the paper's network convention ``dx_t/dt = σ_d F(x_t/σ_d, t)``, whose
  exact velocity is ``E[σ_d cos(t) z - sin(t) x_0 | x_t] = (cos(t) x_t - D(x_t, t)) / sin(t)`` with
  ``D = E[x_0 | x_t]`` (:func:`velocity_from_denoiser`);
* the consistency parameterisation ``f(x_t, t) = cos(t) x_t - sin(t) σ_d F(x_t/σ_d, t)``
  (:func:`consistency_fn`): ``f(x, 0) = x``, the boundary condition, holds by construction.

Every linear SDE ``x_s = alpha(s) x_0 + sigma(s) z`` of :mod:`scoresde.sde` is TrigFlow in disguise (paper
Sec. 3, "TrigFlow ... unifies EDM and flow matching"): both are the scaled process ``x̄ = x_0 + σ̃ z`` with
noise level ``σ̃ = sigma/alpha``, so the times match when ``σ_d tan(t) = sigma(s) / alpha(s)``
(:func:`trigflow_time`, :func:`sde_time`) and the states when ``x_t / cos(t) = x_s / alpha(s)``
(:func:`to_trigflow`, :func:`from_trigflow`). For EDM that is ``σ = σ_d tan(t)`` and ``x_edm = x_t / cos(t)``;
for rectified flow ``s = σ_d sin t / (cos t + σ_d sin t)`` and ``x_rf = x_t / (cos t + σ_d sin t)``. The
denoiser ``E[x_0 | ·]`` is the same function of the data in every coordinate system, so a VP / EDM / flow
teacher's denoiser gives the TrigFlow velocity exactly (:func:`trigflow_velocity_from_denoiser`,
:func:`trigflow_velocity_from_score`): this is what sCD distils.

Examples:
    >>> from scoresde import sde as sde_lib
    >>> trig = TrigFlow(sigma_data=0.5)
    >>> vp = sde_lib.VPSDE()
    >>> denoiser = lambda x, s: jnp.zeros_like(x)  # a teacher's E[x_0 | x_s]
    >>> v = trigflow_velocity_from_denoiser(denoiser, vp, sigma_data=0.5)
    >>> v(jnp.ones((3, 2)), jnp.full((3,), 0.7)).shape
    (3, 2)
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

from scoresde.parameterization import score_to_denoiser
from scoresde.sde import HALF_PI, TrigFlow, batch_mul

__all__ = [
    "HALF_PI",
    "TrigFlow",
    "trigflow_time",
    "sde_time",
    "to_trigflow",
    "from_trigflow",
    "velocity_from_denoiser",
    "denoiser_from_velocity",
    "trigflow_denoiser",
    "trigflow_velocity_from_denoiser",
    "trigflow_velocity_from_score",
    "network_velocity",
    "consistency_fn",
    "velocity_target",
]

# ------------------------------------------------------------------------------ time and state maps


def trigflow_time(sde, s, sigma_data: float):
    """The TrigFlow time of the SDE time ``s``: ``t = arctan(sigma(s) / (σ_d alpha(s)))`` (same ``σ̃``).

    Written as ``arctan2`` so that ``alpha(s) = 0`` (rectified flow at ``s = 1``) maps to ``π/2``.
    """
    return jnp.arctan2(sde.sigma(s), sigma_data * sde.alpha(s))


def sde_time(sde, t, sigma_data: float):
    """The SDE time of the TrigFlow time ``t`` (inverse of :func:`trigflow_time`), through the log-SNR.

    ``log(alpha(s)²/sigma(s)²) = -2 log(σ_d tan t)``. ``t`` must lie in the image of ``[0, sde.T]`` (e.g. a
    VP SDE with ``T = 1`` stops at ``σ̃ ≈ 157``, ``t = arctan(157/σ_d)``); ``t = 0`` maps to ``s = 0``.
    """
    # log(cos t) - log(σ_d sin t) rather than -log(σ_d tan t): cos(float32(π/2)) < 0, clamped to 0, gives
    # log-SNR = -inf there (rectified flow's s = 1) instead of the log of a negative tangent.
    return sde.t_from_log_snr(2.0 * (jnp.log(jnp.maximum(jnp.cos(t), 0.0)) - jnp.log(sigma_data * jnp.sin(t))))


def _scale(sde, s, sigma_data):
    """``sqrt(σ_d² alpha(s)² + sigma(s)²) / σ_d`` = ``alpha(s) / cos(t)``, finite where ``alpha(s) = 0``."""
    return jnp.sqrt((sigma_data * sde.alpha(s)) ** 2 + sde.sigma(s) ** 2) / sigma_data


def to_trigflow(sde, x, s, sigma_data: float):
    """``(x_t, t)``: the TrigFlow state and time of the SDE state ``x`` at times ``s`` (shape ``(B,)``).

    ``x_t = cos(t) x / alpha(s) = σ_d x / sqrt(σ_d² alpha² + sigma²)``: if ``x = alpha x_0 + sigma z`` then
    ``x_t = cos(t) x_0 + sin(t) σ_d z`` with the same ``x_0`` and ``z``.
    """
    return batch_mul(1.0 / _scale(sde, s, sigma_data), x), trigflow_time(sde, s, sigma_data)


def from_trigflow(sde, x_t, t, sigma_data: float):
    """``(x, s)``: the SDE state and time of the TrigFlow state ``x_t`` at times ``t`` (inverse of
    :func:`to_trigflow`)."""
    s = sde_time(sde, t, sigma_data)
    return batch_mul(_scale(sde, s, sigma_data), x_t), s


# ------------------------------------------------------------------------------ velocity, denoiser, network


def velocity_from_denoiser(d, x_t, t):
    """The exact TrigFlow velocity ``dx_t/dt = (cos(t) x_t - D) / sin(t)`` from ``D = E[x_0 | x_t]``.

    ``E[σ_d z | x_t] = (x_t - cos(t) D) / sin(t)``, so ``E[σ_d cos(t) z - sin(t) x_0 | x_t]`` is this (Lu &
    Song 2025, Sec. 3, with the diffusion-optimal ``F``). Undefined at ``t = 0`` (a 0/0 limit).
    """
    return batch_mul(1.0 / jnp.sin(t), batch_mul(jnp.cos(t), x_t) - d)


def denoiser_from_velocity(v, x_t, t):
    """``D = cos(t) x_t - sin(t) v``: the inverse of :func:`velocity_from_denoiser` (the one-step DDIM
    estimate of ``x_0``, and the same formula as the consistency parameterisation)."""
    return batch_mul(jnp.cos(t), x_t) - batch_mul(jnp.sin(t), v)


def trigflow_denoiser(denoiser: Callable, sde, *, sigma_data: float) -> Callable:
    """``D_trig(x_t, t) = denoiser(x_s, s)`` at the mapped state and time (:func:`from_trigflow`).

    Args:
        denoiser: ``denoiser(x, s) -> E[x_0 | x_s]`` of a model of ``sde`` (e.g.
            :func:`scoresde.parameterization.model_denoiser`).
        sde: the teacher's linear SDE.
        sigma_data: ``σ_d`` of the TrigFlow process.
    """

    def d(x_t, t):
        x, s = from_trigflow(sde, x_t, t, sigma_data)
        return denoiser(x, s)

    return d


def trigflow_velocity_from_denoiser(denoiser: Callable, sde, *, sigma_data: float) -> Callable:
    """The TrigFlow probability-flow velocity ``v(x_t, t)`` of a VP / EDM / flow teacher's denoiser.

    ``v = (cos(t) x_t - D) / sin(t)`` with ``D`` the teacher's denoiser at the mapped state and time. The
    probability-flow trajectories of the teacher's SDE, mapped by :func:`to_trigflow`, are this ODE's.
    """
    d = trigflow_denoiser(denoiser, sde, sigma_data=sigma_data)
    return lambda x_t, t: velocity_from_denoiser(d(x_t, t), x_t, t)


def trigflow_velocity_from_score(score_fn: Callable, sde, *, sigma_data: float) -> Callable:
    """As :func:`trigflow_velocity_from_denoiser` for a ``score_fn(x, s)``: uses ``score_fn.denoiser`` when it
    carries one (:class:`scoresde.parameterization.ScoreWithDenoiser`), else Tweedie's formula."""
    denoiser = getattr(score_fn, "denoiser", None)
    if denoiser is None:

        def denoiser(x, s):
            return score_to_denoiser(score_fn(x, s), x, sde.alpha(s), sde.sigma(s))

    return trigflow_velocity_from_denoiser(denoiser, sde, sigma_data=sigma_data)


def network_velocity(net_fn: Callable, *, sigma_data: float) -> Callable:
    """The velocity of a TrigFlow network in the paper's convention, ``v(x_t, t) = σ_d F(x_t / σ_d, t)`` (Sec. 3).

    Args:
        net_fn: ``net_fn(x_in, t) -> F`` with ``x_in = x_t / σ_d`` and the TrigFlow time ``t`` of shape ``(B,)``.
    """
    return lambda x_t, t: sigma_data * net_fn(x_t / sigma_data, t)


def consistency_fn(net_fn: Callable, *, sigma_data: float) -> Callable:
    """The sCM consistency function ``f(x_t, t) = cos(t) x_t - sin(t) σ_d F(x_t / σ_d, t)`` (Lu & Song 2025, Sec. 3).

    ``f(x, 0) = x`` exactly for any ``F``. For the exact consistency function ``f = Φ_{t→0}`` (the
    probability-flow map to the data), ``F = (cos(t) x_t - Φ_{t→0}(x_t)) / (σ_d sin t)``.

    Args:
        net_fn: ``net_fn(x_in, t) -> F``, see :func:`network_velocity`.
        sigma_data: ``σ_d``.

    Returns:
        ``f(x_t, t) -> x_0`` with ``x_t`` of shape ``(B, ...)`` and ``t`` of shape ``(B,)``.
    """
    velocity = network_velocity(net_fn, sigma_data=sigma_data)
    return lambda x_t, t: denoiser_from_velocity(velocity(x_t, t), x_t, t)


def velocity_target(x0, z, t, *, sigma_data: float):
    """The conditional TrigFlow velocity ``dx_t/dt = σ_d cos(t) z - sin(t) x_0`` of ``x_t = cos(t) x_0 + sin(t) σ_d z``.

    Its mean given ``x_t`` is the probability-flow velocity; it is the regression target of a TrigFlow
    diffusion model (``σ_d F``) and sCT's one-sample estimate of ``dx_t/dt`` (Lu & Song 2025, Algorithm 1).
    """
    return batch_mul(sigma_data * jnp.cos(t), z) - batch_mul(jnp.sin(t), x0)
