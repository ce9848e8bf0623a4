"""Power-function EMA and its post-hoc reconstruction (Karras et al. 2024, "Analyzing and Improving the Training
Dynamics of Diffusion Models", Sec. 3 and App. C; NVlabs/edm2 ``training/phema.py``).

A power-function EMA with exponent ``γ`` averages the parameter trajectory with the weight density
``p(τ) = (γ + 1) τ^γ / t^(γ+1)`` on ``[0, t]``; its width relative to ``t`` is ``σ_rel`` with
``σ_rel² = (γ + 1) / ((γ + 2)² (γ + 3))`` (Eq. 123). Tracked step by step (update ``i = 1, 2, ...``),
``ema_i = β_i ema_{i−1} + (1 − β_i) θ_i`` with ``β_i = (1 − 1/i)^(γ+1)`` (Eq. 127) gives ``θ_i`` the weight
``(i^(γ+1) − (i−1)^(γ+1)) / t^(γ+1)``: exactly ``∫_{i−1}^{i} p``, so the tracked EMA is the continuous profile
applied to the piecewise-constant trajectory.

During training two profiles (``σ_rel`` 0.05 and 0.10 in the paper) are tracked and stored at regular
snapshots; afterwards any ``σ_rel`` is synthesised as the combination of the stored snapshots whose weight
profile is nearest (least squares in ``L²[0, ∞)``, Algorithm 3): ``A x = b`` with ``A`` the inner products of
the stored profiles and ``b`` their inner products with the target, then ``x`` normalised to sum 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "gamma_from_sigma_rel",
    "sigma_rel_from_gamma",
    "power_ema_beta",
    "power_ema_weights",
    "profile_inner_products",
    "solve_coefficients",
    "profile_residual",
    "combine",
    "PowerEMAState",
    "track_power_ema",
    "find_power_ema_state",
]


def sigma_rel_from_gamma(gamma) -> np.ndarray:
    """``σ_rel`` of the power profile with exponent ``γ`` (Eq. 123)."""
    g = np.asarray(gamma, np.float64)
    return np.sqrt((g + 1) / ((g + 2) ** 2 * (g + 3)))


def gamma_from_sigma_rel(sigma_rel) -> np.ndarray:
    """The exponent ``γ`` of relative width ``σ_rel`` (Eq. 126): the largest real root of
    ``γ³ + 7γ² + (16 − σ⁻²)γ + 12 − σ⁻² = 0``.

    Raises:
        ValueError: ``σ_rel`` outside ``(0, 0.2886...)`` (``γ > −1`` needs ``σ_rel < σ_rel(−1) = 1/√12``).
    """
    s = np.asarray(sigma_rel, np.float64)
    bad = s.ravel()[~((s.ravel() > 0) & (s.ravel() < 12**-0.5))]
    if bad.size:
        raise ValueError(
            f"sigma_rel={float(bad[0])!r}: expected a number in (0, {12**-0.5:.4f}) (the paper uses 0.05 to 0.15)"
        )
    out = [
        max(r.real for r in np.roots([1.0, 7.0, 16.0 - v**-2, 12.0 - v**-2]) if abs(r.imag) < 1e-9) for v in s.ravel()
    ]
    return np.asarray(out, np.float64).reshape(s.shape)


def power_ema_beta(gamma: float, t):
    """``β_t = (1 − 1/t)^(γ+1)`` of update ``t = 1, 2, ...`` (Eq. 127; ``β_1 = 0``: the first update copies)."""
    t = jnp.asarray(t, jnp.float32)
    return jnp.exp((gamma + 1.0) * jnp.log1p(-1.0 / t))


def power_ema_weights(gamma: float, t: int) -> np.ndarray:
    """The weights ``(i^(γ+1) − (i−1)^(γ+1)) / t^(γ+1)`` of ``θ_1 … θ_t`` in the tracked EMA after ``t`` updates."""
    i = np.arange(1, t + 1, dtype=np.float64)
    return (i / t) ** (gamma + 1) - ((i - 1) / t) ** (gamma + 1)


def profile_inner_products(t_a, gamma_a, t_b, gamma_b) -> np.ndarray:
    """``∫ p_a p_b`` of power profiles ending at ``t_a`` / ``t_b`` with exponents ``γ_a`` / ``γ_b`` (Eq. 151),
    broadcast: ``(γ_a+1)(γ_b+1) m^(γ_a+γ_b+1) / ((γ_a+γ_b+1) t_a^(γ_a+1) t_b^(γ_b+1))``, ``m = min(t_a, t_b)``
    (evaluated in logs, so large ``t`` and ``γ`` do not overflow)."""
    ta, ga, tb, gb = (np.asarray(v, np.float64) for v in (t_a, gamma_a, t_b, gamma_b))
    m = np.minimum(ta, tb)
    log = (ga + gb + 1) * np.log(m) - (ga + 1) * np.log(ta) - (gb + 1) * np.log(tb)
    return (ga + 1) * (gb + 1) / (ga + gb + 1) * np.exp(log)


def solve_coefficients(t_in, sigma_in, t_out, sigma_out) -> np.ndarray:
    """Coefficients ``x`` (``(len(t_in), len(t_out))``) with ``Σ_i x_ij p_i`` the least-squares approximation of the
    target profile ``j`` by the stored ones (Algorithm 3), each column normalised to sum 1.

    Args:
        t_in, sigma_in: the stored snapshots' times (updates) and ``σ_rel`` (broadcast together).
        t_out, sigma_out: the targets' times and ``σ_rel``.

    Raises:
        ValueError: a snapshot time ``<= 0``, a bad ``σ_rel``, or two stored snapshots with the same profile
            (the system is singular).
    """
    t_in, sigma_in = (np.ravel(v) for v in np.broadcast_arrays(np.asarray(t_in, np.float64), sigma_in))
    t_out, sigma_out = (np.ravel(v) for v in np.broadcast_arrays(np.asarray(t_out, np.float64), sigma_out))
    if np.any(t_in <= 0) or np.any(t_out <= 0):
        raise ValueError(f"snapshot times must be > 0 updates; got {sorted(set(t_in.tolist()))}")
    g_in, g_out = gamma_from_sigma_rel(sigma_in), gamma_from_sigma_rel(sigma_out)
    pairs = set(zip(t_in.tolist(), np.round(sigma_in, 12).tolist(), strict=True))
    if len(pairs) != len(t_in):
        raise ValueError("two stored snapshots have the same time and sigma_rel: the least-squares system is singular")
    a = profile_inner_products(t_in[:, None], g_in[:, None], t_in[None, :], g_in[None, :])
    b = profile_inner_products(t_in[:, None], g_in[:, None], t_out[None, :], g_out[None, :])
    x = np.linalg.solve(a, b)
    return x / np.sum(x, axis=0, keepdims=True)


def profile_residual(t_in, sigma_in, t_out, sigma_out, x) -> np.ndarray:
    """``‖Σ_i x_ij p_i − p_j‖ / ‖p_j‖`` in ``L²`` for each target ``j``: how well the snapshots reproduce it.

    For any trajectory ``θ`` the synthesised and the exact EMA differ by at most
    ``residual · ‖p_j‖ · ‖θ‖_{L²[0, t]}`` (Cauchy–Schwarz).
    """
    t_in, sigma_in = (np.ravel(v) for v in np.broadcast_arrays(np.asarray(t_in, np.float64), sigma_in))
    t_out, sigma_out = (np.ravel(v) for v in np.broadcast_arrays(np.asarray(t_out, np.float64), sigma_out))
    g_in, g_out = gamma_from_sigma_rel(sigma_in), gamma_from_sigma_rel(sigma_out)
    a = profile_inner_products(t_in[:, None], g_in[:, None], t_in[None, :], g_in[None, :])
    b = profile_inner_products(t_in[:, None], g_in[:, None], t_out[None, :], g_out[None, :])
    c = profile_inner_products(t_out, g_out, t_out, g_out)
    sq = np.einsum("ij,ik,kj->j", x, a, x) - 2 * np.einsum("ij,ij->j", x, b) + c
    return np.sqrt(np.maximum(sq, 0.0) / c)


def combine(trees: Sequence, coefficients) -> object:
    """``Σ_i c_i tree_i`` leaf by leaf, accumulated in float64 on the host (the stored snapshots are host arrays)."""
    coefficients = np.asarray(coefficients, np.float64)
    if len(trees) != len(coefficients):
        raise ValueError(f"{len(trees)} snapshots but {len(coefficients)} coefficients")

    def leaf(*xs):
        acc = sum(c * np.asarray(x, np.float64) for c, x in zip(coefficients, xs, strict=True))
        return np.asarray(acc, np.asarray(xs[0]).dtype)

    return jax.tree.map(leaf, *trees)


class PowerEMAState(NamedTuple):
    """The tracked profiles: ``count`` applied updates, ``emas[k]`` the EMA of ``sigma_rels[k]``."""

    count: jax.Array
    emas: tuple


def track_power_ema(sigma_rels: Sequence[float]) -> optax.GradientTransformation:
    """An optax transformation that leaves the updates unchanged and tracks one power-function EMA per
    ``σ_rel`` of the parameters *after* the update (``params + updates``); chained last, its state holds the
    profiles, so they are checkpointed and restored with the optimizer state (EDM2's ``PowerFunctionEMA``).

    Raises:
        ValueError: no ``σ_rel`` or a bad one.
    """
    sigma_rels = tuple(float(s) for s in sigma_rels)
    if not sigma_rels:
        raise ValueError("track_power_ema needs at least one sigma_rel")
    gammas = tuple(float(g) for g in gamma_from_sigma_rel(sigma_rels))

    def init(params):
        return PowerEMAState(jnp.zeros((), jnp.int32), tuple(jax.tree.map(jnp.copy, params) for _ in gammas))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("track_power_ema needs the parameters (optax's update(updates, state, params))")
        t = state.count + 1
        new_params = optax.apply_updates(params, updates)
        emas = []
        for gamma, ema in zip(gammas, state.emas, strict=True):
            beta = power_ema_beta(gamma, t)
            emas.append(
                jax.tree.map(lambda e, p, beta=beta: (e * beta + p * (1 - beta)).astype(e.dtype), ema, new_params)
            )
        return updates, PowerEMAState(t, tuple(emas))

    return optax.GradientTransformation(init, update)


def find_power_ema_state(opt_state) -> PowerEMAState | None:
    """The :class:`PowerEMAState` inside an optimizer state (a chain's tuple), or ``None``."""
    if isinstance(opt_state, PowerEMAState):
        return opt_state
    if isinstance(opt_state, tuple):
        for part in opt_state:
            found = find_power_ema_state(part)
            if found is not None:
                return found
    return None
