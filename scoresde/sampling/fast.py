"""Few-step samplers on a fixed time grid: DDIM, DPM-Solver (singlestep; DPM-Solver-fast's mixed orders for an
NFE budget), DPM-Solver++(2M), EDM Heun.

All are written once for every linear SDE through ``alpha(t)``, ``sigma(t)`` and the log-SNR of
:mod:`scoresde.sde`, with DPM-Solver's ``lambda = log(alpha / sigma) = log_snr / 2``. The network enters
only as a black-box score ``score_fn(x, t)``; the noise prediction is ``eps = -sigma score`` and the data
prediction (denoiser) is Tweedie's ``(x + sigma² score) / alpha``
(:func:`scoresde.parameterization.score_to_denoiser`).

Each sampler is one ``lax.scan`` over the grid; it carries the NFE counter (see
:func:`scoresde.sampling.grids.score_call`). Notation: a step goes from ``s`` to ``t < s`` with
``h = lambda_t - lambda_s > 0``.

References:
    Song, Meng, Ermon, "Denoising Diffusion Implicit Models", ICLR 2021 (eq. 12).
    Lu et al., "DPM-Solver", NeurIPS 2022 (Algorithms 1 (order 2), 2 (order 3), eq. 3.7; DPM-Solver-fast,
    Sec. 3.4 and Appendix D.1).
    Lu et al., "DPM-Solver++", 2022 (Algorithm 2, multistep 2M).
    Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models", NeurIPS 2022
    (Algorithm 2, eq. 5).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from scoresde.sampling.grids import (
    alpha_vanishes_at_T,
    coefficients,
    denoiser_call,
    edm_sigma,
    grid_scan,
    project,
    score_call,
    time_grid,
)
from scoresde.sde import batch_mul

__all__ = [
    "ddim",
    "ddim_update",
    "dpm_solver",
    "fast_orders",
    "fast_schedule",
    "dpm_solver_pp",
    "edm_heun",
    "LOWER_ORDER_FINAL_BELOW",
]

# DPM-Solver's official `sample` lowers the final steps' order only when steps < 10.
LOWER_ORDER_FINAL_BELOW = 10


def _eps_pred(score_fn, sde, x, t, nfe):
    score, nfe = score_call(score_fn, x, t, nfe)
    _, sigma, _ = coefficients(sde, t, x)
    return batch_mul(-sigma, score), nfe


def _x0_pred(score_fn, sde, x, t, nfe):
    """The data prediction; the model's own denoiser when it has one (finite where ``alpha = 0``)."""
    return denoiser_call(score_fn, sde, x, t, nfe)


def ddim_update(sde, x, x0, s, t, z, eta):
    """One DDIM step from ``s`` to ``t`` given the data prediction ``x0`` at ``(x, s)`` and the step's noise ``z``.

    The update of :func:`ddim`, shared with ParaDiGMS (:mod:`scoresde.sampling.parallel`), which evaluates the
    network for a window of steps at once and then runs this chain.
    """
    a_s, s_s, l_s = coefficients(sde, s, x)
    a_t, s_t, l_t = coefficients(sde, t, x)
    eps = batch_mul(1.0 / s_s, x - batch_mul(a_s, x0))
    frac = eta**2 * -jnp.expm1(-2.0 * (l_t - l_s))  # c² / sigma_t², in [0, 1] for eta <= 1
    return (
        batch_mul(a_t, x0)
        + batch_mul(s_t * jnp.sqrt(jnp.maximum(1.0 - frac, 0.0)), eps)
        + batch_mul(s_t * jnp.sqrt(frac), z)
    )


