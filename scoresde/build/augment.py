"""EDM's augmentation (:mod:`scoresde.augment`) from ``config.data.augment_p`` / ``config.data.augment_pipeline``."""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

from scoresde import augment
from scoresde import data as data_lib


def augment_settings(config) -> augment.AugmentSettings | None:
    """The pipeline of ``config.data.augment_pipeline``, or ``None`` when ``config.data.augment_p`` is 0.

    Raises:
        ValueError: a bad pipeline entry, or augmentation of data that are not images.
    """
    if float(config.data.augment_p) == 0.0:
        return None
    settings = augment.parse_pipeline(str(config.data.augment_pipeline))
    if not settings.enabled():
        raise ValueError(
            f"config.data.augment_p={config.data.augment_p} but config.data.augment_pipeline="
            f"{config.data.augment_pipeline!r} enables no transform; set augment_p=0 to switch augmentation off"
        )
    shape = data_lib.data_shape(config)
    if len(shape) != 3:
        raise ValueError(
            f"config.data.augment_p={config.data.augment_p}: augmentation needs image data (H, W, C); "
            f"{config.data.dataset!r} has shape {shape}; expected augment_p=0"
        )
    return settings


def refuse_augmentation(config, mode: str) -> None:
    """Refuses ``config.data.augment_p > 0`` in a trainer that does not augment, so it is never silently ignored.

    EDM's augmentation conditions the trained network on the augmentation's labels; only the score model's
    trainer (``--mode=train``) feeds them. Reflow's (noise, sample) couplings must stay paired, a few-step student
    inherits its teacher's data, and the classifier / autoencoder networks take no augmentation labels.

    Raises:
        ValueError: ``augment_p > 0``, naming the mode and the fix.
    """
    p = float(config.data.augment_p)
    if p != 0.0:
        raise ValueError(
            f"config.data.augment_p={p}: EDM's augmentation is an option of --mode=train (the score model, whose "
            f"network takes the augmentation labels); --mode={mode} does not augment. Set "
            "--config.data.augment_p=0"
        )


def augment_dim(config) -> int:
    """The width of the networks' augmentation conditioning (``augment_dim``): 0 when augmentation is off."""
    settings = augment_settings(config)
    return 0 if settings is None else augment.label_dim(settings)


def augment_batch(config) -> Callable:
    """``fn(batch, key) -> batch``: the training images augmented (EDM, Karras et al. 2022, App. F.2) with their
    ``augment_labels`` added; the identity when augmentation is off. Images in ``[0, 1]`` (``config.data.centered``
    off) are augmented in ``[-1, 1]``, as EDM's, and mapped back."""
    settings = augment_settings(config)
    if settings is None:
        return lambda batch, key: batch
    p, centered = float(config.data.augment_p), bool(config.data.centered)

    def fn(batch, key):
        x = batch["image"]
        x = x if centered else 2.0 * x - 1.0
        x, labels = augment.augment(x, key, settings, p)
        x = x if centered else (x + 1.0) / 2.0
        return {**batch, "image": x.astype(batch["image"].dtype), "augment_labels": labels.astype(jnp.float32)}

    return fn
