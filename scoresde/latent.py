"""Latent diffusion math: the Gaussian posterior, the autoencoder loss, the latent scale, the LSGM bound.

Latent diffusion (Rombach et al., CVPR 2022) trains an autoencoder first, then a score model on the
autoencoder's latents ``ẑ = c · z``, ``z ~ q(z | x)``, scaled by ``c = 1 / std(z)`` (LDM's ``scale_by_std``) so
that the latents have roughly the unit scale the SDEs of :mod:`scoresde.sde` assume. Everything in this module
is pure: networks come in as callables (``encoder_fn(x) -> (mean, logvar)``, ``decoder_fn(z) -> x``), never as
configs.

The autoencoder loss (LDM, App. G; their ``LPIPSWithDiscriminator`` without the learned output
log-variance) is, per batch::

    L = mean_b [ Σ_i ρ(x - x̂)_i + w_p · D · P(x, x̂) ] + β · mean_b KL(q(z | x) ‖ N(0, I))
        + λ_adv · 1[step ≥ start] · (-mean D_φ(x̂))

with ``ρ`` the L1 or squared error summed over the ``D`` dimensions of an example (LDM sums, so its
``β = 1e-6`` carries over), ``P`` an optional user-supplied perceptual distance (LPIPS needs downloaded weights,
so none ships here; see :func:`autoencoder_loss`), and ``λ_adv`` LDM's adaptive weight, the ratio of the
gradient norms of the reconstruction and adversarial terms at the decoder's last layer (Esser et al. 2021,
eq. 7). The discriminator is trained with the hinge loss (:func:`discriminator_loss`).

The variational bound of LSGM (Vahdat et al. 2021, eq. 2–3), for the score model's density ``p_θ`` on the
scaled latents::

    -log p(x) ≤ E_q[-log p(x | z)] + E_q[log q(z | x)] + E_q[-log p_θ(c z) - d_z log c]

where the last term is ``-log`` of the density of the *unscaled* ``z`` (change of variables ``ẑ = c z``,
``d_z`` latent dimensions). :func:`variational_bound` reports each term, in nats and bits/dim, with the
dequantisation and data-scaler rules of :func:`scoresde.likelihood.bits_per_dim`.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from scoresde import likelihood

Array = jax.Array

__all__ = [
    "RECONSTRUCTIONS",
    "DiagonalGaussian",
    "reconstruction_error",
    "hinge_discriminator_loss",
    "generator_adversarial_loss",
    "adversarial_factor",
    "adaptive_weight",
    "AutoencoderLossTerms",
    "autoencoder_loss",
    "discriminator_loss",
    "psnr",
    "scale_by_std",
    "encode",
    "decode",
    "fit_decoder_std",
    "gaussian_decoder_nll",
    "LatentBound",
    "variational_bound",
]

RECONSTRUCTIONS = ("l1", "l2")
_LOG_2PI = math.log(2.0 * math.pi)


def _sum_except_batch(x: Array) -> Array:
    return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def _num_dims(x: Array) -> int:
    return int(np.prod(x.shape[1:]))


class DiagonalGaussian(NamedTuple):
    """The posterior ``q(z | x) = N(mean, diag(exp(logvar)))`` of a KL autoencoder (a pytree).

    Attributes:
        mean: ``(B, ...)`` posterior means.
        logvar: ``(B, ...)`` posterior log-variances, same shape.
    """

    mean: Array
    logvar: Array

    @property
    def std(self) -> Array:
        return jnp.exp(0.5 * self.logvar)

    @property
    def var(self) -> Array:
        return jnp.exp(self.logvar)

    def sample(self, key: Array) -> Array:
        """A reparameterised draw ``mean + std · ε``, ``ε ~ N(0, I)``."""
        return self.mean + self.std * jax.random.normal(key, self.mean.shape, self.mean.dtype)

    def mode(self) -> Array:
        return self.mean

    def kl(self) -> Array:
        """``KL(q ‖ N(0, I)) = ½ Σ_i (μ_i² + σ_i² - 1 - log σ_i²)`` per example, ``(B,)`` nats (Kingma & Welling 2014, App. B)."""
        return 0.5 * _sum_except_batch(jnp.square(self.mean) + self.var - 1.0 - self.logvar)

    def log_prob(self, z: Array) -> Array:
        """``log q(z | x) = -½ Σ_i (log 2π + log σ_i² + (z_i - μ_i)² / σ_i²)`` per example, ``(B,)``."""
        return -0.5 * _sum_except_batch(_LOG_2PI + self.logvar + jnp.square(z - self.mean) / self.var)

    def entropy(self) -> Array:
        """``H[q] = ½ Σ_i (log 2π e + log σ_i²)`` per example, ``(B,)``."""
        return 0.5 * _sum_except_batch(_LOG_2PI + 1.0 + self.logvar)


# -- autoencoder loss -----------------------------------------------------------------------------------


def reconstruction_error(x: Array, x_rec: Array, kind: str = "l1") -> Array:
    """``Σ_i |x - x̂|_i`` (``'l1'``) or ``Σ_i (x - x̂)_i²`` (``'l2'``) per example, ``(B,)``.

    Raises:
        ValueError: for an unknown ``kind`` or mismatched shapes.
    """
    if kind not in RECONSTRUCTIONS:
        raise ValueError(f"unknown reconstruction loss {kind!r}; expected one of: {', '.join(RECONSTRUCTIONS)}")
    if x.shape != x_rec.shape:
        raise ValueError(f"reconstruction shape {x_rec.shape} does not match the data shape {x.shape}")
    diff = x - x_rec
    return _sum_except_batch(jnp.abs(diff) if kind == "l1" else jnp.square(diff))


def hinge_discriminator_loss(logits_real: Array, logits_fake: Array) -> Array:
    """``½ (E[relu(1 - D(x))] + E[relu(1 + D(x̂))])`` (Lim & Ye 2017; LDM's ``hinge_d_loss``)."""
    return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def generator_adversarial_loss(logits_fake: Array) -> Array:
    """``-E[D(x̂)]``, the generator's side of the hinge game."""
    return -jnp.mean(logits_fake)


def adversarial_factor(step, start: int) -> Array:
    """1 from step ``start`` on, 0 before: the discriminator's warm-up switch (LDM's ``adopt_weight``)."""
    return jnp.where(jnp.asarray(step) >= start, 1.0, 0.0)


def adaptive_weight(reconstruction_of_head: Callable[[Array], Array], adversarial_of_head: Callable[[Array], Array],
                    head_weight: Array, *, max_weight: float = 1e4, eps: float = 1e-4) -> Array:
    """``‖∇_w L_rec‖ / (‖∇_w L_adv‖ + eps)``, clipped to ``[0, max_weight]``, gradient stopped (Esser et al. 2021, eq. 7).

    Args:
        reconstruction_of_head: ``w -> L_rec``, the reconstruction loss as a function of the decoder's
            last-layer kernel ``w``.
        adversarial_of_head: ``w -> L_adv``, the generator's adversarial loss as a function of ``w``.
        head_weight: the current value of ``w``.
        max_weight: upper clip (LDM: 1e4).
        eps: added to the denominator (LDM: 1e-4).
    """
    g_rec = jax.grad(reconstruction_of_head)(head_weight)
    g_adv = jax.grad(adversarial_of_head)(head_weight)
    ratio = jnp.linalg.norm(g_rec.ravel()) / (jnp.linalg.norm(g_adv.ravel()) + eps)
    return jax.lax.stop_gradient(jnp.clip(ratio, 0.0, max_weight))


class AutoencoderLossTerms(NamedTuple):
    """The terms of :func:`autoencoder_loss` (batch means), for logging.

    Attributes:
        loss: the total loss that is differentiated.
        reconstruction: ``mean_b Σ_i ρ(x - x̂)_i``.
        perceptual: ``mean_b P(x, x̂)`` (0 without a perceptual network).
        kl: ``mean_b KL(q(z | x) ‖ N(0, I))`` in nats.
        generator: ``-mean D(x̂)`` (0 without a discriminator).
        adversarial_weight: the adaptive weight times ``disc_weight`` times the warm-up switch.
    """

    loss: Array
    reconstruction: Array
    perceptual: Array
    kl: Array
    generator: Array
    adversarial_weight: Array


def autoencoder_loss(x: Array, posterior: DiagonalGaussian, reconstruct: Callable[[Array], Array],
                     head_weight: Array, *, step=0, kl_weight: float = 1e-6, reconstruction: str = "l1",
                     perceptual_fn: Callable[[Array, Array], Array] | None = None, perceptual_weight: float = 1.0,
                     discriminator_fn: Callable[[Array], Array] | None = None, disc_weight: float = 0.5,
                     disc_start: int = 0, max_adaptive_weight: float = 1e4) -> tuple[Array, AutoencoderLossTerms]:
    """The autoencoder's (generator's) loss (module docstring): reconstruction + β·KL [+ perceptual] [+ adversarial].

    The decoder output enters as ``reconstruct(w)``, a function of the decoder's last-layer kernel evaluated at
    ``head_weight``, because the adaptive adversarial weight needs gradients with respect to that kernel. With
    :class:`scoresde.models.autoencoder.AutoencoderKL` ``ae`` and ``z = posterior.sample(key)``::

        h = ae.decoder.features(z)
        loss, terms = autoencoder_loss(x, posterior, lambda w: ae.decoder.head(h, w),
                                       ae.decoder.conv_out.kernel[...], step=step, ...)

    Gradients flow into the encoder and decoder through ``posterior``, ``h`` and ``head_weight``; pass the
    discriminator as a closure and differentiate only the autoencoder's parameters.

    Args:
        x: ``(B, H, W, C)`` data (in the model's space, e.g. centred to [-1, 1]).
        posterior: ``q(z | x)`` from the encoder.
        reconstruct: ``w -> x̂`` as above.
        head_weight: the decoder's last-layer kernel ``w``.
        step: training step (traced or Python int), for the discriminator warm-up.
        kl_weight: ``β`` (LDM: 1e-6).
        reconstruction: ``'l1'`` (LDM) or ``'l2'``.
        perceptual_fn: hook for a user-supplied perceptual distance ``P(x, x̂) -> (B,)``, e.g. LPIPS from a
            pretrained feature network (``Σ_l w_l ‖φ_l(x) - φ_l(x̂)‖²`` over normalised features). As in LDM it is
            added to every dimension's error, i.e. weighted by ``D`` after the sum. ``None``: no perceptual term.
        perceptual_weight: ``w_p`` (LDM: 1.0).
        discriminator_fn: ``x -> logits`` of a patch discriminator, or ``None`` for no adversarial term.
        disc_weight: LDM's ``disc_weight`` (0.5), multiplying the adaptive weight.
        disc_start: first step at which the adversarial term is on (LDM: e.g. 50001).
        max_adaptive_weight: clip of the adaptive weight.

    Returns:
        ``(loss, terms)``, a scalar and an :class:`AutoencoderLossTerms`.
    """
    x_rec = reconstruct(head_weight)
    d = _num_dims(x)

    def rec_of(x_hat):
        rec = reconstruction_error(x, x_hat, reconstruction)
        perc = jnp.zeros_like(rec) if perceptual_fn is None else perceptual_fn(x, x_hat)
        return jnp.mean(rec + perceptual_weight * d * perc), jnp.mean(rec), jnp.mean(perc)

    nll, rec, perc = rec_of(x_rec)
    kl = jnp.mean(posterior.kl())
    loss = nll + kl_weight * kl
    zero = jnp.zeros((), loss.dtype)
    if discriminator_fn is None:
        return loss, AutoencoderLossTerms(loss, rec, perc, kl, zero, zero)
    g_loss = generator_adversarial_loss(discriminator_fn(x_rec))
    weight = adaptive_weight(lambda w: rec_of(reconstruct(w))[0],
                             lambda w: generator_adversarial_loss(discriminator_fn(reconstruct(w))),
                             head_weight, max_weight=max_adaptive_weight)
    weight = weight * disc_weight * adversarial_factor(step, disc_start)
    loss = loss + weight * g_loss
    return loss, AutoencoderLossTerms(loss, rec, perc, kl, g_loss, weight)


def discriminator_loss(logits_real: Array, logits_fake: Array, *, step=0, disc_start: int = 0,
                       disc_factor: float = 1.0) -> Array:
    """The discriminator's hinge loss, switched on at ``disc_start``; ``logits_fake`` of ``stop_gradient(x̂)``."""
    return disc_factor * adversarial_factor(step, disc_start) * hinge_discriminator_loss(logits_real, logits_fake)


def psnr(x: Array, x_rec: Array, *, data_range: float = 1.0) -> Array:
    """Peak signal-to-noise ratio per example, ``(B,)`` dB: ``10 log10(range² / mean (x - x̂)²)``."""
    mse = jnp.mean(jnp.square(x - x_rec).reshape(x.shape[0], -1), axis=-1)
    return 10.0 * jnp.log10(data_range**2 / mse)


# -- the latent space -----------------------------------------------------------------------------------


def scale_by_std(latents: Array) -> Array:
    """LDM's latent scale factor ``c = 1 / std(latents)``, the std over every element (a scalar).

    Computed once, after the autoencoder is trained, on the posterior means of a data sample, and stored with
    the autoencoder; the score model then sees ``ẑ = c z``, of unit overall standard deviation on that sample.

    Raises:
        ValueError: for fewer than two elements.
    """
    if latents.size < 2:
        raise ValueError(f"scale_by_std needs at least 2 latent values; got shape {latents.shape}")
    return 1.0 / jnp.std(latents.astype(jnp.float32))


def encode(encoder_fn: Callable[[Array], tuple[Array, Array]], x: Array, scale_factor, *,
           key: Array | None = None) -> Array:
    """Scaled latents ``c z`` of data ``x``: ``z`` the posterior mean (``key=None``) or a posterior sample."""
    posterior = DiagonalGaussian(*encoder_fn(x))
    z = posterior.mode() if key is None else posterior.sample(key)
    return scale_factor * z


def decode(decoder_fn: Callable[[Array], Array], z_scaled: Array, scale_factor) -> Array:
    """Data ``decoder_fn(ẑ / c)`` of scaled latents ``ẑ`` (e.g. a latent model's samples)."""
    return decoder_fn(z_scaled / scale_factor)


# -- the LSGM variational bound -------------------------------------------------------------------------


def fit_decoder_std(x: Array, x_rec: Array) -> Array:
    """The maximum-likelihood ``σ`` of a Gaussian decoder ``N(x; x̂, σ² I)``: ``sqrt(mean (x - x̂)²)``.

    Fit it on training data (reconstructions by the posterior mean), then hold it fixed for evaluation: the
    bound is a bound for any fixed ``σ``, and a ``σ`` tuned on the evaluation data would be optimistic.
    """
    return jnp.sqrt(jnp.mean(jnp.square(x - x_rec)))


def gaussian_decoder_nll(x: Array, x_mean: Array, decoder_std) -> Array:
    """``-log N(x; x̂, σ² I)`` per example, ``(B,)`` nats."""
    var = jnp.square(jnp.asarray(decoder_std, x.dtype))
    return 0.5 * _sum_except_batch(jnp.square(x - x_mean) / var + jnp.log(var) + _LOG_2PI)


class LatentBound(NamedTuple):
    """Result of :func:`variational_bound`; every field ``(B,)`` per example, averaged over posterior samples.

    Nats are of the density of ``y = s(u)`` in the model's space; bits/dim add the data scaler's log-Jacobian
    and the bin volume, so ``bits_per_dim = reconstruction_bpd + log_q_bpd + prior_bpd + offset_bpd``.

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


def variational_bound(encoder_fn: Callable[[Array], tuple[Array, Array]], decoder_fn: Callable[[Array], Array],
                      latent_score_fn: Callable[[Array, Array], Array], sde, x: Array, key: Array, *,
                      scale_factor, decoder_std, scaler: Callable[[Array], Array] | None = None,
                      num_bits: int | None = 8, dequantization: str = "uniform", num_samples: int = 1,
                      **likelihood_kwargs) -> LatentBound:
    """LSGM's bound ``-log p(x) ≤ E_q[-log p(x | z)] + E_q[log q(z | x) - log p(z)]`` (module docstring).

    The decoder likelihood is ``p(y | z) = N(y; decoder_fn(z), σ² I)`` in the model's space with a stated, fixed
    ``σ = decoder_std``: a KL autoencoder is trained with an L1/L2 loss that fixes no ``σ``, and any fixed ``σ``
    gives a valid bound; :func:`fit_decoder_std` on training data is the natural choice. ``log p(z)`` is the
    density of the unscaled latent, ``log p_θ(c z) + d_z log c``, with ``log p_θ`` from
    :func:`scoresde.likelihood.log_likelihood` on the latent score model. Pure and jit-able.

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
        **likelihood_kwargs: passed to :func:`scoresde.likelihood.log_likelihood` (``hutchinson``, ``rtol``,
            ``atol``, ``eps``, ``solver``, ``max_steps``, ``mesh``; with a mesh, ``K · B`` must divide evenly).

    Returns:
        A :class:`LatentBound`.

    Raises:
        ValueError: for ``num_samples < 1``, an unknown dequantisation, or uniform dequantisation without
            a positive integer ``num_bits``.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1; got {num_samples}")
    if dequantization not in likelihood.DEQUANTIZATIONS:
        raise ValueError(f"unknown dequantization {dequantization!r}; expected one of: "
                         f"{', '.join(likelihood.DEQUANTIZATIONS)}")
    b, d = x.shape[0], _num_dims(x)
    k_deq, k_z, k_ll = jax.random.split(key, 3)
    u = likelihood.dequantize(k_deq, x, num_bits) if dequantization == "uniform" else x
    y = u if scaler is None else scaler(u)
    posterior = DiagonalGaussian(*encoder_fn(y))
    d_z = _num_dims(posterior.mean)
    # K posterior draws stacked into one (K B, ...) batch: one probability-flow call, each example its own solve.
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
    return LatentBound(rec, log_q, prior, nats, rec * to_bpd, log_q * to_bpd, prior * to_bpd, offset,
                       nats * to_bpd + offset, nfe.reshape(num_samples, b))
