"""Latent diffusion math: the Gaussian posterior, the autoencoder loss and the latent scale.

Latent diffusion (Rombach et al., CVPR 2022) trains a score model on an autoencoder's scaled latents
``ẑ = c · z``. Pure: networks come in as callables, never as configs. The loss and its terms:
``docs/latent.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

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
    "scale_by_std",
    "encode",
    "decode",
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
        """``KL(q ‖ N(0, I))`` per example, ``(B,)`` nats (Kingma & Welling 2014, App. B)."""
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


def adaptive_weight(
    reconstruction_of_head: Callable[[Array], Array],
    adversarial_of_head: Callable[[Array], Array],
    head_weight: Array,
    *,
    max_weight: float = 1e4,
    eps: float = 1e-4,
) -> Array:
    """``‖∇_w L_rec‖ / (‖∇_w L_adv‖ + eps)``, clipped to ``[0, max_weight]``, gradient stopped.

    Esser et al. 2021, eq. 7 (``docs/latent.md``).

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


def autoencoder_loss(
    x: Array,
    posterior: DiagonalGaussian,
    reconstruct: Callable[[Array], Array],
    head_weight: Array,
    *,
    step=0,
    kl_weight: float = 1e-6,
    reconstruction: str = "l1",
    perceptual_fn: Callable[[Array, Array], Array] | None = None,
    perceptual_weight: float = 1.0,
    discriminator_fn: Callable[[Array], Array] | None = None,
    disc_weight: float = 0.5,
    disc_start: int = 0,
    max_adaptive_weight: float = 1e4,
) -> tuple[Array, AutoencoderLossTerms]:
    """The autoencoder's loss: reconstruction + β·KL [+ perceptual] [+ adversarial] (LDM, App. G).

    The decoder output enters as ``reconstruct(w)``, a function of the decoder's last-layer kernel, since the
    adaptive adversarial weight differentiates with respect to it; ``docs/latent.md`` has the formula and a
    usage example.

    Args:
        x: ``(B, H, W, C)`` data (in the model's space, e.g. centred to [-1, 1]).
        posterior: ``q(z | x)`` from the encoder.
        reconstruct: ``w -> x̂`` as above.
        head_weight: the decoder's last-layer kernel ``w``.
        step: training step (traced or Python int), for the discriminator warm-up.
        kl_weight: ``β`` (LDM: 1e-6).
        reconstruction: ``'l1'`` (LDM) or ``'l2'``.
        perceptual_fn: a user-supplied perceptual distance ``P(x, x̂) -> (B,)`` (e.g. LPIPS), weighted by ``D``
            as in LDM; ``None``: no perceptual term.
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
    weight = adaptive_weight(
        lambda w: rec_of(reconstruct(w))[0],
        lambda w: generator_adversarial_loss(discriminator_fn(reconstruct(w))),
        head_weight,
        max_weight=max_adaptive_weight,
    )
    weight = weight * disc_weight * adversarial_factor(step, disc_start)
    loss = loss + weight * g_loss
    return loss, AutoencoderLossTerms(loss, rec, perc, kl, g_loss, weight)


def discriminator_loss(
    logits_real: Array, logits_fake: Array, *, step=0, disc_start: int = 0, disc_factor: float = 1.0
) -> Array:
    """The discriminator's hinge loss, switched on at ``disc_start``; ``logits_fake`` of ``stop_gradient(x̂)``."""
    return disc_factor * adversarial_factor(step, disc_start) * hinge_discriminator_loss(logits_real, logits_fake)


# -- the latent space -----------------------------------------------------------------------------------


def scale_by_std(latents: Array) -> Array:
    """LDM's latent scale factor ``c = 1 / std(latents)``, the std over every element (a scalar).

    Raises:
        ValueError: for fewer than two elements.
    """
    if latents.size < 2:
        raise ValueError(f"scale_by_std needs at least 2 latent values; got shape {latents.shape}")
    return 1.0 / jnp.std(latents.astype(jnp.float32))


def encode(
    encoder_fn: Callable[[Array], tuple[Array, Array]], x: Array, scale_factor, *, key: Array | None = None
) -> Array:
    """Scaled latents ``c z`` of data ``x``: ``z`` the posterior mean (``key=None``) or a posterior sample."""
    posterior = DiagonalGaussian(*encoder_fn(x))
    z = posterior.mode() if key is None else posterior.sample(key)
    return scale_factor * z


def decode(decoder_fn: Callable[[Array], Array], z_scaled: Array, scale_factor) -> Array:
    """Data ``decoder_fn(ẑ / c)`` of scaled latents ``ẑ`` (e.g. a latent model's samples)."""
    return decoder_fn(z_scaled / scale_factor)


# -- the LSGM variational bound -------------------------------------------------------------------------
