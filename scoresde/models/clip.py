"""CLIP from scratch (Radford et al. 2021): an image encoder and a text encoder mapped to one embedding space.

``clip.encode_image(x) -> (B, embed_dim)`` and ``clip.encode_text(tokens) -> (B, embed_dim)`` are unit vectors;
``clip.logit_scale`` is the learned inverse temperature ``1 / τ`` (stored as ``log(1 / τ)``, initialised to
``1 / 0.07`` and capped at 100, as CLIP does). :func:`clip_loss` is CLIP's symmetric cross-entropy over the
``B x B`` similarity matrix ``S = logit_scale · E_I Eᵀ_T`` (matching pairs on the diagonal).

A **noised CLIP** (GLIDE, Nichol et al. 2022, Sec. 2.4) is built with ``noised=True``: its image encoder also
takes the noise level and is trained on perturbed images, so the gradient of ``E_I(x_t, t) · E_T(c) / τ`` can
guide a sampler at every ``t``. Its inputs follow the noise-conditional classifiers
(:mod:`scoresde.models.classifiers`): VE coordinates ``x_t / alpha(t)`` and ``noise_level = sigma(t) / alpha(t)``
(:func:`scoresde.guidance.classifier_inputs` converts), scaled by ``1 / sqrt(1 + noise_level²)`` inside (EDM's
``c_in`` for unit data scale), so one encoder reads any linear SDE.

Examples:
    >>> clip = CLIP(ImageEncoder(1, 8, 32, 64, rngs=rngs), TextEncoder(len(VOCAB), 16, 64, 2, 4, rngs=rngs),
    ...             embed_dim=64, rngs=rngs)
    >>> logits = clip.logit_scale * clip.encode_image(x) @ clip.encode_text(tokens).T
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from scoresde.models.classifiers import FourierEmbedding
from scoresde.models.text import TextEncoder
from scoresde.sde import batch_mul

__all__ = ["ImageEncoder", "CLIP", "clip_loss", "zero_shot_weights", "recall_at_k"]


def _group_norm(channels: int, rngs: nnx.Rngs) -> nnx.GroupNorm:
    return nnx.GroupNorm(channels, num_groups=min(channels // 4, 8), epsilon=1e-5, rngs=rngs)


class _ResBlock(nnx.Module):
    def __init__(self, c_in: int, c_out: int, temb_dim: int, *, rngs: nnx.Rngs):
        self.norm1 = _group_norm(c_in, rngs)
        self.conv1 = nnx.Conv(c_in, c_out, (3, 3), padding="SAME", rngs=rngs)
        self.temb = nnx.Linear(temb_dim, c_out, rngs=rngs) if temb_dim else None
        self.norm2 = _group_norm(c_out, rngs)
        self.conv2 = nnx.Conv(c_out, c_out, (3, 3), padding="SAME", rngs=rngs)
        self.skip = nnx.Conv(c_in, c_out, (1, 1), rngs=rngs) if c_in != c_out else None

    def __call__(self, x, temb):
        h = self.conv1(nnx.swish(self.norm1(x)))
        if self.temb is not None:
            h = h + self.temb(nnx.swish(temb))[:, None, None, :]
        h = self.conv2(nnx.swish(self.norm2(h)))
        return h + (x if self.skip is None else self.skip(x))


class ImageEncoder(nnx.Module):
    """A small residual CNN for small images: ``encoder(x[, noise_level]) -> (B, out_dim)`` features.

    Two resolution levels (``width`` then ``2 width`` channels, one residual block each, average-pooled by 2
    between them), then the flattened feature map through a two-layer MLP. With ``noised=True`` every block
    also gets a Fourier embedding of ``log noise_level``.

    Args:
        in_channels: image channels.
        image_size: height = width of the images (even).
        width: channels of the first level.
        out_dim: feature size.
        noised: noise-level conditional (the noised CLIP).
        embed_size, fourier_scale: the noise-level Fourier embedding (noised only).
        rngs: parameter initialisation.

    Raises:
        ValueError: an odd or non-positive image size, or a non-positive width.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        width: int,
        out_dim: int,
        *,
        noised: bool = False,
        embed_size: int = 32,
        fourier_scale: float = 4.0,
        rngs: nnx.Rngs,
    ):
        if image_size < 2 or image_size % 2:
            raise ValueError(f"ImageEncoder image_size={image_size} must be an even integer >= 2")
        if width < 4:
            raise ValueError(f"ImageEncoder width={width} must be an integer >= 4")
        self.noised, self.out_dim = bool(noised), int(out_dim)
        temb_dim = 2 * embed_size if noised else 0
        self.embed = FourierEmbedding(embed_size, fourier_scale, rngs=rngs) if noised else None
        self.conv_in = nnx.Conv(in_channels, width, (3, 3), padding="SAME", rngs=rngs)
        self.block1 = _ResBlock(width, width, temb_dim, rngs=rngs)
        self.block2 = _ResBlock(width, 2 * width, temb_dim, rngs=rngs)
        self.norm = _group_norm(2 * width, rngs)
        flat = (image_size // 2) ** 2 * 2 * width
        self.fc1 = nnx.Linear(flat, out_dim, rngs=rngs)
        self.fc2 = nnx.Linear(out_dim, out_dim, rngs=rngs)

    def __call__(self, x, noise_level=None):
        if self.noised != (noise_level is not None):
            need = "needs a noise_level" if self.noised else "takes no noise_level (built with noised=False)"
            raise ValueError(f"this ImageEncoder {need}")
        temb = None
        if self.noised:
            noise_level = jnp.broadcast_to(jnp.asarray(noise_level, x.dtype), (x.shape[0],))
            x = batch_mul(1.0 / jnp.sqrt(1.0 + noise_level**2), x)
            temb = self.embed(jnp.log(noise_level))
        h = self.block1(self.conv_in(x), temb)
        h = nnx.avg_pool(h, (2, 2), strides=(2, 2))
        h = nnx.swish(self.norm(self.block2(h, temb)))
        return self.fc2(nnx.swish(self.fc1(h.reshape(h.shape[0], -1))))


def _unit(v):
    return v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


class CLIP(nnx.Module):
    """An image encoder and a :class:`TextEncoder` with linear projections to unit ``embed_dim`` vectors.

    Args:
        image_encoder: an :class:`ImageEncoder` (``noised`` decides whether :meth:`encode_image` takes a level).
        text_encoder: a :class:`TextEncoder`; its pooled vector is projected.
        embed_dim: the shared embedding size.
        init_temperature: τ at initialisation (CLIP: 0.07).
        max_logit_scale: the cap on ``1 / τ`` (CLIP: 100).
        rngs: parameter initialisation.
    """

    def __init__(
        self,
        image_encoder: ImageEncoder,
        text_encoder: TextEncoder,
        *,
        embed_dim: int,
        init_temperature: float = 0.07,
        max_logit_scale: float = 100.0,
        rngs: nnx.Rngs,
    ):
        if not (init_temperature > 0 and 1.0 / init_temperature <= max_logit_scale):
            raise ValueError(
                f"init_temperature={init_temperature} must be > 0 with 1 / init_temperature <= "
                f"max_logit_scale={max_logit_scale}"
            )
        self.image = image_encoder
        self.text = text_encoder
        self.noised = image_encoder.noised
        self.image_proj = nnx.Linear(image_encoder.out_dim, embed_dim, use_bias=False, rngs=rngs)
        self.text_proj = nnx.Linear(text_encoder.width, embed_dim, use_bias=False, rngs=rngs)
        self.log_logit_scale = nnx.Param(jnp.asarray(math.log(1.0 / init_temperature), jnp.float32))
        self.max_log_logit_scale = math.log(max_logit_scale)
        self.embed_dim = int(embed_dim)

    @property
    def logit_scale(self):
        """``1 / τ``, capped at ``max_logit_scale``."""
        return jnp.exp(jnp.minimum(self.log_logit_scale[...], self.max_log_logit_scale))

    def encode_image(self, x, noise_level=None):
        """Unit image embeddings ``(B, embed_dim)``; the noised CLIP needs ``noise_level`` (module docstring)."""
        return _unit(self.image_proj(self.image(x, noise_level)))

    def encode_text(self, tokens):
        """Unit text embeddings ``(B, embed_dim)`` of int tokens ``(B, L)`` (0 = padding)."""
        return _unit(self.text_proj(self.text(tokens)[1]))

    def __call__(self, x, tokens, noise_level=None):
        """``(image embeddings, text embeddings, logit_scale)`` of a batch of pairs."""
        return self.encode_image(x, noise_level), self.encode_text(tokens), self.logit_scale


def clip_loss(image_emb, text_emb, logit_scale):
    """CLIP's symmetric contrastive loss (Radford et al. 2021, Fig. 3) and the in-batch retrieval accuracy.

    Args:
        image_emb, text_emb: unit embeddings ``(B, D)``, row ``i`` of each from pair ``i``.
        logit_scale: ``1 / τ``.

    Returns:
        ``(loss, accuracy)``: the mean of the image->text and text->image cross-entropies, and the fraction of
        rows whose diagonal entry is the image->text argmax.
    """
    logits = logit_scale * image_emb @ text_emb.T
    labels = jnp.arange(logits.shape[0])
    loss_i = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    loss_t = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels)
    return 0.5 * (jnp.mean(loss_i) + jnp.mean(loss_t)), jnp.mean(jnp.argmax(logits, axis=-1) == labels)


def zero_shot_weights(text_emb, num_classes: int):
    """Class vectors of CLIP's prompt ensembling: the normalised mean of each class's unit prompt embeddings.

    Args:
        text_emb: ``(num_classes * P, D)`` unit embeddings, class-major (``P`` prompts per class).
        num_classes: classes ``K``.

    Returns:
        ``(K, D)`` unit vectors; ``argmax(image_emb @ W.T)`` classifies.
    """
    per_class = text_emb.reshape(num_classes, -1, text_emb.shape[-1])
    return _unit(jnp.mean(per_class, axis=1))


def recall_at_k(query_emb, key_emb, ks=(1, 5)) -> dict[int, jax.Array]:
    """Retrieval recall: the fraction of queries ``i`` whose own key ``i`` is among their ``k`` most similar keys.

    Ties count against the query (its key must be strictly more similar than all but ``k - 1`` others).
    """
    sims = query_emb @ key_emb.T
    own = jnp.diagonal(sims)
    rank = jnp.sum(sims >= own[:, None], axis=1) - 1  # other keys at least as similar as the own one
    return {k: jnp.mean(rank < k) for k in ks}
