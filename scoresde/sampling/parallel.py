"""Parallel-in-time sampling: ParaDiGMS (Shih et al. 2023), Picard iterations over a sliding window.

``samples, nfe = parallel_sample(score_fn, sde, shape, key, method="ddim", window=W, tol=τ)``, the return
shape of every sampler; ``stats=True`` adds a third value, ``{"rounds": rounds}``.

The fixed-grid sampler is a chain ``x_{i+1} = Φ_i(x_i, s(x_i, t_i), z_i)`` over the grid
``t_0 = T > ... > t_N = eps`` (:func:`scoresde.sampling.time_grid`), where ``Φ_i`` is the DDIM update
(``eta = 0``: the probability-flow step, ≡ Euler in the EDM noise level and DPM-Solver-1; ``eta = 1``:
DDPM ancestral) and ``z_i`` is its noise, *drawn in advance* from ``fold_in(key, i)`` exactly as the
sequential sampler draws it. A round of Picard iteration over the window ``[j, j + W)``:

1. evaluates the score at all ``W`` current guesses ``x_j, ..., x_{j+W-1}`` **in one batched call**
   (``W · B`` rows; under a ``('data',)`` mesh these spread over the devices);
2. recomputes the window's states by the cheap chain ``x'_{i+1} = Φ_i(x'_i, s_i, z_i)`` from the
   window's fixed first state ``x'_j = x_j`` with those scores held fixed (ParaDiGMS sums the drifts
   from ``x_j``; here the part of ``Φ_i`` linear in the state uses the new states, a Picard iteration
   on the network term only, which makes window 1 *exactly* the sequential sampler and converges in at
   most ``W`` rounds per window as ParaDiGMS's does);
3. **tolerance rule** (ParaDiGMS's per-step scaling by the step's noise variance): step ``i`` has
   converged when, for every example of the batch,
   ``RMS(x'_{i+1} - x_{i+1}) <= tol · sigma_{t_{i+1}} sqrt(1 - exp(-2 (lambda_{i+1} - lambda_i)))``,
   the RMS over the example's coordinates and the right-hand factor the std of the DDPM ancestral
   noise of that step (``lambda`` = half the log-SNR). ``tol = 0`` demands no change at all;
4. slides the window past its leading converged steps (at least one: the first step is exact after a
   round); new window slots start from the window's last state.

The loop is a ``lax.while_loop`` on the device; it stops when the window has passed the last step.
``rounds`` (``stats=True``) is the number of sequential rounds (``= steps`` for window 1). ``nfe`` counts
every score evaluation made, ``W · B``-row calls counting ``W`` (padding slots past the grid's end included).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from scoresde.parameterization import score_to_denoiser
from scoresde.sampling.fast import ddim_update
from scoresde.sampling.grids import GRIDS, coefficients, default_eps, time_grid

__all__ = ["PARALLEL_METHODS", "parallel_sample"]

PARALLEL_METHODS = ("ddim", "ddpm")


def parallel_sample(
    score_fn,
    sde,
    shape,
    key,
    *,
    method: str = "ddim",
    window: int,
    tol,
    x_init=None,
    eps=None,
    steps: int = 50,
    eta=None,
    grid: str = "uniform_t",
    stats: bool = False,
):
    """ParaDiGMS sampling with the fixed-grid DDIM / DDPM sampler; see the module docstring.

    Args:
        score_fn: batched ``score_fn(x, t)``; it is called on ``window · B`` rows at once.
        sde: a linear SDE.
        shape: ``(B, ...)``.
        key: PRNG key, used as :func:`scoresde.sampling.sample` uses it (``split`` into prior / loop keys),
            so the same key and ``x_init`` give the same noise as ``sample(method="ddim")``.
        method: ``"ddim"`` (``eta`` [0.0]) or ``"ddpm"`` (DDIM with ``eta = 1``, ancestral sampling).
        window: ``W >= 1`` steps per Picard round (static).
        tol: the per-step tolerance τ of the module docstring (traced); 0 gives the sequential result.
        x_init: optional prior draw at ``T`` (shape ``shape``).
        eps: the final time (:func:`scoresde.sampling.default_eps` if ``None``).
        steps: grid intervals (static); ``grid``: one of :data:`scoresde.sampling.GRIDS`.
        eta: DDIM's noise level (traced; ``ddim`` only).
        stats: also return the run's statistics.

    Returns:
        ``(samples, nfe)``, ``nfe`` an int32 scalar; with ``stats=True``, ``(samples, nfe, stats)`` where
        ``stats = {"rounds": rounds}``, the int32 number of sequential Picard rounds (the wall-clock cost).

    Raises:
        ValueError: for an unknown method / grid or a bad ``window`` / ``steps``.
    """
    if method not in PARALLEL_METHODS:
        raise ValueError(f"unknown parallel sampling method {method!r}; expected one of: {', '.join(PARALLEL_METHODS)}")
    if method == "ddpm" and eta is not None:
        raise ValueError(f"method 'ddpm' is DDIM with eta = 1; got eta={eta!r} (use method='ddim')")
    for name, v in (("window", window), ("steps", steps)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int; got {v!r}")
    if grid not in GRIDS:
        raise ValueError(f"unknown time grid {grid!r}; expected one of: {', '.join(GRIDS)}")
    eta = 1.0 if method == "ddpm" else (0.0 if eta is None else eta)
    eps = default_eps(sde) if eps is None else eps
    samples, nfe, rounds = _parallel_jit(
        score_fn,
        sde,
        tuple(shape),
        key,
        x_init,
        jnp.asarray(eps),
        jnp.asarray(eta),
        jnp.asarray(tol),
        window,
        steps,
        grid,
    )
    return (samples, nfe, {"rounds": rounds}) if stats else (samples, nfe)


@eqx.filter_jit
def _parallel_jit(score_fn, sde, shape, key, x_init, eps, eta, tol, window, steps, grid):
    k_prior, k_loop = jax.random.split(key)
    if x_init is None:
        x = sde.prior_sampling(k_prior, shape)
    else:
        if tuple(x_init.shape) != shape:
            raise ValueError(f"x_init has shape {x_init.shape}; expected {shape}")
        x = x_init
    dtype, b = x.dtype, shape[0]
    eta, tol = eta.astype(dtype), tol.astype(dtype)
    ts = time_grid(sde, steps, eps.astype(dtype), kind=grid, dtype=dtype)
    lam = 0.5 * sde.log_snr(ts)
    # The DDPM ancestral noise std of each step: the scale of its tolerance.
    step_std = sde.sigma(ts[1:]) * jnp.sqrt(-jnp.expm1(-2.0 * (lam[1:] - lam[:-1])))
    offsets = jnp.arange(window)

    def round_(carry):
        start, win, nfe, rounds = carry
        idx = start + offsets
        valid = idx < steps
        i_c = jnp.minimum(idx, steps - 1)
        t_rows = jnp.repeat(ts[i_c], b)
        scores = score_fn(win[:window].reshape((window * b,) + shape[1:]), t_rows).reshape((window,) + shape)
        noise = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(k_loop, i), shape, dtype))(i_c)

        def chain(xc, inp):
            ok, i, sc, z = inp
            a_s, s_s, _ = coefficients(sde, ts[i], xc)
            xn = ddim_update(sde, xc, score_to_denoiser(sc, xc, a_s, s_s), ts[i], ts[i + 1], z, eta)
            xn = jnp.where(ok, xn, xc)
            return xn, xn

        _, states = jax.lax.scan(chain, win[0], (valid, i_c, scores, noise))
        new = jnp.concatenate([win[:1], states])
        change = (new[1:] - win[1:]).reshape(window, b, -1)
        rms = jnp.sqrt(jnp.mean(change * change, axis=-1)).max(axis=-1)
        converged = (rms <= tol * step_std[i_c]) | ~valid
        leading = jnp.sum(jnp.cumprod(converged.astype(jnp.int32)))
        shift = jnp.minimum(jnp.maximum(leading, 1), steps - start)
        win = jnp.take(new, jnp.minimum(jnp.arange(window + 1) + shift, window), axis=0)
        return (start + shift).astype(jnp.int32), win, nfe + window, rounds + 1

    win0 = jnp.broadcast_to(x, (window + 1,) + shape)
    zero = jnp.zeros((), jnp.int32)
    _, win, nfe, rounds = jax.lax.while_loop(lambda c: c[0] < steps, round_, (zero, win0, zero, zero))
    return win[0], nfe, rounds
