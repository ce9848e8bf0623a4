"""The table of sampling methods: each method declared once, with its traits.

:func:`scoresde.sampling.sample`, the option checks (:func:`scoresde.sampling.method_options`,
:func:`scoresde.sampling.check_options`) and every caller that asks a question about a method (is it
deterministic? does it run on a time grid? does it take the ``project_fn`` hook?) read the :class:`Method`
records of :data:`TABLE`; there is no other list of methods to keep in step with it.

A *grid* method is a public function ``fn(score_fn, sde, x, ts, key, nfe, **options) -> (x, nfe)`` run by the
front door on the grid ``ts`` of :func:`scoresde.sampling.grids.time_grid`; the others (``pc``, ``ode``,
``consistency``, ``scm``, ``meanflow``) run their own loops and declare the adapter (``run``) the front door calls.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Callable, Mapping

import jax.numpy as jnp

from scoresde import sde as sde_lib
from scoresde.sampling import consistency, fast, meanflow, multistep, ode, pc, stochastic

__all__ = ["Method", "TABLE", "method_traits", "is_deterministic"]


@dataclasses.dataclass(frozen=True)
class Method:
    """A sampling method and its traits.

    Attributes:
        name: the ``method=`` of :func:`scoresde.sampling.sample`.
        fn: the public sampler function, the one a reader opens.
        deterministic: with its default options, the samples are a fixed map of the prior draw (no noise is
            drawn after it): a flow map for reflow couplings, fixed replacement noise for inpainting.
        options: every option and its default (floats are traced, the rest static). ``project_fn`` among them
            means the method takes the hook; ``grid`` is its default time grid. Grid methods also get
            ``to_zero`` [False].
        run: for a method with its own loop, ``run(score_fn, sde, x, key, nfe, eps, opts) -> (x, nfe, ok)``;
            ``None`` for a grid method, which the front door runs as ``fn`` on its time grid.
        prepare: optional ``prepare(sde, eps, opts) -> opts``, called outside ``jit`` to check and resolve the
            static options.
        noise_option: the option whose non-zero value draws noise (DDIM's ``eta``, EDM's ``S_churn``);
            ``None`` when ``deterministic`` alone answers.
        integrates_drift: the method integrates the SDE's drift (infinite where ``alpha(T) = 0``).
        consistency_fn: its ``score_fn`` is a consistency function ``f(x, t) -> x_eps``, not a score.
        average_velocity: its ``score_fn`` is a MeanFlow average velocity ``u(z, r, t)`` of rectified flow
            (``z_r = z_t - (t - r) u``), ``r`` and ``t`` of shape ``(B,)`` in the flow's time, not a score.
        orders: the values its ``order`` option takes (as its authors number them); empty without one.
        good_grids: the time grids it is known to do well on, its default grid first (for ddim, dpm_solver++,
            deis and deis_logsnr_x0 measured against the exact flow map of a Gaussian on VP, float64).
            Documentation; the front door warns only for ``bad_grids``.
        bad_grids: ``grid -> why`` for grids known to hurt it; :func:`scoresde.sampling.sample` warns (once, when
            it traces) if one is used.
    """

    name: str
    fn: Callable
    deterministic: bool
    options: Mapping[str, object]
    run: Callable | None = None
    prepare: Callable | None = None
    noise_option: str | None = None
    integrates_drift: bool = False
    consistency_fn: bool = False
    average_velocity: bool = False
    orders: tuple[int, ...] = ()
    good_grids: tuple[str, ...] = ()
    bad_grids: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        options = dict(self.options)
        if self.uses_grid:
            options.setdefault("to_zero", False)
            options.setdefault("step_capacity", None)
        object.__setattr__(self, "options", types.MappingProxyType(options))
        object.__setattr__(self, "bad_grids", types.MappingProxyType(dict(self.bad_grids)))
        if self.uses_grid and self.default_grid not in self.good_grids:
            raise ValueError(f"method {self.name!r}: its default grid {self.default_grid!r} is not in good_grids")
        if ("order" in options) != bool(self.orders) or (self.orders and options["order"] not in self.orders):
            raise ValueError(f"method {self.name!r}: orders={self.orders} disagrees with its order option")
        if self.noise_option is not None and (options[self.noise_option] == 0) != self.deterministic:
            raise ValueError(
                f"method {self.name!r}: deterministic={self.deterministic} disagrees with its default "
                f"{self.noise_option}={options[self.noise_option]!r}"
            )

    @property
    def uses_grid(self) -> bool:
        """Runs as ``fn`` on a time grid (and takes ``steps``, ``grid``, ``to_zero``)."""
        return self.run is None

    @property
    def projects(self) -> bool:
        """Takes the ``project_fn(x, t, key)`` hook (inpainting, colorization, replacement)."""
        return "project_fn" in self.options

    @property
    def default_grid(self) -> str | None:
        """The time grid it uses when ``grid`` is not given (and the SDE has no ``default_grid``)."""
        return self.options.get("grid")


def _run_pc(score_fn, sde, x, key, nfe, eps, opts):
    x, nfe = pc.pc_sample(score_fn, sde, x, key, nfe, eps=eps, **opts)
    return x, nfe, jnp.array(True)


def _run_ode(score_fn, sde, x, key, nfe, eps, opts):
    opts = dict(opts)
    denoise = opts.pop("denoise")
    x, n, ok = ode.solve_flow(score_fn, sde, x, jnp.asarray(sde.T, x.dtype), eps, **opts)
    nfe = nfe + n
    if denoise:
        # The reference's ODE sampler denoises with one reverse-diffusion mean step at eps.
        t = jnp.full((x.shape[0],), eps, x.dtype)
        _, x, nfe = pc._reverse_diffusion(sde, score_fn, key, x, t, nfe, False)
    return jnp.where(ok, x, jnp.nan), nfe, ok


def _run_consistency(score_fn, sde, x, key, nfe, eps, opts):
    ts = consistency.default_times(sde, opts["steps"], eps, rho=opts["rho"], dtype=x.dtype)
    if opts["times"] is not None:
        ts = jnp.concatenate([ts[:1], opts["times"].astype(x.dtype)])
    x, nfe = consistency.consistency_sample(score_fn, sde, x, ts, key, nfe, eps=eps, project_fn=opts["project_fn"])
    return x, nfe, jnp.array(True)


def _prepare_consistency(sde, eps, opts):
    if opts["denoise"]:
        raise ValueError("method 'consistency' cannot denoise: a consistency function already returns x_eps")
    return {**opts, "steps": consistency.resolve_times(sde, eps, opts["steps"], opts["times"])}


def _run_scm(score_fn, sde, x, key, nfe, eps, opts):
    ts = consistency.scm_times(sde.T, opts["steps"], opts["times"], dtype=x.dtype)
    # boundary time 0, not eps: sCM's f(x_t, t) returns x_0 (f(x, 0) = x exactly), so each re-noising is
    # TrigFlow's own kernel cos(τ) x_0 + sin(τ) σ_d z
    x, nfe = consistency.consistency_sample(score_fn, sde, x, ts, key, nfe, eps=0.0)
    return x, nfe, jnp.array(True)


def _prepare_scm(sde, eps, opts):
    if not isinstance(sde, sde_lib.TrigFlow):
        raise ValueError(
            f"method 'scm' samples an sCM consistency function of TrigFlow; got sde={type(sde).__name__}; "
            "use sde=TrigFlow(sigma_data=...) (get_sde('trigflow', sigma_data=...))"
        )
    return {**opts, "steps": consistency.resolve_scm_steps(sde, opts["steps"], opts["times"])}


def _run_meanflow(score_fn, sde, x, key, nfe, eps, opts):
    ts = meanflow.meanflow_times(sde.T, opts["steps"], opts["times"], dtype=x.dtype)
    x, nfe = meanflow.meanflow_sample(score_fn, sde, x, ts, key, nfe)
    return x, nfe, jnp.array(True)


def _prepare_meanflow(sde, eps, opts):
    if not isinstance(sde, sde_lib.RectifiedFlow):
        raise ValueError(
            f"method 'meanflow' samples a MeanFlow average velocity u(z, r, t) of rectified flow "
            f"(z_t = (1 - t) x + t eps); got sde={type(sde).__name__}; use sde=RectifiedFlow() "
            "(get_sde('rectified_flow'))"
        )
    return {**opts, "steps": consistency.resolve_times(sde, 0.0, opts["steps"], opts["times"])}


# Measured on the Gaussian oracle (VP, float64, 20 steps, mean |x - exact flow map|): orders 2 / 3 give 7.2e-2 /
# 1.1e-1 against order 1's (DDIM's) 4.2e-2 on uniform_t, 7.8e-3 / 1.0e-3 on log_snr.
_X0_LOGSNR_ON_UNIFORM_T = (
    "extrapolating x0 in log-SNR over uniform-t steps (very unequal in log-SNR) makes its "
    "orders 2 and 3 less accurate than order 1; use grid='log_snr' or method='deis'"
)

_METHODS = (
    Method(
        "pc",
        pc.pc_sample,
        deterministic=False,
        run=_run_pc,
        integrates_drift=True,
        options=dict(
            predictor="euler_maruyama",
            corrector="none",
            snr=0.16,
            n_steps=1,
            steps=None,
            denoise=True,
            probability_flow=False,
            corrector_first=True,
            project_fn=None,
        ),
    ),
    # ode: where alpha(T) = 0 it integrates the denoiser's velocity form (ode.flow_velocity), finite at T
    Method(
        "ode",
        ode.solve_flow,
        deterministic=True,
        run=_run_ode,
        options=dict(solver="tsit5", rtol=1e-5, atol=1e-5, steps=100, grid="uniform_t", max_steps=4096, denoise=False),
    ),
    Method(
        "ddim",
        fast.ddim,
        deterministic=True,
        noise_option="eta",
        good_grids=("uniform_t", "quadratic_t", "log_snr", "edm"),
        options=dict(steps=50, eta=0.0, grid="uniform_t", clip_denoised=None, denoise=False, project_fn=None),
    ),
    Method(
        "dpm_solver",
        fast.dpm_solver,
        orders=(1, 2, 3),
        deterministic=True,
        good_grids=("log_snr",),
        options=dict(steps=10, order=2, grid="log_snr", schedule="uniform", denoise=False, project_fn=None),
    ),
    Method(
        "dpm_solver++",
        fast.dpm_solver_pp,
        orders=(1, 2),
        deterministic=True,
        good_grids=("log_snr", "quadratic_t"),
        options=dict(steps=20, order=2, grid="log_snr", lower_order_final=True, denoise=False, project_fn=None),
    ),
    Method(
        "edm_heun",
        fast.edm_heun,
        deterministic=True,
        noise_option="S_churn",
        good_grids=("edm",),
        options=dict(
            steps=18,
            S_churn=0.0,
            S_tmin=0.0,
            S_tmax=math.inf,
            S_noise=1.0,
            rho=7.0,
            grid="edm",
            denoise=False,
            project_fn=None,
        ),
    ),
    Method(
        "unipc",
        multistep.unipc,
        orders=(1, 2, 3),
        deterministic=True,
        good_grids=("log_snr",),
        options=dict(
            steps=20, order=2, variant="bh1", grid="log_snr", lower_order_final=True, denoise=False, project_fn=None
        ),
    ),
    Method(
        "deis",
        multistep.deis,
        orders=(0, 1, 2, 3),
        deterministic=True,
        good_grids=("quadratic_t", "log_snr"),
        options=dict(steps=20, order=3, grid="quadratic_t", denoise=False, project_fn=None),
    ),
    Method(
        "deis_logsnr_x0",
        multistep.deis_logsnr_x0,
        orders=(1, 2, 3),
        deterministic=True,
        good_grids=("log_snr",),
        bad_grids={"uniform_t": _X0_LOGSNR_ON_UNIFORM_T},
        options=dict(steps=20, order=2, grid="log_snr", lower_order_final=True, denoise=False, project_fn=None),
    ),
    Method(
        "dpm_solver++_sde",
        stochastic.dpm_solver_pp_sde,
        orders=(1, 2, 3),
        deterministic=False,
        noise_option="eta",
        good_grids=("log_snr",),
        options=dict(steps=20, order=2, eta=1.0, s_noise=1.0, grid="log_snr", denoise=False, project_fn=None),
    ),
    Method(
        "euler_ancestral",
        stochastic.euler_ancestral,
        deterministic=False,
        noise_option="eta",
        good_grids=("edm",),
        options=dict(steps=50, eta=1.0, s_noise=1.0, grid="edm", denoise=False, project_fn=None),
    ),
    Method(
        "consistency",
        consistency.consistency_sample,
        deterministic=False,
        run=_run_consistency,
        prepare=_prepare_consistency,
        consistency_fn=True,
        options=dict(steps=None, times=None, rho=7.0, denoise=False, project_fn=None),
    ),
    # sCM (Lu & Song 2025): score_fn is the consistency function f(x_t, t) -> x_0 of TrigFlow
    # (scoresde.fewstep.trigflow.consistency_fn); 1 step f(σ_d z, π/2), 2 steps re-noise at t_mid = 1.1
    Method(
        "scm",
        consistency.consistency_sample,
        deterministic=False,
        run=_run_scm,
        prepare=_prepare_scm,
        consistency_fn=True,
        options=dict(steps=None, times=None),
    ),
    # MeanFlow (Geng et al. 2025): score_fn is the average velocity u(z, r, t) of rectified flow; k jumps, k NFE
    Method(
        "meanflow",
        meanflow.meanflow_sample,
        deterministic=True,
        run=_run_meanflow,
        prepare=_prepare_meanflow,
        average_velocity=True,
        options=dict(steps=None, times=None),
    ),
)

# name -> Method, in the order of the module docstring of scoresde.sampling
TABLE: Mapping[str, Method] = types.MappingProxyType({m.name: m for m in _METHODS})


def method_traits(method: str) -> Method:
    """The :class:`Method` record of ``method``.

    Raises:
        ValueError: an unknown method.
    """
    if method not in TABLE:
        raise ValueError(f"unknown sampling method {method!r}; expected one of: {', '.join(TABLE)}")
    return TABLE[method]


def is_deterministic(method: str, options: Mapping | None = None) -> bool:
    """Whether ``method`` with ``options`` (its defaults where not given) draws no noise after the prior draw.

    The declared :attr:`Method.deterministic`, unless the method has a :attr:`Method.noise_option`: then
    whether that option is 0 (DDIM with ``eta = 0``, EDM Heun without churn, Euler ancestral with ``eta = 0``).

    Raises:
        ValueError: an unknown method.
    """
    traits = method_traits(method)
    if traits.noise_option is None:
        return traits.deterministic
    return {**traits.options, **(options or {})}[traits.noise_option] == 0
