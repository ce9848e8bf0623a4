"""Predictor–corrector samplers (Song et al. 2021, Sec. 4.2 and Algorithms 2–3), on the device.

Faithful to the reference ``sampling.py``: the grid is ``linspace(T, eps, N)``; Euler–Maruyama uses
``dt = -T / N`` (so the N steps cover ``[0, T]`` while the score is never evaluated below ``eps``); the
reverse-diffusion and ancestral predictors use the SDE's discrete schedule; each grid point runs the
corrector and then the predictor (``corrector_first=False`` swaps them); the denoised output is the
last predictor's mean. Changing the number of steps means a different ``N`` (the reference sets
``sde.N``), done here with ``dataclasses.replace(sde, N=steps)``.

The Langevin corrector's step size uses the mean per-example gradient and noise norms over the whole
batch, as the reference (which takes a ``pmean`` across devices). Under ``jax.jit`` with the batch
sharded over a mesh, ``jnp.mean`` already reduces over the global batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from scoresde import sde as sde_lib
from scoresde.sampling.grids import PROJECTION_KEY_OFFSET
from scoresde.sde import batch_mul

PREDICTORS = ("euler_maruyama", "reverse_diffusion", "ancestral_sampling", "none")
CORRECTORS = ("langevin", "ald", "none")

__all__ = ["PREDICTORS", "CORRECTORS", "pc_sample"]


def _counted_score(score_fn):
    """A score function ``(x, t_vec) -> score`` plus a side counter, for ``ReverseSDE`` callers."""
    calls = []

    def fn(x, t):
        calls.append(1)
        return score_fn(x, t)

    return fn, calls


def _euler_maruyama(sde, score_fn, key, x, t, nfe, probability_flow):
    dt = -sde.T / sde.N
    f, calls = _counted_score(score_fn)
    drift, diffusion = sde.reverse(f, probability_flow).sde(x, t)
    x_mean = x + drift * dt
    z = jax.random.normal(key, x.shape, x.dtype)
    return x_mean + batch_mul(diffusion * jnp.sqrt(-dt), z), x_mean, nfe + len(calls)


def _reverse_diffusion(sde, score_fn, key, x, t, nfe, probability_flow):
    f, calls = _counted_score(score_fn)
    rev_f, rev_g = sde.reverse(f, probability_flow).discretize(x, t)
    x_mean = x - rev_f
    z = jax.random.normal(key, x.shape, x.dtype)
    return x_mean + batch_mul(rev_g, z), x_mean, nfe + len(calls)


def _ancestral(sde, score_fn, key, x, t, nfe, probability_flow):
    del probability_flow
    idx = sde.timestep(t)
    z = jax.random.normal(key, x.shape, x.dtype)
    if isinstance(sde, sde_lib.VESDE):
        sigmas = jnp.asarray(sde.discrete_sigmas, x.dtype)
        sigma = sigmas[idx]
        adjacent = jnp.where(idx == 0, jnp.zeros_like(sigma), sigmas[jnp.maximum(idx - 1, 0)])
        score = score_fn(x, t)
        x_mean = x + batch_mul(sigma**2 - adjacent**2, score)
        std = jnp.sqrt(adjacent**2 * (sigma**2 - adjacent**2) / sigma**2)
        return x_mean + batch_mul(std, z), x_mean, nfe + 1
    if isinstance(sde, sde_lib.VPSDE):
        beta = jnp.asarray(sde.discrete_betas, x.dtype)[idx]
        score = score_fn(x, t)
        x_mean = batch_mul(1.0 / jnp.sqrt(1.0 - beta), x + batch_mul(beta, score))
        return x_mean + batch_mul(jnp.sqrt(beta), z), x_mean, nfe + 1
    raise ValueError(f"ancestral_sampling is defined for VPSDE and VESDE (DDPM / SMLD); got {type(sde).__name__}")


def _none_predictor(sde, score_fn, key, x, t, nfe, probability_flow):
    return x, x, nfe


def _langevin_alpha(sde, t, dtype):
    if isinstance(sde, (sde_lib.VPSDE, sde_lib.SubVPSDE)):
        return jnp.asarray(sde.alphas, dtype)[sde.timestep(t)]
    return jnp.ones_like(t)


def _per_example_norm_mean(v):
    """Mean over the (global) batch of per-example L2 norms, as the reference's Langevin step."""
    return jnp.mean(jnp.linalg.norm(v.reshape(v.shape[0], -1), axis=-1))


def _langevin(sde, score_fn, key, x, t, nfe, snr, n_steps):
    alpha = _langevin_alpha(sde, t, x.dtype)
    x_mean = x
    for j in range(n_steps):
        grad, nfe = score_fn(x, t), nfe + 1
        z = jax.random.normal(jax.random.fold_in(key, j), x.shape, x.dtype)
        grad_norm = _per_example_norm_mean(grad)
        # A zero score (e.g. a zero-initialised output layer) gives the reference an infinite step and NaN
        # samples; no gradient means no Langevin move, so the step is 0 there.
        ratio = snr * _per_example_norm_mean(z) / jnp.where(grad_norm > 0, grad_norm, 1.0)
        step = jnp.where(grad_norm > 0, ratio**2 * 2.0 * alpha, 0.0)
        x_mean = x + batch_mul(step, grad)
        x = x_mean + batch_mul(jnp.sqrt(2.0 * step), z)
    return x, x_mean, nfe


