"""unCLIP's prior and its CLIP from ``config.prior``, and CLIP guidance's encoder: the edge of :mod:`scoresde.unclip`.

* The CLIP: the one ``--mode=train_clip`` trained in ``config.prior.clip_workdir``, loaded with the config stored
  there (:func:`configured_clip`); the decoder trains on its image embeddings (:func:`with_decoder_conditioning`, before the trainer's
  :func:`scoresde.build.batch_transform`).
* The pairs: every digit of a split with its caption, embedded by that CLIP (:func:`embedding_pairs`): unit text
  embeddings ``E_T(c)`` and unit image embeddings ``E_I(x)``.
* The prior: :class:`scoresde.models.mlp.MLPScore` with ``cond_dim = E`` (:func:`get_prior`), trained on the pairs
  by ``--mode=train_prior`` in ``workdir/prior`` with the config's SDE, objective and output convention. Its data
  are the image embeddings scaled by ``√E`` (:data:`to_prior_space`: unit variance per coordinate, the scale the
  SDEs are built for); :func:`to_clip_space` maps its samples back onto CLIP's unit sphere.
* CLIP guidance's encoders (:func:`noised_image_embed_fn`, :func:`clean_image_embed_fn`) in the sampler's
  coordinates.
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scoresde import data as data_lib
from scoresde import guidance
from scoresde.build.run import with_defaults

__all__ = [
    "prior_dir",
    "clip_workdir",
    "configured_clip",
    "is_unclip_decoder",
    "decoder_conditioning",
    "with_decoder_conditioning",
    "clip_temperature",
    "noised_image_embed_fn",
    "clean_image_embed_fn",
    "digit_prompt_embeddings",
    "embedding_pairs",
    "pair_batches",
    "to_prior_space",
    "to_clip_space",
    "get_prior",
    "load_prior",
    "has_prior",
    "GuidanceCLIP",
    "load_guidance_clip",
    "clip_guided_score",
    "UnclipPrior",
    "load_unclip_prior",
    "prior_image_embeddings",
]


def has_prior(config) -> bool:
    """Whether ``config`` is an unCLIP config (it has a ``prior`` section)."""
    return config.get("prior") is not None


def prior_dir(workdir: str) -> str:
    """Where the prior of a run lives: ``workdir/prior``."""
    return os.path.join(workdir, "prior")


def clip_workdir(config, section: str = "prior") -> str:
    """The workdir of a ``--mode=train_clip`` run: ``config.prior.clip_workdir`` (unCLIP) or
    ``config.sampling.clip_workdir`` (CLIP guidance).

    Raises:
        ValueError: the field is empty.
    """
    path = str(config[section].get("clip_workdir", "") or "")
    if not path:
        raise ValueError(
            f"config.{section}.clip_workdir is empty; expected the workdir of a --mode=train_clip run "
            "(e.g. runs/digits_clip, trained with configs/digits_clip.py)"
        )
    return path


def configured_clip(config, section: str = "prior", *, noised: bool = False):
    """The EMA CLIP of :func:`clip_workdir` (trained by ``--mode=train_clip``; the noised one with ``noised``), built
    from the config stored with it.

    Returns:
        ``(clip, clip_config)``: the CLIP's images are ``clip_config.data``'s.

    Raises:
        ValueError: no ``clip_workdir`` in ``config.<section>``.
        FileNotFoundError: no trained CLIP there (the message says which command trains one).
    """
    from scoresde.build import clip as clip_edge  # noqa: PLC0415  (only unCLIP and CLIP-guided runs need a CLIP)

    clip, _, clip_config = clip_edge.load_clip(clip_workdir(config, section), noised=noised)
    return clip, clip_config


def is_unclip_decoder(config) -> bool:
    """Whether ``config``'s score network is unCLIP's decoder: a ``prior`` section and ``model.cond_dim > 0``."""
    return has_prior(config) and int(config.model.get("cond_dim", 0) or 0) > 0


def with_decoder_conditioning(config, transform):
    """``transform`` (a trainer's ``fn(batch, key) -> batch``, :func:`scoresde.build.batch_transform`) preceded, for an
    unCLIP decoder, by :func:`decoder_conditioning`; ``transform`` itself otherwise."""
    if not is_unclip_decoder(config):
        return transform
    cond = decoder_conditioning(config)
    return lambda batch, key: transform(cond(batch), key)


def decoder_conditioning(config):
    """``fn(batch) -> batch`` adding ``batch["cond"]``, the CLIP image embedding of ``batch["image"]`` (model space of
    a pixel config, the CLIP's own inputs), on which the decoder trains (``model.cond_dim`` = the CLIP's size).

    Raises:
        ValueError: ``model.cond_dim`` differs from the CLIP's embedding size.
    """
    clip, clip_config = configured_clip(config)
    dim = int(clip_config.clip.embed_dim)
    if int(config.model.cond_dim) != dim:
        raise ValueError(
            f"config.model.cond_dim={config.model.cond_dim} but the CLIP of {clip_workdir(config)} embeds into {dim} "
            f"dimensions; set config.model.cond_dim={dim}"
        )
    return lambda batch: {**batch, "cond": jax.lax.stop_gradient(clip.encode_image(batch["image"]))}


def clip_temperature(clip) -> float:
    """CLIP's ``τ = 1 / logit_scale``."""
    return float(1.0 / clip.logit_scale)


def noised_image_embed_fn(clip, sde):
    """``E_I(x_t, t)`` of a noised CLIP in the sampler's coordinates: its encoder reads VE coordinates
    ``(x_t / alpha, sigma / alpha)`` (:func:`scoresde.guidance.classifier_inputs`)."""

    def embed(x, t):
        xv, level = guidance.classifier_inputs(sde, x, t)
        return clip.encode_image(xv, level)

    return embed


def clean_image_embed_fn(clip):
    """``E_I(x₀)`` of a clean CLIP, for guidance through the denoiser."""
    return lambda x0: clip.encode_image(x0)


def digit_prompt_embeddings(clip, caption_len: int) -> np.ndarray:
    """``(10, E)``: each digit's zero-shot classifier row, the normalised mean text embedding of its prompts
    (:func:`scoresde.data.captions.digit_prompts`, :func:`scoresde.models.clip.zero_shot_weights`)."""
    from scoresde.data import captions  # noqa: PLC0415
    from scoresde.models.clip import zero_shot_weights  # noqa: PLC0415

    prompts = [p for k in range(10) for p in captions.digit_prompts(k)]
    return np.asarray(zero_shot_weights(clip.encode_text(jnp.asarray(captions.tokenize(prompts, caption_len))), 10))


def embedding_pairs(clip, config, split: str) -> dict[str, np.ndarray]:
    """``{"text": (N, E), "image": (N, E), "label": (N,)}``: every example of ``split`` (with its caption,
    ``config.data.captions``) embedded by ``clip``, in the data order.

    Raises:
        ValueError: a config whose data carry no captions.
    """
    config = with_defaults(config)
    if not bool(config.data.get("captions", False)):
        raise ValueError(
            f"unCLIP's prior needs captioned data: config.data.captions is {config.data.get('captions')!r} for "
            f"dataset {config.data.dataset!r}; expected True (dataset 'digits')"
        )
    n = data_lib.num_examples(config, split)
    if n is None:
        raise ValueError(f"unCLIP's prior needs an in-memory captioned dataset; got {config.data.dataset!r}")
    # the whole split as one batch: every example, in the data order
    batch = next(iter(data_lib.get_dataset(config, split=split, batch_size=n, shuffle=False, repeat=False)))
    text, image = jax.jit(lambda x, tokens: (clip.encode_text(tokens), clip.encode_image(x)))(
        jnp.asarray(batch["image"]), jnp.asarray(batch["caption"])
    )
    return {"text": np.asarray(text), "image": np.asarray(image), "label": np.asarray(batch["label"])}


def pair_batches(pairs: dict, batch_size: int, *, start_step: int = 0, seed: int = 0):
    """Global batch ``s`` of the pairs: positions ``[s B, (s + 1) B)`` of the concatenated per-epoch permutations, so
    a resumed run reads the batches of the uninterrupted one; each process yields its own contiguous share of the
    rows. Yields ``{"image": √E E_I, "text": E_T}``."""
    n = len(pairs["image"])
    per_process = batch_size // jax.process_count()  # this process's rows of the global batch, as data.get_dataset
    mine = slice(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)
    step = start_step
    while True:
        pos = np.arange(step * batch_size, (step + 1) * batch_size)[mine]
        epochs = pos // n
        idx = np.concatenate(
            [np.random.default_rng([seed, int(e)]).permutation(n)[pos[epochs == e] % n] for e in np.unique(epochs)]
        )
        yield {"image": to_prior_space(pairs["image"][idx]), "text": pairs["text"][idx].astype(np.float32)}
        step += 1


def to_prior_space(image_embedding):
    """Unit CLIP image embeddings ``(B, E)`` scaled by ``√E``: unit variance per coordinate, the prior's data."""
    return np.asarray(image_embedding, np.float32) * math.sqrt(image_embedding.shape[-1])


def to_clip_space(z):
    """The prior's samples back on CLIP's unit sphere (CLIP's embeddings are normalised)."""
    return z / jnp.linalg.norm(z, axis=-1, keepdims=True)


def get_prior(config, dim: int, *, rngs: nnx.Rngs):
    """The prior's network: an MLP score over ``(B, dim)`` image embeddings taking ``(B, dim)`` text embeddings."""
    from scoresde.models.mlp import MLPScore  # noqa: PLC0415  (only unCLIP configs build it)

    p = with_defaults(config).prior
    return MLPScore(
        dim, hidden=int(p.hidden), num_layers=int(p.num_layers), embed_dim=int(p.embed_dim), cond_dim=dim, rngs=rngs
    )


def load_prior(config, workdir: str, dim: int, *, ema: bool = True):
    """The prior of ``workdir/prior`` (newest checkpoint, EMA parameters by default): ``(model, step)``.

    Raises:
        FileNotFoundError: no prior trained there (``--mode=train_prior``).
    """
    from scoresde.checkpointing import restore_params  # noqa: PLC0415

    model = get_prior(config, dim, rngs=nnx.Rngs(int(config.seed)))
    return restore_params(prior_dir(workdir), model, ema=ema, what="prior")


# ------------------------------------------------------------------------------------------------ sampling


@dataclasses.dataclass(frozen=True)
class GuidanceCLIP:
    """The CLIP of CLIP guidance (``config.sampling.guidance = "clip"``), loaded once by the sample mode."""

    clip: object
    caption_len: int
    noised: bool


def load_guidance_clip(config) -> GuidanceCLIP | None:
    """The CLIP of ``config.sampling.clip_workdir`` when ``config.sampling.guidance`` is ``clip`` (the noised one unless
    ``config.sampling.clip_noised`` is off: then the clean CLIP guides through the denoiser), else ``None``.

    Raises:
        ValueError: no ``config.sampling.clip_workdir``.
        FileNotFoundError: no trained CLIP there.
    """
    if str(config.sampling.get("guidance", "none")).lower() != "clip":
        return None
    noised = bool(config.sampling.get("clip_noised", True))
    clip, clip_config = configured_clip(config, "sampling", noised=noised)
    return GuidanceCLIP(clip, int(clip_config.data.caption_len), noised)


def text_embeddings_of(clip, tokens):
    """CLIP's unit text embeddings ``(B, E)`` of caption tokens ``(B, L)``."""
    return clip.encode_text(tokens)


def clip_guided_score(score_fn, sde, guide: GuidanceCLIP, tokens, scale):
    """CLIP guidance of an unconditional ``score_fn`` towards the captions ``tokens`` (one per sample): the noised CLIP's
    :func:`scoresde.guidance.clip.clip_guidance`, or the clean CLIP through the denoiser
    (:func:`scoresde.guidance.clip.clean_clip_guidance`); temperature the CLIP's learned ``τ``."""
    from scoresde.guidance import clip as clip_guidance  # noqa: PLC0415

    if tokens.shape[1] != guide.caption_len:
        raise ValueError(
            f"the prompts are {tokens.shape[1]} tokens long but the CLIP reads {guide.caption_len}; set "
            f"config.data.caption_len={guide.caption_len}"
        )
    text = text_embeddings_of(guide.clip, tokens)
    tau = 1.0 / guide.clip.logit_scale
    if guide.noised:
        embed = noised_image_embed_fn(guide.clip, sde)
        return clip_guidance.clip_guidance(score_fn, embed, text, scale=scale, temperature=tau)
    embed = clean_image_embed_fn(guide.clip)
    return clip_guidance.clean_clip_guidance(score_fn, sde, embed, text, scale=scale, temperature=tau)


@dataclasses.dataclass(frozen=True)
class UnclipPrior:
    """The prior of an unCLIP run and the CLIP whose embeddings it samples, loaded once by the sample mode."""

    prior: object
    clip: object
    caption_len: int
    dim: int


def load_unclip_prior(config, workdir: str) -> UnclipPrior | None:
    """The EMA prior of ``workdir/prior`` and its CLIP for an unCLIP decoder config, else ``None``.

    Raises:
        FileNotFoundError: no CLIP or no prior (``--mode=train_clip``, ``--mode=train_prior``).
    """
    if not is_unclip_decoder(config):
        return None
    clip, clip_config = configured_clip(config)
    dim = int(clip_config.clip.embed_dim)
    prior, _ = load_prior(config, workdir, dim)
    return UnclipPrior(prior, clip, int(clip_config.data.caption_len), dim)


def prior_image_embeddings(score_model, bundle: UnclipPrior, tokens, key, *, w, steps: int = 50):
    """unCLIP's first stage: CLIP image embeddings ``(B, E)`` (unit vectors) sampled by the prior for caption tokens,
    with the prior's classifier-free guidance weight ``w`` (``dpm_solver++``, ``steps`` steps)."""
    from scoresde import unclip  # noqa: PLC0415

    text = text_embeddings_of(bundle.clip, tokens)

    def cond(x, t, y):
        return score_model.score_fn(bundle.prior, y=y)(x, t)

    z, _ = unclip.sample_prior(
        cond, score_model.sde, text, key, dim=bundle.dim, w=w, method="dpm_solver++", steps=steps
    )
    return to_clip_space(z)
