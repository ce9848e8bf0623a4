"""Time grids for fixed-step samplers, and what those samplers share: the score-evaluation counter, the
``alpha``/``sigma``/``lambda`` coefficients, the ``project_fn`` hook and the default final time.

A grid is a decreasing array of ``steps + 1`` times from ``T`` to ``eps`` (both endpoints exact, so that
samplers on different grids start and stop at the same times). Four spacings:

* ``"uniform_t"``: uniform in ``t`` (DDIM's linear schedule, Song et al. 2021a);
* ``"quadratic_t"``: uniform in ``sqrt(t)``, ``t_i = (sqrt(T) + i/steps (sqrt(eps) - sqrt(T)))²`` (DDIM's quadratic
  schedule; the DEIS authors' default, ``ts_phase="t", ts_order=2``);
* ``"log_snr"``: uniform in the log-SNR ``log(alpha²/sigma²)`` (DPM-Solver's recommendation for
  low-resolution pixel-space models, Lu et al. 2022, Sec. 3.3);
* ``"edm"``: Karras et al. (2022) eq. 5, ``sigma_i = (smax^(1/rho) + i/steps (smin^(1/rho) - smax^(1/rho)))^rho``
  in the EDM noise level ``sigma/alpha = exp(-log_snr/2)``.

Grids are computed with ``jnp`` so ``eps`` and ``rho`` may be traced values; ``steps`` fixes the shape.

Where ``alpha(T) = 0`` (:class:`~scoresde.sde.RectifiedFlow`), the log-SNR and EDM noise level are infinite
at ``T``: the ``log_snr`` and ``edm`` grids then keep ``t_0 = T`` and space the other ``steps`` points
between ``t_1 = T - (T - eps) / steps`` (the first point of the uniform grid) and ``eps``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from scoresde import sde as sde_lib

GRIDS = ("uniform_t", "quadratic_t", "log_snr", "edm")

__all__ = [
    "GRIDS",
    "time_grid",
    "check_capacity",
    "grid_scan",
    "edm_sigma",
    "score_call",
    "denoiser_call",
    "alpha_vanishes_at_T",
    "coefficients",
    "project",
    "PROJECTION_KEY_OFFSET",
    "default_eps",
    "check_eps",
]

# The project_fn hook draws its noise from fold_in(step key, PROJECTION_KEY_OFFSET): independent of the noise the
# step itself draws from the same key, and the same for every sampler.
PROJECTION_KEY_OFFSET = 7919


def alpha_vanishes_at_T(sde) -> bool:
    """Whether ``alpha(T) = 0`` (log-SNR ``-inf`` at ``T``), a static property of the SDE."""
    with jax.ensure_compile_time_eval():  # a constant also while tracing
        return float(np.asarray(sde.alpha(np.asarray([sde.T], np.float32)))[0]) == 0.0


def coefficients(sde, t, like=None):
    """``alpha(t)``, ``sigma(t)`` and DPM-Solver's ``lambda(t) = log(alpha / sigma) = log_snr(t) / 2``.

    With ``like`` (a ``(B, ...)`` state) the scalar ``t`` is first broadcast to a ``(B,)`` array of ``like``'s
    dtype, the shape ``batch_mul`` takes; without it they are evaluated at ``t`` as given (e.g. a whole grid).
    """
    if like is not None:
        t = jnp.full((like.shape[0],), t, dtype=like.dtype)
    return sde.alpha(t), sde.sigma(t), 0.5 * sde.log_snr(t)


def project(project_fn, x, t, key, i):
    """The optional ``project_fn(x, t, key)`` hook (inpainting / colorization) after step ``i`` reached ``t``.

    Its key is ``fold_in(fold_in(key, i), PROJECTION_KEY_OFFSET)``; ``None`` returns ``x`` unchanged.
    """
    if project_fn is None:
        return x
    return project_fn(x, t, jax.random.fold_in(jax.random.fold_in(key, i), PROJECTION_KEY_OFFSET))


def default_eps(sde) -> float:
    """The SDE's own ``default_eps`` if it has one (EDMSDE: ``sigma_min``), else the reference's sampling
    eps: 1e-5 for VE, 1e-3 otherwise."""
    own = getattr(sde, "default_eps", None)
    if own is not None:
        return own
    return 1e-5 if isinstance(sde, sde_lib.VESDE) else 1e-3


def edm_sigma(sde, t):
    """The EDM noise level ``sigma(t) / alpha(t) = exp(-log_snr(t) / 2)``."""
    return jnp.exp(-0.5 * sde.log_snr(t))


def time_grid(sde, steps, eps, *, kind: str = "uniform_t", rho=7.0, dtype=jnp.float32, capacity: int | None = None):
    """Decreasing times ``t_0 = T > t_1 > ... > t_steps = eps``, shape ``(steps + 1,)``.

    Args:
        sde: a linear SDE from :mod:`scoresde.sde`.
        steps: number of intervals: a Python int (it fixes the shape, so changing it recompiles), or with
            ``capacity`` an int that may be traced.
        eps: the final time (may be traced).
        kind: one of :data:`GRIDS`.
        rho: the EDM schedule exponent (only for ``kind="edm"``).
        dtype: dtype of the result.
        capacity: ``None``, or a Python int ``>= steps``: the grid of ``steps`` intervals padded to
            ``capacity`` intervals with ``eps`` (shape ``(capacity + 1,)``, ``t_k = eps`` for ``k >= steps``), so
            every step count up to ``capacity`` has one shape (a sampler run on it skips the padded intervals:
            :func:`grid_scan`). Its first ``steps + 1`` times are the unpadded grid's, computed the same way.

    Raises:
        ValueError: for an unknown ``kind``, ``steps < 1``, or a static ``steps`` above ``capacity``.
    """
    if capacity is None:
        if not (isinstance(steps, int) and steps >= 1):
            raise ValueError(f"steps must be a positive Python int; got {steps!r}")
    else:
        check_capacity(capacity, steps)
    t_hi = jnp.asarray(sde.T, dtype)
    t_lo = jnp.asarray(eps, dtype)
    if kind in ("log_snr", "edm") and alpha_vanishes_at_T(sde):
        if capacity is None:
            if steps == 1:
                return jnp.stack([t_hi, t_lo]).astype(dtype)
            inner = _spaced(sde, steps - 1, t_hi - (t_hi - t_lo) / steps, t_lo, kind, rho, dtype)
        else:  # steps = 1 is the padded inner grid of 0 intervals: eps everywhere
            inner = _spaced(sde, steps - 1, t_hi - (t_hi - t_lo) / steps, t_lo, kind, rho, dtype, capacity - 1)
        return jnp.concatenate([t_hi[None], inner]).astype(dtype)
    return _spaced(sde, steps, t_hi, t_lo, kind, rho, dtype, capacity)


def check_capacity(capacity, steps) -> None:
    """Raises a clear ``ValueError`` unless ``capacity`` is a positive Python int and a static ``steps`` fits in it."""
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        raise ValueError(f"step_capacity must be a positive Python int; got {capacity!r}")
    if isinstance(steps, int) and not 1 <= steps <= capacity:
        raise ValueError(
            f"steps={steps} does not fit step_capacity={capacity}: the padded grid holds 1 to {capacity} steps"
        )


def grid_scan(step, carry, xs, steps=None):
    """``jax.lax.scan(step, carry, xs)`` over a grid's intervals; ``xs``'s first leaf is the interval index.

    With ``steps`` (the intervals in use of a grid padded by :func:`time_grid`'s ``capacity``, possibly traced),
    an interval ``i >= steps`` leaves the carry unchanged and calls nothing (``lax.cond``), so the NFE counted in
    the carry is the unpadded sampler's.
    """
    if steps is None:
        return jax.lax.scan(step, carry, xs)

    def masked(c, inp):
        i = jax.tree.leaves(inp)[0]
        return jax.lax.cond(i < steps, lambda c: step(c, inp)[0], lambda c: c, c), None

    return jax.lax.scan(masked, carry, xs)


def _spaced(sde, steps, t_hi, t_lo, kind, rho, dtype, capacity=None):
    if capacity is None:
        u = jnp.arange(steps + 1, dtype=dtype) / steps
    else:
        k = jnp.arange(capacity + 1)
        n = jnp.asarray(steps)
        u = jnp.minimum(k, n).astype(dtype) / jnp.maximum(n, 1).astype(dtype)
    if kind == "uniform_t":
        ts = t_hi + u * (t_lo - t_hi)
    elif kind == "quadratic_t":
        ts = (jnp.sqrt(t_hi) + u * (jnp.sqrt(t_lo) - jnp.sqrt(t_hi))) ** 2
    elif kind == "log_snr":
        l_hi, l_lo = sde.log_snr(t_hi), sde.log_snr(t_lo)
        ts = sde.t_from_log_snr(l_hi + u * (l_lo - l_hi))
    elif kind == "edm":
        rho = jnp.asarray(rho, dtype)
        s_hi, s_lo = edm_sigma(sde, t_hi) ** (1 / rho), edm_sigma(sde, t_lo) ** (1 / rho)
        sig = (s_hi + u * (s_lo - s_hi)) ** rho
        ts = sde.t_from_log_snr(-2.0 * jnp.log(sig))
    else:
        raise ValueError(f"unknown time grid {kind!r}; expected one of: {', '.join(GRIDS)}")
    # The inverse maps round; pin the endpoints so every grid starts at T and stops at eps exactly.
    if capacity is None:
        return ts.at[0].set(t_hi).at[-1].set(t_lo).astype(dtype)
    return jnp.where(k >= jnp.asarray(steps), t_lo, ts.at[0].set(t_hi)).astype(dtype)


def score_call(score_fn, x, t, nfe):
    """Evaluates ``score_fn`` at the scalar time ``t`` for the whole batch and counts the call.

    Every sampler routes its score evaluations through here, so the NFE it reports is the number of
    calls it made (inside ``lax.cond`` branches too), not a formula.
    """
    tv = jnp.full((x.shape[0],), t, dtype=x.dtype)
    return score_fn(x, tv), nfe + 1


def denoiser_call(score_fn, sde, x, t, nfe):
    """``E[x_0 | x_t]`` at the scalar time ``t``, counted as one NFE.

    Uses ``score_fn.denoiser`` when the model carries one
    (:class:`scoresde.parameterization.ScoreWithDenoiser`), else Tweedie's ``(x + sigma² score) / alpha``.
    """
    tv = jnp.full((x.shape[0],), t, dtype=x.dtype)
    denoiser = getattr(score_fn, "denoiser", None)
    if denoiser is not None:
        return denoiser(x, tv), nfe + 1
    alpha, sigma = sde.alpha(tv), sde.sigma(tv)
    score = score_fn(x, tv)
    return (x + (sigma**2).reshape((-1,) + (1,) * (x.ndim - 1)) * score) / alpha.reshape(
        (-1,) + (1,) * (x.ndim - 1)
    ), nfe + 1


def check_eps(eps, sde) -> None:
    """Raises a clear ``ValueError`` unless the final time ``eps`` lies in ``(0, T)`` (traced values pass)."""
    if isinstance(eps, jax.core.Tracer):
        return
    e = float(np.asarray(eps))
    if not 0.0 < e < float(sde.T):
        raise ValueError(
            f"eps={e:g} must lie in (0, T={float(sde.T):g}): the final time of the reverse "
            f"process (default {type(sde).__name__}: 1e-3 for VP / sub-VP, 1e-5 for VE)"
        )


class ShapeCheckedScore:
    """``score_fn`` that raises a clear ``ValueError`` when its output's shape is not the state's.

    The check runs when the wrapped function is traced (shapes are static), so it costs nothing per call and
    adds no trace of its own. Attributes (e.g. a model's ``denoiser``) are those of the wrapped function.
    A score of shape ``(B, 1)`` for a ``(B, D)`` state would otherwise broadcast silently.
    """

    def __init__(self, score_fn):
        self.score_fn = score_fn

    def __call__(self, x, *times):
        # one time (a score, a consistency function) or two (a MeanFlow average velocity u(x, r, t))
        out = self.score_fn(x, *times)
        shape = getattr(out, "shape", None)
        if shape is None or tuple(shape) != tuple(x.shape):
            args = "x, r, t" if len(times) == 2 else "x, t"
            raise ValueError(
                f"score_fn({args}) returns shape {shape} for a state of shape {tuple(x.shape)}; it "
                "must return the state's shape (one score per element)"
            )
        return out

    def __getattr__(self, name):
        if name == "score_fn":
            raise AttributeError(name)
        return getattr(self.score_fn, name)
