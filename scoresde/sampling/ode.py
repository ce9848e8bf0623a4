"""The probability-flow ODE (Song et al. 2021, eq. 13) solved by diffrax on the device.

``dx/dt = f(x, t) - ½ g(t)² ∇log p_t(x)``, integrated for the whole batch as one state (one step size,
error norm over all elements of the global batch), like the reference's ``solve_ivp`` on the flattened
batch. Adaptive solvers: ``tsit5`` and ``dopri5`` with a PID controller (``rtol = atol = 1e-5`` by
default, the reference's RK45 tolerances); fixed-step solvers: ``euler`` and ``heun`` on a time grid of
:mod:`scoresde.sampling.grids`.

NFE: diffrax does not count vector-field calls, so it is computed from the solver's own step counter
``sol.stats["num_steps"]`` (accepted + rejected steps) and the solver's evaluations per step:
6 per attempted step (accepted or rejected) for the FSAL 7-stage ``tsit5``/``dopri5`` plus 1 more for the
whole start (diffrax 0.7's initial step-size selection and first stage together); 1 per step for ``euler``,
2 for ``heun``. The tests check this against the calls counted by a ``jax.debug.callback`` inside the
score function, over several tolerances and with rejected steps.

Where ``alpha(T) = 0`` (:class:`~scoresde.sde.RectifiedFlow` with ``T = 1``) the score-form drift is infinite
at ``T`` (``f = alpha'/alpha``); a model that carries its denoiser ``D``
(:class:`scoresde.parameterization.ScoreWithDenoiser`) gives the same flow in its velocity form
(:func:`flow_velocity`), finite at ``T``: for rectified flow ``v = (x - D) / t``, the velocity its authors
integrate from ``t = 1`` with an adaptive RK45.

The solve uses ``throw=False``: a failed solve (e.g. ``max_steps`` reached) returns ``ok = False``,
which :func:`scoresde.sampling.sample` turns into an error (or NaN samples when traced).
"""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp

from scoresde.parameterization import with_denoiser
from scoresde.sampling.grids import alpha_vanishes_at_T, time_grid
from scoresde.sde import batch_mul, probability_flow_drift

SOLVERS = ("tsit5", "dopri5", "euler", "heun")

# solver name -> (constructor, evaluations per attempted step, evaluations at initialisation, adaptive)
_SOLVERS = {
    "tsit5": (diffrax.Tsit5, 6, 1, True),
    "dopri5": (diffrax.Dopri5, 6, 1, True),
    "euler": (diffrax.Euler, 1, 0, False),
    "heun": (diffrax.Heun, 2, 0, False),
}

__all__ = ["SOLVERS", "solve_flow", "flow_velocity", "flow_drift_fn"]


def flow_velocity(denoiser, sde, x, t):
    """The probability-flow velocity from a denoiser: ``dx/dt = alpha'(t) D + sigma'(t) (x - alpha(t) D) / sigma(t)``.

    With ``x_t = alpha x_0 + sigma eps`` the flow moves ``E[x_0 | x_t] = D`` and ``E[eps | x_t] = (x - alpha D) /
    sigma`` along their coefficients' derivatives; this equals ``f x - ½ g² ∇log p_t`` (Song et al. 2021, eq. 13)
    wherever both are finite, and is finite wherever ``sigma > 0``, also at ``alpha = 0``. For rectified flow
    (``alpha = 1 - t``, ``sigma = t``) it is ``(x - D) / t``. ``t`` has shape ``(B,)``; ``alpha'`` and ``sigma'``
    come from forward-mode differentiation of the SDE's own ``alpha`` and ``sigma``.
    """
    d = denoiser(x, t)
    alpha, dalpha = jax.jvp(sde.alpha, (t,), (jnp.ones_like(t),))
    sigma, dsigma = jax.jvp(sde.sigma, (t,), (jnp.ones_like(t),))
    return batch_mul(dalpha, d) + batch_mul(dsigma / sigma, x - batch_mul(alpha, d))


def flow_drift_fn(score_fn, sde, *, reaches_T: bool = True):
    """``drift(x, t)`` of the probability-flow ODE: the score form, or :func:`flow_velocity` where ``alpha(T) = 0``.

    Args:
        reaches_T: the solve starts or ends at ``T``; when it stays below ``T`` the score form is finite even
            where ``alpha(T) = 0``.

    Raises:
        ValueError: ``alpha(T) = 0``, the solve reaches ``T`` and ``score_fn`` carries no denoiser (the score
            ``-x`` at ``T`` says nothing about the data, so no drift is finite there).
    """
    denoiser = getattr(score_fn, "denoiser", None)
    if not alpha_vanishes_at_T(sde) or (denoiser is None and not reaches_T):
        return lambda x, t: probability_flow_drift(score_fn, sde, x, t)
    if denoiser is None:
        raise ValueError(
            f"alpha(T) = 0 for {type(sde).__name__}(T={sde.T}): the probability-flow drift from a score "
            "is infinite at T; pass a model with a denoiser (parameterization.model_score_fn or "
            "parameterization.with_denoiser), whose velocity form is finite there"
        )
    return lambda x, t: flow_velocity(denoiser, sde, x, t)


