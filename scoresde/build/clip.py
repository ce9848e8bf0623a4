"""CLIP from ``config.clip``, and a trained CLIP from a workdir (``--mode=train_clip``).

A run's CLIP lives in ``workdir/clip`` (the noised CLIP, ``config.clip.noised``, in ``workdir/clip_noised``, so one
workdir can hold both). :func:`load_clip` rebuilds it from the config its checkpoint stores, so a caller (CLIP
guidance, unCLIP) needs no ``clip`` section of its own.
"""

from __future__ import annotations

import os

import ml_collections
from flax import nnx

from scoresde import data as data_lib
from scoresde.build.networks import checkpoint_meta
from scoresde.build.run import with_defaults
from scoresde.checkpointing import Checkpointer, restore_params
from scoresde.data import captions
from scoresde.models.clip import CLIP, ImageEncoder
from scoresde.models.text import TextEncoder

__all__ = ["clip_dir", "get_clip", "load_clip", "stored_clip_config"]


def clip_dir(workdir: str, noised: bool = False) -> str:
    """``workdir/clip``, or ``workdir/clip_noised`` for the noised CLIP."""
    return os.path.join(workdir, "clip_noised" if noised else "clip")


def get_clip(config, *, rngs: nnx.Rngs) -> CLIP:
    """The :class:`~scoresde.models.clip.CLIP` of ``config.clip`` for the images of ``config.data``.

    The text encoder reads ``config.data.caption_len`` tokens of :data:`scoresde.data.captions.VOCAB`.

    Raises:
        ValueError: no ``config.clip`` section, or data that are not square images.
    """
    config = with_defaults(config)
    if "clip" not in config:
        raise ValueError(
            "config has no clip section; add one with config_defaults.add_clip (see configs/digits_clip.py)"
        )
    if not data_lib.is_image_data(config):
        raise ValueError(f"CLIP needs image data (H, W, C); dataset {config.data.dataset!r} is not images")
    c = config.clip
    size, _, channels = data_lib.data_shape(config)
    image = ImageEncoder(
        channels,
        size,
        int(c.image_width),
        int(c.image_features),
        noised=bool(c.noised),
        embed_size=int(c.embed_size),
        fourier_scale=float(c.fourier_scale),
        rngs=rngs,
    )
    text = TextEncoder(
        len(captions.VOCAB),
        int(config.data.caption_len),
        int(c.text_width),
        int(c.text_depth),
        int(c.text_heads),
        rngs=rngs,
    )
    return CLIP(
        image,
        text,
        embed_dim=int(c.embed_dim),
        init_temperature=float(c.init_temperature),
        max_logit_scale=float(c.max_logit_scale),
        rngs=rngs,
    )


def stored_clip_config(workdir: str, noised: bool = False) -> ml_collections.ConfigDict:
    """The config the newest CLIP checkpoint of ``workdir`` was trained with (defaults completed).

    Raises:
        FileNotFoundError: no CLIP checkpoint there (with the command that trains one).
    """
    directory = clip_dir(workdir, noised)
    ckpt = Checkpointer(directory, read_only=True)
    try:
        step = ckpt.last_complete()
    finally:
        ckpt.close()
    if step is None:
        flag = " with config.clip.noised=True (e.g. configs/digits_clip.py:noised)" if noised else ""
        raise FileNotFoundError(f"no CLIP checkpoint in {directory}; train one with --mode=train_clip{flag}")
    return with_defaults(ml_collections.ConfigDict(checkpoint_meta(directory, step)["config"]))


def load_clip(workdir: str, *, noised: bool = False, ema: bool = True) -> tuple[CLIP, int, ml_collections.ConfigDict]:
    """The trained CLIP of ``workdir`` (EMA parameters by default), built from the config it was trained with.

    Returns:
        ``(clip, step, config)``: the model, its checkpoint step and its training config.

    Raises:
        FileNotFoundError: no CLIP checkpoint (train one with ``--mode=train_clip``).
    """
    config = stored_clip_config(workdir, noised)
    model = get_clip(config, rngs=nnx.Rngs(int(config.seed)))
    model, step = restore_params(clip_dir(workdir, noised), model, ema=ema, what="clip")
    return model, step, config
