"""Samplers for score-based models: one front door, :func:`sample`, for every method.

``samples, nfe = sample(score_fn, sde, shape, key, method=..., x_init=None, eps=None, **options)``

Each method is declared once, with its traits, in :data:`TABLE` (:mod:`.methods`): its public function, whether
it is deterministic (:func:`is_deterministic`), whether it runs on a time grid (:data:`GRID_METHODS`), whether it
takes ``project_fn``, its options and their defaults (:func:`method_options`). :data:`METHODS`, the option checks
and every caller that asks about a method (guidance, reflow, the config edge) read that table.

Methods and their options (defaults in brackets):

* ``"pc"`` (:mod:`.pc`): ``predictor`` [euler_maruyama] ∈ euler_maruyama | reverse_diffusion |
  ancestral_sampling | none; ``corrector`` [none] ∈ langevin | ald | none; ``snr`` [0.16]; ``n_steps`` [1]
  corrector steps per grid point; ``steps`` [sde.N]; ``denoise`` [True]; ``probability_flow`` [False];
  ``corrector_first`` [True].
* ``"ode"`` (:mod:`.ode`): ``solver`` [tsit5] ∈ tsit5 | dopri5 | euler | heun; ``rtol``/``atol`` [1e-5];
  ``steps`` [100, fixed-step solvers]; ``grid`` [uniform_t]; ``max_steps`` [4096]; ``denoise`` [False]
  (one reverse-diffusion mean step at ``eps``, as the reference's ODE sampler).
* ``"ddim"``: ``steps`` [50], ``eta`` [0.0], ``grid`` [uniform_t], ``clip_denoised`` [None] (a ``(low, high)``
  range the data predictions are clipped to).
* ``"dpm_solver"``: singlestep, ``order`` [2] ∈ 1 | 2 | 3, ``steps`` [10] (``order`` NFE each), ``grid`` [log_snr],
  ``schedule`` [uniform] ∈ uniform | fast. ``uniform``: ``steps`` intervals, all of order ``order``
  (``steps * order`` NFE; the authors' ``singlestep_fixed``). ``fast`` (DPM-Solver-fast, Lu et al. 2022
  Sec. 3.4; the authors' ``singlestep``, their default for order 3): ``steps`` is the NFE budget and
  ``order`` the highest order (:func:`.fast.fast_orders`); for ``order=3``, ``K = steps // 3 + 1`` intervals of orders
  ``[3]*(K-2) + [2, 1]`` if ``steps % 3 == 0``, ``[3]*(K-1) + [1]`` if ``steps % 3 == 1``,
  ``[3]*(K-1) + [2]`` if ``steps % 3 == 2`` (``order=2``: ``[2]*(steps//2)`` and a ``[1]`` if odd;
  ``order=1``: ``[1]*steps``), so exactly ``steps`` NFE. The ``K`` intervals are uniform in log-SNR on the
  ``log_snr`` grid; on another grid they are the ``steps``-interval grid subsampled at the cumulative orders
  (:func:`.fast.fast_schedule`, as the authors' ``get_orders_and_timesteps_for_singlestep_solver``).
  The paper's DPM-Solver-fast is ``order=3, schedule="fast"``. ``denoise`` / ``to_zero`` count as below
  (``to_zero``: a budget of ``steps - 1``, then the denoiser).
* ``"dpm_solver++"``: multistep, ``order`` [2] ∈ 1 | 2 (2M), ``steps`` [20], ``grid`` [log_snr],
  ``lower_order_final`` [True].
* ``"edm_heun"``: ``steps`` [18] (2 NFE each), ``S_churn`` [0], ``S_tmin`` [0], ``S_tmax`` [inf],
  ``S_noise`` [1], ``rho`` [7], ``grid`` [edm].
* ``"unipc"`` (:mod:`.multistep`): multistep UniPC, ``order`` [2] ∈ 1 | 2 | 3, ``variant`` [bh1] ∈ bh1 | bh2,
  ``steps`` [20], ``grid`` [log_snr], ``lower_order_final`` [True] (the UniPC authors' rule: the last steps
  lower their order at every step count; DPM-Solver++ does so only below 10 steps).
* ``"deis"`` (:mod:`.multistep`): the authors' tAB-DEIS (noise prediction extrapolated by a polynomial in
  ``t``, exponential-integrator weights by Gauss–Legendre quadrature), ``order`` [3] ∈ 0 | 1 | 2 | 3 as they
  number it (degree of the polynomial; 0 is DDIM), ``steps`` [20], ``grid`` [quadratic_t] (their default).
* ``"deis_logsnr_x0"`` (:mod:`.multistep`): a DEIS-style multistep in data prediction and log-SNR (not the
  authors' algorithm), ``order`` [2] ∈ 1 | 2 | 3 (points), ``steps`` [20], ``grid`` [log_snr],
  ``lower_order_final`` [True]. On ``uniform_t`` its orders 2–3 lose to its order 1 (a warning says so).
* Each grid method's :attr:`Method.good_grids` names the grids it does well on; a grid in its
  :attr:`Method.bad_grids` draws a ``UserWarning`` when the sampler is traced.
* ``"dpm_solver++_sde"`` (:mod:`.stochastic`): DPM-Solver++(2M) SDE (``order`` [2]) or (3M) SDE (``order=3``),
  ``eta`` [1.0], ``s_noise`` [1.0], ``steps`` [20], ``grid`` [log_snr].
* ``"euler_ancestral"`` (:mod:`.stochastic`): ``eta`` [1.0], ``s_noise`` [1.0], ``steps`` [50], ``grid`` [edm].
* An SDE with a ``default_grid`` (:class:`~scoresde.sde.EDMSDE`: ``edm``) uses it when ``grid`` is not given;
  one with a ``default_eps`` (EDMSDE: ``sigma_min``) uses it when ``eps`` is not given.
* ``alpha(T) = 0`` (:class:`~scoresde.sde.RectifiedFlow`): every grid method starts at ``T`` and needs a model
  that carries its denoiser (:class:`scoresde.parameterization.ScoreWithDenoiser`); so does ``ode``, which
  then integrates the flow's velocity form (:func:`.ode.flow_velocity`, ``(x - D) / t`` for rectified flow),
  finite at ``T``, from ``T`` (as the rectified-flow authors' RK45 sampler); ``pc`` goes through the SDE's
  drift, infinite at ``t = 1``, and needs ``T < 1`` (``RectifiedFlow(T=0.999)``).
* For ddim / dpm_solver / dpm_solver++ / edm_heun / unipc / deis / deis_logsnr_x0 / dpm_solver++_sde /
  euler_ancestral,
  ``denoise`` [False] adds one final Tweedie step
  ``E[x_0 | x_eps]`` (1 NFE). ``to_zero`` [False] is k-diffusion's / EDM's ending instead: the grid of
  ``steps`` steps ends at ``sigma = 0``, its last step (from ``eps``) the first-order step to ``E[x_0 | x_eps]``;
  i.e. ``steps - 1`` solver steps on the grid to ``eps``, then the denoiser (EDM's 18 Heun steps: 35 NFE).
* ``"consistency"`` (:mod:`.consistency`, Song et al. 2023, Algorithm 1): here ``score_fn`` is a
  *consistency function* ``f(x, t) -> x_eps``; ``steps`` [1] network calls; ``times`` [None], the
  re-noising times ``τ_1 > ... > τ_{steps-1}`` in ``(eps, T)`` (``steps = len(times) + 1``; default the
  ρ-grid of :func:`.consistency.default_times`, ``rho`` [7]). ``steps=1`` returns ``f(x_T, T)``. ``denoise``
  must stay False (the output is already at ``eps``).
* ``"scm"`` (:mod:`.consistency`; Lu & Song, "Simplifying, Stabilizing and Scaling Continuous-Time Consistency
  Models", ICLR 2025): sCM sampling on :class:`~scoresde.sde.TrigFlow` (any other SDE is refused). ``score_fn``
  is the consistency function ``f(x_t, t) -> x_0`` (:func:`scoresde.fewstep.trigflow.consistency_fn` of a
  network ``F``); ``steps`` [1] network calls: 1 is ``f(σ_d z, π/2)``, 2 re-noises to the paper's
  ``t_mid = 1.1`` and applies ``f`` again; ``times`` [None] other re-noising times (``steps = len(times) + 1``).
  The boundary time is 0, where ``f(x, 0) = x`` exactly, so ``eps`` is not used. A separate method rather than
  ``consistency``: that one maps to ``eps`` and re-noises from ``x_eps`` on a ρ-grid; sCM's ``f`` returns
  ``x_0`` and the paper's 2-step time is fixed.
* ``"meanflow"`` (:mod:`.meanflow`; Geng et al., "Mean Flows for One-step Generative Modeling", 2025): on
  :class:`~scoresde.sde.RectifiedFlow` only (any other SDE is refused). ``score_fn`` is the average velocity
  ``u(z, r, t)`` (``r``, ``t`` of shape ``(B,)`` in flow time; a two-time network, ``second_time=True`` in
  :mod:`scoresde.models`); ``steps`` [1] jumps ``z_r = z_t - (t - r) u(z_t, r, t)`` on the uniform grid from
  ``T`` to 0 (``steps`` NFE), or through ``times`` [None], the decreasing intermediate times
  (``steps = len(times) + 1``). It ends at 0, so ``eps`` is not used.
* Every method but ``ode``, ``scm`` and ``meanflow``: ``project_fn`` [None], a ``project_fn(x, t, key) -> x`` applied to the state
  after each step (``t`` the time the step reached), the hook of inpainting / colorization
  (:mod:`scoresde.guidance`). A pytree callable (e.g. an ``equinox.Module``) has its arrays traced.

Default ``eps``: 1e-3 for VP / sub-VP, 1e-5 for VE (the reference's sampling eps).

Compilation: :func:`sample` is an ``equinox.filter_jit`` function. Arrays (``key``, ``x_init``, array
leaves of a pytree ``score_fn`` such as ``jax.tree_util.Partial(f, params)``) and every float option
(``eps``, ``snr``, ``eta``, ``rtol``, ``atol``, ``S_*``, ``rho``) are traced: changing them does not
recompile. What recompiles: ``method``, ``shape``/dtype, the SDE, the identity of a plain-function
``score_fn``, and the int/str/bool options (``steps``, ``n_steps``, ``order``, ``predictor``,
``corrector``, ``solver``, ``grid``, ``schedule``, ``max_steps``, ``denoise``, ``probability_flow``,
``corrector_first``, ``lower_order_final``): they fix loop lengths and the traced program.

``step_capacity`` [None] (every grid method): a Python int ``P``; the time grid of ``steps`` intervals is padded to
``P`` intervals with ``eps`` (:func:`scoresde.sampling.grids.time_grid`'s ``capacity``) and ``steps`` is traced,
so one program serves every step count from 1 to ``P``. The padded intervals are skipped (a ``lax.cond`` in the
loop: no network call, no NFE), and the samples and NFE are the unpadded grid's (to float rounding: the fused
program may round differently). ``dpm_solver``'s ``schedule="fast"`` places its grid by the orders and refuses it.

Sharding: pass ``x_init`` sharded over a ``('data',)`` mesh (or ``sharding=`` a ``NamedSharding`` for the
prior draw); the loops then run on the sharded batch, and batch statistics (Langevin step sizes, the ODE
error norm) reduce over the global batch.
"""

