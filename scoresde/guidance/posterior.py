"""Training-free guidance through the denoiser: DPS, ΠGDM, universal and embedding guidance, self-recurrence.

Every guide is a score transformer ``score_fn(x, t) -> score + guidance term`` (an :class:`equinox.Module`
whose scales and targets are traced array leaves: a new scale does not recompile), built on Tweedie's
denoiser ``x̂₀(x_t) = (x_t + sigma_t² s(x_t, t)) / alpha_t`` and its vector–Jacobian product. Each guide has
``evaluations_per_call`` (a forward pass counts 1, a VJP through the network 1 more). The terms, their
papers and equations, and the NFE rule: ``docs/posterior_guidance.md``.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from scoresde import sampling
from scoresde.parameterization import score_to_denoiser
from scoresde.sampling import fast
from scoresde.sampling.grids import time_grid
from scoresde.sde import batch_mul

__all__ = [
    "DPSGuidedScore",
    "PiGDMGuidedScore",
    "UniversalGuidedScore",
    "denoiser_vjp",
    "dps_guidance",
    "embedding_guidance",
    "gaussian_nll_loss",
    "negative_cosine_loss",
    "pigdm_guidance",
    "pigdm_r2",
    "recurrent_sample",
    "universal_guidance",
]


def denoiser_vjp(score_fn, sde, x, t):
    """``(score, x̂₀, vjp)`` at ``(x, t)``: one forward pass; ``vjp(v) = Jᵀ v`` is the second evaluation."""
    alpha, sigma = sde.alpha(t), sde.sigma(t)

    def x0_of(xx):
        s = score_fn(xx, t)
        return score_to_denoiser(s, xx, alpha, sigma), s

    x0, vjp, score = jax.vjp(x0_of, x, has_aux=True)
    return score, x0, lambda v: vjp(v)[0]


def pigdm_r2(sde, t, data_var):
    """``r_t² = c sigma_t² / (alpha_t² c + sigma_t²)``: ``Cov[x₀ | x_t] / I`` for ``N(μ, c I)`` data."""
    a2, s2 = sde.alpha(t) ** 2, sde.sigma(t) ** 2
    return data_var * s2 / (a2 * data_var + s2)


def _safe_inverse_norm2(r):
    n2 = jnp.sum(r.reshape(r.shape[0], -1) ** 2, axis=-1)
    return jnp.where(n2 > 0, 1.0 / jnp.where(n2 > 0, n2, 1.0), 0.0)


class DPSGuidedScore(eqx.Module):
    """``score + DPS term``; see :func:`dps_guidance`."""

    score_fn: Callable
    sde: object
    operator: object
    y: jax.Array
    sigma_y: jax.Array
    scale: jax.Array
    weighting: str = eqx.field(static=True, default="gaussian")
    evaluations_per_call: int = eqx.field(static=True, default=2)

    def __call__(self, x, t):
        alpha, sigma = self.sde.alpha(t), self.sde.sigma(t)

        def ax0_of(xx):
            s = self.score_fn(xx, t)
            return self.operator.forward(score_to_denoiser(s, xx, alpha, sigma)), s

        ax0, vjp, score = jax.vjp(ax0_of, x, has_aux=True)
        r = self.y.astype(x.dtype) - ax0
        if self.weighting == "gaussian":
            cot = r / (self.sigma_y.astype(x.dtype) ** 2)
        else:
            cot = batch_mul(_safe_inverse_norm2(r), r)
        return score + self.scale.astype(x.dtype) * vjp(cot)[0]


class PiGDMGuidedScore(eqx.Module):
    """``score + ΠGDM term``; see :func:`pigdm_guidance`."""

    score_fn: Callable
    sde: object
    operator: object
    y: jax.Array
    sigma_y: jax.Array
    scale: jax.Array
    data_var: jax.Array
    cg_steps: int = eqx.field(static=True, default=50)
    jacobian: str = eqx.field(static=True, default="network")

    @property
    def evaluations_per_call(self) -> int:
        return 2 if self.jacobian == "network" else 1

    def __call__(self, x, t):
        dtype = x.dtype
        r2 = pigdm_r2(self.sde, t, self.data_var.astype(dtype))
        if self.jacobian == "network":
            score, x0, vjp = denoiser_vjp(self.score_fn, self.sde, x, t)
        else:  # Tweedie: J = (alpha / sigma²) Cov[x₀ | x_t] = (alpha r_t² / sigma²) I, no pass through the network
            score = self.score_fn(x, t)
            alpha, sigma = self.sde.alpha(t), self.sde.sigma(t)
            x0 = score_to_denoiser(score, x, alpha, sigma)
            gain = alpha * r2 / sigma**2
            vjp = lambda v: batch_mul(gain, v)  # noqa: E731
        r = self.y.astype(dtype) - self.operator.forward(x0)
        u = self.operator.solve_gram(r, r2, self.sigma_y.astype(dtype) ** 2, cg_steps=self.cg_steps)
        return score + self.scale.astype(dtype) * vjp(self.operator.adjoint(u))


def _check_weighting(weighting, sigma_y):
    if weighting not in ("gaussian", "normalized"):
        raise ValueError(f"unknown DPS weighting {weighting!r}; expected 'gaussian' or 'normalized'")
    if weighting == "gaussian" and not isinstance(sigma_y, jax.core.Tracer) and not float(sigma_y) > 0:
        raise ValueError(
            f"DPS weighting 'gaussian' divides by sigma_y²; got sigma_y={sigma_y!r} "
            "(use weighting='normalized' for noiseless measurements)"
        )


def dps_guidance(score_fn, sde, operator, y, *, sigma_y, scale=1.0, weighting: str = "gaussian") -> DPSGuidedScore:
    """Diffusion posterior sampling (Chung et al. 2023, eq. 16, Alg. 1) as a score transformer.

    The term per ``weighting`` is in ``docs/posterior_guidance.md``.

    Args:
        score_fn: the unconditional score ``score_fn(x, t)``.
        sde: the forward SDE.
        operator: any operator of :mod:`scoresde.guidance.inverse` (a differentiable ``forward`` is all it needs).
        y: measurements ``(B, ...)``.
        sigma_y: measurement-noise std (traced).
        scale: guidance scale (``ζ'`` of the paper for ``"normalized"``; traced).
        weighting: ``"gaussian"`` (``1 / sigma_y²``) or ``"normalized"`` (``1 / ‖y - A x̂₀‖²``).

    Raises:
        ValueError: for an unknown weighting, or ``"gaussian"`` with ``sigma_y = 0``.
    """
    _check_weighting(weighting, sigma_y)
    return DPSGuidedScore(
        score_fn,
        sde,
        operator,
        jnp.asarray(y),
        jnp.asarray(sigma_y, jnp.float32),
        jnp.asarray(scale, jnp.float32),
        weighting,
    )


def pigdm_guidance(
    score_fn, sde, operator, y, *, sigma_y, scale=1.0, data_var=1.0, cg_steps: int = 50, jacobian: str = "network"
) -> PiGDMGuidedScore:
    """ΠGDM (Song et al. 2023, eq. 7–8) as a score transformer; ``docs/posterior_guidance.md``.

    Needs a linear operator (``adjoint``, ``solve_gram``).

    Args:
        score_fn, sde, operator, y, sigma_y, scale: as :func:`dps_guidance` (``sigma_y = 0`` is allowed).
        data_var: ``c`` in ``r_t² = c sigma_t² / (alpha_t² c + sigma_t²)`` (traced).
        cg_steps: conjugate-gradient iterations for operators without a closed-form ``solve_gram``.
        jacobian: ``"network"`` (the paper: ``Jᵀ`` by a vector–Jacobian product through the score network,
            2 evaluations per call) or ``"isotropic"`` (``J = (alpha_t r_t² / sigma_t²) I``, 1 evaluation per
            call; ``docs/posterior_guidance.md``).

    Returns:
        A :class:`PiGDMGuidedScore`.

    Raises:
        ValueError: for an unknown ``jacobian``.
    """
    if jacobian not in ("network", "isotropic"):
        raise ValueError(f"unknown ΠGDM jacobian {jacobian!r}; expected 'network' or 'isotropic'")
    return PiGDMGuidedScore(
        score_fn,
        sde,
        operator,
        jnp.asarray(y),
        jnp.asarray(sigma_y, jnp.float32),
        jnp.asarray(scale, jnp.float32),
        jnp.asarray(data_var, jnp.float32),
        cg_steps,
        jacobian,
    )


def gaussian_nll_loss(prediction, target, sigma_y):
    """``‖target - prediction‖² / (2 sigma_y²)`` per example: the Gaussian negative log-likelihood up to a constant."""
    d = (target - prediction).reshape(prediction.shape[0], -1)
    return jnp.sum(d * d, axis=-1) / (2.0 * sigma_y**2)


def negative_cosine_loss(embedding, target):
    """``-cos(embedding, target)`` per example; ``target`` is ``(E,)`` or ``(B, E)``. Safe at a zero embedding."""
    e = embedding.reshape(embedding.shape[0], -1)
    c = jnp.broadcast_to(target.reshape(-1, e.shape[1]), e.shape).astype(e.dtype)
    ne = jnp.sqrt(jnp.sum(e * e, axis=-1) + 1e-12)
    nc = jnp.sqrt(jnp.sum(c * c, axis=-1) + 1e-12)
    return -jnp.sum(e * c, axis=-1) / (ne * nc)


class UniversalGuidedScore(eqx.Module):
    """``score - scale ∇ₓ ℓ(c, f(x̂₀)) + alpha Δ / sigma²``; see :func:`universal_guidance`."""

    score_fn: Callable
    sde: object
    loss_fn: Callable
    predictor: Callable
    target: jax.Array
    scale: jax.Array
    backward_lr: jax.Array
    backward_steps: int = eqx.field(static=True, default=0)
    evaluations_per_call: int = eqx.field(static=True, default=2)

    def _loss(self, x0):
        return jnp.sum(self.loss_fn(self.predictor(x0), self.target))

    def __call__(self, x, t):
        score, x0, vjp = denoiser_vjp(self.score_fn, self.sde, x, t)
        out = score - self.scale.astype(x.dtype) * vjp(jax.grad(self._loss)(x0))
        if self.backward_steps:
            x0c = jax.lax.stop_gradient(x0)
            lr = self.backward_lr.astype(x.dtype)

            def body(_, delta):
                return delta - lr * jax.grad(lambda d: self._loss(x0c + d))(delta)

            delta = jax.lax.fori_loop(0, self.backward_steps, body, jnp.zeros_like(x0c))
            alpha, sigma = self.sde.alpha(t), self.sde.sigma(t)
            out = out + batch_mul(alpha / sigma**2, delta)
        return out


def universal_guidance(
    score_fn, sde, loss_fn, target, *, scale=1.0, predictor=None, backward_steps: int = 0, backward_lr=0.1
) -> UniversalGuidedScore:
    """Universal guidance (Bansal et al. 2023, Alg. 1): forward and backward guidance as a score transformer.

    The score terms are derived in ``docs/posterior_guidance.md``.

    Args:
        score_fn: the unconditional score ``score_fn(x, t)``.
        sde: the forward SDE.
        loss_fn: ``loss_fn(f(x̂₀), target) -> (B,)`` per-example losses ``ℓ(c, f(x̂₀))``, differentiable.
        target: the condition ``c`` (an array, traced).
        scale: forward-guidance scale (``s(t) = scale · sigma_t`` on ``ε``; traced). 0 disables it.
        predictor: ``f``, a differentiable network on ``x̂₀`` batches (identity if ``None``).
        backward_steps: ``k``, gradient steps on ``Δx̂₀`` (static; 0 disables backward guidance).
        backward_lr: their step size (traced).

    Returns:
        A batched ``score_fn(x, t)``; 2 evaluations per call (``f``'s own passes are not counted).

    Raises:
        ValueError: if ``backward_steps`` is not a non-negative int.
    """
    if not isinstance(backward_steps, int) or backward_steps < 0:
        raise ValueError(f"backward_steps must be a non-negative int; got {backward_steps!r}")
    predictor = predictor if predictor is not None else _identity
    return UniversalGuidedScore(
        score_fn,
        sde,
        loss_fn,
        predictor,
        jnp.asarray(target),
        jnp.asarray(scale, jnp.float32),
        jnp.asarray(backward_lr, jnp.float32),
        backward_steps,
    )


def _identity(x):
    return x


def embedding_guidance(
    score_fn, sde, embed_fn, target_embedding, *, scale=1.0, backward_steps: int = 0, backward_lr=0.1
) -> UniversalGuidedScore:
    """Embedding guidance: ``ℓ = -cos(embed_fn(x̂₀), target_embedding)`` through :func:`universal_guidance`."""
    return universal_guidance(
        score_fn,
        sde,
        negative_cosine_loss,
        target_embedding,
        scale=scale,
        predictor=embed_fn,
        backward_steps=backward_steps,
        backward_lr=backward_lr,
    )


def recurrent_sample(
    score_fn,
    sde,
    shape,
    key,
    *,
    recurrence: int,
    method: str = "ddim",
    steps: int = 50,
    eps=None,
    x_init=None,
    grid: str = "uniform_t",
    **solver_options,
):
    """Universal guidance's self-recurrence (Bansal et al. 2023, Algorithm 1, loop over ``r``).

    Each step of the fixed-grid solver is taken ``recurrence`` times, re-noising back to its start between
    repeats (``docs/posterior_guidance.md``); ``recurrence = 1`` is the plain solver.

    Args:
        score_fn: a (guided) score; if it has ``evaluations_per_call``, the NFE is multiplied by it.
        sde, shape, key, eps, x_init: as :func:`scoresde.sampling.sample`.
        recurrence: ``r >= 1`` (static).
        method: ``ddim``, ``dpm_solver``, ``dpm_solver++`` or ``edm_heun``.
        steps, grid, **solver_options: the solver's grid and options (``eta``, ``order``, ...).

    Returns:
        ``(samples, nfe)``.

    Raises:
        ValueError: for an unknown ``method`` or a ``recurrence`` that is not a positive int.
    """
    solvers = {
        "ddim": fast.ddim,
        "dpm_solver": fast.dpm_solver,
        "dpm_solver++": fast.dpm_solver_pp,
        "edm_heun": fast.edm_heun,
    }
    if method not in solvers:
        raise ValueError(f"recurrent_sample supports {', '.join(solvers)}; got method {method!r}")
    if not isinstance(recurrence, int) or recurrence < 1:
        raise ValueError(f"recurrence must be a positive int; got {recurrence!r}")
    eps = sampling.default_eps(sde) if eps is None else eps
    x, nfe = _recurrent_jit(
        score_fn,
        sde,
        tuple(shape),
        key,
        x_init,
        jnp.asarray(eps),
        solvers[method],
        recurrence,
        steps,
        grid,
        tuple(sorted(solver_options.items())),
    )
    return x, nfe * getattr(score_fn, "evaluations_per_call", 1)


@eqx.filter_jit
def _recurrent_jit(score_fn, sde, shape, key, x_init, eps, solver, recurrence, steps, grid, options):
    k_prior, k_loop = jax.random.split(key)
    x = sde.prior_sampling(k_prior, shape) if x_init is None else x_init
    ts = time_grid(sde, steps, eps.astype(x.dtype), kind=grid, dtype=x.dtype)
    b = x.shape[0]

    def step(carry, i):
        x, nfe = carry
        s, t = ts[i], ts[i + 1]
        pair = jnp.stack([s, t])

        def repeat(j, c):
            xs, _, nfe = c
            kj = jax.random.fold_in(jax.random.fold_in(k_loop, i), j)
            xt, nfe = solver(score_fn, sde, xs, pair, kj, nfe, **dict(options))
            a_s, s_s = sde.alpha(jnp.full((b,), s, x.dtype)), sde.sigma(jnp.full((b,), s, x.dtype))
            a_t, s_t = sde.alpha(jnp.full((b,), t, x.dtype)), sde.sigma(jnp.full((b,), t, x.dtype))
            ratio = a_s / a_t
            z = jax.random.normal(jax.random.fold_in(kj, 1), xs.shape, xs.dtype)
            renoised = batch_mul(ratio, xt) + batch_mul(jnp.sqrt(jnp.maximum(s_s**2 - (ratio * s_t) ** 2, 0.0)), z)
            return renoised, xt, nfe

        _, xt, nfe = jax.lax.fori_loop(0, recurrence, repeat, (x, x, nfe))
        return (xt, nfe), None

    (x, nfe), _ = jax.lax.scan(step, (x, jnp.zeros((), jnp.int32)), jnp.arange(steps))
    return x, nfe
