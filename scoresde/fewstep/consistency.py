"""Consistency models: parameterisation, discretisation, curricula, and the CD / CT losses (pure math).

Song et al., "Consistency Models", ICML 2023 (CM), and Song & Dhariwal, "Improved Techniques for Training
Consistency Models", ICLR 2024 (iCT), written once for every linear SDE in Karras et al.'s scaled coordinates.
Derivations and the paper's choices: ``docs/consistency.md``.

Examples:
    >>> from scoresde import sde as sde_lib
    >>> vp = sde_lib.VPSDE()
    >>> f = consistency_fn(lambda x, labels: jnp.zeros_like(x), vp, eps=1e-3)
    >>> x = jnp.ones((4, 2))
    >>> bool(jnp.all(f(x, jnp.full((4,), 1e-3)) == x))
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtr, ndtri

from scoresde.parameterization import time_labels
from scoresde.sampling import fast
from scoresde.sampling.grids import edm_sigma, time_grid
from scoresde.sde import batch_mul

METRICS = ("l2", "l1", "pseudo_huber")
REDUCTIONS = ("sum", "mean")
TEACHER_SOLVERS = ("euler", "heun", "dpm_solver-2")
WEIGHTINGS = ("uniform", "icm")
NOISE_SCHEDULES = ("uniform", "lognormal")

__all__ = [
    "METRICS",
    "REDUCTIONS",
    "TEACHER_SOLVERS",
    "WEIGHTINGS",
    "NOISE_SCHEDULES",
    "boundary_coefficients",
    "consistency_fn",
    "karras_sigma",
    "karras_grid",
    "ict_num_scales",
    "CT_CONVENTIONS",
    "ct_num_scales",
    "ct_ema_decay",
    "ema_update",
    "distance",
    "teacher_step",
    "one_sample_score",
    "sample_indices",
    "cd_loss",
    "ct_loss",
]


# ------------------------------------------------------------------------------ parameterisation


def boundary_coefficients(sigma, sigma_min, sigma_data=0.5):
    """``(c_skip, c_out, c_in)`` at scaled noise level ``sigma`` (CM App. C; ``docs/consistency.md``).

    At ``sigma == sigma_min``, ``c_skip = 1`` and ``c_out = 0`` exactly in floating point.
    """
    d = sigma - sigma_min
    c_skip = sigma_data**2 / (d * d + sigma_data**2)
    c_out = sigma_data * d / jnp.sqrt(sigma_data**2 + sigma * sigma)
    c_in = 1.0 / jnp.sqrt(sigma * sigma + sigma_data**2)
    return c_skip, c_out, c_in


def consistency_fn(net_fn: Callable, sde, eps, *, sigma_data: float = 0.5, time_label: str = "999t") -> Callable:
    """Wraps a raw network ``F = net_fn(x, labels)`` into a consistency function ``f(x, t)``.

    ``f(x, t) = alpha(eps) [c_skip x̄ + c_out F(c_in x̄, label(t))]``, ``x̄ = x / alpha(t)`` (CM eq. 3 and
    App. C; ``docs/consistency.md``). ``f(x, eps) = x`` holds exactly.

    Args:
        net_fn: the network, ``net_fn(x, labels) -> F`` of the shape of ``x``.
        sde: a linear SDE from :mod:`scoresde.sde`.
        eps: the boundary time (a float or scalar array).
        sigma_data: ``σ_d`` of the data (0.5 for images in ``[-1, 1]``, the paper's value).
        time_label: the network's time conditioning, one of :data:`scoresde.parameterization.TIME_LABELS`.

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
        return batch_mul(c_skip * (a_eps / a_t), x) + batch_mul(a_eps * c_out, out)

    return f


# ------------------------------------------------------------------------------ discretisation and curricula


def karras_sigma(sde, i, num_scales, eps, rho=7.0):
    """Point ``i`` of the increasing ρ-grid of ``num_scales`` scaled noise levels from ``σ̃(eps)`` to ``σ̃(T)``.

    CM eq. 5. ``i`` and ``num_scales`` may be traced (arrays of any shape).
    """
    dtype = jnp.result_type(float)
    lo = edm_sigma(sde, jnp.asarray(eps, dtype)) ** (1.0 / rho)
    hi = edm_sigma(sde, jnp.asarray(sde.T, dtype)) ** (1.0 / rho)
    u = jnp.asarray(i, dtype) / (jnp.asarray(num_scales, dtype) - 1.0)
    return (lo + u * (hi - lo)) ** rho


def _t_of_sigma(sde, sig):
    return sde.t_from_log_snr(-2.0 * jnp.log(sig))


def karras_grid(sde, num_scales: int, eps, *, rho=7.0, dtype=jnp.float32):
    """The ``num_scales`` increasing times ``eps = t_1 < ... < t_N = T`` of the ρ-grid (CM eq. 5).

    ``time_grid(kind="edm")`` read in increasing order, both endpoints exact.

    Raises:
        ValueError: if ``num_scales`` is not an int >= 2.
    """
    if not (isinstance(num_scales, int) and num_scales >= 2):
        raise ValueError(f"num_scales must be an int >= 2 (the grid's number of points); got {num_scales!r}")
    return time_grid(sde, num_scales - 1, eps, kind="edm", rho=rho, dtype=dtype)[::-1]


def ict_num_scales(step, total_steps: int, s0: int = 10, s1: int = 1280):
    """iCT's doubling curriculum ``N(k) = min(s0 2^{floor(k / K')}, s1) + 1`` (iCT eq. 9).

    ``K' = floor(K / (log2(s1/s0) + 1))``. ``step`` may be a Python int or a traced int array.

    Raises:
        ValueError: unless ``1 <= s0 <= s1`` and ``total_steps >= 1``.
    """
    if not (s1 >= s0 >= 1 and total_steps >= 1):
        raise ValueError(f"need 1 <= s0 <= s1 and total_steps >= 1; got s0={s0}, s1={s1}, total_steps={total_steps}")
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


def distance(x, y, metric="l2", *, feature_fn: Callable | None = None, huber_c=None, reduction="sum"):
    """Per-example distance ``d(x, y)``, shape ``(B,)``.

    Args:
        x, y: batches of the same shape ``(B, ...)``.
        metric: ``"l2"`` (squared L2 ``||x - y||²``, the paper's ``L2``), ``"l1"`` (``||x - y||₁``),
            ``"pseudo_huber"`` (``sqrt(||x - y||² + c²) - c``, iCT Sec. 3.3), or a callable
            ``metric(x, y) -> (B,)`` for anything else (e.g. a complete LPIPS).
        feature_fn: optional ``feature_fn(x) -> (B, ...)`` applied to both arguments first: the hook for a
            learned perceptual metric such as LPIPS (not bundled; see ``docs/consistency.md``).
        huber_c: the pseudo-Huber ``c``; iCT's ``0.00054 sqrt(d)`` (``d`` elements per example) if ``None``.
        reduction: ``"sum"`` over an example's ``d`` elements, or ``"mean"`` (the sum / ``d``) for ``"l2"`` and
            ``"l1"``: openai/consistency_models_cifar10 ``jcm/losses.py`` averages (``jnp.mean`` over the
            flattened example), which scales the loss, and so the gradient, by ``1 / d``.

    Raises:
        ValueError: for an unknown metric or reduction, a mean of the pseudo-Huber metric, or mismatched shapes.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown metric reduction {reduction!r}; expected one of: {', '.join(REDUCTIONS)}")
    if x.shape != y.shape:
        raise ValueError(f"distance needs equal shapes; got {x.shape} and {y.shape}")
    if feature_fn is not None:
        x, y = feature_fn(x), feature_fn(y)
    if callable(metric):
        return metric(x, y)
    diff = (x - y).reshape(x.shape[0], -1)
    reduce = jnp.sum if reduction == "sum" else jnp.mean
    if metric == "l2":
        return reduce(diff * diff, axis=-1)
    if metric == "l1":
        return reduce(jnp.abs(diff), axis=-1)
    if metric == "pseudo_huber":
        if reduction != "sum":
            raise ValueError(
                f"the pseudo_huber metric is a function of the summed squares; got reduction={reduction!r}"
            )
        c = 0.00054 * jnp.sqrt(jnp.asarray(diff.shape[-1], diff.dtype)) if huber_c is None else huber_c
        return jnp.sqrt(jnp.sum(diff * diff, axis=-1) + c * c) - c
    raise ValueError(f"unknown consistency metric {metric!r}; expected one of: {', '.join(METRICS)} or a callable")


# ------------------------------------------------------------------------------ teacher step and CT's estimate


def teacher_step(score_fn: Callable, sde, x, t_from, t_to, solver: str = "heun", *, cond=None):
    """One probability-flow step per example from ``t_from`` to ``t_to`` (both ``(B,)``) with a project sampler.

    ``"euler"`` (DDIM, ``eta = 0``), ``"heun"`` (EDM) or ``"dpm_solver-2"``, ``vmap``-ed over the batch
    since every example has its own pair of times (``docs/consistency.md``). With ``cond`` (each example's
    condition, rows aligned with ``x``: class labels ``(B,)``, caption tokens ``(B, L)``, vectors ``(B, D)``) the
    teacher is ``score_fn(x, t, cond)`` and each example's step uses its own row: the flow of ``p_t(x | c)``.

    Returns:
        ``(x_to, nfe)`` with ``nfe`` the score evaluations per example (1, 2, 2).

    Raises:
        ValueError: for an unknown solver.
    """
    steppers = {
        "euler": lambda *a: fast.ddim(*a, eta=0.0),
        "heun": fast.edm_heun,
        "dpm_solver-2": lambda *a: fast.dpm_solver(*a, order=2),
    }
    if solver not in steppers:
        raise ValueError(f"unknown teacher solver {solver!r}; expected one of: {', '.join(TEACHER_SOLVERS)}")
    stepper = steppers[solver]
    key = jax.random.key(0)  # the deterministic steppers draw no noise

    def one(xi, s, t, ci):
        score = score_fn if ci is None else (lambda xx, tt: score_fn(xx, tt, ci[None]))
        y, n = stepper(score, sde, xi[None], jnp.stack([s, t]), key, jnp.zeros((), jnp.int32))
        return y[0], n

    x_to, nfe = jax.vmap(one)(x, t_from.astype(x.dtype), t_to.astype(x.dtype), cond)
    return x_to, nfe[0]


def one_sample_score(sde, x_t, x0, t):
    """CT's one-sample score estimate ``-(x_t - alpha(t) x0) / sigma(t)²`` (CM eq. 9 / Thm. 2).

    Unbiased for ``∇log p_t(x_t)`` over ``x0 ~ p(x0 | x_t)`` (``docs/consistency.md``).
    """
    return batch_mul(-1.0 / sde.sigma(t) ** 2, x_t - batch_mul(sde.alpha(t), x0))


# ------------------------------------------------------------------------------ losses


def sample_indices(sde, key, batch: int, num_scales, eps, *, rho=7.0, schedule="uniform", p_mean=-1.1, p_std=2.0):
    """Grid indices ``n ∈ {0, .., N-2}`` of the lower point of the pair ``(σ̃_n, σ̃_{n+1})``, shape ``(batch,)``.

    ``"uniform"``: ``n ~ U{0..N-2}`` (CD / CT); ``"lognormal"``: iCT eq. 10, drawn as the ρ-grid cell of a
    truncated lognormal ``σ̃`` so ``N`` may be traced (``docs/consistency.md``).

    Raises:
        ValueError: for an unknown ``schedule``.
    """
    if schedule == "uniform":
        return jax.random.randint(key, (batch,), 0, jnp.asarray(num_scales, jnp.int32) - 1)
    if schedule != "lognormal":
        raise ValueError(f"unknown noise schedule {schedule!r}; expected one of: {', '.join(NOISE_SCHEDULES)}")
    lo, hi = karras_sigma(sde, 0, num_scales, eps, rho), karras_sigma(sde, num_scales - 1, num_scales, eps, rho)
    c_lo, c_hi = ndtr((jnp.log(lo) - p_mean) / p_std), ndtr((jnp.log(hi) - p_mean) / p_std)
    u = jax.random.uniform(key, (batch,), minval=c_lo, maxval=c_hi)
    sig = jnp.exp(p_mean + p_std * ndtri(u))
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
    # the inverse map sigma -> t rounds; the grid's end points must be eps and T exactly
    t_n = jnp.where(n == 0, jnp.asarray(eps, t_n.dtype), t_n)
    t_np1 = jnp.where(n + 1 == jnp.asarray(num_scales) - 1, jnp.asarray(sde.T, t_np1.dtype), t_np1)
    return n, sig_n, sig_np1, t_n, t_np1


def cd_loss(
    consistency_fn: Callable,
    params,
    target_params,
    score_fn: Callable,
    sde,
    batch,
    key,
    *,
    num_scales,
    eps,
    rho=7.0,
    solver: str = "heun",
    metric="l2",
    feature_fn=None,
    weighting="uniform",
    schedule="uniform",
    reduction="sum",
    cond=None,
):
    """Consistency distillation ``E[λ d(f_θ(x_{t_{n+1}}, t_{n+1}), f_{θ⁻}(x̂_{t_n}, t_n))]`` (CM eq. 7, Alg. 2).

    ``x̂_{t_n}`` is one :func:`teacher_step` with ``score_fn`` from ``t_{n+1}`` to ``t_n`` on the ρ-grid.

    Args:
        consistency_fn: ``consistency_fn(params, x, t) -> x_eps``.
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
        metric, feature_fn, reduction: see :func:`distance`.
        weighting: ``"uniform"`` (``λ = 1``, the CD paper) or ``"icm"`` (``1 / (σ̃_{n+1} - σ̃_n)``).
        schedule: index sampling, see :func:`sample_indices`.
        cond: the batch's condition (rows aligned with ``batch``) for conditional distillation: the teacher is
            then ``score_fn(x, t, cond)`` (:func:`teacher_step`) and the student and its target
            ``consistency_fn(params, x, t, cond)``, all with the same condition, so ``f_θ(·, ·, c)`` learns the
            flow map of ``p(x | c)``; ``None``: all unconditional.

    Returns:
        ``(loss, aux)``; ``aux`` has per-example ``losses``, indices ``n``, times ``t_n``, ``t_np1``, the
        teacher's ``nfe`` per example and the ``target`` ``f_θ⁻(x̂_{t_n}, t_n)``.
    """
    b = batch.shape[0]
    k_n, k_z = jax.random.split(key)
    n, sig_n, sig_np1, t_n, t_np1 = _pair(sde, k_n, b, num_scales, eps, rho, schedule, -1.1, 2.0)
    t_n, t_np1 = t_n.astype(batch.dtype), t_np1.astype(batch.dtype)
    z = jax.random.normal(k_z, batch.shape, batch.dtype)
    x_np1 = batch_mul(sde.alpha(t_np1), batch) + batch_mul(sde.sigma(t_np1), z)
    x_n, nfe = teacher_step(score_fn, sde, x_np1, t_np1, t_n, solver, cond=cond)
    f = consistency_fn if cond is None else (lambda p, x, t: consistency_fn(p, x, t, cond))
    online = f(params, x_np1, t_np1)
    target = jax.lax.stop_gradient(f(target_params, jax.lax.stop_gradient(x_n), t_n))
    losses = _weight(weighting, sig_n, sig_np1).astype(batch.dtype) * distance(
        online, target, metric, feature_fn=feature_fn, reduction=reduction
    )
    aux = {"losses": losses, "n": n, "t_n": t_n, "t_np1": t_np1, "nfe": nfe, "target": target}
    return jnp.mean(losses), aux


def ct_loss(
    consistency_fn: Callable,
    params,
    target_params,
    sde,
    batch,
    key,
    *,
    num_scales,
    eps,
    rho=7.0,
    metric="pseudo_huber",
    feature_fn=None,
    weighting="icm",
    schedule="lognormal",
    p_mean=-1.1,
    p_std=2.0,
    reduction="sum",
):
    """Consistency training ``E[λ d(f_θ(α x + σ_{n+1} z, t_{n+1}), f_{θ⁻}(α x + σ_n z, t_n))]`` (CM eq. 10, Alg. 3).

    One ``z`` for both times, so no teacher is needed. The defaults are iCT's; the settings of the original
    CT are in ``docs/consistency.md``.

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
    losses = _weight(weighting, sig_n, sig_np1).astype(batch.dtype) * distance(
        online, target, metric, feature_fn=feature_fn, reduction=reduction
    )
    return jnp.mean(losses), {"losses": losses, "n": n, "t_n": t_n, "t_np1": t_np1}
