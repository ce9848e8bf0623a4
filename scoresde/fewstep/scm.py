"""sCM: continuous-time consistency training and distillation on TrigFlow (pure math).

Lu & Song, "Simplifying, Stabilizing and Scaling Continuous-Time Consistency Models" (ICLR 2025). With the
consistency function ``f_θ(x_t, t) = cos(t) x_t - sin(t) σ_d F_θ(x_t/σ_d, t)``
(:func:`scoresde.fewstep.trigflow.consistency_fn`), the gradient of the continuous-time consistency objective
is ``∇_θ E[-w(t) σ_d sin(t) F_θᵀ(x_t/σ_d, t) df_θ⁻(x_t, t)/dt]`` (paper Sec. 3-4), whose tangent is

``df_θ⁻/dt = -cos(t) (σ_d F_θ⁻ - dx_t/dt) - sin(t) (x_t + σ_d dF_θ⁻/dt)``,

``dF_θ⁻/dt = ∇_x F_θ⁻ · (dx_t/dt)/σ_d + ∂_t F_θ⁻`` being the total derivative along the probability-flow
trajectory. It is computed by ONE forward-mode ``jax.jvp`` of ``(x_in, t) ↦ F_θ⁻(x_in, t)`` at
``(x_t/σ_d, t)`` with tangent ``((dx_t/dt)/σ_d, 1)`` (:func:`consistency_tangent`), which also returns
``F_θ⁻`` itself. ``θ⁻`` is ``θ`` under ``stop_gradient`` (the paper's choice) unless an EMA is passed.

The training step is the paper's Algorithm 1 (:func:`scm_loss_at`):

* ``g = -cos²(t) (σ_d F_θ⁻ - dx_t/dt) - r cos(t) sin(t) (x_t + σ_d dF_θ⁻/dt)`` = ``cos(t) df/dt`` with the
  second term ramped in by the tangent warm-up ``r`` (:func:`tangent_warmup`, Sec. 4.2);
* tangent normalisation ``g ← g / (‖g‖ + c)`` per example, ``c = 0.1`` (Sec. 4.2);
* the adaptive weighting ``w_φ(t)``, a small learned function of ``t`` (:class:`AdaptiveWeight`), in the loss
  ``e^{w_φ(t)} / D ‖F_θ - F_θ⁻ - g‖² - w_φ(t)`` (Sec. 4.2); at ``θ = θ⁻`` its ``θ``-gradient is
  ``-2 e^{w}/D ∂F_θᵀ g``, the continuous-time consistency gradient with a learned ``w``;
* the log-normal proposal ``σ = e^τ``, ``τ ~ N(P_mean, P_std²)``, ``t = arctan(σ / σ_d)``
  (:func:`sample_time`; defaults ``P_mean = -1.0``, ``P_std = 1.4`` of the paper's CIFAR-10 runs, App. G).

``dx_t/dt`` is the teacher's probability-flow velocity for sCD (:func:`scd_loss`, a ``velocity_fn`` from
:func:`scoresde.fewstep.trigflow.trigflow_velocity_from_denoiser` for a VP / EDM / flow teacher) or the
one-sample estimate ``σ_d cos(t) z - sin(t) x_0`` for sCT (:func:`sct_loss`); ``df/dt`` is affine in it, so
sCT's tangent is unbiased for sCD's with the exact teacher (before the normalisation, which is not linear).

Sampling (:func:`scm_sample`): 1 step ``f(σ_d z, π/2)``, or the paper's 2 steps through ``t_mid = 1.1``:
re-noise ``x = cos(t_mid) x_0 + sin(t_mid) σ_d z'`` and apply ``f`` again. It is Song et al.'s multistep
consistency sampler (:func:`scoresde.sampling.consistency.consistency_sample`) on the
:class:`~scoresde.fewstep.trigflow.TrigFlow` process with boundary time ``0``.

Network convention: ``net_fn(params, x_in, t) -> F`` with ``x_in = x_t / σ_d`` and the raw TrigFlow time
``t`` (the paper's ``c_noise(t) = t``). An NNX network ``model`` becomes one with
``graphdef, params = nnx.split(model); net_fn = lambda p, x, t: nnx.merge(graphdef, p)(x, t)``.

Examples:
    >>> net_fn = lambda params, x_in, t: params * x_in
    >>> batch = jnp.ones((4, 2))
    >>> loss, aux = sct_loss(net_fn, jnp.float32(0.3), batch, jax.random.key(0), sigma_data=0.5)
    >>> aux["t"].shape
    (4,)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from scoresde.fewstep.trigflow import HALF_PI, TrigFlow, velocity_target
from scoresde.sampling.consistency import SCM_T_MID, consistency_sample
from scoresde.sde import batch_mul

P_MEAN = -1.0  # Lu & Song 2025, App. G, CIFAR-10 (ImageNet 64: -0.8)
P_STD = 1.4  # CIFAR-10 (ImageNet 64: 1.6)
TANGENT_NORM_C = 0.1  # Sec. 4.2
T_MID = SCM_T_MID  # the 2-step sampler's intermediate time (Sec. 5)

__all__ = [
    "P_MEAN",
    "P_STD",
    "TANGENT_NORM_C",
    "T_MID",
    "sample_time",
    "tangent_warmup",
    "consistency_tangent",
    "scm_loss_at",
    "sct_loss",
    "scd_loss",
    "AdaptiveWeight",
    "scm_sample",
]


def _sum_except_batch(x):
    return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def sample_time(key, batch: int, *, sigma_data: float, p_mean=P_MEAN, p_std=P_STD, dtype=jnp.float32):
    """The log-normal proposal on ``tan(t)``: ``t = arctan(e^τ / σ_d)``, ``τ ~ N(P_mean, P_std²)`` (Algorithm 1).

    ``σ_d tan(t) = e^τ`` is EDM's noise level, so this is EDM's log-normal ``σ`` mapped to TrigFlow time.
    """
    tau = p_mean + p_std * jax.random.normal(key, (batch,), dtype)
    return jnp.arctan(jnp.exp(tau) / sigma_data)


def tangent_warmup(step, warmup_steps: int):
    """The tangent warm-up coefficient ``r = min(1, step / H)`` (Sec. 4.2; ``H = 10k`` iterations in the paper).

    ``step`` may be traced, so the training step never recompiles as ``r`` ramps. ``warmup_steps = 0`` gives 1.
    """
    if warmup_steps <= 0:
        return jnp.ones((), jnp.float32)
    return jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / warmup_steps)


def consistency_tangent(net_fn: Callable, params, x_t, t, dxdt, *, sigma_data: float, warmup=1.0):
    """``(F_θ⁻, df_θ⁻/dt)`` along the trajectory through ``x_t`` with velocity ``dx_t/dt``.

    ``df/dt = -cos(t) (σ_d F - dx_t/dt) - r sin(t) (x_t + σ_d dF/dt)``, with ``dF/dt`` from ONE ``jax.jvp`` of
    ``F`` at ``(x_t/σ_d, t)`` with tangent ``((dx_t/dt)/σ_d, 1)``. With ``r = 1`` this is the exact time
    derivative of ``t ↦ f(x(t), t)`` along any path with ``x'(t) = dx_t/dt``; ``r < 1`` is the warm-up.
    ``params`` and ``dx_t/dt`` are stop-gradiented: this is the target side.

    Args:
        net_fn: ``net_fn(params, x_in, t) -> F``.
        params: the target parameters ``θ⁻``.
        x_t: states ``(B, ...)``; t: TrigFlow times ``(B,)``; dxdt: ``dx_t/dt`` of the shape of ``x_t``.
        sigma_data: ``σ_d``.
        warmup: ``r`` in ``[0, 1]`` (a float or traced scalar).

    Returns:
        ``(F⁻, df/dt)``, both of the shape of ``x_t``.
    """
    params = jax.lax.stop_gradient(params)
    dxdt = jax.lax.stop_gradient(dxdt)
    f_minus, df_minus = jax.jvp(
        lambda x_in, s: net_fn(params, x_in, s), (x_t / sigma_data, t), (dxdt / sigma_data, jnp.ones_like(t))
    )
    cos, sin = jnp.cos(t), jnp.sin(t)
    dfdt = -batch_mul(cos, sigma_data * f_minus - dxdt) - batch_mul(warmup * sin, x_t + sigma_data * df_minus)
    return f_minus, dfdt


def scm_loss_at(
    net_fn: Callable,
    params,
    x_t,
    t,
    dxdt,
    *,
    sigma_data: float,
    weight_fn: Callable | None = None,
    warmup=1.0,
    tangent_norm_c: float | None = TANGENT_NORM_C,
    target_params=None,
):
    """The sCM loss at given ``(x_t, t, dx_t/dt)`` (Algorithm 1 after the sampling lines).

    ``g = cos(t) df_θ⁻/dt`` (:func:`consistency_tangent`), ``g ← g / (‖g‖ + c)``, and per example
    ``e^{w(t)}/D ‖F_θ(x_t/σ_d, t) - F_θ⁻ - g‖² - w(t)``; the loss is their mean.

    Args:
        net_fn: ``net_fn(params, x_in, t) -> F``.
        params: the parameters ``θ`` that are differentiated (also those of ``weight_fn``).
        x_t, t, dxdt: see :func:`consistency_tangent`.
        sigma_data: ``σ_d``.
        weight_fn: ``weight_fn(params, t) -> w`` of shape ``(B,)`` (e.g. an :class:`AdaptiveWeight` inside
            ``params``); ``None`` for ``w = 0``.
        warmup: the tangent warm-up ``r``.
        tangent_norm_c: ``c`` of the tangent normalisation; ``None`` turns it off.
        target_params: ``θ⁻`` (e.g. an EMA); ``None`` for ``stop_gradient(params)`` (the paper's choice).

    Returns:
        ``(loss, aux)``; ``aux`` has per-example ``losses``, ``mse`` (``‖F - F⁻ - g‖²/D``), the weights ``w``
        and the tangent norms ``g_norm`` before normalisation.
    """
    target = params if target_params is None else target_params
    f_minus, dfdt = consistency_tangent(net_fn, target, x_t, t, dxdt, sigma_data=sigma_data, warmup=warmup)
    g = batch_mul(jnp.cos(t), dfdt)
    g_norm = jnp.sqrt(_sum_except_batch(g * g))
    if tangent_norm_c is not None:
        g = batch_mul(1.0 / (g_norm + tangent_norm_c), g)
    f = net_fn(params, x_t / sigma_data, t)
    d = math.prod(x_t.shape[1:])
    mse = _sum_except_batch(jnp.square(f - jax.lax.stop_gradient(f_minus + g))) / d
    w = jnp.zeros_like(t) if weight_fn is None else weight_fn(params, t)
    losses = jnp.exp(w) * mse - w
    return jnp.mean(losses), {"losses": losses, "mse": mse, "w": w, "g_norm": g_norm}


def _noised(batch, key, sigma_data, p_mean, p_std):
    k_t, k_z = jax.random.split(key)
    t = sample_time(k_t, batch.shape[0], sigma_data=sigma_data, p_mean=p_mean, p_std=p_std, dtype=batch.dtype)
    z = jax.random.normal(k_z, batch.shape, batch.dtype)
    x_t = batch_mul(jnp.cos(t), batch) + batch_mul(sigma_data * jnp.sin(t), z)
    return t, z, x_t


def sct_loss(
    net_fn: Callable,
    params,
    batch,
    key,
    *,
    sigma_data: float,
    weight_fn: Callable | None = None,
    warmup=1.0,
    tangent_norm_c: float | None = TANGENT_NORM_C,
    p_mean=P_MEAN,
    p_std=P_STD,
    target_params=None,
):
    """Continuous-time consistency training (sCT, Algorithm 1): ``dx_t/dt = σ_d cos(t) z - sin(t) x_0``.

    ``t`` from :func:`sample_time`, ``x_t = cos(t) x_0 + sin(t) σ_d z``; the rest is :func:`scm_loss_at`.

    Returns:
        ``(loss, aux)`` as :func:`scm_loss_at`, plus the times ``t``.
    """
    return _noised_loss(
        net_fn,
        params,
        batch,
        key,
        lambda x_t, t, z: velocity_target(batch, z, t, sigma_data=sigma_data),
        sigma_data=sigma_data,
        weight_fn=weight_fn,
        warmup=warmup,
        tangent_norm_c=tangent_norm_c,
        p_mean=p_mean,
        p_std=p_std,
        target_params=target_params,
    )


def scd_loss(
    net_fn: Callable,
    params,
    velocity_fn: Callable,
    batch,
    key,
    *,
    sigma_data: float,
    weight_fn: Callable | None = None,
    warmup=1.0,
    tangent_norm_c: float | None = TANGENT_NORM_C,
    p_mean=P_MEAN,
    p_std=P_STD,
    target_params=None,
):
    """Continuous-time consistency distillation (sCD, Algorithm 1): ``dx_t/dt = velocity_fn(x_t, t)``.

    Args:
        velocity_fn: the teacher's TrigFlow probability-flow velocity ``v(x_t, t)`` in data units, e.g.
            :func:`scoresde.fewstep.trigflow.trigflow_velocity_from_denoiser` of a VP / EDM teacher, or
            :func:`scoresde.fewstep.trigflow.network_velocity` of a TrigFlow diffusion model (1 NFE).
        Others as :func:`sct_loss`.

    Returns:
        ``(loss, aux)`` as :func:`sct_loss`.
    """
    return _noised_loss(
        net_fn,
        params,
        batch,
        key,
        lambda x_t, t, z: velocity_fn(x_t, t),
        sigma_data=sigma_data,
        weight_fn=weight_fn,
        warmup=warmup,
        tangent_norm_c=tangent_norm_c,
        p_mean=p_mean,
        p_std=p_std,
        target_params=target_params,
    )


def _noised_loss(net_fn, params, batch, key, dxdt_fn, *, sigma_data, p_mean, p_std, **loss_kwargs):
    """:func:`scm_loss_at` at ``x_t`` noised from ``batch`` (:func:`_noised`), with ``dx_t/dt = dxdt_fn(x_t, t, z)``:
    the one body of :func:`sct_loss` and :func:`scd_loss`, which differ only in the velocity."""
    t, z, x_t = _noised(batch, key, sigma_data, p_mean, p_std)
    loss, aux = scm_loss_at(net_fn, params, x_t, t, dxdt_fn(x_t, t, z), sigma_data=sigma_data, **loss_kwargs)
    return loss, {**aux, "t": t}


class AdaptiveWeight(nnx.Module):
    """``w_φ(t)``: the learned log-weight of the sCM loss (Sec. 4.2), ``Linear(Fourier features of t)``.

    Fixed random Fourier features ``[cos(ω t + b)]`` of the (log-)noise level ``log(σ_d tan t)`` (the paper
    embeds ``t`` with the network's own time embedding; a separate tiny module keeps it independent of
    the network), a zero-initialised linear read-out so that ``w = 0`` (plain L2) at the start.

    Args:
        features: number of Fourier features.
        sigma_data: ``σ_d`` (the input is ``log(σ_d tan t)``, EDM's ``log σ``).
        rngs: for the random frequencies.
    """

    def __init__(self, features: int = 32, *, sigma_data: float = 0.5, rngs: nnx.Rngs):
        key = rngs.params()
        kw, kb = jax.random.split(key)
        # the frequencies are buffers, not parameters: the weighting is only as flexible as its read-out
        self.freqs = nnx.Variable(jax.random.normal(kw, (features,)))
        self.phases = nnx.Variable(2 * math.pi * jax.random.uniform(kb, (features,)))
        self.sigma_data = sigma_data
        self.out = nnx.Linear(features, 1, kernel_init=nnx.initializers.zeros, rngs=rngs)

    def __call__(self, t):
        log_sigma = jnp.log(self.sigma_data * jnp.tan(t))
        feats = math.sqrt(2.0) * jnp.cos(log_sigma[:, None] * self.freqs[...][None] + self.phases[...][None])
        return self.out(feats)[:, 0]


def scm_sample(f: Callable, key, shape, *, sigma_data: float, steps: int = 1, times=None, dtype=jnp.float32):
    """1- or few-step sCM sampling from ``x_{π/2} = σ_d z`` (Lu & Song 2025; Song et al. 2023, Alg. 1).

    Args:
        f: the consistency function ``f(x_t, t) -> x_0`` (:func:`scoresde.fewstep.trigflow.consistency_fn`).
        key: PRNG key (the prior draw and the re-noising).
        shape: ``(B, ...)``.
        sigma_data: ``σ_d``.
        steps: 1 or 2 with the default times; ignored when ``times`` is given.
        times: the decreasing intermediate times ``(τ_1, ...)`` in ``(0, π/2)``; default ``(1.1,)`` for
            ``steps = 2`` (the paper's ``t_mid``), ``()`` for ``steps = 1``.

    Returns:
        ``(x_0, nfe)`` with ``nfe`` counted by the sampler (``len(times) + 1``).

    Raises:
        ValueError: for ``steps`` other than 1 or 2 without ``times``.
    """
    if times is None:
        if steps not in (1, 2):
            raise ValueError(f"scm_sample needs steps 1 or 2 without explicit times; got steps={steps}")
        times = () if steps == 1 else (T_MID,)
    process = TrigFlow(sigma_data=sigma_data)
    k_prior, k_steps = jax.random.split(key)
    x = process.prior_sampling(k_prior, shape).astype(dtype)
    ts = jnp.concatenate([jnp.array([HALF_PI], dtype), jnp.asarray(times, dtype).reshape(-1)])
    # eps = 0: the re-noising kernel from x_0 is TrigFlow's own, cos(τ) x_0 + sin(τ) σ_d z
    return consistency_sample(f, process, x, ts, k_steps, jnp.zeros((), jnp.int32), eps=0.0)