def ddim(score_fn, sde, x, ts, key, nfe, *, eta=0.0, clip_denoised=None, project_fn=None, steps=None):
    """DDIM (Song et al. 2021a, eq. 12) generalised to any linear SDE; one NFE per step.

    ``x_t = alpha_t x0 + sqrt(sigma_t² - c²) eps + c z`` with ``c = eta sigma_t sqrt(1 - e^{-2h})``
    (for VP this is DDIM's ``sigma_t(eta)``; ``eta = 1`` is ancestral DDPM sampling).

    ``clip_denoised=(lo, hi)`` clips every data prediction to the data range before the step, and the noise
    ``eps`` is recomputed from the clipped prediction, as google-research ``diffusion_distillation``
    (``dpm.py``, ``eval_clip_denoised=True``) and Ho et al.'s DDPM sampler do; ``None`` does not clip.
    """
    eta = jnp.asarray(eta, x.dtype)
    if clip_denoised is not None:
        lo, hi = (float(v) for v in clip_denoised)
        if not lo < hi:
            raise ValueError(f"clip_denoised must be a (low, high) range with low < high; got {clip_denoised!r}")

    def step(carry, inp):
        x, nfe = carry
        i, s, t = inp
        x0, nfe = _x0_pred(score_fn, sde, x, s, nfe)
        if clip_denoised is not None:
            x0 = jnp.clip(x0, lo, hi)
        z = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
        x = ddim_update(sde, x, x0, s, t, z, eta)
        return (project(project_fn, x, t, key, i), nfe), None

    idx = jnp.arange(ts.shape[0] - 1)
    (x, nfe), _ = grid_scan(step, (x, nfe), (idx, ts[:-1], ts[1:]), steps)
    return x, nfe


