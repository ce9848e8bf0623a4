"""The one parameterisation layer: network output -> score function and denoiser, for any SDE.

A network ``net_fn(x, labels) -> out`` predicts one of :data:`OUTPUTS` (``score``, ``eps``, ``x0``, ``v``,
``flow_velocity``, ``edm``) and is conditioned on one of :data:`TIME_LABELS`; the label conventions of the
reference checkpoints live here and nowhere else. :func:`model_score_fn` turns it into a
:class:`ScoreWithDenoiser`. The conversion formulas and conventions: ``docs/parameterization.md``.

Examples:
    >>> from scoresde import sde as sde_lib
    >>> vp = sde_lib.VPSDE()
    >>> net = lambda x, labels: jnp.zeros_like(x)
    >>> score_fn = model_score_fn(net, vp, **reference_convention(vp, continuous=True))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from scoresde import sde as sde_lib
from scoresde.sde import batch_mul

OUTPUTS = ("score", "eps", "x0", "v", "flow_velocity", "edm")
TIME_LABELS = ("t", "999t", "sigma", "vp_discrete", "ve_discrete", "edm_noise")

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
    "edm_preconditioning",
    "output_to_denoiser",
    "ScoreWithDenoiser",
    "with_denoiser",
]


def _check(output: str, time_label: str):
    if output not in OUTPUTS:
        raise ValueError(f"unknown network output {output!r}; expected one of: {', '.join(OUTPUTS)}")
    if time_label not in TIME_LABELS:
        raise ValueError(f"unknown time label {time_label!r}; expected one of: {', '.join(TIME_LABELS)}")


def reference_convention(sde, continuous: bool = True) -> dict:
    """The ``(output, time_label)`` pair the reference's checkpoints were trained under.

    Returns:
        A dict usable as keyword arguments of :func:`model_score_fn`.

    Raises:
        ValueError: for an SDE without a reference convention (discrete: VPSDE and VESDE only).
    """
    if isinstance(sde, (sde_lib.VPSDE, sde_lib.SubVPSDE, sde_lib.CosineVPSDE)):
        if continuous:  # the cosine VP process has no reference checkpoints: it takes the VP family's convention
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
    if time_label == "edm_noise":
        return 0.25 * jnp.log(sde.sigma(t) / sde.alpha(t))
    # ve_discrete
    return jnp.round((sde.T - t) * (sde.N - 1)).astype(jnp.int32)


def coefficients(sde, t, time_label: str = "t"):
    """``(alpha, sigma)`` of the kernel at times ``t``; the discrete DDPM schedule for ``vp_discrete``."""
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
        eps = batch_mul(1.0 / (alpha**2 + sigma**2), batch_mul(sigma, x) + batch_mul(alpha, out))
        return batch_mul(-1.0 / sigma, eps)
    if output == "flow_velocity":
        eps = batch_mul(1.0 / (alpha + sigma), x + batch_mul(alpha, out))
        return batch_mul(-1.0 / sigma, eps)
    if output == "edm":
        raise ValueError(
            "output 'edm' is a preconditioned network: use model_score_fn, which applies c_in, "
            "or output_to_denoiser with the preconditioned F"
        )
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
    if output == "flow_velocity":
        return noise - x0
    raise ValueError(f"unknown network output {output!r}; expected one of: {', '.join(OUTPUTS)}")


def edm_preconditioning(sigma, sigma_data: float = 0.5):
    """EDM's ``(c_skip, c_out, c_in, c_noise)`` at noise level ``sigma`` (Karras et al. 2022, Table 1).

    Finite at ``sigma = ∞``: ``c_skip = c_in = 0``, ``c_out = σ_d``.
    """
    sigma = jnp.asarray(sigma)
    sd2 = sigma_data**2
    finite = jnp.isfinite(sigma)
    s = jnp.where(finite, sigma, 1.0)
    c_skip = jnp.where(finite, sd2 / (s**2 + sd2), 0.0)
    c_out = jnp.where(finite, s * sigma_data / jnp.sqrt(s**2 + sd2), sigma_data)
    c_in = jnp.where(finite, 1.0 / jnp.sqrt(s**2 + sd2), 0.0)
    return c_skip, c_out, c_in, 0.25 * jnp.log(sigma)


def output_to_denoiser(out, x, alpha, sigma, output: str):
    """``E[x_0 | x_t]`` from a network output; divides by ``alpha`` only for ``score`` and ``eps``.

    Raises:
        ValueError: for an unknown output or ``"edm"``.
    """
    if output == "x0":
        return out
    if output == "v":
        return batch_mul(1.0 / (alpha**2 + sigma**2), batch_mul(alpha, x) - batch_mul(sigma, out))
    if output == "flow_velocity":
        return batch_mul(1.0 / (alpha + sigma), x - batch_mul(sigma, out))
    if output == "eps":
        return batch_mul(1.0 / alpha, x - batch_mul(sigma, out))
    if output == "score":
        return score_to_denoiser(out, x, alpha, sigma)
    raise ValueError(
        f"unknown network output {output!r} for output_to_denoiser; expected one of: "
        f"{', '.join(o for o in OUTPUTS if o != 'edm')}"
    )


@dataclasses.dataclass(frozen=True)
class ScoreWithDenoiser:
    """A batched ``score_fn(x, t)`` that also carries ``denoiser(x, t) = E[x_0 | x_t]``.

    Samplers call :attr:`denoiser` where they need ``x0`` (one NFE), so no model is pushed through
    ``1 / alpha`` needlessly. A pytree: its array leaves are traced (``docs/parameterization.md``).
    """

    score: Callable
    denoiser: Callable

    def __call__(self, x, t):
        return self.score(x, t)


jax.tree_util.register_dataclass(ScoreWithDenoiser, data_fields=["score", "denoiser"], meta_fields=[])


def with_denoiser(score_fn: Callable, denoiser: Callable) -> ScoreWithDenoiser:
    """Pairs a score function with its denoiser (e.g. an exact oracle's, or a model's)."""
    return ScoreWithDenoiser(score_fn, denoiser)


def model_score_fn(
    net_fn: Callable, sde, *, output: str, time_label: str, sigma_data: float = 0.5
) -> ScoreWithDenoiser:
    """Wraps ``net_fn(x, labels)`` into a batched ``score_fn(x, t)`` that also carries its denoiser.

    Args:
        net_fn: the network, called as ``net_fn(x, labels)``.
        sde: a linear SDE from :mod:`scoresde.sde`.
        output: what the network predicts, one of :data:`OUTPUTS`.
        time_label: how it is conditioned on time, one of :data:`TIME_LABELS`.
        sigma_data: EDM's data standard deviation (only for ``output="edm"``).

    Returns:
        a :class:`ScoreWithDenoiser` ``score_fn(x, t) -> score`` with ``x`` of shape ``(B, ...)`` and ``t``
        of shape ``(B,)``; ``score_fn.denoiser(x, t)`` gives ``E[x_0 | x_t]`` from the same output.

    Raises:
        ValueError: for an unknown ``output`` or ``time_label``.
    """
    _check(output, time_label)

    def denoiser(x, t):
        alpha, sigma = coefficients(sde, t, time_label)
        if output == "edm":
            c_skip, c_out, c_in, _ = edm_preconditioning(sigma / alpha, sigma_data)
            xbar = batch_mul(1.0 / alpha, x)
            # c_in x / alpha, written to stay finite at alpha = 0
            x_in = batch_mul(1.0 / jnp.sqrt(sigma**2 + (alpha * sigma_data) ** 2), x)
            f = net_fn(x_in, time_labels(sde, t, time_label))
            skip = batch_mul(jnp.where(c_skip > 0, c_skip, 0.0), jnp.where(jnp.isfinite(xbar), xbar, 0.0))
            return skip + batch_mul(c_out, f)
        out = net_fn(x, time_labels(sde, t, time_label))
        return output_to_denoiser(out, x, alpha, sigma, output)

    def score_fn(x, t):
        alpha, sigma = coefficients(sde, t, time_label)
        if output == "edm":
            # Tweedie solved for the score: no division by alpha
            return batch_mul(1.0 / sigma**2, batch_mul(alpha, denoiser(x, t)) - x)
        out = net_fn(x, time_labels(sde, t, time_label))
        return output_to_score(out, x, alpha, sigma, output)

    return ScoreWithDenoiser(score_fn, denoiser)


def model_denoiser(net_fn: Callable, sde, *, output: str, time_label: str, sigma_data: float = 0.5) -> Callable:
    """Wraps ``net_fn(x, labels)`` into a denoiser ``D(x, t) = E[x_0 | x_t]``; see :func:`model_score_fn`."""
    return model_score_fn(net_fn, sde, output=output, time_label=time_label, sigma_data=sigma_data).denoiser


def denoiser_from_score(score_fn: Callable, sde) -> Callable:
    """``D(x, t) = E[x_0 | x_t]`` for any score function, by Tweedie's formula."""

    def denoiser(x, t):
        return score_to_denoiser(score_fn(x, t), x, sde.alpha(t), sde.sigma(t))

    return denoiser
