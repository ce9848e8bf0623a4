"""Reflow (Liu et al., "Flow Straight and Fast", ICLR 2023, Sec. 2.3): couple noise with the samples a
trained flow maps it to, then train the next flow on those couplings.

``k``-rectified flow: draw ``z ~ N(0, I)``, run this project's ODE sampler from ``z`` at ``T`` to get ``x``,
and fit ``v`` by :func:`scoresde.losses.flow_matching_loss` on the pairs ``(x, z)`` (:func:`reflow_loss`).
The paths of the coupled interpolant cross less, so fewer Euler steps suffice; for a 1-D Gaussian the
2-rectified flow's paths are straight and one Euler step is the optimal-transport map.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from scoresde import losses, sampling

__all__ = ["make_couplings", "reflow_loss"]


def make_couplings(score_fn: Callable, sde, shape, key, *, method: str = "dpm_solver++", eps=None, **options):
    """``(noise, samples)``: prior draws ``z`` at ``T`` and their images under the sampler's probability flow.

    Args:
        score_fn: the trained model (a :class:`~scoresde.parameterization.ScoreWithDenoiser` for
            :class:`~scoresde.sde.RectifiedFlow` at ``T = 1``).
        sde: its process.
        shape: ``(B, ...)``.
        key: PRNG key of the noise.
        method: a method of :func:`scoresde.sampling.sample` that is deterministic with ``options``
            (:func:`scoresde.sampling.is_deterministic`): the coupling is the flow's map.
        eps: the final time (``sampling.default_eps`` if ``None``).
        **options: the method's options (e.g. ``steps``, ``order``).

    Returns:
        ``(noise, samples, nfe)``: a coupling is a pair, so the noise comes first, then the sampler's
        ``(samples, nfe)``.

    Raises:
        ValueError: an unknown method, or one that draws noise with these options.
    """
    if not sampling.is_deterministic(method, options):
        raise ValueError(f"reflow couplings need a deterministic sampler; got method {method!r} with {options}")
    noise = sde.prior_sampling(key, shape)
    samples, nfe = sampling.sample(
        score_fn, sde, shape, jax.random.fold_in(key, 1), method=method, x_init=noise, eps=eps, **options
    )
    return noise, samples, nfe


def reflow_loss(velocity_fn: Callable, noise, samples, key, **kwargs):
    """Flow matching on fixed couplings ``(samples, noise)``: the loss that trains the next rectified flow.

    ``kwargs`` as for :func:`scoresde.losses.flow_matching_loss` (``time_sampling``, ...).
    """
    return losses.flow_matching_loss(velocity_fn, samples, key, noise=noise, **kwargs)
