"""The one parameterisation layer: network output -> score function and denoiser, for any SDE.

A network is a callable ``net_fn(x, labels) -> out`` trained to predict one of

* ``"score"``: ``∇ log p_t(x)`` directly (continuous/discrete VE reference models);
* ``"eps"``:   the noise ``z`` in ``x_t = alpha x_0 + sigma z`` (DDPM / continuous VP reference models);
* ``"x0"``:    the clean data ``E[x_0 | x_t]``;
* ``"v"``:     ``alpha z - sigma x_0`` (Salimans & Ho 2022).

and fed a time label given by ``time_label``:

* ``"t"``:           ``t`` itself;
* ``"999t"``:        ``999 t``, the reference's continuous VP / sub-VP convention;
* ``"sigma"``:       ``sigma(t)``, the reference's continuous VE convention;
* ``"vp_discrete"``: ``t (N - 1)``, the reference's discrete DDPM convention; alpha/sigma then come
  from the discrete schedule (``sqrt_alphas_cumprod`` / ``sqrt_1m_alphas_cumprod``), as in the reference;
* ``"ve_discrete"``: ``round((T - t)(N - 1))``, the reference's discrete SMLD convention.

This module is the only place these conventions live; samplers, likelihood and guidance consume the
resulting ``score_fn(x, t)`` and ``denoiser(x, t)``.

Examples:
    >>> from scoresde import sde as sde_lib
    >>> vp = sde_lib.VPSDE()
    >>> net = lambda x, labels: jnp.zeros_like(x)
    >>> score_fn = model_score_fn(net, vp, **reference_convention(vp, continuous=True))
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp

from scoresde import sde as sde_lib
from scoresde.sde import batch_mul

OUTPUTS = ("score", "eps", "x0", "v")
TIME_LABELS = ("t", "999t", "sigma", "vp_discrete", "ve_discrete")

__all__ = [
    "OUTPUTS",
    "TIME_LABELS",
    "reference_convention",
    "time_labels",
    "coefficients",
    "output_to_score",
    "score_to_denoiser",
    "model_score_fn",
    "model_denoiser",
    "target_from",
]


def _check(output: str, time_label: str):
    if output not in OUTPUTS:
        raise ValueError(f"unknown network output {output!r}; expected one of: {', '.join(OUTPUTS)}")
    if time_label not in TIME_LABELS:
        raise ValueError(f"unknown time label {time_label!r}; expected one of: {', '.join(TIME_LABELS)}")


def reference_convention(sde, continuous: bool = True) -> dict:
    """The (output, time_label) pair under which the reference's checkpoints were trained.

    Returns a dict usable as keyword arguments of :func:`model_score_fn`.
    """
    if isinstance(sde, (sde_lib.VPSDE, sde_lib.SubVPSDE)):
        if continuous:
            return {"output": "eps", "time_label": "999t"}
        if not isinstance(sde, sde_lib.VPSDE) or isinstance(sde, sde_lib.OUSDE):
            raise ValueError(f"discrete training is defined for VPSDE and VESDE only; got {type(sde).__name__}")
        return {"output": "eps", "time_label": "vp_discrete"}
    if isinstance(sde, sde_lib.VESDE):
        return {"output": "score", "time_label": "sigma" if continuous else "ve_discrete"}
    raise ValueError(f"no reference convention for SDE {type(sde).__name__}")


def time_labels(sde, t, time_label: str):
    """The network's conditioning input for times ``t`` (shape ``(B,)``)."""
    _check("score", time_label)
    if time_label == "t":
        return t
    if time_label == "999t":
        return 999.0 * t
    if time_label == "sigma":
        return sde.sigma(t)
    if time_label == "vp_discrete":
        return t * (sde.N - 1)
    # ve_discrete
    return jnp.round((sde.T - t) * (sde.N - 1)).astype(jnp.int32)


def coefficients(sde, t, time_label: str = "t"):
    """``(alpha, sigma)`` of the kernel used to convert outputs at times ``t``.

    The continuous kernel, except for ``vp_discrete`` which uses the DDPM schedule at index
    ``int(t (N - 1))`` as the reference's discrete score function does.
    """
    if time_label == "vp_discrete":
        idx = (t * (sde.N - 1)).astype(jnp.int32)
        alpha = jnp.asarray(sde.sqrt_alphas_cumprod, dtype=t.dtype)[idx]
        sigma = jnp.asarray(sde.sqrt_1m_alphas_cumprod, dtype=t.dtype)[idx]
        return alpha, sigma
    return sde.alpha(t), sde.sigma(t)


def output_to_score(out, x, alpha, sigma, output: str):
    """Converts a network output at ``x_t = alpha x0 + sigma z`` into the score ``∇ log p_t(x_t)``."""
    if output == "score":
        return out
    if output == "eps":
        return batch_mul(-1.0 / sigma, out)
    if output == "x0":
        return batch_mul(1.0 / sigma**2, batch_mul(alpha, out) - x)
    if output == "v":
        # eps = (sigma x + alpha v) / (alpha² + sigma²)
        eps = batch_mul(1.0 / (alpha**2 + sigma**2), batch_mul(sigma, x) + batch_mul(alpha, out))
        return batch_mul(-1.0 / sigma, eps)
    raise ValueError(f"unknown network output {output!r}; expected one of: {', '.join(OUTPUTS)}")


def score_to_denoiser(score, x, alpha, sigma):
    """Tweedie's formula ``E[x0 | x_t] = (x_t + sigma² score) / alpha``."""
    return batch_mul(1.0 / alpha, x + batch_mul(sigma**2, score))


def target_from(x0, noise, alpha, sigma, output: str):
    """The regression target for a network of the given output type (used by losses)."""
    if output == "eps":
        return noise
    if output == "x0":
        return x0
    if output == "v":
        return batch_mul(alpha, noise) - batch_mul(sigma, x0)
    if output == "score":
        return batch_mul(-1.0 / sigma, noise)
    raise ValueError(f"unknown network output {output!r}; expected one of: {', '.join(OUTPUTS)}")


def model_score_fn(net_fn: Callable, sde, *, output: str, time_label: str) -> Callable:
    """Wraps ``net_fn(x, labels)`` into a batched ``score_fn(x, t)``.

    Args:
        net_fn: the network, called as ``net_fn(x, labels)``.
        sde: a linear SDE from :mod:`scoresde.sde`.
        output: what the network predicts, one of :data:`OUTPUTS`.
        time_label: how it is conditioned on time, one of :data:`TIME_LABELS`.

    Returns:
        ``score_fn(x, t) -> score`` with ``x`` of shape ``(B, ...)`` and ``t`` of shape ``(B,)``.
    """
    _check(output, time_label)

    def score_fn(x, t):
        out = net_fn(x, time_labels(sde, t, time_label))
        alpha, sigma = coefficients(sde, t, time_label)
        return output_to_score(out, x, alpha, sigma, output)

    return score_fn


def model_denoiser(net_fn: Callable, sde, *, output: str, time_label: str) -> Callable:
    """Wraps ``net_fn(x, labels)`` into a denoiser ``D(x, t) = E[x_0 | x_t]``."""
    score_fn = model_score_fn(net_fn, sde, output=output, time_label=time_label)
    return denoiser_from_score(score_fn, sde)


def denoiser_from_score(score_fn: Callable, sde) -> Callable:
    """``D(x, t) = E[x_0 | x_t]`` for any score function, by Tweedie's formula."""

    def denoiser(x, t):
        return score_to_denoiser(score_fn(x, t), x, sde.alpha(t), sde.sigma(t))

    return denoiser
