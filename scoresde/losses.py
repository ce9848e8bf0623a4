"""Training losses (pure functions): continuous DSM, discrete DDPM / SMLD, flow matching, EDM.

Each loss is ``loss(fn, sde, batch, key, ...) -> (scalar, aux)`` with ``batch`` of shape ``(B, ...)``.
Weightings, importance sampling and the Gaussian oracles: ``docs/losses.md``.

Examples:
    >>> from scoresde import sde as sde_lib, analytic
    >>> vp = sde_lib.VPSDE()
    >>> gm = analytic.GaussianMixture(jnp.zeros((1, 2)), jnp.ones((1,)))
    >>> batch = gm.sample(jax.random.key(0), 64)
    >>> loss, aux = continuous_dsm_loss(gm.score_fn(vp), vp, batch, jax.random.key(1))
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from scoresde import sde as sde_lib
from scoresde.sde import batch_mul

__all__ = [
    "continuous_dsm_loss",
    "ddpm_loss",
    "smld_loss",
    "likelihood_importance_sampler",
    "gaussian_dsm_minimum",
    "flow_matching_loss",
    "edm_loss",
    "gaussian_flow_matching_minimum",
]


def _reduce(x, reduce_mean: bool):
    x = x.reshape(x.shape[0], -1)
    return jnp.mean(x, axis=-1) if reduce_mean else 0.5 * jnp.sum(x, axis=-1)


class LikelihoodImportanceSampler:
    """Samples ``t ∈ [eps, T]`` with density ∝ ``g(t)² / sigma(t)²`` (Song et al. 2021b, Sec. 5).

    The inverse CDF is tabulated once, ``num_points`` nodes geometric in ``t``; ``normaliser`` is
    ``Z = ∫ g²/σ² dt`` (``docs/losses.md``).

    Raises:
        ValueError: unless ``0 < eps < T``.
    """

    def __init__(self, sde, eps: float = 1e-5, num_points: int = 4096):
        if not 0 < eps < sde.T:
            raise ValueError(f"eps must lie in (0, T={sde.T}); got {eps}")
        t = np.exp(np.linspace(np.log(eps), np.log(sde.T), num_points))
        tj = jnp.asarray(t, dtype=jnp.float32)
        g2 = np.asarray(sde.sde(jnp.zeros((num_points, 1)), tj)[1], np.float64) ** 2
        s2 = np.asarray(sde.sigma(tj), np.float64) ** 2
        dens = g2 / s2
        # ∫ f dt = ∫ f t d(log t)
        integrand = dens * t
        cdf = np.concatenate([[0.0], np.cumsum(0.5 * (integrand[1:] + integrand[:-1]) * np.diff(np.log(t)))])
        self.normaliser = float(cdf[-1])
        self._cdf = cdf / cdf[-1]
        self._t = t
        self.eps, self.T = eps, sde.T

    def sample(self, key, shape):
        u = jax.random.uniform(key, shape)
        return jnp.interp(u, jnp.asarray(self._cdf, jnp.float32), jnp.asarray(self._t, jnp.float32))


def likelihood_importance_sampler(sde, eps: float = 1e-5) -> LikelihoodImportanceSampler:
    """The importance sampler of ``t`` for the likelihood-weighted loss."""
    return LikelihoodImportanceSampler(sde, eps)


def continuous_dsm_loss(
    score_fn: Callable,
    sde,
    batch: jax.Array,
    key: jax.Array,
    *,
    reduce_mean: bool = True,
    likelihood_weighting: bool = False,
    importance_sampling: bool = False,
    snr_truncation: bool = False,
    eps: float = 1e-5,
    t_sampler: LikelihoodImportanceSampler | None = None,
):
    """Continuous denoising score matching ``E λ(t) ||s(x_t, t) + z/σ||²`` (Song et al. 2021, eq. 7).

    ``λ = σ²`` (reference default) or ``g²`` (Song et al. 2021b, Thm. 1), optionally with ``t`` importance
    sampled (``docs/losses.md``). ``λ = σ² max(1, σ²/α²)`` with ``snr_truncation``: in terms of the data
    prediction ``x̂₀ = (x_t + σ² s) / α`` this is ``max(SNR, 1) ||x̂₀ - x₀||²``, Salimans & Ho's (2022)
    "truncated SNR" weighting (google-research ``diffusion_distillation``, ``mean_loss_weight_type='snr_trunc'``).

    Args:
        score_fn: the model's ``score_fn(x, t)``.
        sde: a linear SDE.
        batch: data ``(B, ...)``.
        key: PRNG key.
        reduce_mean: mean over dimensions if True, else ``0.5 * sum`` (reference semantics).
        likelihood_weighting: use the weighting ``g²`` instead of ``σ²``.
        importance_sampling: sample ``t`` ∝ ``g²/σ²`` (only with likelihood weighting).
        snr_truncation: multiply the ``σ²`` weighting by ``max(1, σ²/α²)`` (not with likelihood weighting).
        eps: smallest time sampled.
        t_sampler: a prebuilt :class:`LikelihoodImportanceSampler` (else built while tracing).

    Returns:
        ``(loss, aux)`` where ``aux`` holds the per-example ``losses`` and the sampled ``t``.

    Raises:
        ValueError: if ``importance_sampling`` is set without ``likelihood_weighting``, or ``snr_truncation`` with it.
    """
    if importance_sampling and not likelihood_weighting:
        raise ValueError("importance_sampling=True needs likelihood_weighting=True")
    if snr_truncation and likelihood_weighting:
        raise ValueError(
            "snr_truncation=True is a variant of the sigma^2 weighting; it needs likelihood_weighting=False"
        )
    b = batch.shape[0]
    key_t, key_z = jax.random.split(key)
    if importance_sampling:
        sampler = t_sampler or likelihood_importance_sampler(sde, eps)
        t = sampler.sample(key_t, (b,))
    else:
        t = jax.random.uniform(key_t, (b,), minval=eps, maxval=sde.T)
    z = jax.random.normal(key_z, batch.shape, dtype=batch.dtype)
    mean, std = sde.marginal_prob(batch, t)
    perturbed = mean + batch_mul(std, z)
    score = score_fn(perturbed, t)
    if not likelihood_weighting:
        losses = _reduce(jnp.square(batch_mul(std, score) + z), reduce_mean)
        if snr_truncation:
            losses = losses * jnp.maximum(1.0, jnp.square(std / sde.alpha(t)))
    elif importance_sampling:
        # Z / (T - eps) makes it estimate the uniform-t objective (docs/losses.md)
        losses = _reduce(jnp.square(batch_mul(std, score) + z), reduce_mean) * (sampler.normaliser / (sde.T - eps))
    else:
        g2 = sde.sde(jnp.zeros_like(batch), t)[1] ** 2
        losses = _reduce(jnp.square(score + batch_mul(1.0 / std, z)), reduce_mean) * g2
    return jnp.mean(losses), {"losses": losses, "t": t}


def ddpm_loss(net_fn: Callable, sde, batch, key, *, reduce_mean: bool = True):
    """The DDPM objective ``||eps_θ(sqrt(ᾱ_n) x + sqrt(1-ᾱ_n) z, n) - z||²`` with ``n ~ U{0..N-1}``.

    ``net_fn(x, labels)`` is the raw network, fed the integer step ``n`` (the discrete VP convention).

    Raises:
        ValueError: unless ``sde`` is a :class:`~scoresde.sde.VPSDE`.
    """
    if not isinstance(sde, sde_lib.VPSDE):
        raise ValueError(f"the DDPM loss needs a VPSDE; got {type(sde).__name__}")
    key_n, key_z = jax.random.split(key)
    n = jax.random.randint(key_n, (batch.shape[0],), 0, sde.N)
    z = jax.random.normal(key_z, batch.shape, dtype=batch.dtype)
    a = jnp.asarray(sde.sqrt_alphas_cumprod, batch.dtype)[n]
    s = jnp.asarray(sde.sqrt_1m_alphas_cumprod, batch.dtype)[n]
    perturbed = batch_mul(a, batch) + batch_mul(s, z)
    out = net_fn(perturbed, n)
    losses = _reduce(jnp.square(out - z), reduce_mean)
    return jnp.mean(losses), {"losses": losses, "labels": n}


def smld_loss(net_fn: Callable, sde, batch, key, *, reduce_mean: bool = False):
    """The SMLD / NCSN objective ``σ_n² ||s_θ(x + σ_n z, n) + z/σ_n||²`` with ``n ~ U{0..N-1}``.

    Label 0 is the largest noise level (the discrete VE convention).

    Raises:
        ValueError: unless ``sde`` is a :class:`~scoresde.sde.VESDE`.
    """
    if not isinstance(sde, sde_lib.VESDE):
        raise ValueError(f"the SMLD loss needs a VESDE; got {type(sde).__name__}")
    key_n, key_z = jax.random.split(key)
    n = jax.random.randint(key_n, (batch.shape[0],), 0, sde.N)
    sigmas = jnp.asarray(sde.discrete_sigmas[::-1].copy(), batch.dtype)[n]
    z = jax.random.normal(key_z, batch.shape, dtype=batch.dtype)
    noise = batch_mul(sigmas, z)
    score = net_fn(batch + noise, n)
    target = batch_mul(-1.0 / sigmas**2, noise)
    losses = _reduce(jnp.square(score - target), reduce_mean) * sigmas**2
    return jnp.mean(losses), {"losses": losses, "labels": n}


def gaussian_dsm_minimum(sde, variances, eps: float = 1e-5, num_points: int = 20001) -> float:
    """Minimum of the σ²-weighted, mean-reduced DSM loss for Gaussian data of variances ``variances``.

    A test oracle, by quadrature (``docs/losses.md``).
    """
    t = np.linspace(eps, sde.T, num_points)
    tj = jnp.asarray(t, jnp.float32)
    a2 = np.asarray(sde.alpha(tj), np.float64) ** 2
    s2 = np.asarray(sde.sigma(tj), np.float64) ** 2
    v = np.asarray(variances, np.float64).reshape(-1)
    per_t = np.mean(a2[:, None] * v[None] / (a2[:, None] * v[None] + s2[:, None]), axis=-1)
    return float(np.trapezoid(per_t, t) / (sde.T - eps))


def _flow_times(key, b, dtype, time_sampling, logit_mean, logit_std):
    if time_sampling == "uniform":
        return jax.random.uniform(key, (b,), dtype)
    if time_sampling == "logit_normal":
        return jax.nn.sigmoid(logit_mean + logit_std * jax.random.normal(key, (b,), dtype))
    raise ValueError(f"unknown time_sampling {time_sampling!r}; expected one of: uniform, logit_normal")


def flow_matching_loss(
    velocity_fn: Callable,
    batch,
    key,
    *,
    noise=None,
    time_sampling: str = "uniform",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    reduce_mean: bool = True,
):
    """Conditional flow matching ``E ||v(x_t, t) - (z - x_0)||²``, ``x_t = (1 - t) x_0 + t z``.

    Lipman et al. 2023, eq. 23 with ``sigma_min = 0``; Liu et al. 2023, eq. 1.

    Args:
        velocity_fn: ``velocity_fn(x, t) -> v`` (the network in the ``flow_velocity`` convention).
        batch: data ``x_0``, ``(B, ...)``.
        key: PRNG key.
        noise: optional ``z`` paired with ``batch`` (a reflow coupling); independent ``N(0, I)`` if ``None``.
        time_sampling: ``uniform`` or ``logit_normal`` (``t = sigmoid(m + s n)``, Esser et al. 2024, eq. 19).
        logit_mean, logit_std: the logit-normal's ``m`` and ``s``.
        reduce_mean: mean over dimensions, else ``0.5 * sum``.

    Returns:
        ``(loss, aux)`` with per-example ``losses`` and the sampled ``t``.

    Raises:
        ValueError: for an unknown ``time_sampling``.
    """
    key_t, key_z = jax.random.split(key)
    t = _flow_times(key_t, batch.shape[0], batch.dtype, time_sampling, logit_mean, logit_std)
    z = jax.random.normal(key_z, batch.shape, batch.dtype) if noise is None else noise
    x_t = batch_mul(1.0 - t, batch) + batch_mul(t, z)
    losses = _reduce(jnp.square(velocity_fn(x_t, t) - (z - batch)), reduce_mean)
    return jnp.mean(losses), {"losses": losses, "t": t}


def gaussian_flow_matching_minimum(variances, num_points: int = 200001) -> float:
    """Minimum of the mean-reduced, uniform-t flow-matching loss for Gaussian data (``docs/losses.md``)."""
    t = np.linspace(0.0, 1.0, num_points)
    v = np.asarray(variances, np.float64).reshape(-1)
    per_t = np.mean(v[None] / ((1 - t[:, None]) ** 2 * v[None] + t[:, None] ** 2), axis=-1)
    return float(np.trapezoid(per_t, t))


def edm_loss(
    denoiser_fn: Callable,
    batch,
    key,
    *,
    sigma_data: float = 0.5,
    p_mean: float = -1.2,
    p_std: float = 1.2,
    reduce_mean: bool = True,
):
    """EDM's loss ``lambda(sigma) ||D(x_0 + sigma n, sigma) - x_0||²``, ``ln sigma ~ N(p_mean, p_std²)``.

    Karras et al. 2022, eq. 8 and Table 1. ``denoiser_fn(x, sigma)`` is the preconditioned denoiser on
    :class:`~scoresde.sde.EDMSDE` (``docs/losses.md``).

    Returns:
        ``(loss, aux)`` with per-example ``losses`` and the sampled ``sigma``.
    """
    key_s, key_n = jax.random.split(key)
    sigma = jnp.exp(p_mean + p_std * jax.random.normal(key_s, (batch.shape[0],), batch.dtype))
    n = jax.random.normal(key_n, batch.shape, batch.dtype)
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    losses = _reduce(jnp.square(denoiser_fn(batch + batch_mul(sigma, n), sigma) - batch), reduce_mean) * weight
    return jnp.mean(losses), {"losses": losses, "sigma": sigma}