def _ald(sde, score_fn, key, x, t, nfe, snr, n_steps):
    alpha = _langevin_alpha(sde, t, x.dtype)
    std = sde.marginal_prob(x, t)[1]
    x_mean = x
    for j in range(n_steps):
        grad, nfe = score_fn(x, t), nfe + 1
        z = jax.random.normal(jax.random.fold_in(key, j), x.shape, x.dtype)
        step = (snr * std) ** 2 * 2.0 * alpha
        x_mean = x + batch_mul(step, grad)
        x = x_mean + batch_mul(jnp.sqrt(2.0 * step), z)
    return x, x_mean, nfe


def _none_corrector(sde, score_fn, key, x, t, nfe, snr, n_steps):
    return x, x, nfe


def _projected(update, project_fn, is_predictor):
    """``update`` followed by ``project_fn`` on the new state (its noise key folded from the step's key)."""

    def fn(sde, score_fn, key, x, t, nfe, *args):
        x, x_mean, nfe = update(sde, score_fn, key, x, t, nfe, *args)
        t_reached = jnp.maximum(t - sde.T / sde.N, 0.0) if is_predictor else t
        return project_fn(x, t_reached, jax.random.fold_in(key, PROJECTION_KEY_OFFSET)), x_mean, nfe

    return fn


def pc_sample(
    score_fn,
    sde,
    x,
    key,
    nfe,
    *,
    eps,
    predictor="euler_maruyama",
    corrector="none",
    snr=0.16,
    n_steps=1,
    steps=None,
    denoise=True,
    probability_flow=False,
    corrector_first=True,
    project_fn=None,
):
    """Runs the PC sampler from the prior draw ``x`` at ``T`` down to ``eps``.

    Args:
        score_fn: ``score_fn(x, t)`` with ``t`` of shape ``(B,)``.
        sde: the forward SDE.
        x: prior draw, shape ``(B, ...)``.
        key: PRNG key for the predictor/corrector noise.
        nfe: the running NFE counter (int32 scalar).
        eps: final time (may be traced).
        predictor: one of :data:`PREDICTORS`.
        corrector: one of :data:`CORRECTORS`.
        snr: corrector signal-to-noise ratio (may be traced).
        n_steps: corrector steps per grid point (a Python int).
        steps: number of grid points; ``None`` uses ``sde.N``.
        denoise: return the last predictor mean (the reference's ``noise_removal``).
        probability_flow: predictors follow the probability-flow ODE instead of the reverse SDE.
        corrector_first: corrector then predictor at each grid point (the reference), else the reverse.
        project_fn: optional ``project_fn(x, t, key) -> x`` applied to the state after every corrector
            and predictor step (inpainting / colorization, :mod:`scoresde.guidance`), with ``t`` the time
            the step reached: ``t_i`` after the corrector, ``t_i - T/N`` (clipped at 0) after the predictor.

    Returns:
        ``(samples, nfe)``.
    """
    predictors = {
        "euler_maruyama": _euler_maruyama,
        "reverse_diffusion": _reverse_diffusion,
        "ancestral_sampling": _ancestral,
        "none": _none_predictor,
    }
    correctors = {"langevin": _langevin, "ald": _ald, "none": _none_corrector}
    if predictor not in predictors:
        raise ValueError(f"unknown predictor {predictor!r}; expected one of: {', '.join(PREDICTORS)}")
    if corrector not in correctors:
        raise ValueError(f"unknown corrector {corrector!r}; expected one of: {', '.join(CORRECTORS)}")
    if not (isinstance(n_steps, int) and n_steps >= 1):
        raise ValueError(f"n_steps (corrector steps per grid point) must be a positive int; got {n_steps!r}")
    if predictor == "ancestral_sampling" and not isinstance(sde, (sde_lib.VESDE, sde_lib.VPSDE)):
        raise ValueError(f"ancestral_sampling is defined for VPSDE and VESDE (DDPM / SMLD); got {type(sde).__name__}")
    if steps is not None and steps != sde.N:
        import dataclasses  # noqa: PLC0415  (the one path that rebuilds the SDE)

        sde = dataclasses.replace(sde, N=int(steps))
    if predictor in ("reverse_diffusion", "ancestral_sampling") and hasattr(sde, "discrete_betas"):
        if sde.discrete_betas.max() >= 1.0:
            raise ValueError(
                f"{predictor} needs discrete betas < 1 but beta_max / N = {sde.discrete_betas.max():.3g} "
                f"with N={sde.N}; use more steps"
            )
    predict, correct = predictors[predictor], correctors[corrector]
    snr = jnp.asarray(snr, x.dtype)
    timesteps = jnp.linspace(jnp.asarray(sde.T, x.dtype), jnp.asarray(eps, x.dtype), sde.N)

    if project_fn is not None:
        correct, predict = _projected(correct, project_fn, False), _projected(predict, project_fn, True)

    def body(i, carry):
        x, x_mean, nfe = carry
        t = jnp.full((x.shape[0],), timesteps[i], x.dtype)
        k_corr, k_pred = jax.random.split(jax.random.fold_in(key, i))
        if corrector_first:
            x, x_mean, nfe = correct(sde, score_fn, k_corr, x, t, nfe, snr, n_steps)
            x, x_mean, nfe = predict(sde, score_fn, k_pred, x, t, nfe, probability_flow)
        else:
            x, x_mean, nfe = predict(sde, score_fn, k_pred, x, t, nfe, probability_flow)
            x, x_mean, nfe = correct(sde, score_fn, k_corr, x, t, nfe, snr, n_steps)
        return x, x_mean, nfe

    x, x_mean, nfe = jax.lax.fori_loop(0, sde.N, body, (x, x, nfe))
    return (x_mean if denoise else x), nfe
