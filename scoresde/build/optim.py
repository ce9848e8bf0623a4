"""The optimiser from ``config.optim`` (or any section with the same fields)."""

from __future__ import annotations

import jax.numpy as jnp
import optax

from scoresde.build.ema import with_power_ema


def lr_schedule(lr: float, warmup: int = 0):
    """``count -> lr`` with a linear warm-up over ``warmup`` updates."""
    if warmup > 0:
        return lambda count: lr * jnp.minimum(count / warmup, 1.0)
    return lambda count: lr * jnp.ones_like(count, dtype=jnp.float32)


def make_optimizer(
    *,
    lr: float,
    warmup: int = 0,
    grad_clip: float = -1.0,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    """Adam with linear warm-up and global-norm clipping (skipped if ``grad_clip < 0``), as the reference."""
    parts = []
    if grad_clip >= 0:
        parts.append(optax.clip_by_global_norm(grad_clip))
    parts.append(optax.scale_by_adam(b1=beta1, b2=beta2, eps=eps))
    if weight_decay > 0:
        parts.append(optax.add_decayed_weights(weight_decay))
    parts.append(optax.scale_by_learning_rate(lr_schedule(lr, warmup)))
    return optax.chain(*parts)


def optimizer_settings(section, **fallbacks) -> dict:
    """The typed arguments of :func:`make_optimizer` from a config section (``config.optim`` or ``config.classifier``,
    both completed by :func:`scoresde.config_defaults.with_defaults`).

    Args:
        section: the config section.
        **fallbacks: values (e.g. ``lr=2e-4``) for fields the section lacks.

    Raises:
        ValueError: an optimizer other than Adam.
    """
    f = {**fallbacks, **dict(section.items())}
    if str(f["optimizer"]).lower() != "adam":
        raise ValueError(f"unknown optimizer {f['optimizer']!r}; expected 'Adam'")
    return dict(
        lr=float(f["lr"]),
        warmup=int(f["warmup"]),
        grad_clip=float(f["grad_clip"]),
        beta1=float(f["beta1"]),
        beta2=float(f["beta2"]),
        eps=float(f["eps"]),
        weight_decay=float(f["weight_decay"]),
    )


def optimizer_from_config(config) -> optax.GradientTransformation:
    """:func:`make_optimizer` of ``config.optim``, tracking the post-hoc EMA profiles of ``config.ema``."""
    return with_power_ema(make_optimizer(**optimizer_settings(config.optim)), config)