def fast_orders(nfe: int, order: int = 3) -> tuple[int, ...]:
    """Per-interval orders of singlestep DPM-Solver for a budget of ``nfe`` evaluations ("DPM-Solver-fast").

    Lu et al. (2022), Sec. 3.4 / Appendix D.1, and the authors' ``get_orders_and_timesteps_for_singlestep_solver``:

    * ``order=3``: ``K = nfe // 3 + 1`` intervals, orders ``[3]*(K-2) + [2, 1]`` if ``nfe % 3 == 0``,
      ``[3]*(K-1) + [1]`` if ``nfe % 3 == 1``, ``[3]*(K-1) + [2]`` if ``nfe % 3 == 2``;
    * ``order=2``: ``[2]*(nfe//2)``, plus a final ``[1]`` when ``nfe`` is odd;
    * ``order=1``: ``[1]*nfe``.

    The orders sum to ``nfe``: the whole budget is spent, for any ``nfe >= 1``.

    Raises:
        ValueError: ``order`` not in 1, 2, 3 or ``nfe < 1``.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"dpm_solver order must be 1, 2 or 3; got {order!r}")
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"the fast schedule needs an NFE budget >= 1; got {nfe!r}")
    if order == 1:
        return (1,) * nfe
    if order == 2:
        return (2,) * (nfe // 2) + (1,) * (nfe % 2)
    k = nfe // 3 + 1
    if nfe % 3 == 0:
        return (3,) * (k - 2) + (2, 1)
    if nfe % 3 == 1:
        return (3,) * (k - 1) + (1,)
    return (3,) * (k - 1) + (2,)


def fast_schedule(sde, nfe: int, eps, *, order: int = 3, kind: str = "log_snr", rho=7.0, dtype=jnp.float32):
    """The grid and per-interval orders of DPM-Solver-fast for a budget of ``nfe`` evaluations.

    Orders from :func:`fast_orders`; ``K = len(orders)`` intervals. As the authors' implementation does
    (``get_orders_and_timesteps_for_singlestep_solver``): on the ``"log_snr"`` grid the ``K`` intervals are
    uniform in log-SNR (the paper's setting); on any other grid the ``nfe``-interval grid of that kind is
    subsampled at the cumulative orders, so an order-``k`` interval spans ``k`` of its intervals.

    Where ``alpha(T) = 0`` the first step is first order whatever its nominal order (:func:`dpm_solver`), so the
    schedule is ``[1] + fast_orders(nfe - 1, order)``: the budget is still spent exactly (``nfe >= 2``).

    Returns:
        ``(ts, orders)``: ``ts`` of shape ``(K + 1,)`` from ``T`` to ``eps``; ``orders`` a tuple of ``K`` ints.
    """
    if alpha_vanishes_at_T(sde):
        if not (isinstance(nfe, int) and nfe >= 2):
            raise ValueError(
                f"the fast schedule from alpha(T) = 0 needs an NFE budget >= 2 (a first-order first "
                f"step, then the rest); got {nfe!r}"
            )
        orders = (1,) + fast_orders(nfe - 1, order)
    else:
        orders = fast_orders(nfe, order)
    if kind == "log_snr":
        return time_grid(sde, len(orders), eps, kind=kind, rho=rho, dtype=dtype), orders
    base = time_grid(sde, nfe, eps, kind=kind, rho=rho, dtype=dtype)
    return base[np.cumsum((0,) + orders)], orders


def dpm_solver(score_fn, sde, x, ts, key, nfe, *, order=2, orders=None, project_fn=None, steps=None):
    """Singlestep DPM-Solver-``order`` (noise prediction), ``order`` NFE per step.

    Intermediate times are placed at ``lambda_s + r h`` with ``r = 1/2`` (order 2) and
    ``r1, r2 = 1/3, 2/3`` (order 3), as the paper recommends. Order 1 equals DDIM with ``eta = 0``.

    ``orders`` (optional): one order per interval of ``ts`` (a tuple of ``len(ts) - 1`` ints in 1, 2, 3), in
    place of ``order`` everywhere, e.g. DPM-Solver-fast's from :func:`fast_schedule`. Each run of equal
    orders is one ``lax.scan`` of the same step.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"dpm_solver order must be 1, 2 or 3; got {order!r}")
    padded, steps = steps, ts.shape[0] - 1
    if padded is not None and orders is not None:
        raise ValueError(
            "dpm_solver: a padded grid (steps given) runs one order on every interval; orders must be None"
        )
    if orders is None:
        orders = (order,) * steps
    orders = tuple(int(o) for o in orders)
    if len(orders) != steps or any(o not in (1, 2, 3) for o in orders):
        raise ValueError(f"dpm_solver orders must be {steps} ints in 1, 2, 3 (one per interval); got {orders!r}")

    def t_at(lam):
        return sde.t_from_log_snr(2.0 * lam)

    def _dpm_step(x, nfe, s, t, order, from_alpha_zero=False):
        a_s, s_s, l_s = coefficients(sde, s, x)
        a_t, s_t, l_t = coefficients(sde, t, x)
        h = l_t - l_s
        if from_alpha_zero:
            # From alpha(s) = 0 (lambda_s = -inf, h = inf) the noise-prediction terms are infinite: take the
            # first-order data-prediction (DDIM) step x_t = alpha_t x0 + sigma_t eps; local error O(h²).
            x0, nfe = _x0_pred(score_fn, sde, x, s, nfe)
            eps = batch_mul(1.0 / s_s, x - batch_mul(a_s, x0))
            return batch_mul(a_t, x0) + batch_mul(s_t, eps), nfe
        eps_s, nfe = _eps_pred(score_fn, sde, x, s, nfe)
        base = batch_mul(a_t / a_s, x) - batch_mul(s_t * jnp.expm1(h), eps_s)
        if order == 1:
            return base, nfe
        r1 = 0.5 if order == 2 else 1.0 / 3.0
        s1 = t_at(l_s[0] + r1 * h[0])
        a_1, s_1, _ = coefficients(sde, s1, x)
        u1 = batch_mul(a_1 / a_s, x) - batch_mul(s_1 * jnp.expm1(r1 * h), eps_s)
        e1, nfe = _eps_pred(score_fn, sde, u1, s1, nfe)
        d1 = e1 - eps_s
        if order == 2:
            x_t = base - batch_mul(s_t / (2.0 * r1) * jnp.expm1(h), d1)
            return x_t, nfe
        r2 = 2.0 / 3.0
        s2 = t_at(l_s[0] + r2 * h[0])
        a_2, s_2, _ = coefficients(sde, s2, x)
        phi_r2 = jnp.expm1(r2 * h) / (r2 * h) - 1.0
        u2 = (
            batch_mul(a_2 / a_s, x)
            - batch_mul(s_2 * jnp.expm1(r2 * h), eps_s)
            - batch_mul(s_2 * (r2 / r1) * phi_r2, d1)
        )
        e2, nfe = _eps_pred(score_fn, sde, u2, s2, nfe)
        d2 = e2 - eps_s
        x_t = base - batch_mul(s_t / r2 * (jnp.expm1(h) / h - 1.0), d2)
        return x_t, nfe

    first = 0
    if alpha_vanishes_at_T(sde):
        x, nfe = _dpm_step(x, nfe, ts[0], ts[1], 1, from_alpha_zero=True)
        x = project(project_fn, x, ts[1], key, 0)
        first = 1
    # Runs of equal order, each one scan: uniform schedules are a single scan, DPM-Solver-fast at most three.
    i = first
    while i < steps:
        j = i
        while j < steps and orders[j] == orders[i]:
            j += 1

        def step(carry, inp, order=orders[i]):
            x, nfe = carry
            k, s, t = inp
            x, nfe = _dpm_step(x, nfe, s, t, order)
            return (project(project_fn, x, t, key, k), nfe), None

        idx = jnp.arange(i, j)
        (x, nfe), _ = grid_scan(step, (x, nfe), (idx, ts[idx], ts[idx + 1]), padded)
        i = j
    return x, nfe


