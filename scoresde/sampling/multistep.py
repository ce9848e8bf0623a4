"""Multistep exponential-integrator samplers: UniPC, DEIS (tAB) and a log-SNR data-prediction DEIS variant.

:func:`deis` is the authors' tAB-DEIS in noise prediction (below). :func:`unipc` and :func:`deis_logsnr_x0`
integrate ``x_t = (sigma_t / sigma_s) x_s + sigma_t ∫_{lambda_s}^{lambda_t} e^{lambda} x0(lambda) dlambda``
(``lambda = log(alpha / sigma)``, ``h = lambda_t - lambda_s``) with the data prediction ``x0`` from the
model's denoiser (:func:`scoresde.sampling.grids.denoiser_call`) at previous grid points; one NFE per step
(UniPC's corrector reuses the evaluation the next step needs; the last step has no corrector).

* :func:`unipc`: Zhao et al., "UniPC", NeurIPS 2023, Algorithms 2–3 (UniP-p predictor + UniC corrector;
  ``B(h) = h`` for ``bh1``, ``e^h - 1`` for ``bh2``), data prediction; order ``p`` predictor with the
  corrector gives order ``p + 1``.
* :func:`deis_logsnr_x0`: DEIS's polynomial-extrapolation multistep moved to the data prediction and the
  log-SNR variable (not the authors' algorithm): the ``x0`` history is extrapolated by its Lagrange polynomial
  in ``lambda`` and the exponential integral is exact; order ``p`` uses ``p`` points. Good on the ``log_snr``
  grid; on ``uniform_t`` its orders 2 and 3 are worse than its order 1.
* :func:`deis`: Zhang & Chen, "Fast Sampling of Diffusion Models with Exponential Integrator", ICLR 2023,
  tAB-DEIS (their eq. 14 / the authors' ``jax_deis`` ``t_ab``): ``x_t = (alpha_t / alpha_s) x_s +
  Σ_j C_j eps_j`` with the *noise prediction* history ``eps_j`` extrapolated by its Lagrange polynomial in
  ``t`` and ``C_j = alpha_t ∫_s^t d(sigma/alpha)/dτ L_j(τ) dτ``. Orders as the authors number them: order
  ``r`` (0–3) is a polynomial of degree ``r`` through ``r + 1`` points; order 0 is DDIM.

The first steps use the orders their history allows; a history point with ``lambda = -inf`` (from
``alpha(T) = 0``) does not count, so a step from :class:`~scoresde.sde.RectifiedFlow`'s ``T = 1`` is the
finite first-order step ``x_t = sigma_t x + alpha_t x0``. With ``lower_order_final`` the final steps lower their
order to the steps left: in :func:`unipc` at every step count (the UniPC authors' ``UniPC.sample`` rule), in
:func:`deis_logsnr_x0` only below 10 steps (DPM-Solver's rule, as :func:`scoresde.sampling.fast.dpm_solver_pp`).
Measured on the VP Gaussian oracle (float64, log-SNR grid, mean |x - exact flow map|), UniPC's rule against
DPM-Solver's for UniPC-bh1: order 2 (the default) 5.04e-2 / 5.57e-2 at 10 steps, 1.42e-2 / 1.50e-2 at 15,
5.75e-3 / 6.08e-3 at 20, 3.27e-4 / 3.51e-4 at 50 (better at every count); order 3 mixed: 2.47e-2 / 4.39e-3 at
10, 1.15e-3 / 1.33e-3 at 15, 2.04e-4 / 8.63e-5 at 20, 2.29e-5 / 1.11e-5 at 50.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from scoresde.sampling.fast import LOWER_ORDER_FINAL_BELOW
from scoresde.sampling.grids import alpha_vanishes_at_T, coefficients, denoiser_call, grid_scan, project

__all__ = ["unipc", "deis", "deis_logsnr_x0", "UNIPC_VARIANTS", "DEIS_QUADRATURE_NODES"]

UNIPC_VARIANTS = ("bh1", "bh2")


def _step_orders(steps, order, alpha0, lower_order_final, final_below=None, length=None):
    """Order of each step ``k`` (from ``t_k``): limited by the finite history and, with ``lower_order_final``, by
    the steps left: for every step count (``final_below=None``, UniPC's rule) or only when
    ``steps < final_below`` (DPM-Solver's rule, ``final_below = 10``). ``steps`` may be traced when ``length``
    (the padded grid's interval count) is given; entries ``k >= steps`` are then 1 (unused)."""
    k = jnp.arange(steps if length is None else length)
    p = jnp.minimum(order, jnp.maximum(k, 1) if alpha0 else k + 1)
    if lower_order_final:
        lowered = jnp.minimum(p, jnp.maximum(steps - k, 1))
        p = lowered if final_below is None else jnp.where(steps < final_below, lowered, p)
    return p.astype(jnp.int32)


def _weighted(ws, ds):
    return sum(w * d for w, d in zip(ws, ds))


def unipc(
    score_fn, sde, x, ts, key, nfe, *, order=2, variant="bh1", lower_order_final=True, project_fn=None, steps=None
):
    """Multistep UniPC (data prediction), ``order`` 1–3, ``variant`` ``bh1`` or ``bh2``; one NFE per step."""
    if order not in (1, 2, 3):
        raise ValueError(f"unipc order must be 1, 2 or 3; got {order!r}")
    if variant not in UNIPC_VARIANTS:
        raise ValueError(f"unknown unipc variant {variant!r}; expected one of: {', '.join(UNIPC_VARIANTS)}")
    padded, length = steps, ts.shape[0] - 1
    steps = length if steps is None else steps
    alphas, sigmas, lams = coefficients(sde, ts)
    # UniPC's rule: every count
    orders = _step_orders(steps, order, alpha_vanishes_at_T(sde), lower_order_final, length=length)

    def update(p, x, m_hist, l_hist, k, use_corrector, nfe):
        """One UniP-p step from ``t_k`` (history ``m_hist[-1]`` at ``t_k``) and, optionally, UniC-p."""
        s_s, a_t, s_t, l_t = sigmas[k], alphas[k + 1], sigmas[k + 1], lams[k + 1]
        m0, l0 = m_hist[-1], l_hist[-1]
        h = l_t - l0
        rks, d1s = [], []
        for i in range(1, p):
            rk = (l_hist[-(i + 1)] - l0) / h
            rks.append(rk)
            d1s.append((m_hist[-(i + 1)] - m0) / rk)
        rks.append(jnp.ones_like(h))
        hh = -h
        h_phi_1 = jnp.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1.0
        # bh1's B(h) = h is infinite for the step from alpha = 0; bh2's e^{-h} - 1 = -1 is used there.
        b_h = jnp.expm1(hh) if variant == "bh2" else jnp.where(jnp.isfinite(hh), hh, -1.0)
        rows, bs, fact = [], [], 1
        for i in range(1, p + 1):
            rows.append(jnp.stack(rks) ** (i - 1))
            bs.append(h_phi_k * fact / b_h)
            fact *= i + 1
            h_phi_k = h_phi_k / hh - 1.0 / fact
        r_mat, b_vec = jnp.stack(rows), jnp.stack(bs)
        x_lin = s_t / s_s * x - a_t * h_phi_1 * m0
        if p == 1:
            pred = x_lin
        else:
            rhos_p = jnp.array([0.5], x.dtype) if p == 2 else jnp.linalg.solve(r_mat[:-1, :-1], b_vec[:-1])
            pred = x_lin - a_t * b_h * _weighted(rhos_p, d1s)
        if not use_corrector:
            return pred, None, nfe
        m_t, nfe = denoiser_call(score_fn, sde, pred, ts[k + 1], nfe)
        rhos_c = jnp.array([0.5], x.dtype) if p == 1 else jnp.linalg.solve(r_mat, b_vec)
        corr = _weighted(rhos_c[:-1], d1s) + rhos_c[-1] * (m_t - m0)
        return x_lin - a_t * b_h * corr, m_t, nfe

    def branches(use_corrector):
        def make(p):
            def fn(args):
                x, m_hist, l_hist, k, nfe = args
                x_new, m_t, nfe = update(p, x, m_hist, l_hist, k, use_corrector, nfe)
                return (x_new, m_t if m_t is not None else jnp.zeros_like(x), nfe)

            return fn

        return [make(p) for p in range(1, order + 1)]

    m0, nfe = denoiser_call(score_fn, sde, x, ts[0], nfe)
    m_hist = jnp.stack([jnp.zeros_like(x)] * (order - 1) + [m0])
    l_hist = jnp.concatenate([jnp.full((order - 1,), -jnp.inf, x.dtype), lams[:1]])
    with_corr = branches(True)

    def step(carry, k):
        x, m_hist, l_hist, nfe = carry
        x, m_t, nfe = jax.lax.switch(orders[k] - 1, with_corr, (x, m_hist, l_hist, k, nfe))
        x = project(project_fn, x, ts[k + 1], key, k)
        m_hist = jnp.concatenate([m_hist[1:], m_t[None]])
        l_hist = jnp.concatenate([l_hist[1:], lams[k + 1][None]])
        return (x, m_hist, l_hist, nfe), None

    # every step but the last has UniC's corrector
    carry = (x, m_hist, l_hist, nfe)
    (x, m_hist, l_hist, nfe), _ = grid_scan(step, carry, jnp.arange(length - 1), None if padded is None else steps - 1)
    k = steps - 1
    x, _, nfe = jax.lax.switch(orders[k] - 1, branches(False), (x, m_hist, l_hist, k, nfe))
    return project(project_fn, x, ts[k + 1], key, k), nfe


def _exp_moments(h, n):
    """``J_k(h) = ∫_{-1}^{0} e^{h s} s^k ds`` for ``k < n``: a series for ``h < 1``, the recursion otherwise."""
    hs = jnp.where(h < 1.0, h, 0.5)  # keeps the unused branch finite
    series = []
    for k in range(n):
        terms = [hs**m * ((-1.0) ** (m + k) / (math.factorial(m) * (m + k + 1))) for m in range(24)]
        series.append(sum(terms))
    hr = jnp.where(h < 1.0, 1.0, h)
    rec = [-jnp.expm1(-hr) / hr]
    for k in range(1, n):
        rec.append(-((-1.0) ** k) * jnp.exp(-hr) / hr - k / hr * rec[-1])
    return [jnp.where(h < 1.0, a, b) for a, b in zip(series, rec)]


def deis_logsnr_x0(score_fn, sde, x, ts, key, nfe, *, order=2, lower_order_final=True, project_fn=None, steps=None):
    """A DEIS-style multistep exponential integrator in data prediction: Lagrange extrapolation of ``x0`` in
    ``lambda``, ``order`` 1–3 (``order`` points). Not the authors' tAB-DEIS (that is :func:`deis`).

    With nodes ``s_j = (lambda_j - lambda_t) / h`` (``s_0 = -1`` this step's start) and the Lagrange basis
    ``L_j(s) = Σ_k c_jk s^k``: ``x_t = (sigma_t / sigma_s) x + alpha_t h Σ_j x0_j Σ_k c_jk J_k(h)`` with
    ``J_k(h) = ∫_{-1}^0 e^{h s} s^k ds``. Order 1 is DDIM / DPM-Solver++-1: ``alpha_t (1 - e^{-h}) x0``.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"deis_logsnr_x0 order must be 1, 2 or 3; got {order!r}")
    padded, length = steps, ts.shape[0] - 1
    steps = length if steps is None else steps
    alphas, sigmas, lams = coefficients(sde, ts)
    orders = _step_orders(
        steps, order, alpha_vanishes_at_T(sde), lower_order_final, LOWER_ORDER_FINAL_BELOW, length=length
    )

    def make(p):
        def fn(args):
            x, m_hist, l_hist, k = args
            s_s, a_t, s_t, l_t = sigmas[k], alphas[k + 1], sigmas[k + 1], lams[k + 1]
            h = l_t - l_hist[-1]
            x_lin = s_t / s_s * x
            if p == 1:
                return x_lin + a_t * -jnp.expm1(-h) * m_hist[-1]
            nodes = jnp.stack([(l_hist[-(j + 1)] - l_t) / h for j in range(p)])
            vander = nodes[:, None] ** jnp.arange(p)[None, :]
            coef = jnp.linalg.inv(vander)  # coef[k, j]: s^k coefficient of L_j
            moments = jnp.stack(_exp_moments(h, p))
            weights = h * (moments @ coef)
            return x_lin + a_t * _weighted(weights, [m_hist[-(j + 1)] for j in range(p)])

        return fn

    branches = [make(p) for p in range(1, order + 1)]

    def step(carry, k):
        x, m_hist, l_hist, nfe = carry
        m_k, nfe = denoiser_call(score_fn, sde, x, ts[k], nfe)
        m_hist = jnp.concatenate([m_hist[1:], m_k[None]])
        l_hist = jnp.concatenate([l_hist[1:], lams[k][None]])
        x = jax.lax.switch(orders[k] - 1, branches, (x, m_hist, l_hist, k))
        return (project(project_fn, x, ts[k + 1], key, k), m_hist, l_hist, nfe), None

    m_hist = jnp.zeros((order,) + x.shape, x.dtype)
    l_hist = jnp.full((order,), -jnp.inf, x.dtype)
    (x, *_, nfe), _ = grid_scan(step, (x, m_hist, l_hist, nfe), jnp.arange(length), padded)
    return x, nfe


# Gauss–Legendre nodes and weights on [-1, 1] for the tAB-DEIS coefficients (exact for polynomials of degree 31).
DEIS_QUADRATURE_NODES = 16
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(DEIS_QUADRATURE_NODES)


def tab_deis_coefficients(sde, ts, order):
    """tAB-DEIS weights ``C[k, j]`` of ``eps`` at ``t_{k-j}`` in the step ``t_k -> t_{k+1}``, ``(steps, order + 1)``.

    ``C[k, j] = alpha(t_{k+1}) ∫_{t_k}^{t_{k+1}} d(sigma/alpha)/dτ L_j(τ) dτ`` with ``L_j`` the Lagrange basis on
    the step's nodes ``t_k, ..., t_{k-r}`` (``r = min(order, k)``). Substituting ``u = sigma/alpha`` (the EDM
    noise level, monotone in ``t``) makes it ``alpha(t_{k+1}) ∫_{u_k}^{u_{k+1}} L_j(τ(u)) du``, an integral of
    a smooth function, computed by a fixed :data:`DEIS_QUADRATURE_NODES`-point Gauss–Legendre rule
    (``τ(u)`` by ``sde.t_from_log_snr(-2 log u)``); the authors use a 10,000-point left Riemann sum in ``t``.
    Entries with ``j > r`` are 0. A step from ``alpha = 0`` has ``r = 0`` and its row is unused (see :func:`deis`).
    """
    steps = ts.shape[0] - 1
    dtype = ts.dtype
    u = jnp.exp(-0.5 * sde.log_snr(ts))  # sigma / alpha
    u_s, u_t = u[:-1], u[1:]
    xi = jnp.asarray(_GL_NODES, dtype)
    w = jnp.asarray(_GL_WEIGHTS, dtype)
    # (steps, Q) quadrature points in u, their times, and the half-length of each interval in u
    half = 0.5 * (u_t - u_s)
    uq = 0.5 * (u_t + u_s)[:, None] + half[:, None] * xi[None, :]
    tq = sde.t_from_log_snr(-2.0 * jnp.log(uq).reshape(-1)).reshape(uq.shape)
    k = np.arange(steps)
    rows = jnp.zeros((steps, order + 1), dtype)
    for r in range(order + 1):  # the steps of order r: r + 1 nodes
        mask = np.minimum(order, k) == r
        if not mask.any():
            continue
        idx = np.clip(k[:, None] - np.arange(r + 1)[None, :], 0, steps)  # nodes t_k, t_{k-1}, ..., t_{k-r}
        nodes = ts[idx]  # (steps, r + 1)
        cols = []
        for j in range(r + 1):
            basis = jnp.ones_like(tq)
            for m in range(r + 1):
                if m != j:
                    basis = basis * (tq - nodes[:, m : m + 1]) / (nodes[:, j : j + 1] - nodes[:, m : m + 1])
            cols.append(half * jnp.sum(w[None, :] * basis, axis=1))
        block = jnp.stack(cols + [jnp.zeros_like(half)] * (order - r), axis=1)
        rows = jnp.where(jnp.asarray(mask)[:, None], block, rows)
    alphas = sde.alpha(ts)
    return alphas[1:, None] * rows


def deis(score_fn, sde, x, ts, key, nfe, *, order=3, project_fn=None, steps=None):
    """tAB-DEIS (Zhang & Chen, ICLR 2023; the authors' ``t_ab``), ``order`` 0–3 as they number it; 1 NFE per step.

    Step ``k`` (``t_k -> t_{k+1}``) extrapolates the noise prediction ``eps(x, t) = (x - alpha D(x, t)) / sigma``
    (``D`` the denoiser, :func:`scoresde.sampling.grids.denoiser_call`) by its Lagrange polynomial in ``t``
    through ``t_k, ..., t_{k-r}``, ``r = min(order, k)`` (the first steps use the orders their history allows,
    as the authors' coefficient table does), and integrates the exponential integrator exactly against it::

        x_{k+1} = (alpha_{k+1} / alpha_k) x_k + Σ_{j<=r} C[k, j] eps_{k-j}

    with :func:`tab_deis_coefficients`. Order 0 is DDIM, written ``alpha_{k+1} D_k + sigma_{k+1} eps_k`` (the
    same step), which is finite also from ``alpha = 0`` (:class:`~scoresde.sde.RectifiedFlow`'s ``T = 1``, where
    ``eps = x_T``): with ``alpha(T) = 0`` the first step is that one, and later steps use ``eps`` at ``T`` as a
    history point. The authors' default is ``order=3`` on the ``quadratic_t`` grid (``ts_phase="t"``,
    ``ts_order=2``); there is no lower-order final step in their tAB.
    """
    if order not in (0, 1, 2, 3):
        raise ValueError(f"deis order must be 0, 1, 2 or 3 (the authors' tAB orders); got {order!r}")
    padded, length = steps, ts.shape[0] - 1
    alphas, sigmas, _ = coefficients(sde, ts)
    coef = tab_deis_coefficients(sde, ts, order)  # a padded grid's rows past its steps are unused (0 / 0 there)
    first = np.arange(length) == 0  # order 0: the DDIM form, finite from alpha = 0

    def step(carry, k):
        x, e_hist, nfe = carry
        x0, nfe = denoiser_call(score_fn, sde, x, ts[k], nfe)
        eps = (x - alphas[k] * x0) / sigmas[k]
        e_hist = jnp.concatenate([eps[None], e_hist[:-1]])  # e_hist[j] = eps at t_{k-j}
        ddim = alphas[k + 1] * x0 + sigmas[k + 1] * eps
        ab = alphas[k + 1] / jnp.where(jnp.asarray(first)[k], 1.0, alphas[k]) * x + _weighted(coef[k], e_hist)
        x = jnp.where(jnp.asarray(first)[k], ddim, ab)
        return (project(project_fn, x, ts[k + 1], key, k), e_hist, nfe), None

    e_hist = jnp.zeros((order + 1,) + x.shape, x.dtype)
    (x, _, nfe), _ = grid_scan(step, (x, e_hist, nfe), jnp.arange(length), padded)
    return x, nfe