from __future__ import annotations

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp

from scoresde.sampling import (  # noqa: F401 (submodules)
    consistency,
    fast,
    grids,
    meanflow,
    multistep,
    ode,
    pc,
    stochastic,
)
from scoresde.sampling.grids import (  # noqa: F401 (score_call re-exported)
    GRIDS,
    ShapeCheckedScore,
    alpha_vanishes_at_T,
    check_eps,
    default_eps,
    denoiser_call,
    score_call,
    time_grid,
)
from scoresde.sampling.methods import TABLE, Method, is_deterministic, method_traits
from scoresde.sampling.parallel import PARALLEL_METHODS, parallel_sample

# Read from the table: every method, and the grid methods (those that take to_zero, k-diffusion's ending).
METHODS = tuple(TABLE)
GRID_METHODS = tuple(name for name, traits in TABLE.items() if traits.uses_grid)

__all__ = [
    "METHODS",
    "GRID_METHODS",
    "GRIDS",
    "TABLE",
    "Method",
    "sample",
    "method_options",
    "method_traits",
    "is_deterministic",
    "check_options",
    "encode",
    "decode",
    "default_eps",
    "time_grid",
    "PARALLEL_METHODS",
    "parallel_sample",
]

# dpm_solver: every interval of one order, or DPM-Solver-fast's mixed orders for an NFE budget (fast.fast_orders)
SCHEDULES = ("uniform", "fast")
# Options given as floats are traced; everything else is static (see module docstring).
_FLOAT_OPTIONS = ("snr", "rtol", "atol", "eta", "S_churn", "S_tmin", "S_tmax", "S_noise", "rho", "s_noise", "times")


