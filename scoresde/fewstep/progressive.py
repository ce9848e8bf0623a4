"""Progressive distillation (Salimans & Ho, ICLR 2022): one student DDIM step matches two teacher steps.

Pure math: the halving grids, the student's target ``x̃`` (paper Algorithm 2) and the SNR-weighted loss
(eq. 9). Derivations: ``docs/progressive_distillation.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from scoresde.parameterization import target_from
from scoresde.sampling import fast
from scoresde.sde import batch_mul

PD_WEIGHTINGS = ("truncated_snr", "snr_plus_one")

__all__ = [
    "PD_WEIGHTINGS",
    "halving_rounds",
    "student_times",
    "two_teacher_steps",
    "pd_target",
    "pd_network_target",
    "pd_weight",
    "pd_loss",
]


def halving_rounds(start_steps: int, end_steps: int = 1) -> list[int]:
    """The student step counts of the rounds, ``[start/2, start/4, .., end]`` (teacher of round 0: ``start``).

    Raises:
        ValueError: unless ``start_steps = end_steps · 2^r`` with ``r >= 1``.
    """
    if not (
        isinstance(start_steps, int)
        and isinstance(end_steps, int)
        and end_steps >= 1
        and start_steps > end_steps
        and start_steps % end_steps == 0
        and math.log2(start_steps // end_steps).is_integer()
    ):
        raise ValueError(
            f"progressive distillation halves the step count: need start_steps = end_steps * 2^r "
            f"(r >= 1); got start_steps={start_steps!r}, end_steps={end_steps!r}"
        )
    rounds, n = [], start_steps
    while n > end_steps:
        n //= 2
        rounds.append(n)
    return rounds


def student_times(sde, steps, eps, i):
    """``t_i = T + (i / steps)(eps - T)`` of the ``"uniform_t"`` grid, endpoints exact; ``i``, ``steps`` traceable."""
    dtype = jnp.result_type(float)
    i = jnp.asarray(i)
    t = sde.T + (i.astype(dtype) / jnp.asarray(steps, dtype)) * (jnp.asarray(eps, dtype) - sde.T)
    t = jnp.where(i == 0, jnp.asarray(sde.T, dtype), t)
    return jnp.where(i == jnp.asarray(steps), jnp.asarray(eps, dtype), t)


def two_teacher_steps(teacher_score_fn: Callable, sde, x_t, t, t_next, *, cond=None):
    """Two teacher DDIM (``eta = 0``) steps per example, ``t -> (t + t_next)/2 -> t_next``, times ``(B,)``.

    With ``cond`` (the condition of each example, rows aligned with ``x_t``: class labels ``(B,)``, caption tokens
    ``(B, L)``, vectors ``(B, D)``) the teacher is ``teacher_score_fn(x, t, cond)`` and each example's steps
    use its own row; without it, ``teacher_score_fn(x, t)``.
    """
    key = jax.random.key(0)  # eta = 0 draws no noise

    def one(xi, s, u, ci):
        ts = jnp.stack([s, 0.5 * (s + u), u])
        score = teacher_score_fn if ci is None else (lambda x, tt: teacher_score_fn(x, tt, ci[None]))
        y, _ = fast.ddim(score, sde, xi[None], ts, key, jnp.zeros((), jnp.int32), eta=0.0)
        return y[0]

    return jax.vmap(one)(x_t, t.astype(x_t.dtype), t_next.astype(x_t.dtype), cond)


def pd_target(teacher_score_fn: Callable, sde, x_t, t, t_next, *, cond=None):
    """The student's data-prediction target ``x̃`` for its step ``t -> t_next`` (paper Alg. 2).

    ``docs/progressive_distillation.md`` derives it.

    Args:
        teacher_score_fn: the teacher's ``score_fn(x, t)``.
        sde: a linear SDE.
        x_t: states ``(B, ...)`` at times ``t`` (``(B,)``).
        t, t_next: the student's step, ``t > t_next`` per example.
        cond: the examples' condition for a conditional teacher ``score_fn(x, t, cond)`` (see
            :func:`two_teacher_steps`); ``None`` for an unconditional one.

    Returns:
        ``x̃`` of the shape of ``x_t``.
    """
    x_next = two_teacher_steps(teacher_score_fn, sde, x_t, t, t_next, cond=cond)
    a_t, s_t = sde.alpha(t), sde.sigma(t)
    a_n, s_n = sde.alpha(t_next), sde.sigma(t_next)
    ratio = s_n / s_t
    return batch_mul(1.0 / (a_n - ratio * a_t), x_next - batch_mul(ratio, x_t))


def pd_network_target(x_tilde, x_t, alpha, sigma, output: str):
    """The raw regression target for a student of output type ``x0``, ``eps``, ``v`` or ``score``."""
    noise = batch_mul(1.0 / sigma, x_t - batch_mul(alpha, x_tilde))
    return target_from(x_tilde, noise, alpha, sigma, output)


def pd_weight(sde, t, weighting: str = "truncated_snr"):
    """``max(SNR, 1)`` (``"truncated_snr"``, paper eq. 9) or ``SNR + 1`` (``"snr_plus_one"``).

    Raises:
        ValueError: for an unknown ``weighting``.
    """
    snr = jnp.exp(sde.log_snr(t))
    if weighting == "truncated_snr":
        return jnp.maximum(snr, 1.0)
    if weighting == "snr_plus_one":
        return snr + 1.0
    raise ValueError(
        f"unknown progressive-distillation weighting {weighting!r}; expected one of: {', '.join(PD_WEIGHTINGS)}"
    )


def pd_loss(
    student_denoiser: Callable,
    teacher_score_fn: Callable,
    sde,
    batch,
    key,
    *,
    steps,
    eps,
    weighting: str = "truncated_snr",
    cond=None,
):
    """One progressive-distillation loss estimate ``E[w(t) mean_d (x̂(x_t, t) - x̃)²]`` (paper Algorithm 2).

    ``t = t_i``, ``i ~ U{0 .. steps-1}`` on the student's grid; ``x̃`` from :func:`pd_target`.

    Args:
        student_denoiser: ``D(x, t) = x̂`` of the student (e.g.
            :func:`scoresde.parameterization.model_denoiser` of a ``v``- or ``x0``-network).
        teacher_score_fn: the teacher's ``score_fn(x, t)`` (the previous round's student after round 0).
        sde: a linear SDE.
        batch: data ``(B, ...)``.
        key: PRNG key.
        steps: the student's step count ``N`` (int or traced int).
        eps: the final time of the grids.
        weighting: one of :data:`PD_WEIGHTINGS`.
        cond: the batch's condition (rows aligned with ``batch``) for a conditional distillation: the teacher is
            then ``teacher_score_fn(x, t, cond)`` and the student ``student_denoiser(x, t, cond)``, both with the
            same condition; ``None``: both unconditional.

    Returns:
        ``(loss, aux)`` with per-example ``losses``, ``t`` and ``x_target``.
    """
    b = batch.shape[0]
    k_i, k_z = jax.random.split(key)
    i = jax.random.randint(k_i, (b,), 0, jnp.asarray(steps, jnp.int32))
    t, t_next = student_times(sde, steps, eps, i).astype(batch.dtype), student_times(sde, steps, eps, i + 1)
    t_next = t_next.astype(batch.dtype)
    z = jax.random.normal(k_z, batch.shape, batch.dtype)
    x_t = batch_mul(sde.alpha(t), batch) + batch_mul(sde.sigma(t), z)
    x_tilde = jax.lax.stop_gradient(pd_target(teacher_score_fn, sde, x_t, t, t_next, cond=cond))
    x_hat = student_denoiser(x_t, t) if cond is None else student_denoiser(x_t, t, cond)
    err = (x_hat - x_tilde).reshape(b, -1)
    losses = pd_weight(sde, t, weighting) * jnp.mean(err * err, axis=-1)
    return jnp.mean(losses), {"losses": losses, "t": t, "x_target": x_tilde}
