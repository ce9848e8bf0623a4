"""LSGM's variational bound on the data's negative log-likelihood through a latent score model.

Vahdat et al. 2021, eq. 2–3, each term in nats and bits/dim with the dequantisation and scaler rules of
:func:`scoresde.likelihood.bits_per_dim`. Derivation: ``docs/latent.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from scoresde import likelihood
from scoresde.latent.autoencoder import _LOG_2PI, DiagonalGaussian, _num_dims, _sum_except_batch

Array = jax.Array

__all__ = ["fit_decoder_std", "gaussian_decoder_nll", "LatentBound", "variational_bound"]


def fit_decoder_std(x: Array, x_rec: Array) -> Array:
    """The maximum-likelihood ``σ`` of a Gaussian decoder ``N(x; x̂, σ² I)``: ``sqrt(mean (x - x̂)²)``.

    Fit it on training data and hold it fixed for evaluation (``docs/latent.md``).
    """
    return jnp.sqrt(jnp.mean(jnp.square(x - x_rec)))


def gaussian_decoder_nll(x: Array, x_mean: Array, decoder_std) -> Array:
    """``-log N(x; x̂, σ² I)`` per example, ``(B,)`` nats."""
    var = jnp.square(jnp.asarray(decoder_std, x.dtype))
    return 0.5 * _sum_except_batch(jnp.square(x - x_mean) / var + jnp.log(var) + _LOG_2PI)


class LatentBound(NamedTuple):
    """Result of :func:`variational_bound`; every field ``(B,)`` per example, averaged over posterior samples.

    ``bits_per_dim = reconstruction_bpd + log_q_bpd + prior_bpd + offset_bpd``.

    Attributes:
        reconstruction: ``E_q[-log p(y | z)]`` nats (Gaussian decoder, :func:`gaussian_decoder_nll`).
        log_q: ``E_q[log q(z | y)]`` nats (Monte Carlo, at the same ``z`` as the other terms).
        prior: ``E_q[-log p_θ(c z) - d_z log c]`` nats, ``p_θ`` the latent model's probability-flow density.
        nats: their sum, a bound on ``-log p(y)``.
        reconstruction_bpd, log_q_bpd, prior_bpd: the three terms divided by ``D ln 2``.
        offset_bpd: ``b - Σ_i log₂ |s'(u_i)| / D`` (:func:`scoresde.likelihood.bpd_offset` for affine scalers).
        bits_per_dim: the bound on the bits/dim of the data.
        nfe: ``(K, B)`` probability-flow evaluations of every latent solve.
    """

    reconstruction: Array
    log_q: Array
    prior: Array
    nats: Array
    reconstruction_bpd: Array
    log_q_bpd: Array
    prior_bpd: Array
    offset_bpd: Array
    bits_per_dim: Array
    nfe: Array


def variational_bound(
    encoder_fn: Callable[[Array], tuple[Array, Array]],
    decoder_fn: Callable[[Array], Array],
    latent_score_fn: Callable[[Array, Array], Array],
    sde,
    x: Array,
    key: Array,
    *,
    scale_factor,
    decoder_std,
    scaler: Callable[[Array], Array] | None = None,
    num_bits: int | None = 8,
    dequantization: str = "uniform",
    num_samples: int = 1,
    **likelihood_kwargs,
) -> LatentBound:
    """LSGM's bound ``-log p(x) ≤ E_q[-log p(x | z)] + E_q[log q(z | x) - log p(z)]`` (Vahdat et al. 2021, eq. 2–3).

    Gaussian decoder with a fixed ``σ = decoder_std``; ``log p(z)`` is the latent model's probability-flow
    density of the unscaled latent (``docs/latent.md``). Pure and jit-able.

    Args:
        encoder_fn: ``y -> (mean, logvar)`` of ``q(z | y)`` (unscaled latents).
        decoder_fn: ``z -> `` mean of ``p(y | z)`` (unscaled latents).
        latent_score_fn: batched score of the latent model on scaled latents ``ẑ = c z``.
        sde: the latent model's SDE.
        x: ``(B, ...)`` data in ``[0, 1]`` before the scaler, as in :func:`scoresde.likelihood.bits_per_dim`.
        key: typed PRNG key, split into the dequantisation noise, the posterior draws and the probes.
        scale_factor: ``c`` (:func:`scale_by_std`).
        decoder_std: ``σ`` of the Gaussian decoder, in the model's space.
        scaler, num_bits, dequantization: as in :func:`scoresde.likelihood.bits_per_dim`.
        num_samples: ``K`` posterior samples per example (each a probability-flow solve).
        **likelihood_kwargs: passed to :func:`scoresde.likelihood.log_likelihood` (a mesh must divide ``K B``).

    Returns:
        A :class:`LatentBound`.

    Raises:
        ValueError: for ``num_samples < 1``, an unknown dequantisation, or uniform dequantisation without
            a positive integer ``num_bits``.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1; got {num_samples}")
    if dequantization not in likelihood.DEQUANTIZATIONS:
        raise ValueError(
            f"unknown dequantization {dequantization!r}; expected one of: {', '.join(likelihood.DEQUANTIZATIONS)}"
        )
    b, d = x.shape[0], _num_dims(x)
    k_deq, k_z, k_ll = jax.random.split(key, 3)
    u = likelihood.dequantize(k_deq, x, num_bits) if dequantization == "uniform" else x
    y = u if scaler is None else scaler(u)
    posterior = DiagonalGaussian(*encoder_fn(y))
    d_z = _num_dims(posterior.mean)
    # K posterior draws as one (K B, ...) batch: one probability-flow call, each example its own solve
    eps = jax.random.normal(k_z, (num_samples,) + posterior.mean.shape, posterior.mean.dtype)
    z = (posterior.mean[None] + posterior.std[None] * eps).reshape((num_samples * b,) + posterior.mean.shape[1:])
    tile = lambda a: jnp.broadcast_to(a[None], (num_samples,) + a.shape).reshape((num_samples * b,) + a.shape[1:])
    rec = gaussian_decoder_nll(tile(y), decoder_fn(z), decoder_std)
    log_q = DiagonalGaussian(tile(posterior.mean), tile(posterior.logvar)).log_prob(z)
    log_p_hat, _, nfe = likelihood.log_likelihood(latent_score_fn, sde, scale_factor * z, k_ll, **likelihood_kwargs)
    prior = -(log_p_hat + d_z * jnp.log(jnp.asarray(scale_factor, log_p_hat.dtype)))
    per_sample = lambda a: jnp.mean(a.reshape(num_samples, b), axis=0)
    rec, log_q, prior = per_sample(rec), per_sample(log_q), per_sample(prior)
    nats = rec + log_q + prior
    to_bpd = 1.0 / (d * math.log(2.0))
    bits_term = 0.0 if num_bits is None else float(num_bits)
    offset = bits_term - likelihood.scaler_log_det(scaler, u) * to_bpd
    return LatentBound(
        rec,
        log_q,
        prior,
        nats,
        rec * to_bpd,
        log_q * to_bpd,
        prior * to_bpd,
        offset,
        nats * to_bpd + offset,
        nfe.reshape(num_samples, b),
    )
