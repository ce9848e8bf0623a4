"""Exact likelihood through the probability-flow ODE, solved on the device with diffrax.

``log p_ε(x) = log p_T(x_T) + ∫_ε^T ∇·f̃(x_t, t) dt`` (Song et al. 2021, eq. 39), one adaptive solve per
example, with the exact trace or a Hutchinson–Skilling estimate; and bits/dim of dequantised discrete data.
Derivations, the NFE count and the bits/dim offset: ``docs/likelihood.md``.

Examples:
    >>> from scoresde import analytic, sde as sde_lib
    >>> vp = sde_lib.VPSDE()
    >>> gm = analytic.GaussianMixture(jnp.zeros((1, 2)), jnp.ones((1,)))
    >>> x = gm.sample(jax.random.key(0), 4)
    >>> logp, z, nfe = log_likelihood(gm.score_fn(vp), vp, x, jax.random.key(1), hutchinson="exact")
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

# encode/decode: the samplers' probability-flow ODE, re-exported so there is one implementation
from scoresde.sampling import decode, encode
from scoresde.sampling.grids import ShapeCheckedScore
from scoresde.sampling.ode import flow_drift_fn

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]

__all__ = [
    "HUTCHINSON_TYPES",
    "DEQUANTIZATIONS",
    "SOLVERS",
    "BitsPerDim",
    "log_likelihood",
    "bits_per_dim",
    "bits_per_dim_batch",
    "bpd_offset",
    "scaler_log_det",
    "dequantize",
    "encode",
    "decode",
]

HUTCHINSON_TYPES = ("rademacher", "gaussian", "exact")
DEQUANTIZATIONS = ("uniform", "none")
# both 7-stage FSAL Runge–Kutta pairs of order 5(4)
SOLVERS = {"tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5}
# new evaluations per attempted step of a 7-stage FSAL pair
_NEW_EVALS_PER_STEP = 6


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; expected one of: {', '.join(allowed)}")


def _single(drift_fn):
    """The batched drift as a function of one example ``x`` (event shape) and a scalar ``t``."""
    return lambda x, t: drift_fn(x[None], jnp.reshape(t, (1,)).astype(x.dtype))[0]


def _probes(key, hutchinson, n_probes, shape, dtype):
    if hutchinson == "rademacher":
        return jax.random.rademacher(key, (n_probes,) + shape, dtype=dtype)
    if hutchinson == "gaussian":
        return jax.random.normal(key, (n_probes,) + shape, dtype=dtype)
    # 'exact': the D basis vectors; vᵀ J v summed over them is the full trace.
    d = int(np.prod(shape))
    return jnp.eye(d, dtype=dtype).reshape((d,) + shape)


def _rms(tree):
    leaves = jax.tree.leaves(tree)
    return jnp.sqrt(sum(jnp.sum(a * a) for a in leaves) / sum(a.size for a in leaves))


def _initial_step(vector_field, t0, y0, f0, direction, span, rtol, atol, error_order=5):
    """First step size by Hairer, Nørsett & Wanner (1993, II.4), trial step clipped to ``span``.

    Written out so its extra evaluation is counted in NFE (``docs/likelihood.md``).
    """
    scale = jax.tree.map(lambda y: atol + jnp.abs(y) * rtol, y0)
    d0 = _rms(jax.tree.map(jnp.divide, y0, scale))
    d1 = _rms(jax.tree.map(jnp.divide, f0, scale))
    tiny = (d0 < 1e-5) | (d1 < 1e-5)
    h0 = jnp.minimum(jnp.where(tiny, 1e-6, 0.01 * d0 / jnp.where(tiny, 1.0, d1)), span)
    y1 = jax.tree.map(lambda y, f: y + direction * h0 * f, y0, f0)
    f1 = vector_field(t0 + direction * h0, y1, None)
    d2 = _rms(jax.tree.map(lambda a, b, s: (a - b) / s, f1, f0, scale)) / h0
    max_d = jnp.maximum(d1, d2)
    h1 = jnp.where(max_d <= 1e-15, jnp.maximum(1e-6, h0 * 1e-3), (0.01 / max_d) ** (1.0 / error_order))
    h = jnp.minimum(jnp.minimum(100 * h0, h1), span)
    return jax.lax.stop_gradient(direction * jnp.where(jnp.isfinite(h), h, h0))


def _solve(vector_field, y0, *, t0, t1, solver, rtol, atol, max_steps):
    """One adaptive solve; returns ``(y1, ok, nfe)``, never raises inside the trace."""
    direction = 1.0 if t1 > t0 else -1.0
    f0 = vector_field(jnp.asarray(t0, jnp.float32), y0, None)
    dt0 = _initial_step(vector_field, jnp.asarray(t0, jnp.float32), y0, f0, direction, abs(t1 - t0), rtol, atol)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field),
        SOLVERS[solver](),
        t0=t0,
        t1=t1,
        dt0=dt0,
        y0=y0,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        saveat=diffrax.SaveAt(t1=True),
        max_steps=max_steps,
        throw=False,
    )
    ok = sol.result == diffrax.RESULTS.successful
    # 2 evaluations choose the first step, 1 first stage, 6 per attempted step (docs/likelihood.md)
    nfe = 3 + _NEW_EVALS_PER_STEP * sol.stats["num_steps"]
    return jax.tree.map(lambda a: a[-1], sol.ys), ok, nfe


def _per_example_logp(drift1, x, key, *, hutchinson, n_probes, eps, t1, solver, rtol, atol, max_steps):
    """``(delta_logp, z, ok, nfe)`` for one example ``x`` (event shape)."""
    v = _probes(key, hutchinson, n_probes, x.shape, x.dtype)
    scale = 1.0 if hutchinson == "exact" else 1.0 / v.shape[0]

    def vector_field(t, y, args):
        xt, _ = y
        dx, jvp = jax.linearize(lambda u: drift1(u, t), xt)
        div = jnp.sum(jax.vmap(jvp)(v) * v) * scale
        return dx, div

    y0 = (x, jnp.zeros((), x.dtype))
    (z, delta), ok, nfe = _solve(
        vector_field, y0, t0=eps, t1=t1, solver=solver, rtol=rtol, atol=atol, max_steps=max_steps
    )
    return delta, z, ok, nfe


def _data_parallel(fn, mesh, *args):
    """Runs ``fn`` (batched over every arg's leading axis) on each device's own examples.

    No collective inside, so devices needing different numbers of steps never wait on each other.
    """
    if mesh is None:
        return fn(*args)
    n = mesh.shape["data"]
    b = args[0].shape[0]
    if b % n:
        raise ValueError(f"batch size {b} is not divisible by the {n} devices of the 'data' mesh axis")
    spec = P("data")
    return jax.shard_map(fn, mesh=mesh, in_specs=(spec,) * len(args), out_specs=spec, check_vma=False)(*args)


def log_likelihood(
    score_fn: ScoreFn,
    sde,
    x: Array,
    key: Array,
    *,
    hutchinson: str = "rademacher",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    eps: float = 1e-5,
    n_probes: int = 1,
    solver: str = "tsit5",
    max_steps: int = 16384,
    cond=None,
    mesh=None,
) -> tuple[Array, Array, Array]:
    """Per-example log-density ``log p_ε(x)`` through the probability-flow ODE (Song et al. 2021, App. D.2).

    With ``cond`` (one condition per example: class labels ``(B,)``, caption tokens ``(B, L)``, embeddings
    ``(B, D)``) it is the conditional log-density ``log p_ε(x | c)`` of a conditional model, each example solved
    with its own condition.

    Args:
        score_fn: batched score ``score_fn(x (B, ...), t (B,)) -> (B, ...)``; with ``cond``, a conditional score
            ``score_fn(x, t, c)`` whose ``c`` has the batch axis of ``x``.
        sde: a forward SDE of :mod:`scoresde.sde`.
        x: ``(B, ...)`` data in the model's (scaled) space.
        key: typed PRNG key; example ``i`` probes with ``split(key, B)[i]``, whatever the device split.
        hutchinson: ``'rademacher'`` / ``'gaussian'`` (Hutchinson–Skilling) or ``'exact'`` (``D`` JVPs).
        rtol, atol: tolerances of the PID step-size controller (the reference uses 1e-5 for both).
        eps: start time of the integration (the reference uses 1e-5).
        n_probes: probes averaged per example (Hutchinson only).
        solver: ``'tsit5'`` or ``'dopri5'``.
        max_steps: step budget of each solve; an example that exhausts it gets ``logp = nan`` (the one
            NaN it returns; any other non-finite value is an error, below).
        cond: ``None`` (an unconditional score) or an array with the batch axis of ``x``.
        mesh: optional mesh with a ``'data'`` axis; the batch (divisible by its size) is then split over its
            devices, each solving its own examples.

    Returns:
        ``(logp, z, nfe)``: ``(B,)`` nats (``nan`` where the solve failed), ``z = x_T`` ``(B, ...)``, and the
        ``(B,)`` int count of ODE right-hand-side evaluations (one network pass plus JVPs each).

    Where ``alpha(T) = 0`` (:class:`~scoresde.sde.RectifiedFlow` with ``T = 1``) the flow is integrated in its
    velocity form (:func:`scoresde.sampling.ode.flow_velocity`), finite at ``T``, from a model that carries its
    denoiser; a score alone raises.

    Raises:
        ValueError: for an unknown ``hutchinson`` or ``solver``, ``n_probes < 1``, a bad ``eps``, or
            ``alpha(T) = 0`` without a denoiser.
        FloatingPointError: (outside ``jit``) a solve that succeeded gave a non-finite ``z``, divergence
            integral or prior log-density; the message names which and for which examples.
    """
    _check_choice("hutchinson type", hutchinson, HUTCHINSON_TYPES)
    _check_choice("solver", solver, tuple(SOLVERS))
    if n_probes < 1:
        raise ValueError(f"n_probes must be >= 1; got {n_probes}")
    if not 0 <= eps < sde.T:
        raise ValueError(f"eps must lie in [0, T={sde.T}); got {eps}")
    if cond is not None and (jnp.ndim(cond) < 1 or jnp.shape(cond)[0] != x.shape[0]):
        raise ValueError(
            f"cond must hold one condition per example, with the batch axis {x.shape[0]} of x; got shape "
            f"{jnp.shape(cond)}"
        )
    checked = ShapeCheckedScore(score_fn)  # checked as it is traced: no cost per call
    drift1 = _single(flow_drift_fn(checked, sde)) if cond is None else None
    keys = jax.random.split(key, x.shape[0])

    def drift_of(ci):
        """The one-example drift, given the example's condition (``()`` when unconditional)."""
        if not ci:
            return drift1
        c = ci[0][None]
        return _single(flow_drift_fn(ShapeCheckedScore(lambda x, t: score_fn(x, t, c)), sde))

    def local(xs, ks, *cs):
        one = lambda xi, ki, *ci: _per_example_logp(
            drift_of(ci),
            xi,
            ki,
            hutchinson=hutchinson,
            n_probes=n_probes,
            eps=eps,
            t1=sde.T,
            solver=solver,
            rtol=rtol,
            atol=atol,
            max_steps=max_steps,
        )
        delta, z, ok, nfe = jax.vmap(one)(xs, ks, *cs)
        prior = sde.prior_logp(z)
        return jnp.where(ok, prior + delta, jnp.nan), z, nfe, ok, prior, delta

    args = (x, keys) if cond is None else (x, keys, jnp.asarray(cond))
    logp, z, nfe, ok, prior, delta = _data_parallel(local, mesh, *args)
    if not isinstance(logp, jax.core.Tracer):
        _check_finite(ok, z, prior, delta)
    return logp, z, nfe


def _check_finite(ok, z, prior, delta):
    """A solve that did not fail but produced a non-finite value is an error naming the value, never a NaN."""
    ok = np.asarray(ok)
    parts = {
        "the latent z = x_T": ~np.all(np.isfinite(np.asarray(z).reshape(z.shape[0], -1)), axis=1),
        "the integrated divergence": ~np.isfinite(np.asarray(delta)),
        "the prior log-density log p_T(z)": ~np.isfinite(np.asarray(prior)),
    }
    for what, bad in parts.items():
        bad = bad & ok
        if bad.any():
            zmax = float(np.max(np.abs(np.asarray(z)[bad])))
            raise FloatingPointError(
                f"log_likelihood: {what} is non-finite for example(s) "
                f"{np.flatnonzero(bad)[:8].tolist()} although the ODE solve succeeded "
                f"(max |z| = {zmax:.3g}): the model's flow overflows the {z.dtype} range"
            )


# -- bits per dimension ------------------------------------------------------------------------------------


def _identity(u):
    return u


def scaler_log_det(scaler: Callable[[Array], Array] | None, u: Array) -> Array:
    """``Σ_i log |s'(u_i)|`` per example, ``(B,)``, for an elementwise data scaler ``s`` (one JVP)."""
    if scaler is None:
        return jnp.zeros((u.shape[0],), u.dtype)
    _, diag = jax.jvp(scaler, (u,), (jnp.ones_like(u),))
    return jnp.sum(jnp.log(jnp.abs(diag)).reshape(u.shape[0], -1), axis=-1)


def bpd_offset(scaler: Callable[[Array], Array] | None, num_bits: int | None = 8, *, at: float = 0.5) -> float:
    """Bits/dim added to ``-log₂ p_y(y) / D``: ``num_bits - log₂ |s'(at)|`` (``docs/likelihood.md``).

    8-bit centred data give 7, uncentred 8; ``num_bits=None`` drops the bin-volume term. Exact for affine
    scalers.
    """
    log2_jac = 0.0
    if scaler is not None:
        u = jnp.full((1, 1), at, jnp.float32)
        _, diag = jax.jvp(scaler, (u,), (jnp.ones_like(u),))
        log2_jac = math.log2(abs(float(diag[0, 0])))  # on the host in float64: 2 -> exactly 1 bit
    return (0.0 if num_bits is None else float(num_bits)) - log2_jac


def dequantize(key: Array, x: Array, num_bits: int) -> Array:
    """``u = (k + U) / 2^b`` for data ``x = k / (2^b - 1)`` in ``[0, 1]`` (the tfds image convention).

    Raises:
        ValueError: if ``num_bits`` is not a positive integer.
    """
    if not (isinstance(num_bits, (int, np.integer)) and num_bits >= 1):
        raise ValueError(f"num_bits must be a positive integer for uniform dequantisation; got {num_bits!r}")
    levels = 2**num_bits
    k = jnp.clip(jnp.round(x * (levels - 1)), 0, levels - 1)
    return (k + jax.random.uniform(key, x.shape, x.dtype)) / levels


def _check_bpd_args(dequantization, num_bits):
    _check_choice("dequantization", dequantization, DEQUANTIZATIONS)
    if dequantization == "uniform" and not (isinstance(num_bits, (int, np.integer)) and num_bits >= 1):
        raise ValueError(f"num_bits must be a positive integer for uniform dequantisation; got {num_bits!r}")


def bits_per_dim_batch(
    score_fn: ScoreFn,
    sde,
    x: Array,
    key: Array,
    *,
    scaler: Callable[[Array], Array] | None = None,
    num_bits: int | None = 8,
    dequantization: str = "uniform",
    **likelihood_kwargs,
) -> tuple[Array, Array]:
    """One dequantisation draw of :func:`bits_per_dim`: per-example bits/dim ``(B,)`` and NFE ``(B,)``.

    Pure and jit-able (the building block of the dataset run, :mod:`scoresde.modes.likelihood`). ``key`` is
    split into the dequantisation noise and the probes; arguments as in :func:`bits_per_dim`.
    """
    _check_bpd_args(dequantization, num_bits)
    scaler = scaler or _identity
    d = int(np.prod(x.shape[1:]))
    k_deq, k_ll = jax.random.split(key)
    u = dequantize(k_deq, x, num_bits) if dequantization == "uniform" else x
    logp, _, nfe = log_likelihood(score_fn, sde, scaler(u), k_ll, **likelihood_kwargs)
    bits_term = 0.0 if num_bits is None else float(num_bits)
    return -(logp + scaler_log_det(scaler, u)) / (d * math.log(2.0)) + bits_term, nfe


class BitsPerDim(NamedTuple):
    """Result of :func:`bits_per_dim`.

    Attributes:
        mean: mean bits/dim over examples (and repeats).
        stderr: standard error of ``mean``, from the spread of the per-example values over examples.
        per_example: ``(B,)`` bits/dim of each example, averaged over its repeats.
        nfe: ``(K, B)`` ODE evaluations of every solve.
        offset: the bits/dim offset (:func:`bpd_offset`) of this scaler and bit depth, for reports.
    """

    mean: Array
    stderr: Array
    per_example: Array
    nfe: Array
    offset: float


def bits_per_dim(
    score_fn: ScoreFn,
    sde,
    x: Array,
    key: Array,
    *,
    scaler: Callable[[Array], Array] | None = None,
    num_bits: int | None = 8,
    dequantization: str = "uniform",
    num_repeats: int = 1,
    **likelihood_kwargs,
) -> BitsPerDim:
    """Bits/dim of data ``x`` under the model whose score is ``score_fn`` (in the scaled space).

    ``bpd = -(log p_y(s(u)) + Σ log|s'(u)|) / (D ln 2) + b`` for dequantised data ``u``; with uniform
    dequantisation an upper bound on the discrete data's bits/dim (``docs/likelihood.md``).

    Args:
        score_fn, sde: the model, as in :func:`log_likelihood`.
        x: ``(B, ...)`` data in ``[0, 1]`` before the scaler: ``k / (2^b - 1)`` for ``'uniform'``, any
            values for ``'none'``.
        key: typed PRNG key; repeat ``r`` uses ``fold_in(key, r)`` for its noise and probes.
        scaler: elementwise data scaler ``s`` from ``[0, 1]`` to the model's space (``None``: identity).
        num_bits: bit depth ``b`` of the data; ``None`` (only with ``'none'``) for continuous data.
        dequantization: ``'uniform'`` (``u = (k + U) / 2^b``, the reference's) or ``'none'`` (``u = x``; not
            a bound when ``num_bits`` is set).
        num_repeats: ``K`` independent dequantisation draws per example (the reference uses 5).
        **likelihood_kwargs: passed to :func:`log_likelihood`.

    Returns:
        A :class:`BitsPerDim`.

    Raises:
        ValueError: for data outside ``[0, 1]``, an unknown dequantisation, ``num_repeats < 1``, or uniform
            without ``num_bits``.
    """
    if num_bits is not None and not isinstance(x, jax.core.Tracer):
        xv = np.asarray(x)
        if not np.all(np.isfinite(xv)) or xv.min() < 0.0 or xv.max() > 1.0:
            raise ValueError(
                f"bits_per_dim takes {num_bits}-bit data in [0, 1] before the scaler; got values in "
                f"[{np.nanmin(xv):.4g}, {np.nanmax(xv):.4g}]"
                f"{' with NaN/inf' if not np.all(np.isfinite(xv)) else ''}"
                " (map [0, 255] data with x / 255, centred [-1, 1] data with (x + 1) / 2)"
            )
    if num_repeats < 1:
        raise ValueError(f"num_repeats must be >= 1; got {num_repeats}")
    if dequantization == "none" and num_repeats != 1:
        raise ValueError(f"num_repeats={num_repeats} repeats nothing without dequantisation; use 1")
    _check_bpd_args(dequantization, num_bits)
    one_repeat = jax.jit(
        lambda x, key: bits_per_dim_batch(  # compiled once, reused by every repeat
            score_fn, sde, x, key, scaler=scaler, num_bits=num_bits, dequantization=dequantization, **likelihood_kwargs
        )
    )
    rows, nfes = [], []
    for r in range(num_repeats):
        bpd, nfe = one_repeat(x, jax.random.fold_in(key, r))
        rows.append(bpd)
        nfes.append(nfe)
    per_example = jnp.mean(jnp.stack(rows), axis=0)
    b = per_example.shape[0]
    stderr = jnp.std(per_example, ddof=1) / math.sqrt(b) if b > 1 else jnp.asarray(jnp.nan)
    return BitsPerDim(jnp.mean(per_example), stderr, per_example, jnp.stack(nfes), bpd_offset(scaler, num_bits))