def method_options(method: str) -> dict:
    """The options of ``method`` and their defaults (a copy).

    Raises:
        ValueError: an unknown method.
    """
    return dict(method_traits(method).options)


def check_options(method: str, options: dict) -> None:
    """Raises a clear ``ValueError`` for an unknown method, an unknown option or a bad option value."""
    _resolve(method, options)


def _resolve(method, options):
    defaults = method_traits(method).options
    unknown = sorted(set(options) - set(defaults) - {"sharding"})
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for method {method!r}; expected some of: {sorted(defaults)}")
    opts = {**defaults, **{k: v for k, v in options.items() if k != "sharding"}}
    for name in ("grid",):
        if name in opts and opts[name] not in GRIDS:
            raise ValueError(f"unknown time grid {opts[name]!r}; expected one of: {', '.join(GRIDS)}")
    if "schedule" in opts and opts["schedule"] not in SCHEDULES:
        raise ValueError(f"unknown dpm_solver schedule {opts['schedule']!r}; expected one of: {', '.join(SCHEDULES)}")
    for name in ("steps", "n_steps", "max_steps"):
        if name in opts and opts[name] is not None:
            if isinstance(opts[name], bool) or not isinstance(opts[name], int) or opts[name] < 1:
                raise ValueError(f"option {name} must be a positive int; got {opts[name]!r}")
    if opts.get("step_capacity") is not None:
        grids.check_capacity(opts["step_capacity"], opts["steps"])
        if opts.get("schedule", "uniform") != "uniform":
            raise ValueError(
                f"step_capacity pads a grid of equal-order steps; dpm_solver's schedule {opts['schedule']!r} "
                "places its grid by the orders (use schedule='uniform', or no step_capacity)"
            )
    orders = method_traits(method).orders
    if "order" in opts and (isinstance(opts["order"], bool) or opts["order"] not in orders):
        allowed = ", ".join(map(str, orders[:-1])) + f" or {orders[-1]}"
        raise ValueError(f"{method} order must be {allowed}; got {opts['order']!r}")
    return opts


