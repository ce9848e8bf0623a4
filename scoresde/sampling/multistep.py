"""Multistep exponential-integrator samplers in data prediction: UniPC and DEIS, for every linear SDE.

Both integrate ``x_t = (sigma_t / sigma_s) x_s + sigma_t ∫_{lambda_s}^{lambda_t} e^{lambda} x0(lambda) dlambda``
(``lambda = log(alpha / sigma)``, ``h = lambda_t - lambda_s``) with the data prediction ``x0`` from the
model's denoiser (:func:`scoresde.sampling.grids.denoiser_call`) at previous grid points; one NFE per step
(UniPC's corrector reuses the evaluation the next step needs; the last step has no corrector).

* :func:`unipc`: Zhao et al., "UniPC", NeurIPS 2023, Algorithms 2–3 (UniP-p predictor + UniC corrector;
  ``B(h) = h`` for ``bh1``, ``e^h - 1`` for ``bh2``), data prediction; order ``p`` predictor with the
  corrector gives order ``p + 1``.
* :func:`deis`: Zhang & Chen, "Fast Sampling of Diffusion Models with Exponential Integrator", ICLR 2023:
  the ``x0`` history is extrapolated by its Lagrange polynomial in ``lambda`` and the exponential integral
  is exact (DEIS's polynomial-extrapolation multistep, in the data-prediction / log-SNR variable); order
  ``p`` uses ``p`` points.

The first steps use the orders their history allows; a history point with ``lambda = -inf`` (from
``alpha(T) = 0``) does not count, so a step from :class:`~scoresde.sde.RectifiedFlow`'s ``T = 1`` is the
finite first-order step ``x_t = sigma_t x + alpha_t x0``. With ``lower_order_final`` and fewer than 10 steps
the final steps lower their order to the steps left (DPM-Solver / UniPC's rule).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from scoresde.sampling.fast import LOWER_ORDER_FINAL_BELOW
from scoresde.sampling.grids import alpha_vanishes_at_T, coefficients, denoiser_call, project

__all__ = ["unipc", "deis", "UNIPC_VARIANTS"]

UNIPC_VARIANTS = ("bh1", "bh2")


def _step_orders(steps, order, alpha0, lower_order_final):
    """Order of each step ``k`` (from ``t_k``): limited by the finite history and, optionally, the steps left."""
    orders = []
    for k in range(steps):
        p = min(order, max(k, 1) if alpha0 else k + 1)
        if lower_order_final and steps < LOWER_ORDER_FINAL_BELOW:
            p = min(p, steps - k)
        orders.append(p)
    return jnp.asarray(orders, jnp.int32)


def _weighted(ws, ds):
    return sum(w * d for w, d in zip(ws, ds))


def unipc(score_fn, sde, x, ts, key, nfe, *, order=2, variant="bh1", lower_order_final=True, project_fn=None):
    """Multistep UniPC (data prediction), ``order`` 1–3, ``variant`` ``bh1`` or ``bh2``; one NFE per step."""
    if order not in (1, 2, 3):
        raise ValueError(f"unipc order must be 1, 2 or 3; got {order!r}")
    if variant not in UNIPC_VARIANTS:
        raise ValueError(f"unknown unipc variant {variant!r}; expected one of: {', '.join(UNIPC_VARIANTS)}")
    steps = ts.shape[0] - 1
    alphas, sigmas, lams = coefficients(sde, ts)
    orders = _step_orders(steps, order, alpha_vanishes_at_T(sde), lower_order_final)

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

    (x, m_hist, l_hist, nfe), _ = jax.lax.scan(step, (x, m_hist, l_hist, nfe), jnp.arange(steps - 1))
    k = steps - 1
    x, _, nfe = jax.lax.switch(orders[k] - 1, branches(False), (x, m_hist, l_hist, k, nfe))
    return project(project_fn, x, ts[-1], key, k), nfe


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


def deis(score_fn, sde, x, ts, key, nfe, *, order=2, lower_order_final=True, project_fn=None):
    """DEIS multistep exponential integrator with Lagrange extrapolation of ``x0`` in ``lambda``, ``order`` 1–3.

    With nodes ``s_j = (lambda_j - lambda_t) / h`` (``s_0 = -1`` this step's start) and the Lagrange basis
    ``L_j(s) = Σ_k c_jk s^k``: ``x_t = (sigma_t / sigma_s) x + alpha_t h Σ_j x0_j Σ_k c_jk J_k(h)`` with
    ``J_k(h) = ∫_{-1}^0 e^{h s} s^k ds``. Order 1 is DDIM / DPM-Solver++-1: ``alpha_t (1 - e^{-h}) x0``.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"deis order must be 1, 2 or 3; got {order!r}")
    steps = ts.shape[0] - 1
    alphas, sigmas, lams = coefficients(sde, ts)
    orders = _step_orders(steps, order, alpha_vanishes_at_T(sde), lower_order_final)

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
    (x, *_, nfe), _ = jax.lax.scan(step, (x, m_hist, l_hist, nfe), jnp.arange(steps))
    return x, nfe