def dpm_solver_pp(score_fn, sde, x, ts, key, nfe, *, order=2, lower_order_final=True, project_fn=None, steps=None):
    """Multistep DPM-Solver++ (data prediction), ``order`` 1 or 2 (2M); one NFE per step.

    The first step is first order (no history yet). With ``lower_order_final`` and fewer than 10 steps
    the last step is first order too, as the authors' current implementation does for stability
    (``DPM_Solver.sample``: ``if lower_order_final and steps < 10``).
    From ``alpha(s) = 0`` the step is ``x_t = sigma_t x + alpha_t x0`` (``h = inf``; in the next step ``r = h_prev / h = inf``
    makes ``0.5 / r = 0``, its first-order update), so no term is NaN.
    """
    if order not in (1, 2):
        raise ValueError(f"dpm_solver++ order must be 1 or 2 (multistep 2M); got {order!r}")
    padded, steps = steps, ts.shape[0] - 1 if steps is None else steps
    last_first_order = lower_order_final & (steps < LOWER_ORDER_FINAL_BELOW)

    def step(carry, inp):
        x, x0_prev, h_prev, nfe = carry
        i, s, t = inp
        a_s, s_s, l_s = coefficients(sde, s, x)
        a_t, s_t, l_t = coefficients(sde, t, x)
        h = l_t - l_s
        x0, nfe = _x0_pred(score_fn, sde, x, s, nfe)
        first = (i == 0) | (last_first_order & (i == steps - 1))
        if order == 2:
            r = jnp.where(first, 1.0, h_prev / h)
            d = batch_mul(1.0 + 0.5 / r, x0) - batch_mul(0.5 / r, x0_prev)
            d = jnp.where(first, x0, d)
        else:
            d = x0
        x_t = batch_mul(s_t / s_s, x) - batch_mul(a_t * jnp.expm1(-h), d)
        return (project(project_fn, x_t, t, key, i), x0, h, nfe), None

    idx = jnp.arange(ts.shape[0] - 1)
    h0 = jnp.zeros((x.shape[0],), x.dtype)
    (x, _, _, nfe), _ = grid_scan(step, (x, jnp.zeros_like(x), h0, nfe), (idx, ts[:-1], ts[1:]), padded)
    return x, nfe