def _split(opts):
    """Float options become arrays (traced under filter_jit); the rest stay static."""
    traced = [k for k, v in opts.items() if k in _FLOAT_OPTIONS and v is not None]
    if opts.get("step_capacity") is not None:
        traced.append("steps")  # one program for every step count up to the capacity
    dyn = {k: jnp.asarray(v, jnp.int32) if k == "steps" else jnp.asarray(v) for k, v in opts.items() if k in traced}
    static = tuple(sorted((k, v) for k, v in opts.items() if k not in traced))
    return dyn, static


def sample(score_fn, sde, shape, key, method="pc", x_init=None, eps=None, **options):
    """Draws samples by integrating the reverse SDE / probability-flow ODE from ``T`` to ``eps``.

    Args:
        score_fn: batched ``score_fn(x, t) -> ∇log p_t(x)``, ``t`` of shape ``(B,)``. A plain function or a
            pytree callable (its array leaves are traced). For ``consistency`` / ``scm`` a consistency function
            ``f(x, t)``; for ``meanflow`` an average velocity ``u(z, r, t)`` (see the module docstring).
        sde: a linear SDE from :mod:`scoresde.sde`.
        shape: ``(B, ...)`` shape of the batch.
        key: a PRNG key (typed ``jax.random.key`` or raw).
        method: one of :data:`METHODS`.
        x_init: optional prior draw at ``T`` of shape ``shape`` (e.g. to compare deterministic samplers
            pointwise, or a batch sharded over a mesh); drawn from ``sde.prior_sampling`` otherwise.
        eps: the final time; :func:`default_eps` if ``None``.
        **options: per-method options, see the module docstring. ``sharding`` (optional): a sharding for
            the prior draw when ``x_init`` is ``None``.

    Returns:
        ``(samples, nfe)``: samples of shape ``shape`` and the number of score evaluations made
        (an int32 scalar array).

    Raises:
        ValueError: for an unknown method/option or a bad option value.
        RuntimeError: if an ODE solve failed (outside ``jit``; inside, the samples are NaN).
    """
    traits = method_traits(method)
    own_grid = getattr(sde, "default_grid", None)
    if own_grid is not None and traits.default_grid is not None and "grid" not in options:
        options = {**options, "grid": own_grid}
    opts = _resolve(method, options)
    if opts.get("to_zero"):
        if opts["denoise"]:
            raise ValueError(
                f"method {method!r}: to_zero=True already ends with the denoiser step; "
                f"denoise=True would add a second one (choose one)"
            )
        if opts["steps"] < 2:
            raise ValueError(
                f"method {method!r}: to_zero=True needs steps >= 2 (steps - 1 solver steps, then the "
                f"final step to sigma = 0); got steps={opts['steps']}"
            )
    if traits.prepare is not None:
        opts = traits.prepare(sde, default_eps(sde) if eps is None else eps, opts)
    if not (traits.consistency_fn or traits.average_velocity) and alpha_vanishes_at_T(sde):
        if traits.integrates_drift:
            raise ValueError(
                f"method {method!r} integrates the SDE's drift, infinite at alpha(T) = 0 "
                f"(T={sde.T}); use a grid method (e.g. dpm_solver++, unipc) or {type(sde).__name__}(T<1)"
            )
        if getattr(score_fn, "denoiser", None) is None:
            raise ValueError(
                f"alpha(T) = 0 for {type(sde).__name__}(T={sde.T}): a score function alone does not "
                "determine E[x0 | x_T]; pass a model with a denoiser (parameterization.model_score_fn "
                "or parameterization.with_denoiser)"
            )
    dyn, static = _split(opts)
    eps = default_eps(sde) if eps is None else eps
    check_eps(eps, sde)
    eps = jnp.asarray(eps)
    samples, nfe, ok = _sample_jit(
        score_fn, sde, tuple(shape), key, method, x_init, eps, dyn, static, options.get("sharding")
    )
    if not isinstance(ok, jax.core.Tracer) and not bool(ok):
        raise RuntimeError(
            f"the {method} sampler's ODE solve failed (diffrax result not successful); "
            f"options {opts}. Raise max_steps or loosen rtol/atol."
        )
    return samples, nfe


