"""The optimiser from ``config.optim`` (or any section with the same fields), and the per-update EMA decay."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax.numpy as jnp
import optax

from scoresde.build.ema import with_power_ema

OPTIMIZERS = ("adam", "radam")


def lr_schedule(lr: float, warmup: int = 0, decay_steps: int = 0):
    """``count -> lr``: a linear warm-up over ``warmup`` updates, then constant, or with ``decay_steps > 0`` a
    linear decay from ``lr`` to 0 that restarts every ``decay_steps`` updates.

    The restarting decay is progressive distillation's per-round schedule (google-research
    ``diffusion_distillation/config/cifar_distill.py``: ``learning_rate_anneal_type='linear'``,
    ``learning_rate_anneal_steps=distill_steps_per_iter``): update ``k`` of a round has ``lr (1 - k / decay_steps)``.
    """
    if decay_steps > 0:
        decay = lambda count: 1.0 - jnp.mod(count, decay_steps) / decay_steps  # noqa: E731
    else:
        decay = lambda count: jnp.ones_like(count, dtype=jnp.float32)  # noqa: E731
    if warmup > 0:
        return lambda count: lr * jnp.minimum(count / warmup, 1.0) * decay(count)
    return lambda count: lr * decay(count)


def make_optimizer(
    *,
    lr: float,
    warmup: int = 0,
    grad_clip: float = -1.0,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    optimizer: str = "adam",
    lr_decay_steps: int = 0,
) -> optax.GradientTransformation:
    """Adam (or RAdam) with :func:`lr_schedule` and global-norm clipping, as the reference.

    Clipping is off for ``grad_clip <= 0`` or infinite (the consistency-models code's ``float("inf")``).
    ``optimizer="radam"`` is ``optax.scale_by_radam`` (Liu et al. 2020), the optimiser of
    openai/consistency_models_cifar10 (``jcm/losses.py`` ``get_optimizer``).

    Raises:
        ValueError: an optimizer other than adam / radam.
    """
    name = str(optimizer).lower()
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; expected one of: Adam, RAdam")
    parts = []
    if 0 < grad_clip < math.inf:
        parts.append(optax.clip_by_global_norm(grad_clip))
    scale = optax.scale_by_radam if name == "radam" else optax.scale_by_adam
    parts.append(scale(b1=beta1, b2=beta2, eps=eps))
    if weight_decay > 0:
        parts.append(optax.add_decayed_weights(weight_decay))
    parts.append(optax.scale_by_learning_rate(lr_schedule(lr, warmup, lr_decay_steps)))
    return optax.chain(*parts)


def optimizer_settings(section, **fallbacks) -> dict:
    """The typed arguments of :func:`make_optimizer` from a config section (``config.optim`` or ``config.classifier``,
    both completed by :func:`scoresde.config_defaults.with_defaults`).

    Args:
        section: the config section.
        **fallbacks: values (e.g. ``lr=2e-4``) for fields the section lacks.

    Raises:
        ValueError: an optimizer other than Adam / RAdam.
    """
    f = {**fallbacks, **dict(section.items())}
    if str(f["optimizer"]).lower() not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {f['optimizer']!r}; expected one of: Adam, RAdam")
    return dict(
        lr=float(f["lr"]),
        warmup=int(f["warmup"]),
        grad_clip=float(f["grad_clip"]),
        beta1=float(f["beta1"]),
        beta2=float(f["beta2"]),
        eps=float(f["eps"]),
        weight_decay=float(f["weight_decay"]),
        optimizer=str(f["optimizer"]).lower(),
        lr_decay_steps=int(f["lr_decay_steps"]),
    )


def optimizer_from_config(config) -> optax.GradientTransformation:
    """:func:`make_optimizer` of ``config.optim``, tracking the post-hoc EMA profiles of ``config.ema``."""
    return with_power_ema(make_optimizer(**optimizer_settings(config.optim)), config)


def lr_schedule_from_config(config):
    """The :func:`lr_schedule` of ``config.optim`` (the one :func:`optimizer_from_config` applies)."""
    o = config.optim
    return lr_schedule(float(o.lr), int(o.warmup), int(o.lr_decay_steps))


def ema_halflife_decay(batch_size: int, halflife_img: float, rampup_ratio: float = 0.0) -> Callable:
    """``updates -> beta``: EDM's EMA decay per update from a half-life in images (NVlabs/edm
    ``training/training_loop.py``, "Update EMA").

    ``beta = 0.5 ** (batch / max(h, 1e-8))`` with ``h = min(halflife_img, updates · batch · rampup_ratio)`` when
    ``rampup_ratio > 0`` (EDM's ramp-up: ``cur_nimg`` is the images seen before this update, so the first update's
    beta is 0 and the EMA starts as the network), else ``h = halflife_img``.
    """
    if halflife_img <= 0:
        raise ValueError(f"an EMA half-life needs halflife_img > 0; got {halflife_img!r}")

    def beta(updates):
        h = jnp.asarray(halflife_img, jnp.float32)
        if rampup_ratio > 0:
            h = jnp.minimum(h, jnp.asarray(updates, jnp.float32) * batch_size * rampup_ratio)
        return 0.5 ** (batch_size / jnp.maximum(h, 1e-8))

    return beta


def ema_decay(config) -> float | Callable:
    """The EMA decay of ``config.model``: ``model.ema_rate`` (a number), or with ``model.ema_halflife_img > 0``
    :func:`ema_halflife_decay` of ``training.batch_size`` (a function of the update count)."""
    m = config.model
    if float(m.ema_halflife_img) > 0:
        return ema_halflife_decay(int(config.training.batch_size), float(m.ema_halflife_img), float(m.ema_rampup_ratio))
    return float(m.ema_rate)
