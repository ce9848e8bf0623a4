"""unCLIP (DALL·E 2, Ramesh et al. 2022): text -> CLIP image embedding -> image, by two conditional diffusions.

* The **prior** is a diffusion over CLIP image embeddings ``z_i ∈ R^E`` conditioned on the caption's CLIP text
  embedding ``z_t`` (Ramesh et al. 2022, Sec. 2.2, the diffusion prior): the project's SDEs and samplers run on
  ``(B, E)`` vectors, its score network is :class:`scoresde.models.mlp.MLPScore` with ``cond_dim = E``.
* The **decoder** is an image score model conditioned on a CLIP image embedding (Sec. 2.1; the U-Nets built with
  ``model.cond_dim``: the embedding projected into the time embedding and into extra cross-attention tokens).

Both are a conditional score ``cond_score_fn(x, t, y)`` with float conditioning ``y (B, D)`` whose null
conditioning (the unconditional model of classifier-free guidance, trained by conditioning dropout) is
``zeros_like(y)``; :func:`conditional_sample` samples either with any sampler of :mod:`scoresde.sampling`, with
classifier-free guidance weight ``w`` (``None``: the conditional score alone, one evaluation per step).

:func:`text_to_image` chains them; :func:`variations` decodes one image's embedding with fresh noise (Sec. 3.1,
"image variations"); :func:`slerp` / :func:`interpolate` move between two embeddings on the sphere (Sec. 3.2,
"interpolations", spherical interpolation as in the paper). Nothing here reads a config or knows CLIP: the
embeddings are arrays (the edge, :mod:`scoresde.build.unclip`, computes them with a trained CLIP).

Examples:
    >>> z_img, _ = sample_prior(prior_fn, prior_sde, text_emb, key, w=1.0, method="dpm_solver++")
    >>> images, _ = decode(decoder_fn, sde, z_img, (8, 8, 1), key, w=3.0, method="dpm_solver++")
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from scoresde import guidance, sampling

__all__ = [
    "ConditionedScore",
    "conditioned_score",
    "conditional_sample",
    "sample_prior",
    "decode",
    "text_to_image",
    "variations",
    "slerp",
    "interpolate",
]


class ConditionedScore(eqx.Module):
    """``score_fn(x, t) = cond_score_fn(x, t, y)`` with ``y`` (``(B, D)`` or one ``(D,)`` row for all) a traced
    leaf: a new condition does not recompile a sampler."""

    cond_score_fn: Callable
    y: jax.Array

    def __call__(self, x, t):
        y = self.y if self.y.ndim == 2 else jnp.broadcast_to(self.y[None], (x.shape[0],) + self.y.shape)
        return self.cond_score_fn(x, t, y.astype(x.dtype))


def _conditioning(y, batch: int) -> jax.Array:
    y = jnp.asarray(y, jnp.float32)
    if y.ndim == 1:
        return jnp.broadcast_to(y[None], (batch,) + y.shape)
    if y.ndim != 2 or y.shape[0] != batch:
        raise ValueError(f"conditioning must be one (D,) vector or a ({batch}, D) batch; got shape {y.shape}")
    return y


def conditioned_score(cond_score_fn: Callable, y, batch: int, *, w=None) -> Callable:
    """The score a sampler follows for condition ``y``: ``cond_score_fn(·, ·, y)`` (``w = None``), or classifier-free
    guidance ``(1 + w) s(x, t, y) - w s(x, t, 0)`` (:func:`scoresde.guidance.classifier_free_guidance` with the
    null conditioning ``zeros_like(y)``; ``w = 0`` is the conditional score bit for bit, traced).

    Raises:
        ValueError: a condition that is neither ``(D,)`` nor ``(batch, D)``.
    """
    y = _conditioning(y, batch)
    if w is None:
        return ConditionedScore(cond_score_fn, y)
    return guidance.classifier_free_guidance(cond_score_fn, y, w, None)


def conditional_sample(cond_score_fn: Callable, sde, y, shape, key, *, w=None, method: str = "pc", **options):
    """``(samples, nfe)``: a batch of ``shape`` from the conditional score given ``y``, by :func:`scoresde.sampling.sample`.

    Args:
        cond_score_fn: ``cond_score_fn(x, t, y)`` with float ``y (B, D)``; zeros are the null condition.
        sde: the forward SDE of the model.
        y: ``(D,)`` (one condition for all) or ``(B, D)``.
        shape: ``(B, ...)`` of the samples.
        key: PRNG key.
        w: classifier-free guidance weight, or ``None`` for the conditional score alone (see :func:`conditioned_score`).
        method, **options: the sampler and its options.
    """
    score_fn = conditioned_score(cond_score_fn, y, shape[0], w=w)
    return sampling.sample(score_fn, sde, shape, key, method=method, **options)


def sample_prior(prior_score_fn: Callable, sde, text_embedding, key, *, dim: int, w=None, method="pc", **options):
    """CLIP image embeddings ``(B, dim)`` from the diffusion prior given text embeddings ``(B, E_t)`` (Sec. 2.2).

    Returns:
        ``(image_embeddings, nfe)``, as the prior was trained (the edge maps them back to CLIP's scale).
    """
    text_embedding = jnp.asarray(text_embedding, jnp.float32)
    if text_embedding.ndim != 2:
        raise ValueError(f"text embeddings must be (B, E); got shape {text_embedding.shape}")
    b = text_embedding.shape[0]
    return conditional_sample(prior_score_fn, sde, text_embedding, (b, dim), key, w=w, method=method, **options)


def decode(decoder_score_fn: Callable, sde, image_embedding, image_shape, key, *, w=None, method="pc", **options):
    """Images ``(B, *image_shape)`` from the decoder given CLIP image embeddings ``(B, E)`` (Sec. 2.1).

    Returns:
        ``(images, nfe)`` in the decoder's model space.
    """
    image_embedding = jnp.asarray(image_embedding, jnp.float32)
    if image_embedding.ndim != 2:
        raise ValueError(f"image embeddings must be (B, E); got shape {image_embedding.shape}")
    shape = (image_embedding.shape[0],) + tuple(image_shape)
    return conditional_sample(decoder_score_fn, sde, image_embedding, shape, key, w=w, method=method, **options)


def text_to_image(prior, decoder, text_embedding, image_shape, key, *, to_decoder: Callable | None = None):
    """``text -> prior -> decoder``: ``(images, image_embeddings, nfe)`` (Ramesh et al. 2022, eq. 1).

    Args:
        prior: ``dict(score_fn=, sde=, dim=, w=, method=, **options)`` for :func:`sample_prior`.
        decoder: ``dict(score_fn=, sde=, w=, method=, **options)`` for :func:`decode`.
        text_embedding: ``(B, E_t)`` CLIP text embeddings.
        image_shape: one image's shape in the decoder's model space.
        key: PRNG key (split for the two stages).
        to_decoder: optional map from the prior's samples to the decoder's conditioning (e.g. the edge's scaling
            back to CLIP's unit embeddings); identity if ``None``.

    Returns:
        ``(images, image_embeddings, nfe)``: ``nfe`` counts both stages.
    """
    k_prior, k_dec = jax.random.split(key)
    p, d = dict(prior), dict(decoder)
    z, nfe_p = sample_prior(p.pop("score_fn"), p.pop("sde"), text_embedding, k_prior, **p)
    z = z if to_decoder is None else to_decoder(z)
    images, nfe_d = decode(d.pop("score_fn"), d.pop("sde"), z, image_shape, k_dec, **d)
    return images, z, nfe_p + nfe_d


def variations(decoder_score_fn: Callable, sde, image_embedding, n: int, image_shape, key, **options):
    """``n`` decodings of one image's embedding ``(E,)`` with fresh noise (Sec. 3.1): ``(images, nfe)``."""
    e = jnp.asarray(image_embedding, jnp.float32)
    if e.ndim != 1:
        raise ValueError(f"variations take one image embedding (E,); got shape {e.shape}")
    return decode(decoder_score_fn, sde, jnp.broadcast_to(e[None], (n,) + e.shape), image_shape, key, **options)


def slerp(a, b, w):
    """Spherical interpolation between embeddings ``a`` and ``b`` (``(E,)`` or ``(B, E)``) at ``w ∈ [0, 1]``.

    ``slerp(a, b, w) = (sin((1 - w) θ) â + sin(w θ) b̂) / sin θ`` scaled by the linearly interpolated norm
    ``(1 - w)‖a‖ + w‖b‖`` (``θ`` the angle between them; Shoemake 1985, as Ramesh et al. 2022, Sec. 3.2). The
    direction moves at constant angular speed along the great circle; for unit embeddings (CLIP's) the result
    is a unit embedding. Parallel embeddings (``θ ≈ 0``) fall back to linear interpolation of the directions.
    """
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    w = jnp.asarray(w, jnp.float32)[..., None]
    rank = max(a.ndim, b.ndim, w.ndim)
    a, b, w = (v.reshape((1,) * (rank - v.ndim) + v.shape) for v in (a, b, w))
    na = jnp.linalg.norm(a, axis=-1, keepdims=True)
    nb = jnp.linalg.norm(b, axis=-1, keepdims=True)
    ua, ub = a / na, b / nb
    cos = jnp.clip(jnp.sum(ua * ub, axis=-1, keepdims=True), -1.0, 1.0)
    theta = jnp.arccos(cos)
    sin = jnp.sin(theta)
    small = sin < 1e-6
    safe = jnp.where(small, 1.0, sin)
    direction = jnp.where(
        small,
        (1.0 - w) * ua + w * ub,
        (jnp.sin((1.0 - w) * theta) * ua + jnp.sin(w * theta) * ub) / safe,
    )
    return direction * ((1.0 - w) * na + w * nb)


def interpolate(a, b, n: int):
    """``n`` embeddings ``(n, E)`` from ``a`` to ``b`` (both ``(E,)``), equally spaced in angle (:func:`slerp`)."""
    if n < 2:
        raise ValueError(f"interpolate needs n >= 2 points (both ends); got n={n}")
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    return slerp(a[None], b[None], jnp.linspace(0.0, 1.0, n))