def edm_heun(
    score_fn,
    sde,
    x,
    ts,
    key,
    nfe,
    *,
    S_churn=0.0,
    S_tmin=0.0,
    S_tmax=float("inf"),
    S_noise=1.0,
    project_fn=None,
    steps=None,
):
    """Karras et al. (2022) Algorithm 2 in the scaled coordinates ``x / alpha`` with noise level ``sigma / alpha``.

    Every step is a Heun step (2 NFE): the grid ends at ``eps > 0`` where the noise level is positive,
    so there is no final Euler step to ``sigma = 0`` (use ``denoise`` for that). ``S_churn > 0`` adds
    the stochastic "churn" of Algorithm 2 on noise levels in ``[S_tmin, S_tmax]``.
    """
    dtype = x.dtype
    padded, steps = steps, ts.shape[0] - 1 if steps is None else steps
    gamma_max = jnp.minimum(jnp.asarray(S_churn, dtype) / steps, jnp.sqrt(jnp.asarray(2.0, dtype)) - 1.0)

    def d_fn(xb, t, sig, nfe):
        """``dxbar / dsigma = (xbar - D(xbar)) / sigma`` at scaled state ``xb``."""
        alpha, sigma, _ = coefficients(sde, t, xb)
        x0, nfe = _x0_pred(score_fn, sde, batch_mul(alpha, xb), t, nfe)
        return (xb - x0) / sig, nfe

    def step(carry, inp):
        xb, nfe = carry
        i, t_cur, t_next = inp
        sig_cur, sig_next = edm_sigma(sde, t_cur), edm_sigma(sde, t_next)
        churn = (sig_cur >= S_tmin) & (sig_cur <= S_tmax)
        gamma = jnp.where(churn, gamma_max, 0.0)
        sig_hat = sig_cur * (1.0 + gamma)
        t_hat = jnp.where(gamma > 0, sde.t_from_log_snr(-2.0 * jnp.log(sig_hat)), t_cur)
        z = jax.random.normal(jax.random.fold_in(key, i), xb.shape, dtype)
        # sqrt(sig_hat² - sig_cur²) written so that rounding cannot make it the root of a negative number.
        xb_hat = xb + sig_cur * jnp.sqrt(gamma * (2.0 + gamma)) * S_noise * z
        d, nfe = d_fn(xb_hat, t_hat, sig_hat, nfe)
        xb_next = xb_hat + (sig_next - sig_hat) * d
        d2, nfe = d_fn(xb_next, t_next, sig_next, nfe)
        xb_next = xb_hat + (sig_next - sig_hat) * 0.5 * (d + d2)
        if project_fn is not None:  # the hook acts on x = alpha xbar
            a_next = sde.alpha(jnp.full((xb.shape[0],), t_next, dtype))
            xb_next = batch_mul(1.0 / a_next, project(project_fn, batch_mul(a_next, xb_next), t_next, key, i))
        return (xb_next, nfe), None

    idx = jnp.arange(ts.shape[0] - 1)
    if alpha_vanishes_at_T(sde):
        # At alpha(T) = 0 the noise level sigma/alpha is infinite and Heun's trapezoid over [inf, sigma_1]
        # is undefined: the first step is Euler's in sigma/alpha (= DDIM, x_1 = sigma_1/sigma_T x + alpha_1 x0),
        # as k-diffusion makes its step to sigma = 0 Euler's. Local error O(h²): Heun's order 2 is kept.
        x0, nfe = _x0_pred(score_fn, sde, x, ts[0], nfe)
        a_1, s_1, _ = coefficients(sde, ts[1], x)
        _, s_0, _ = coefficients(sde, ts[0], x)
        x = project(project_fn, batch_mul(s_1 / s_0, x) + batch_mul(a_1, x0), ts[1], key, 0)
        ts, idx = ts[1:], idx[1:]
    a_hi = sde.alpha(jnp.full((x.shape[0],), ts[0], dtype))
    a_lo = sde.alpha(jnp.full((x.shape[0],), ts[-1], dtype))
    (xb, nfe), _ = grid_scan(step, (batch_mul(1.0 / a_hi, x), nfe), (idx, ts[:-1], ts[1:]), padded)
    return batch_mul(a_lo, xb), nfe
