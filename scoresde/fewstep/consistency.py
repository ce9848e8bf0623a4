"""Consistency models: parameterisation, discretisation, curricula, and the CD / CT losses (pure math).

A consistency function ``f(x_t, t)`` maps any point of a probability-flow ODE trajectory to the trajectory's
point at the boundary time ``eps`` (Song, Dhariwal, Chen, Sutskever, "Consistency Models", ICML 2023,
Definition / eq. 3). Everything here is written once for every linear SDE of :mod:`scoresde.sde` in the
*scaled* coordinates of Karras et al. (2022): ``x̄ = x / alpha(t)`` with noise level
``σ̃(t) = sigma(t) / alpha(t)`` (:func:`scoresde.sampling.grids.edm_sigma`). In them the probability-flow
ODE of VP, sub-VP and VE is the same ODE ``dx̄/dσ̃ = (x̄ - D(x̄; σ̃)) / σ̃``, so one formula serves all.

* :func:`consistency_fn`: ``f(x, t) = alpha(eps) [c_skip(σ̃) x/alpha(t) + c_out(σ̃) F(c_in(σ̃) x/alpha(t), label(t))]``
  with the coefficients of the paper's Appendix C (:func:`boundary_coefficients`); at ``t = eps``,
  ``c_skip = 1`` and ``c_out = 0`` exactly, so ``f(x, eps) = x`` holds exactly (the boundary condition).
* :func:`karras_sigma` / :func:`karras_grid`: the ρ-grid ``σ̃_i`` between ``σ̃(eps)`` and ``σ̃(T)`` (paper
  eq. 5 / Karras et al. eq. 5), computable for a traced index *and* a traced number of points ``N``, so the
  curricula below never recompile the training step.
* Curricula of ``N``: CD keeps ``N`` fixed (18 in the paper's CIFAR-10 runs); :func:`ct_num_scales` and
  :func:`ct_ema_decay` are the original CT schedules (paper App. C, ``N(k)``, ``μ(k)``);
  :func:`ict_num_scales` is the exponential (doubling) curriculum of improved CT (Song & Dhariwal,
  "Improved Techniques for Training Consistency Models", ICLR 2024, eq. 9).
* :func:`cd_loss`: consistency distillation (paper eq. 7, Algorithm 2). The teacher's probability-flow step
  from ``t_{n+1}`` to ``t_n`` is made by this project's own samplers (:mod:`scoresde.sampling.fast`) on any
  score function: ``"euler"`` (= DDIM with ``eta = 0``, the Euler step in scaled coordinates),
  ``"heun"`` (EDM's Heun step) and ``"dpm_solver-2"``.
* :func:`ct_loss`: consistency training (paper eq. 10, Algorithm 3) with the iCT choices as defaults:
  pseudo-Huber metric, lognormal sampling of the noise level over the discrete grid (iCT eq. 10),
  weighting ``λ(σ̃_i) = 1 / (σ̃_{i+1} - σ̃_i)`` (iCT Sec. 3.4), and (the caller's choice) ``μ = 0``.
* :func:`distance`: squared L2, L1, pseudo-Huber (iCT Sec. 3.3), with a ``feature_fn`` hook for a
  user-supplied feature network (LPIPS-like metrics need downloaded weights; see :func:`distance`).

Target network. Both losses take ``consistency_fn(params, x, t)`` and two parameter pytrees: the online
``params`` (differentiated) and ``target_params`` (the EMA ``θ⁻`` with decay ``μ``, see :func:`ema_update`;
pass ``params`` itself for ``μ = 0``, as iCT does). The target's output is wrapped in ``stop_gradient``.

Examples:
    >>> from scoresde import sde as sde_lib
    >>> vp = sde_lib.VPSDE()
    >>> f = consistency_fn(lambda x, labels: jnp.zeros_like(x), vp, eps=1e-3)
    >>> x = jnp.ones((4, 2))
    >>> bool(jnp.all(f(x, jnp.full((4,), 1e-3)) == x))
    True
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtr, ndtri

from scoresde.parameterization import time_labels
from scoresde.sampling import fast
from scoresde.sampling.grids import edm_sigma
from scoresde.sde import batch_mul

METRICS = ("l2", "l1", "pseudo_huber")
TEACHER_SOLVERS = ("euler", "heun", "dpm_solver-2")
WEIGHTINGS = ("uniform", "icm")
NOISE_SCHEDULES = ("uniform", "lognormal")

__all__ = [
    "METRICS", "TEACHER_SOLVERS", "WEIGHTINGS", "NOISE_SCHEDULES", "boundary_coefficients", "consistency_fn",
    "karras_sigma", "karras_grid", "ict_num_scales", "CT_CONVENTIONS", "ct_num_scales", "ct_ema_decay", "ema_update", "distance",
    "teacher_step", "one_sample_score", "sample_indices", "cd_loss", "ct_loss",
]


# ------------------------------------------------------------------------------ parameterisation

def boundary_coefficients(sigma, sigma_min, sigma_data=0.5):
    """``(c_skip, c_out, c_in)`` of Song et al. (2023), App. C, in the scaled noise level ``σ̃``.

    ``c_skip = σ_d² / ((σ̃ - σ̃_min)² + σ_d²)``, ``c_out = σ_d (σ̃ - σ̃_min) / sqrt(σ_d² + σ̃²)``,
    ``c_in = 1 / sqrt(σ̃² + σ_d²)`` (EDM's input scaling). At ``σ̃ = σ̃_min``: ``c_skip = 1``, ``c_out = 0``
    exactly in floating point.
    """
    d = sigma - sigma_min
    c_skip = sigma_data**2 / (d * d + sigma_data**2)
    c_out = sigma_data * d / jnp.sqrt(sigma_data**2 + sigma * sigma)
    c_in = 1.0 / jnp.sqrt(sigma * sigma + sigma_data**2)
    return c_skip, c_out, c_in


def consistency_fn(net_fn: Callable, sde, eps, *, sigma_data: float = 0.5, time_label: str = "999t") -> Callable:
    """Wraps a raw network ``F = net_fn(x, labels)`` into a consistency function ``f(x, t)``.

    ``f(x, t) = alpha(eps) [c_skip x̄ + c_out F(c_in x̄, label(t))]`` with ``x̄ = x / alpha(t)`` and the
    coefficients of :func:`boundary_coefficients` at ``σ̃(t)``, ``σ̃_min = σ̃(eps)``. The output is the
    trajectory's point at ``eps`` in the SDE's own coordinates (``x_eps``, not ``x̄_eps``), so
    ``f(x, eps) = x`` holds exactly and multistep sampling re-noises it with the SDE's kernel.

    Args:
        net_fn: the network, ``net_fn(x, labels) -> F`` of the shape of ``x``.
        sde: a linear SDE from :mod:`scoresde.sde`.
        eps: the boundary time (a float or scalar array).
        sigma_data: ``σ_d`` of the data (0.5 for images in ``[-1, 1]``, the paper's value).
        time_label: the network's time conditioning, one of
            :data:`scoresde.parameterization.TIME_LABELS` (the label conventions live there).

    Returns:
        ``f(x, t) -> x_eps`` with ``x`` of shape ``(B, ...)`` and ``t`` of shape ``(B,)``.
    """

    def f(x, t):
        eps_b = jnp.full_like(t, eps)
        sig, sig_min = edm_sigma(sde, t), edm_sigma(sde, eps_b)
        c_skip, c_out, c_in = boundary_coefficients(sig, sig_min, sigma_data)
        a_t, a_eps = sde.alpha(t), sde.alpha(eps_b)
        xbar = batch_mul(1.0 / a_t, x)
        out = net_fn(batch_mul(c_in, xbar), time_labels(sde, t, time_label))
        # alpha(eps) / alpha(t) is exactly 1 at t = eps, and c_out exactly 0: f(x, eps) = x bit for bit.
        return batch_mul(c_skip * (a_eps / a_t), x) + batch_mul(a_eps * c_out, out)

    return f


# ------------------------------------------------------------------------------ discretisation and curricula

def karras_sigma(sde, i, num_scales, eps, rho=7.0):
    """``σ̃_i = (σ̃_min^{1/ρ} + i/(N-1) (σ̃_max^{1/ρ} - σ̃_min^{1/ρ}))^ρ``, ``i = 0 .. N-1`` (increasing).

    ``σ̃_min = σ̃(eps)``, ``σ̃_max = σ̃(T)``. ``i`` and ``num_scales`` may be traced (arrays of any shape).
    """
    dtype = jnp.result_type(float)
    lo = edm_sigma(sde, jnp.asarray(eps, dtype)) ** (1.0 / rho)
    hi = edm_sigma(sde, jnp.asarray(sde.T, dtype)) ** (1.0 / rho)
    u = jnp.asarray(i, dtype) / (jnp.asarray(num_scales, dtype) - 1.0)
    return (lo + u * (hi - lo)) ** rho


def _t_of_sigma(sde, sig):
    return sde.t_from_log_snr(-2.0 * jnp.log(sig))


def karras_grid(sde, num_scales: int, eps, *, rho=7.0, dtype=jnp.float32):
    """The ``N = num_scales`` increasing times ``t_1 = eps < ... < t_N = T`` of the ρ-grid (paper eq. 5).

    The same grid as :func:`scoresde.sampling.grids.time_grid` with ``kind="edm"`` and ``N - 1`` steps,
    read in increasing order (both endpoints exact).
    """
    from scoresde.sampling.grids import time_grid  # noqa: PLC0415

    if not (isinstance(num_scales, int) and num_scales >= 2):
        raise ValueError(f"num_scales must be an int >= 2 (the grid's number of points); got {num_scales!r}")
    return time_grid(sde, num_scales - 1, eps, kind="edm", rho=rho, dtype=dtype)[::-1]


def ict_num_scales(step, total_steps: int, s0: int = 10, s1: int = 1280):
    """iCT's exponential curriculum ``N(k) = min(s0 2^{floor(k / K')}, s1) + 1``, ``K' = floor(K / (log2(s1/s0) + 1))``.

    (Song & Dhariwal 2024, eq. 9.) ``step`` may be a Python int or a traced int array.
    """
    if not (s1 >= s0 >= 1 and total_steps >= 1):
        raise ValueError(f"need 1 <= s0 <= s1 and total_steps >= 1; got s0={s0}, s1={s1}, total_steps={total_steps}")
    import math  # noqa: PLC0415

    k_prime = max(int(math.floor(total_steps / (math.log2(s1 // s0) + 1))), 1)
    doublings = jnp.asarray(step, jnp.int32) // k_prime
    n = jnp.minimum(s0 * jnp.left_shift(1, jnp.minimum(doublings, 30)), s1) + 1
    return n.astype(jnp.int32)


CT_CONVENTIONS = ("paper", "official")


def _check_convention(convention):
    if convention not in CT_CONVENTIONS:
        raise ValueError(f"unknown CT schedule convention {convention!r}; expected one of: {', '.join(CT_CONVENTIONS)}")


def ct_num_scales(step, total_steps: int, s0: int = 2, s1: int = 150, *, convention: str = "paper"):
    """The original CT curriculum ``N(k) = ceil(sqrt(k/K ((s1+1)² - s0²) + s0²) - 1) + 1`` (Song et al. 2023, App. C).

    Exact for every ``0 <= k <= K``: ``c(k) = ceil(sqrt(q(k)))`` with ``q(k) = k A / K + s0²``,
    ``A = (s1+1)² - s0²``, reaches ``m`` when ``(m-1)² < q(k)``, i.e. from the integer step
    ``k_m = floor(((m-1)² - s0²) K / A) + 1``. Those ``s1 + 1 - s0`` thresholds are computed here in Python
    integers, and ``N(k) = s0 + #{m : k >= k_m}`` is a ``searchsorted`` on them: no float square root of a
    step count (in float32 it rounds ``N`` down at a few steps of a long run). ``step`` may be a Python int, an
    array or a traced int array; past ``K`` the curriculum stays at ``s1 + 1``.

    Args:
        step: the training step ``k``.
        total_steps: ``K``.
        s0, s1: initial and final number of discretisation intervals.
        convention: ``"paper"`` (App. C as written, ``N = c(k)``) or ``"official"`` (the authors'
            ``openai/consistency_models_cifar10`` code, ``N = max(c(k) - 1, 1) + 1``; differs from the paper only
            when ``s0 = 1`` at ``k = 0``).

    Raises:
        ValueError: an unknown convention or bad ``s0``, ``s1``, ``total_steps``.
    """
    _check_convention(convention)
    if not (s1 >= s0 >= 1 and total_steps >= 1):
        raise ValueError(f"need 1 <= s0 <= s1 and total_steps >= 1; got s0={s0}, s1={s1}, total_steps={total_steps}")
    a = (s1 + 1) ** 2 - s0**2
    thresholds = [((m - 1) ** 2 - s0**2) * total_steps // a + 1 for m in range(s0 + 1, s1 + 2)]
    if thresholds[-1] > 2**31 - 1:
        raise ValueError(f"total_steps={total_steps} does not fit the int32 step counter")
    k = jnp.asarray(step, jnp.int32)
    n = s0 + jnp.searchsorted(jnp.asarray(thresholds, jnp.int32), k, side="right").astype(jnp.int32)
    if convention == "official":
        n = jnp.maximum(n, 2)
    return n.astype(jnp.int32)


def ct_ema_decay(num_scales, s0: int = 2, mu0: float = 0.9, *, convention: str = "paper"):
    """The original CT target decay ``μ(k)`` for ``N = N(k)`` points (Song et al. 2023, App. C); iCT uses 0.

    ``"paper"``: ``μ = exp(s0 log μ0 / N)`` as App. C writes it. ``"official"``: ``μ = exp(s0 log μ0 / (N - 1))``,
    the authors' code (``openai/consistency_models_cifar10``), which divides by the number of *intervals*
    ``N - 1``. At the start (``N = s0 = 2``, ``μ0 = 0.9``) the paper's is 0.9 and the official 0.81; the gap
    shrinks as ``N`` grows.

    Raises:
        ValueError: an unknown convention.
    """
    _check_convention(convention)
    n = jnp.asarray(num_scales, jnp.float32)
    if convention == "official":
        n = jnp.maximum(n - 1.0, 1.0)
    return jnp.exp(s0 * jnp.log(mu0) / n)


def ema_update(target_params, params, mu):
    """``θ⁻ ← stopgrad(μ θ⁻ + (1 - μ) θ)`` leaf by leaf (paper Algorithm 2, last line)."""
    return jax.tree.map(lambda a, b: jax.lax.stop_gradient(mu * a + (1.0 - mu) * b), target_params, params)


# ------------------------------------------------------------------------------ metrics

def distance(x, y, metric="l2", *, feature_fn: Callable | None = None, huber_c=None):
    """Per-example distance ``d(x, y)``, shape ``(B,)``.

    Args:
        x, y: batches of the same shape ``(B, ...)``.
        metric: ``"l2"`` (squared L2 ``||x - y||²``, the paper's ``L2``), ``"l1"`` (``||x - y||₁``),
            ``"pseudo_huber"`` (``sqrt(||x - y||² + c²) - c``, iCT Sec. 3.3), or a callable
            ``metric(x, y) -> (B,)`` for anything else (e.g. a complete LPIPS).
        feature_fn: optional ``feature_fn(x) -> (B, ...)`` applied to both arguments before ``metric``:
            the hook for a learned perceptual metric. LPIPS (Zhang et al. 2018), the CD paper's best
            metric, is ``l2`` between unit-normalised, channel-weighted VGG/AlexNet activations of the
            images upsampled to 224²; its weights must be downloaded, so it is not bundled: pass
            ``feature_fn`` returning those normalised, weighted activations flattened to ``(B, F)``
            (gradients flow through it; its parameters should be closed over and frozen).
        huber_c: the pseudo-Huber ``c``; ``0.00054 sqrt(d)`` (iCT's choice, ``d`` the number of
            elements per example of what is compared) if ``None``.

    Raises:
        ValueError: for an unknown metric or mismatched shapes.
    """
    if x.shape != y.shape:
        raise ValueError(f"distance needs equal shapes; got {x.shape} and {y.shape}")
    if feature_fn is not None:
        x, y = feature_fn(x), feature_fn(y)
    if callable(metric):
        return metric(x, y)
    diff = (x - y).reshape(x.shape[0], -1)
    if metric == "l2":
        return jnp.sum(diff * diff, axis=-1)
    if metric == "l1":
        return jnp.sum(jnp.abs(diff), axis=-1)
    if metric == "pseudo_huber":
        c = 0.00054 * jnp.sqrt(jnp.asarray(diff.shape[-1], diff.dtype)) if huber_c is None else huber_c
        return jnp.sqrt(jnp.sum(diff * diff, axis=-1) + c * c) - c
    raise ValueError(f"unknown consistency metric {metric!r}; expected one of: {', '.join(METRICS)} or a callable")


# ------------------------------------------------------------------------------ teacher step and CT's estimate

def teacher_step(score_fn: Callable, sde, x, t_from, t_to, solver: str = "heun"):
    """One probability-flow step per example from ``t_from`` to ``t_to`` (both ``(B,)``) with a project sampler.

    ``"euler"`` is :func:`scoresde.sampling.fast.ddim` (``eta = 0``; the Euler step of
    ``dx̄/dσ̃ = (x̄ - D)/σ̃`` in scaled coordinates), ``"heun"`` is :func:`~scoresde.sampling.fast.edm_heun`
    (CD's Heun teacher), ``"dpm_solver-2"`` is :func:`~scoresde.sampling.fast.dpm_solver` with order 2. The
    samplers step a whole batch between two scalar times; here every example has its own pair, so the
    step is ``vmap``-ed over the batch (the score function sees batches of one, batched back by ``vmap``).

    Returns:
        ``(x_to, nfe)`` with ``nfe`` the score evaluations per example (1, 2, 2).

    Raises:
        ValueError: for an unknown solver.
    """
    steppers = {"euler": lambda *a: fast.ddim(*a, eta=0.0), "heun": fast.edm_heun,
                "dpm_solver-2": lambda *a: fast.dpm_solver(*a, order=2)}
    if solver not in steppers:
        raise ValueError(f"unknown teacher solver {solver!r}; expected one of: {', '.join(TEACHER_SOLVERS)}")
    stepper = steppers[solver]
    key = jax.random.key(0)  # the deterministic steppers draw no noise

    def one(xi, s, t):
        y, n = stepper(score_fn, sde, xi[None], jnp.stack([s, t]), key, jnp.zeros((), jnp.int32))
        return y[0], n

    x_to, nfe = jax.vmap(one)(x, t_from.astype(x.dtype), t_to.astype(x.dtype))
    return x_to, nfe[0]


def one_sample_score(sde, x_t, x0, t):
    """CT's one-sample score estimate ``-(x_t - alpha(t) x0) / sigma(t)²`` (Song et al. 2023, eq. 9 / Thm. 2).

    Its mean over ``x0 ~ p(x0 | x_t)`` is the exact score ``∇log p_t(x_t)``; with it, the Euler step from
    ``t_{n+1}`` to ``t_n`` of ``x_{t_{n+1}} = alpha x0 + sigma z`` lands exactly on CT's
    ``x_{t_n} = alpha(t_n) x0 + sigma(t_n) z`` (same ``z``).
    """
    return batch_mul(-1.0 / sde.sigma(t) ** 2, x_t - batch_mul(sde.alpha(t), x0))


# ------------------------------------------------------------------------------ losses

def sample_indices(sde, key, batch: int, num_scales, eps, *, rho=7.0, schedule="uniform", p_mean=-1.1,
                   p_std=2.0):
    """Grid indices ``n ∈ {0, .., N-2}`` of the lower point of the pair ``(σ̃_n, σ̃_{n+1})``, shape ``(batch,)``.

    ``"uniform"``: ``n ~ U{0..N-2}`` (CD / CT). ``"lognormal"`` (iCT eq. 10):
    ``p(n) ∝ erf((log σ̃_{n+1} - P_mean)/(√2 P_std)) - erf((log σ̃_n - P_mean)/(√2 P_std))``, drawn exactly as
    the cell of the ρ-grid that contains a lognormal ``σ̃`` truncated to ``[σ̃_0, σ̃_{N-1}]`` (so no table of
    size ``N`` is built and ``N`` may be traced).
    """
    if schedule == "uniform":
        return jax.random.randint(key, (batch,), 0, jnp.asarray(num_scales, jnp.int32) - 1)
    if schedule != "lognormal":
        raise ValueError(f"unknown noise schedule {schedule!r}; expected one of: {', '.join(NOISE_SCHEDULES)}")
    lo, hi = karras_sigma(sde, 0, num_scales, eps, rho), karras_sigma(sde, num_scales - 1, num_scales, eps, rho)
    c_lo, c_hi = ndtr((jnp.log(lo) - p_mean) / p_std), ndtr((jnp.log(hi) - p_mean) / p_std)
    u = jax.random.uniform(key, (batch,), minval=c_lo, maxval=c_hi)
    sig = jnp.exp(p_mean + p_std * ndtri(u))
    # invert the rho-grid: sig = (lo^(1/rho) + n/(N-1) (hi^(1/rho) - lo^(1/rho)))^rho
    r_lo, r_hi = lo ** (1.0 / rho), hi ** (1.0 / rho)
    pos = (sig ** (1.0 / rho) - r_lo) / (r_hi - r_lo) * (jnp.asarray(num_scales, sig.dtype) - 1.0)
    return jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, jnp.asarray(num_scales, jnp.int32) - 2)


def _weight(weighting, sig_n, sig_np1):
    if weighting == "uniform":
        return jnp.ones_like(sig_n)
    if weighting == "icm":
        return 1.0 / (sig_np1 - sig_n)
    raise ValueError(f"unknown consistency weighting {weighting!r}; expected one of: {', '.join(WEIGHTINGS)}")


def _pair(sde, key, batch, num_scales, eps, rho, schedule, p_mean, p_std):
    n = sample_indices(sde, key, batch, num_scales, eps, rho=rho, schedule=schedule, p_mean=p_mean, p_std=p_std)
    sig_n, sig_np1 = karras_sigma(sde, n, num_scales, eps, rho), karras_sigma(sde, n + 1, num_scales, eps, rho)
    t_n, t_np1 = _t_of_sigma(sde, sig_n), _t_of_sigma(sde, sig_np1)
    # the rho-grid's end points are eps and T exactly (the inverse maps round)
    t_n = jnp.where(n == 0, jnp.asarray(eps, t_n.dtype), t_n)
    t_np1 = jnp.where(n + 1 == jnp.asarray(num_scales) - 1, jnp.asarray(sde.T, t_np1.dtype), t_np1)
    return n, sig_n, sig_np1, t_n, t_np1


def cd_loss(consistency_fn: Callable, params, target_params, score_fn: Callable, sde, batch, key, *,
            num_scales, eps, rho=7.0, solver: str = "heun", metric="l2", feature_fn=None, weighting="uniform",
            schedule="uniform"):
    """Consistency distillation ``E[λ(t_n) d(f_θ(x_{t_{n+1}}, t_{n+1}), f_{θ⁻}(x̂_{t_n}, t_n))]`` (paper eq. 7).

    ``x_{t_{n+1}} = alpha x + sigma z`` for data ``x``; ``x̂_{t_n}`` is one teacher step (:func:`teacher_step`)
    of the probability-flow ODE with ``score_fn`` from ``t_{n+1}`` to ``t_n`` on the ρ-grid of ``N``
    points (:func:`karras_grid`).

    Args:
        consistency_fn: ``consistency_fn(params, x, t) -> x_eps`` (e.g. :func:`consistency_fn` of a merged
            network).
        params: online parameters ``θ`` (the ones differentiated).
        target_params: target parameters ``θ⁻`` (the EMA, or ``params`` for ``μ = 0``); stop-gradiented.
        score_fn: the teacher's ``score_fn(x, t)``.
        sde: a linear SDE.
        batch: data ``(B, ...)``.
        key: PRNG key.
        num_scales: ``N`` (CD: fixed, e.g. 18); an int or a traced int.
        eps: the boundary time.
        rho: the grid exponent (7).
        solver: the teacher's step, one of :data:`TEACHER_SOLVERS`.
        metric, feature_fn: see :func:`distance`.
        weighting: ``"uniform"`` (``λ = 1``, the CD paper) or ``"icm"`` (``1 / (σ̃_{n+1} - σ̃_n)``).
        schedule: index sampling, see :func:`sample_indices`.

    Returns:
        ``(loss, aux)``; ``aux`` has per-example ``losses``, indices ``n``, times ``t_n``, ``t_np1`` and the
        teacher's ``nfe`` per example.
    """
    b = batch.shape[0]
    k_n, k_z = jax.random.split(key)
    n, sig_n, sig_np1, t_n, t_np1 = _pair(sde, k_n, b, num_scales, eps, rho, schedule, -1.1, 2.0)
    t_n, t_np1 = t_n.astype(batch.dtype), t_np1.astype(batch.dtype)
    z = jax.random.normal(k_z, batch.shape, batch.dtype)
    x_np1 = batch_mul(sde.alpha(t_np1), batch) + batch_mul(sde.sigma(t_np1), z)
    x_n, nfe = teacher_step(score_fn, sde, x_np1, t_np1, t_n, solver)
    online = consistency_fn(params, x_np1, t_np1)
    target = jax.lax.stop_gradient(consistency_fn(target_params, jax.lax.stop_gradient(x_n), t_n))
    losses = _weight(weighting, sig_n, sig_np1).astype(batch.dtype) * distance(online, target, metric,
                                                                               feature_fn=feature_fn)
    return jnp.mean(losses), {"losses": losses, "n": n, "t_n": t_n, "t_np1": t_np1, "nfe": nfe}


def ct_loss(consistency_fn: Callable, params, target_params, sde, batch, key, *, num_scales, eps, rho=7.0,
            metric="pseudo_huber", feature_fn=None, weighting="icm", schedule="lognormal", p_mean=-1.1,
            p_std=2.0):
    """Consistency training ``E[λ(σ̃_n) d(f_θ(x + σ_{n+1} z, t_{n+1}), f_{θ⁻}(x + σ_n z, t_n))]`` (paper eq. 10).

    In the SDE's coordinates ``x_{t} = alpha(t) x + sigma(t) z`` with one ``z`` for both times: the Euler
    step of the probability-flow ODE with the one-sample score :func:`one_sample_score` (whose conditional
    mean is the exact score), so no teacher is needed. The defaults are iCT's (Song & Dhariwal 2024):
    pseudo-Huber metric, lognormal index sampling (``P_mean = -1.1``, ``P_std = 2``), weighting
    ``1 / (σ̃_{n+1} - σ̃_n)``; pass ``target_params = params`` for iCT's ``μ = 0``, and ``num_scales`` from
    :func:`ict_num_scales`. For the original CT pass ``metric="l2"`` (or LPIPS), ``weighting="uniform"``,
    ``schedule="uniform"``, :func:`ct_num_scales` and an EMA target with :func:`ct_ema_decay`.

    Args and returns as :func:`cd_loss` (without ``score_fn`` / ``solver``).
    """
    b = batch.shape[0]
    k_n, k_z = jax.random.split(key)
    n, sig_n, sig_np1, t_n, t_np1 = _pair(sde, k_n, b, num_scales, eps, rho, schedule, p_mean, p_std)
    t_n, t_np1 = t_n.astype(batch.dtype), t_np1.astype(batch.dtype)
    z = jax.random.normal(k_z, batch.shape, batch.dtype)
    x_np1 = batch_mul(sde.alpha(t_np1), batch) + batch_mul(sde.sigma(t_np1), z)
    x_n = batch_mul(sde.alpha(t_n), batch) + batch_mul(sde.sigma(t_n), z)
    online = consistency_fn(params, x_np1, t_np1)
    target = jax.lax.stop_gradient(consistency_fn(target_params, x_n, t_n))
    losses = _weight(weighting, sig_n, sig_np1).astype(batch.dtype) * distance(online, target, metric,
                                                                               feature_fn=feature_fn)
    return jnp.mean(losses), {"losses": losses, "n": n, "t_n": t_n, "t_np1": t_np1}
