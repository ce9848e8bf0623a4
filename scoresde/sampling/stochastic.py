"""Stochastic few-step samplers: Euler ancestral and DPM-Solver++(2M/3M) SDE, for every linear SDE.

Both are k-diffusion's samplers (``sample_euler_ancestral``, ``sample_dpmpp_2m_sde``,
``sample_dpmpp_3m_sde``) written in this project's coordinates: k-diffusion works on ``xbar = x / alpha``
with noise level ``sigmabar = sigma / alpha``; multiplying its updates by ``alpha_t`` turns every ratio
``sigmabar_t / sigmabar_s`` into ``e^{-h}`` with ``h = lambda_t - lambda_s`` and ``lambda = log(alpha/sigma)``,
and every ``sigmabar_t`` noise scale into ``sigma_t``. No coefficient divides by ``alpha``, so a step from
``alpha(T) = 0`` (:class:`~scoresde.sde.RectifiedFlow`, ``h = inf``) is finite: it is ``x_t = alpha_t x0 +
sigma_t (...)``. The data prediction ``x0`` is the model's denoiser
(:func:`scoresde.sampling.grids.denoiser_call`).

``noise`` (optional, shape ``(steps,) + x.shape``) replaces the standard normals drawn per step: tests pass
it to differentiate the output with respect to the noise (exact output moments for Gaussian data).

References:
    Karras et al. 2022 (k-diffusion ``sample_euler_ancestral``); Lu et al., "DPM-Solver++", 2022, and
    k-diffusion's ``sample_dpmpp_2m_sde`` (midpoint) / ``sample_dpmpp_3m_sde`` (Crowson).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from scoresde.sampling.grids import coefficients, denoiser_call, grid_scan, project
from scoresde.sde import batch_mul

__all__ = ["euler_ancestral", "dpm_solver_pp_sde"]


def _normal(key, i, x, noise):
    if noise is not None:
        return noise[i]
    return jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)


def euler_ancestral(score_fn, sde, x, ts, key, nfe, *, eta=1.0, s_noise=1.0, project_fn=None, noise=None, steps=None):
    """k-diffusion's Euler ancestral sampler; one NFE per step.

    k-diffusion: ``sigma_up = min(sigma_next, eta sqrt(sigma_next² (sigma² - sigma_next²) / sigma²))``,
    ``sigma_down = sqrt(sigma_next² - sigma_up²)``, ``x <- x + (sigma_down - sigma) (x - D) / sigma
    + sigma_up z`` (in ``xbar``). Here with ``rho_up = min(1, eta sqrt(1 - e^{-2h}))`` and
    ``rho_down = sqrt(1 - rho_up²)``:
    ``x_t = rho_down sigma_t / sigma_s x + (alpha_t - rho_down sigma_t alpha_s / sigma_s) x0 + s_noise sigma_t rho_up z``.
    (It equals DDIM with the same ``eta``; ``eta = 0`` is DDIM / Euler in ``sigmabar``.)
    """
    dtype = x.dtype
    eta, s_noise = jnp.asarray(eta, dtype), jnp.asarray(s_noise, dtype)

    def step(carry, inp):
        x, nfe = carry
        i, s, t = inp
        x0, nfe = denoiser_call(score_fn, sde, x, s, nfe)
        a_s, s_s, l_s = coefficients(sde, s, x)
        a_t, s_t, l_t = coefficients(sde, t, x)
        h = l_t - l_s
        rho_up = jnp.minimum(1.0, eta * jnp.sqrt(-jnp.expm1(-2.0 * h)))
        rho_down = jnp.sqrt(jnp.maximum(1.0 - rho_up**2, 0.0))
        z = _normal(key, i, x, noise)
        x = (
            batch_mul(rho_down * s_t / s_s, x)
            + batch_mul(a_t - rho_down * s_t * a_s / s_s, x0)
            + batch_mul(s_noise * s_t * rho_up, z)
        )
        return (project(project_fn, x, t, key, i), nfe), None

    idx = jnp.arange(ts.shape[0] - 1)
    (x, nfe), _ = grid_scan(step, (x, nfe), (idx, ts[:-1], ts[1:]), steps)
    return x, nfe


def dpm_solver_pp_sde(
    score_fn, sde, x, ts, key, nfe, *, order=2, eta=1.0, s_noise=1.0, project_fn=None, noise=None, steps=None
):
    """DPM-Solver++(2M) SDE (``order=2``, midpoint) and (3M) SDE (``order=3``); one NFE per step.

    With ``h = lambda_t - lambda_s``, ``h_eta = (1 + eta) h`` and the data predictions ``D, D_1, D_2`` of this
    and the two previous steps (step sizes ``h_1, h_2``):

    ``x_t = e^{-eta h} sigma_t / sigma_s x + alpha_t (1 - e^{-h_eta}) D + alpha_t (corr) + sigma_t sqrt(1 - e^{-2 eta h}) z``

    with ``corr = ½ (1 - e^{-h_eta}) (D - D_1) / r`` (2M, ``r = h_1 / h``), and for 3M
    ``corr = phi_2 d_1 - phi_3 d_2`` (k-diffusion's ``sample_dpmpp_3m_sde``). Early steps use the orders
    their history allows; a history step of infinite length (from ``alpha(T) = 0``) counts as none.
    ``order=1`` is the first-order SDE-DPM-Solver++ step. ``eta = 0`` gives the ODE solvers.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"dpm_solver++_sde order must be 1, 2 (2M SDE) or 3 (3M SDE); got {order!r}")
    dtype = x.dtype
    eta, s_noise = jnp.asarray(eta, dtype), jnp.asarray(s_noise, dtype)
    b = x.shape[0]

    def step(carry, inp):
        x, d_1, d_2, h_1, h_2, nfe = carry
        i, s, t = inp
        den, nfe = denoiser_call(score_fn, sde, x, s, nfe)
        a_s, s_s, l_s = coefficients(sde, s, x)
        a_t, s_t, l_t = coefficients(sde, t, x)
        h = l_t - l_s
        h_eta = h * (1.0 + eta)
        eta_h = jnp.where(eta > 0, eta * h, 0.0)  # eta = 0 with h = inf (from alpha = 0) is 0, not NaN
        one_m = -jnp.expm1(-h_eta)
        x_new = batch_mul(jnp.exp(-eta_h) * s_t / s_s, x) + batch_mul(a_t * one_m, den)
        have1 = jnp.isfinite(h_1) & (i >= 1)
        have2 = have1 & jnp.isfinite(h_2) & (i >= 2)
        if order >= 2:
            # NaN-free placeholders where the history is missing; jnp.where selects the valid branch.
            h1 = jnp.where(have1, h_1, h)
            h2 = jnp.where(have2, h_2, h)
            r0 = h1 / h
            d1_0 = batch_mul(1.0 / r0, den - d_1)
            if order == 2:
                corr = batch_mul(0.5 * a_t * one_m, d1_0)
            else:
                r1 = h2 / h
                d1_1 = batch_mul(1.0 / r1, d_1 - d_2)
                d1 = d1_0 + batch_mul(r0 / (r0 + r1), d1_0 - d1_1)
                d2 = batch_mul(1.0 / (r0 + r1), d1_0 - d1_1)
                phi_2 = -one_m / h_eta + 1.0
                phi_3 = phi_2 / h_eta - 0.5
                corr3 = batch_mul(a_t * phi_2, d1) - batch_mul(a_t * phi_3, d2)
                corr2 = batch_mul(a_t * phi_2, d1_0)
                corr = jnp.where(have2.reshape((b,) + (1,) * (x.ndim - 1)), corr3, corr2)
            corr = jnp.where(have1.reshape((b,) + (1,) * (x.ndim - 1)), corr, 0.0)
            x_new = x_new + corr
        z = _normal(key, i, x, noise)
        x_new = x_new + batch_mul(s_noise * s_t * jnp.sqrt(-jnp.expm1(-2.0 * eta_h)), z)
        x_new = project(project_fn, x_new, t, key, i)
        return (x_new, den, d_1, h, h_1, nfe), None

    idx = jnp.arange(ts.shape[0] - 1)
    inf = jnp.full((b,), jnp.inf, dtype)
    init = (x, jnp.zeros_like(x), jnp.zeros_like(x), inf, inf, nfe)
    (x, *_, nfe), _ = grid_scan(step, init, (idx, ts[:-1], ts[1:]), steps)
    return x, nfe
