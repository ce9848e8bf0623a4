"""CLIP guidance: steering a score model towards a caption by a contrastive text/image embedding.

Two guides, both score transformers ``score_fn(x, t) -> score + guidance term`` that work with every sampler
of :mod:`scoresde.sampling` (:class:`equinox.Module` callables whose scale, temperature and text embedding are
traced array leaves: a new scale or caption does not recompile):

* :func:`clip_guidance` (GLIDE, Nichol et al. 2022, Sec. 2.3 and eq. 3; the lecture notes' "CLIP guidance"):
  a *noised* CLIP, whose image encoder sees ``x_t`` and ``t``, gives

      ``score(x_t, t) + scale · ∇ₓ (E_I(x_t, t) · E_T(c)) / τ``.

  CLIP's contrastive loss trains ``softmax_c(E_I(x) · E_T(c) / τ)`` over a batch of captions to be the
  probability that ``c`` is the caption of ``x``; when the similarity is ``log p_t(c | x_t)`` up to a term
  constant in ``x``, the guide at ``scale = 1`` is Bayes' rule, ``∇log p_t(x) + ∇log p_t(c | x) =
  ∇log p_t(x | c)``: exactly classifier guidance (:func:`scoresde.guidance.classifier_guidance`) with CLIP's
  similarity in place of a classifier's log-probability. ``scale = 0`` is the unguided score bit for bit.
* :func:`clean_clip_guidance`: a CLIP trained on clean images only, applied to Tweedie's denoised estimate
  ``x̂₀(x_t)`` and differentiated through the score network: the embedding guidance of universal guidance
  (Bansal et al. 2023; :func:`scoresde.guidance.posterior.embedding_guidance`) with loss
  ``-cos(E_I(x̂₀), E_T(c)) / τ`` (for CLIP's unit embeddings, ``-E_I · E_T / τ``).

The image encoder is any callable: ``image_embed_fn(x, t) -> (B, E)`` for the noised guide,
``image_embed_fn(x) -> (B, E)`` for the clean one (a trained CLIP's encoder, see
:func:`scoresde.build.clip_image_embed_fn`, or an exact one in the tests). CLIP's own passes are not
counted as network evaluations (as for the predictor of universal guidance).

Examples:
    >>> guided = clip_guidance(score_fn, image_embed_fn, text_embedding, scale=3.0, temperature=0.07)
    >>> samples, nfe = sampling.sample(guided, sde, (16, 8, 8, 1), key, method="dpm_solver++")
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from scoresde.guidance.posterior import UniversalGuidedScore, embedding_guidance

__all__ = ["CLIPGuidedScore", "clean_clip_guidance", "clip_guidance", "clip_similarity_grad", "text_embeddings"]


def text_embeddings(text_embedding, batch: int, dim: int) -> jax.Array:
    """``text_embedding`` as a ``(batch, dim)`` array: one ``(E,)`` caption embedding for every example, or one per
    example.

    Raises:
        ValueError: an embedding whose shape is neither ``(dim,)`` nor ``(batch, dim)``.
    """
    c = jnp.asarray(text_embedding)
    if c.shape == (dim,):
        return jnp.broadcast_to(c[None], (batch, dim))
    if c.shape != (batch, dim):
        raise ValueError(
            f"text embedding of shape {c.shape} does not match the image embeddings (B, E) = ({batch}, {dim}); "
            f"expected ({dim},) or ({batch}, {dim})"
        )
    return c


def clip_similarity_grad(image_embed_fn: Callable, x, t, text_embedding, temperature):
    """``∇ₓ E_I(x, t) · E_T(c) / τ`` per example (the examples of a batch are independent, so the gradient of the
    summed similarities is the per-example gradient).

    Args:
        image_embed_fn: ``image_embed_fn(x, t) -> (B, E)``.
        x: ``(B, ...)`` states; ``t``: ``(B,)`` times.
        text_embedding: ``(E,)`` or ``(B, E)``.
        temperature: ``τ`` (CLIP's logits are ``E_I · E_T / τ``).

    Raises:
        ValueError: an image embedding that is not ``(B, E)``, or a text embedding of another shape.
    """

    def total(xx):
        e = image_embed_fn(xx, t)
        if e.ndim != 2 or e.shape[0] != x.shape[0]:
            raise ValueError(f"image_embed_fn must return (B, E) embeddings with B = {x.shape[0]}; got shape {e.shape}")
        c = text_embeddings(text_embedding, e.shape[0], e.shape[1]).astype(e.dtype)
        return jnp.sum(e * c) / temperature

    return jax.grad(total)(x)


class CLIPGuidedScore(eqx.Module):
    """``score_fn(x, t) + scale · ∇ₓ E_I(x, t) · E_T(c) / τ``; see :func:`clip_guidance`."""

    score_fn: Callable
    image_embed_fn: Callable
    text_embedding: jax.Array
    scale: jax.Array
    temperature: jax.Array
    evaluations_per_call: int = eqx.field(static=True, default=1)

    def __call__(self, x, t):
        grad = clip_similarity_grad(self.image_embed_fn, x, t, self.text_embedding, self.temperature.astype(x.dtype))
        return self.score_fn(x, t) + self.scale.astype(x.dtype) * grad


def _check_temperature(temperature):
    if not isinstance(temperature, jax.core.Tracer) and not float(temperature) > 0:
        raise ValueError(f"CLIP temperature must be > 0 (logits are similarity / temperature); got {temperature!r}")


def clip_guidance(score_fn: Callable, image_embed_fn: Callable, text_embedding, *, scale=1.0, temperature=1.0):
    """CLIP guidance by a noised CLIP: ``score_fn(x, t) + scale · ∇ₓ (E_I(x_t, t) · E_T(c)) / τ`` (GLIDE, eq. 3).

    Args:
        score_fn: the unconditional score ``score_fn(x, t)``.
        image_embed_fn: the noised image encoder ``image_embed_fn(x_t, t) -> (B, E)`` (in the sampler's
            coordinates: a CLIP trained on another noise convention is wrapped by the caller).
        text_embedding: ``E_T(c)``, ``(E,)`` for one caption or ``(B, E)`` for one per example (traced).
        scale: the guidance scale (1 with an exact similarity ``log p_t(c | x) + const`` is the conditional
            law; traced).
        temperature: CLIP's ``τ`` (traced).

    Returns:
        A :class:`CLIPGuidedScore` (one score evaluation per call; CLIP's passes are not counted).

    Raises:
        ValueError: a temperature that is not positive.
    """
    _check_temperature(temperature)
    return CLIPGuidedScore(
        score_fn,
        image_embed_fn,
        jnp.asarray(text_embedding, jnp.float32),
        jnp.asarray(scale, jnp.float32),
        jnp.asarray(temperature, jnp.float32),
    )


def clean_clip_guidance(
    score_fn: Callable,
    sde,
    image_embed_fn: Callable,
    text_embedding,
    *,
    scale=1.0,
    temperature=1.0,
    backward_steps: int = 0,
    backward_lr=0.1,
) -> UniversalGuidedScore:
    """CLIP guidance by a clean CLIP through the denoiser: embedding guidance with loss ``-cos(E_I(x̂₀), E_T(c)) / τ``.

    The term is ``-scale · (∂x̂₀/∂x_t)ᵀ ∇ ℓ(x̂₀)`` (Bansal et al. 2023, Alg. 1, forward guidance), the VJP taken
    through the score network (2 evaluations per call).

    Args:
        score_fn: the unconditional score ``score_fn(x, t)``.
        sde: the forward SDE (Tweedie's denoiser needs its ``alpha``, ``sigma``).
        image_embed_fn: a clean image encoder ``image_embed_fn(x0) -> (B, E)``.
        text_embedding: ``(E,)`` or ``(B, E)``.
        scale, temperature: the loss is ``-cos / τ`` scaled by ``scale`` (both traced).
        backward_steps, backward_lr: universal guidance's backward guidance
            (:func:`scoresde.guidance.posterior.universal_guidance`).

    Raises:
        ValueError: a temperature that is not positive, or a bad ``backward_steps``.
    """
    _check_temperature(temperature)
    return embedding_guidance(
        score_fn,
        sde,
        image_embed_fn,
        jnp.asarray(text_embedding, jnp.float32),
        scale=jnp.asarray(scale, jnp.float32) / jnp.asarray(temperature, jnp.float32),
        backward_steps=backward_steps,
        backward_lr=backward_lr,
    )