@eqx.filter_jit
def _sample_jit(score_fn, sde, shape, key, method, x_init, eps, dyn, static, sharding):
    opts = {**dict(static), **dyn}
    k_prior, k_loop = jax.random.split(key)
    if x_init is None:
        x = sde.prior_sampling(k_prior, shape)
        if sharding is not None:
            explicit = jax.sharding.AxisType.Explicit in tuple(getattr(sharding.mesh, "axis_types", ()))
            x = jax.sharding.reshard(x, sharding) if explicit else jax.lax.with_sharding_constraint(x, sharding)
    else:
        if tuple(x_init.shape) != shape:
            raise ValueError(f"x_init has shape {x_init.shape}; expected {shape}")
        x = x_init
    eps = eps.astype(x.dtype)
    score_fn = ShapeCheckedScore(score_fn)  # checked as it is traced: no cost per call
    nfe = jnp.zeros((), jnp.int32)
    traits = TABLE[method]
    if not traits.uses_grid:
        return traits.run(score_fn, sde, x, k_loop, nfe, eps, opts)
    denoise = opts.pop("denoise")
    steps, kind = opts.pop("steps"), opts.pop("grid")
    if kind in traits.bad_grids:  # here, inside the traced function: once per compilation, not per call
        warnings.warn(f"method {method!r} on grid {kind!r}: {traits.bad_grids[kind]}", UserWarning, stacklevel=2)
    rho = opts.pop("rho", 7.0)
    capacity = opts.pop("step_capacity")
    if opts.pop("to_zero"):  # steps - 1 solver steps to eps, then the first-order step to sigma = 0
        steps, denoise = steps - 1, True
    if opts.pop("schedule", "uniform") == "fast":  # steps is the NFE budget; the grid follows the orders
        ts, opts["orders"] = fast.fast_schedule(sde, steps, eps, order=opts["order"], kind=kind, rho=rho, dtype=x.dtype)
    else:
        ts = time_grid(sde, steps, eps, kind=kind, rho=rho, dtype=x.dtype, capacity=capacity)
    if capacity is not None:  # a padded grid: the method runs its first `steps` intervals (traced)
        opts["steps"] = steps
    x, nfe = traits.fn(score_fn, sde, x, ts, k_loop, nfe, **opts)
    if denoise:
        x, nfe = _tweedie(score_fn, sde, x, eps, nfe)
    return x, nfe, jnp.array(True)


