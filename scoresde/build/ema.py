"""The power-function EMA profiles of ``config.ema`` (:mod:`scoresde.posthoc_ema`): which are tracked in training,
which ``--mode=posthoc_ema`` synthesises."""

from __future__ import annotations

import optax

from scoresde import posthoc_ema


def _sigma_list(value, field: str) -> tuple[float, ...]:
    """``"0.05, 0.10"`` (or a number) as a tuple of valid ``σ_rel``, in the order given."""
    items = [s.strip() for s in str(value).split(",") if s.strip()] if isinstance(value, str) else [value]
    out = []
    for item in items:
        try:
            v = float(item)
        except (TypeError, ValueError):
            raise ValueError(
                f"config.ema.{field}={value!r}: {item!r} is not a number; expected e.g. '0.05,0.10'"
            ) from None
        try:
            posthoc_ema.gamma_from_sigma_rel(v)
        except ValueError as e:
            raise ValueError(f"config.ema.{field}={value!r}: {e}") from None
        out.append(v)
    if len(set(out)) != len(out):
        raise ValueError(f"config.ema.{field}={value!r} names a sigma_rel twice")
    return tuple(out)


def tracked_sigma_rels(config) -> tuple[float, ...]:
    """The ``σ_rel`` tracked during training (``config.ema.track_sigma_rels``; empty: none)."""
    return _sigma_list(config.ema.track_sigma_rels, "track_sigma_rels")


def posthoc_sigma_rels(config) -> tuple[float, ...]:
    """The ``σ_rel`` ``--mode=posthoc_ema`` synthesises (``config.ema.sigma_rel``).

    Raises:
        ValueError: none given, or a bad one.
    """
    out = _sigma_list(config.ema.sigma_rel, "sigma_rel")
    if not out:
        raise ValueError(
            "--mode=posthoc_ema needs config.ema.sigma_rel, e.g. --config.ema.sigma_rel=0.08 (or '0.05,0.1')"
        )
    return out


def with_power_ema(tx: optax.GradientTransformation, config) -> optax.GradientTransformation:
    """``tx`` chained with the tracker of ``config.ema.track_sigma_rels`` (unchanged when none is tracked); the
    profiles then live in the optimizer state, so every checkpoint stores them."""
    sigma_rels = tracked_sigma_rels(config)
    if not sigma_rels:
        return tx
    return optax.chain(tx, posthoc_ema.track_power_ema(sigma_rels))