def solve_flow(
    score_fn, sde, x, t0, t1, *, solver="tsit5", rtol=1e-5, atol=1e-5, steps=None, grid="uniform_t", max_steps=4096
):
    """Integrates the probability-flow ODE from ``t0`` to ``t1`` (either direction).

    Args:
        score_fn: ``score_fn(x, t)``.
        sde: a linear SDE.
        x: the state at ``t0``, shape ``(B, ...)``.
        t0, t1: start and end times (may be traced).
        solver: one of :data:`SOLVERS`.
        rtol, atol: PID tolerances for adaptive solvers (may be traced).
        steps: number of steps for fixed-step solvers (a Python int).
        grid: time grid for fixed-step solvers (see :func:`scoresde.sampling.grids.time_grid`); fixed
            grids run between ``min(t0, t1)`` and ``sde.T``, reversed when ``t0 < t1`` (encoding).
        max_steps: diffrax's step budget (a Python int).

    Returns:
        ``(x_t1, nfe, ok)`` with ``ok`` a boolean scalar (the diffrax result was successful).

    Raises:
        ValueError: for an unknown solver or a fixed-step solver without ``steps``.
    """
    if solver not in _SOLVERS:
        raise ValueError(f"unknown ODE solver {solver!r}; expected one of: {', '.join(SOLVERS)}")
    make, per_step, at_init, adaptive = _SOLVERS[solver]
    dtype = x.dtype
    t0 = jnp.asarray(t0, dtype)
    t1 = jnp.asarray(t1, dtype)

    explicit, sharding = _explicit_axes(x)
    if explicit:
        # diffrax's while loop cannot carry Explicit-sharded types (its step-size state would change type),
        # so the solve runs with those axes switched to Auto. The score function goes back to Explicit
        # axes so that arrays it closes over (parameters) meet inputs typed like themselves.
        spec, replicated = sharding.spec, jax.sharding.PartitionSpec()
        denoiser = getattr(score_fn, "denoiser", None)
        score_fn = jax.sharding.explicit_axes(score_fn, axes=explicit, in_sharding=(spec, replicated))
        if denoiser is not None:
            score_fn = with_denoiser(
                score_fn, jax.sharding.explicit_axes(denoiser, axes=explicit, in_sharding=(spec, replicated))
            )

    def below_T(t):  # a concrete time below T (a traced one may be T)
        try:
            return float(t) < sde.T
        except (TypeError, jax.errors.JAXTypeError):
            return False

    drift = flow_drift_fn(score_fn, sde, reaches_T=not (below_T(t0) and below_T(t1)))

    def vf(t, y, args):
        return drift(y, jnp.full((y.shape[0],), t, dtype))

    def solve(y0, t0, t1, rtol, atol):
        if adaptive:
            controller = diffrax.PIDController(rtol=rtol, atol=atol)
        else:
            # Fixed grids span [eps, T]: decreasing when sampling (t0 = T), increasing when encoding.
            g = time_grid(sde, steps, jnp.minimum(t0, t1), kind=grid, dtype=dtype)
            controller = diffrax.StepTo(ts=jnp.where(t0 > t1, g, g[::-1]))
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(vf),
            make(),
            t0=t0,
            t1=t1,
            dt0=None,
            y0=y0,
            stepsize_controller=controller,
            max_steps=max_steps,
            throw=False,
            saveat=diffrax.SaveAt(t1=True),
        )
        nfe = (at_init + per_step * sol.stats["num_steps"]).astype(jnp.int32)
        return sol.ys[0], nfe, sol.result == diffrax.RESULTS.successful

    if not adaptive and not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"fixed-step solver {solver!r} needs steps >= 1 (a Python int); got {steps!r}")
    args = (x, t0, t1, jnp.asarray(rtol, dtype), jnp.asarray(atol, dtype))
    if not explicit:
        return solve(*args)
    mesh = sharding.mesh
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.sharding.auto_axes(solve, axes=explicit, out_sharding=(sharding, replicated, replicated))(*args)


def _explicit_axes(x):
    """The Explicit mesh axes in ``x``'s type (empty outside an Explicit mesh) and its sharding."""
    sharding = getattr(jax.typeof(x), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    names, kinds = getattr(mesh, "axis_names", ()), getattr(mesh, "axis_types", ())
    explicit = tuple(n for n, k in zip(names, kinds) if k == jax.sharding.AxisType.Explicit)
    return explicit, sharding