def _tweedie(score_fn, sde, x, t, nfe):
    """The final ``E[x_0 | x_eps]`` (= k-diffusion's closing Euler step to sigma = 0), by the model's denoiser."""
    return denoiser_call(score_fn, sde, x, t, nfe)


def _flow(score_fn, sde, x, t0, t1, opts):
    x, nfe, ok = _flow_jit(score_fn, sde, x, jnp.asarray(t0), jnp.asarray(t1), *_split(opts))
    if not isinstance(ok, jax.core.Tracer) and not bool(ok):
        raise RuntimeError(f"probability-flow ODE solve failed (diffrax result not successful); options {opts}")
    return x, nfe


@eqx.filter_jit
def _flow_jit(score_fn, sde, x, t0, t1, dyn, static):
    x, nfe, ok = ode.solve_flow(score_fn, sde, x, t0.astype(x.dtype), t1.astype(x.dtype), **dict(static), **dyn)
    return jnp.where(ok, x, jnp.nan), nfe, ok


def _flow_options(options):
    defaults = {k: v for k, v in TABLE["ode"].options.items() if k != "denoise"}
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; expected some of: {sorted(defaults)}")
    return {**defaults, **options}


def encode(score_fn, sde, x, *, eps=None, **options):
    """Maps data ``x`` at ``eps`` to its latent at ``T`` along the probability-flow ODE.

    Args:
        score_fn, sde: as for :func:`sample`.
        x: data batch ``(B, ...)``.
        eps: start time; :func:`default_eps` if ``None``.
        **options: ``solver``, ``rtol``, ``atol``, ``steps``, ``grid``, ``max_steps`` as for ``method="ode"``.

    Returns:
        ``(z, nfe)``.
    """
    eps = default_eps(sde) if eps is None else eps
    return _flow(score_fn, sde, x, eps, sde.T, _flow_options(options))


def decode(score_fn, sde, z, *, eps=None, **options):
    """Maps latents ``z`` at ``T`` to data at ``eps`` along the probability-flow ODE (inverse of :func:`encode`).

    Returns:
        ``(x, nfe)``.
    """
    eps = default_eps(sde) if eps is None else eps
    return _flow(score_fn, sde, z, sde.T, eps, _flow_options(options))
