"""Forward SDEs for score-based generative modelling (Song et al., ICLR 2021), with the reference interface.

Every SDE is linear, with kernel ``x_t = alpha(t) x_0 + sigma(t) z``; ``alpha``, ``sigma``, ``log_snr`` and
``t_from_log_snr`` let samplers be written once for all of them. ``x`` is ``(B, ...)``, ``t`` is ``(B,)``.
SDE objects are static pytrees (frozen, hashable, no traced fields). Formulas: ``docs/sde.md``.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
HALF_PI = math.pi / 2
ScoreFn = Callable[[Array, Array], Array]

__all__ = [
    "SDE",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "OUSDE",
    "RectifiedFlow",
    "EDMSDE",
    "TrigFlow",
    "ReverseSDE",
    "batch_mul",
    "get_sde",
]


def batch_mul(a: Array, x: Array) -> Array:
    """Multiplies a per-example ``(B,)`` array into ``x`` of shape ``(B, ...)``.

    Never broadcasts ``(B,)`` against the last axis of ``x``, so it is safe under rank promotion ``'raise'``.
    """
    a = jnp.asarray(a)
    return a.reshape(a.shape + (1,) * (x.ndim - a.ndim)) * x


def _sum_except_batch(x: Array) -> Array:
    return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def _static_dataclass(cls):
    """Frozen dataclass registered as a pytree with no leaves (all fields static)."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    return jax.tree_util.register_dataclass(cls, data_fields=[], meta_fields=fields)


class SDE(abc.ABC):
    """Abstract forward SDE ``dx = f(x, t) dt + g(t) dW`` on ``t ∈ [0, T]``."""

    N: int
    T: float

    @abc.abstractmethod
    def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Returns the drift ``f(x, t)`` (shape of ``x``) and diffusion ``g(t)`` (shape ``(B,)``)."""

    @abc.abstractmethod
    def marginal_prob(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Returns mean (shape of ``x``) and std (shape ``(B,)``) of the kernel ``p_{0t}(x_t | x_0 = x)``."""

    @abc.abstractmethod
    def prior_sampling(self, key: Array, shape) -> Array:
        """Draws from the prior ``p_T``."""

    @abc.abstractmethod
    def prior_logp(self, z: Array) -> Array:
        """Log-density of the prior at ``z``, shape ``(B,)``."""

    def discretize(self, x: Array, t: Array) -> tuple[Array, Array]:
        """One step of the discretised SDE, ``x_{i+1} = x_i + f_i(x_i) + G_i z_i``.

        Euler–Maruyama with step ``T / N`` by default; subclasses override with their exact
        discretisations (DDPM for VP, SMLD for VE).
        """
        dt = self.T / self.N
        drift, diffusion = self.sde(x, t)
        return drift * dt, diffusion * math.sqrt(dt)

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> ReverseSDE:
        """The reverse-time SDE (Song et al. 2021, eq. 6) or probability-flow ODE (eq. 13)."""
        return ReverseSDE(forward=self, score_fn=score_fn, probability_flow=probability_flow)


class LinearSDE(SDE):
    """An SDE whose kernel is ``x_t = alpha(t) x_0 + sigma(t) z`` with ``z ~ N(0, I)``."""

    @abc.abstractmethod
    def alpha(self, t: Array) -> Array:
        """Scale of ``x_0`` in the kernel mean."""

    @abc.abstractmethod
    def sigma(self, t: Array) -> Array:
        """Kernel std."""

    @abc.abstractmethod
    def log_snr(self, t: Array) -> Array:
        """``log(alpha(t)² / sigma(t)²)``, strictly decreasing in ``t``."""

    @abc.abstractmethod
    def t_from_log_snr(self, log_snr: Array) -> Array:
        """Inverse of :meth:`log_snr`."""

    @property
    def prior_std(self) -> float:
        return 1.0

    def marginal_prob(self, x, t):
        return batch_mul(self.alpha(t), x), self.sigma(t)

    def prior_sampling(self, key, shape):
        return self.prior_std * jax.random.normal(key, shape)

    def prior_logp(self, z):
        d = np.prod(z.shape[1:])
        s = self.prior_std
        return -0.5 * d * math.log(2 * math.pi * s * s) - _sum_except_batch(z * z) / (2 * s * s)


class _BetaSchedule:
    """Linear ``beta(t) = beta_min + t (beta_max - beta_min)`` shared by VP and sub-VP."""

    beta_min: float
    beta_max: float
    N: int

    def beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integrated_beta(self, t):
        """``B(t) = ∫_0^t beta(s) ds``."""
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t

    def t_from_integrated_beta(self, b):
        """Inverse of :meth:`integrated_beta`, stable also for constant beta."""
        d = self.beta_max - self.beta_min
        return 2.0 * b / (self.beta_min + jnp.sqrt(self.beta_min**2 + 2.0 * d * b))

    # the discrete DDPM schedule (Ho et al. 2020) of discretize, the ancestral and Langevin steps
    @property
    def discrete_betas(self) -> np.ndarray:
        return np.linspace(self.beta_min / self.N, self.beta_max / self.N, self.N, dtype=np.float64)

    @property
    def alphas(self) -> np.ndarray:
        return 1.0 - self.discrete_betas

    @property
    def alphas_cumprod(self) -> np.ndarray:
        return np.cumprod(self.alphas)

    @property
    def sqrt_alphas_cumprod(self) -> np.ndarray:
        return np.sqrt(self.alphas_cumprod)

    @property
    def sqrt_1m_alphas_cumprod(self) -> np.ndarray:
        return np.sqrt(1.0 - self.alphas_cumprod)

    def timestep(self, t):
        """Discrete index ``floor(t (N - 1) / T)`` as the reference computes it."""
        return (t * (self.N - 1) / self.T).astype(jnp.int32)


@_static_dataclass
class VPSDE(_BetaSchedule, LinearSDE):
    """Variance-preserving SDE ``dx = -½ beta(t) x dt + sqrt(beta(t)) dW`` (Song et al. 2021, eq. 11).

    The continuous limit of DDPM. ``alpha(t) = exp(-½ B(t))``, ``sigma(t)² = 1 - exp(-B(t))``.

    Examples:
        >>> sde = VPSDE()
        >>> mean, std = sde.marginal_prob(jnp.ones((2, 3)), jnp.array([1e-5, 1.0]))
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    N: int = 1000
    T: float = 1.0

    def __post_init__(self):
        if not (self.beta_min > 0 and self.beta_max >= self.beta_min):
            raise ValueError(
                f"VPSDE needs 0 < beta_min <= beta_max; got beta_min={self.beta_min}, beta_max={self.beta_max}"
            )
        _check_n_t(self)

    def sde(self, x, t):
        beta_t = self.beta(t)
        return batch_mul(-0.5 * beta_t, x), jnp.sqrt(beta_t)

    def alpha(self, t):
        return jnp.exp(-0.5 * self.integrated_beta(t))

    def sigma(self, t):
        return jnp.sqrt(-jnp.expm1(-self.integrated_beta(t)))

    def log_snr(self, t):
        # log(alpha²/sigma²) = -B - log(1 - e^{-B}) = -log(expm1(B))
        return -_log_expm1(self.integrated_beta(t))

    def t_from_log_snr(self, log_snr):
        # B = log1p(exp(-log_snr)) = softplus(-log_snr)
        return self.t_from_integrated_beta(jax.nn.softplus(-log_snr))

    def discretize(self, x, t):
        """DDPM ancestral discretisation: ``x_{i+1} = sqrt(1 - beta_i) x_i + sqrt(beta_i) z``."""
        idx = self.timestep(t)
        beta = jnp.asarray(self.discrete_betas, dtype=x.dtype)[idx]
        alpha = jnp.asarray(self.alphas, dtype=x.dtype)[idx]
        return batch_mul(jnp.sqrt(alpha), x) - x, jnp.sqrt(beta)


@_static_dataclass
class SubVPSDE(_BetaSchedule, LinearSDE):
    """Sub-VP SDE ``dx = -½ beta x dt + sqrt(beta (1 - e^{-2B(t)})) dW`` (Song et al. 2021, eq. 12).

    ``alpha(t) = exp(-½ B(t))``, ``sigma(t) = 1 - exp(-B(t))``. Carries the discrete DDPM schedule for the
    Langevin corrector's step size (``docs/sde.md``).
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    N: int = 1000
    T: float = 1.0

    def __post_init__(self):
        if not (self.beta_min > 0 and self.beta_max >= self.beta_min):
            raise ValueError(
                f"SubVPSDE needs 0 < beta_min <= beta_max; got beta_min={self.beta_min}, beta_max={self.beta_max}"
            )
        _check_n_t(self)

    def sde(self, x, t):
        beta_t = self.beta(t)
        discount = -jnp.expm1(-2.0 * self.integrated_beta(t))
        return batch_mul(-0.5 * beta_t, x), jnp.sqrt(beta_t * discount)

    def alpha(self, t):
        return jnp.exp(-0.5 * self.integrated_beta(t))

    def sigma(self, t):
        return -jnp.expm1(-self.integrated_beta(t))

    def log_snr(self, t):
        b = self.integrated_beta(t)
        return -b - 2.0 * jnp.log(-jnp.expm1(-b))

    def t_from_log_snr(self, log_snr):
        # alpha/sigma = e^{-B/2} / (1 - e^{-B}) = 1 / (2 sinh(B/2)) = e^{log_snr/2}
        # => B = 2 asinh(e^{-log_snr/2} / 2)
        return self.t_from_integrated_beta(2.0 * jnp.arcsinh(0.5 * jnp.exp(-0.5 * log_snr)))


@_static_dataclass
class VESDE(LinearSDE):
    """Variance-exploding SDE ``dx = sqrt(d sigma²/dt) dW`` with geometric ``sigma(t)`` (eq. 9).

    ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``, the kernel std as in the reference (``docs/sde.md``).
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    N: int = 1000
    T: float = 1.0

    def __post_init__(self):
        if not (0 < self.sigma_min < self.sigma_max):
            raise ValueError(
                f"VESDE needs 0 < sigma_min < sigma_max; got sigma_min={self.sigma_min}, sigma_max={self.sigma_max}"
            )
        _check_n_t(self)

    @property
    def log_ratio(self) -> float:
        return math.log(self.sigma_max / self.sigma_min)

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    @property
    def discrete_sigmas(self) -> np.ndarray:
        return np.exp(np.linspace(math.log(self.sigma_min), math.log(self.sigma_max), self.N))

    def sde(self, x, t):
        sigma = self.sigma(t)
        return jnp.zeros_like(x), sigma * math.sqrt(2.0 * self.log_ratio)

    def alpha(self, t):
        return jnp.ones_like(t)

    def sigma(self, t):
        return self.sigma_min * jnp.exp(t * self.log_ratio)

    def log_snr(self, t):
        return -2.0 * (math.log(self.sigma_min) + t * self.log_ratio)

    def t_from_log_snr(self, log_snr):
        return (-0.5 * log_snr - math.log(self.sigma_min)) / self.log_ratio

    def timestep(self, t):
        return (t * (self.N - 1) / self.T).astype(jnp.int32)

    def discretize(self, x, t):
        """SMLD discretisation: ``x_{i+1} = x_i + sqrt(sigma_{i+1}² - sigma_i²) z``."""
        idx = self.timestep(t)
        sigmas = jnp.asarray(self.discrete_sigmas, dtype=x.dtype)
        sigma = sigmas[idx]
        adjacent = jnp.where(idx == 0, jnp.zeros_like(sigma), sigmas[jnp.maximum(idx - 1, 0)])
        return jnp.zeros_like(x), jnp.sqrt(sigma**2 - adjacent**2)


@_static_dataclass
class OUSDE(VPSDE):
    """Ornstein–Uhlenbeck process ``dx = -x dt + sqrt(2) dW`` of the lecture notes.

    The constant-beta VP SDE with ``beta = 2``; its stationary law is ``N(0, I)``. ``T`` defaults to 5
    so that ``alpha(T) = e^{-5}`` and the prior ``N(0, I)`` is close to the true ``p_T``.
    """

    beta_min: float = 2.0
    beta_max: float = 2.0
    N: int = 1000
    T: float = 5.0


@_static_dataclass
class RectifiedFlow(LinearSDE):
    """The linear interpolant ``x_t = (1 - t) x_0 + t z`` of rectified flow / flow matching.

    ``alpha(t) = 1 - t``, ``sigma(t) = t`` (Liu et al., "Flow Straight and Fast", ICLR 2023, eq. 1); the
    prior ``N(0, I)`` is exact at ``T = 1``. The SDE's coefficients are infinite at ``t = 1``, so whatever
    goes through :meth:`sde` (``pc``, :meth:`reverse`) needs ``T < 1``; the exponential-integrator samplers,
    ``ode`` and the likelihood start at ``T = 1`` from a model with a denoiser (``docs/sde.md``).
    """

    N: int = 1000
    T: float = 1.0

    def __post_init__(self):
        if not (isinstance(self.N, (int, np.integer)) and self.N >= 2):
            raise ValueError(f"RectifiedFlow needs an integer N >= 2; got N={self.N!r}")
        if not 0 < self.T <= 1:
            raise ValueError(f"RectifiedFlow needs 0 < T <= 1 (alpha = 1 - t); got T={self.T!r}")

    def sde(self, x, t):
        f = -1.0 / (1.0 - t)
        return batch_mul(f, x), jnp.sqrt(2.0 * t / (1.0 - t))

    def alpha(self, t):
        return 1.0 - t

    def sigma(self, t):
        return t

    def log_snr(self, t):
        return 2.0 * (jnp.log1p(-t) - jnp.log(t))

    def t_from_log_snr(self, log_snr):
        # (1 - t) / t = e^{log_snr / 2}  =>  t = sigmoid(-log_snr / 2)
        return jax.nn.sigmoid(-0.5 * log_snr)


@_static_dataclass
class EDMSDE(LinearSDE):
    """The EDM noise process ``x_sigma = x_0 + sigma z`` with ``sigma(t) = t`` (Karras et al. 2022, Table 1).

    ``dx = sqrt(2 t) dW`` (EDM eq. 6), ``T = sigma_max``; ``sigma_min`` is the default sampling ``eps`` and
    EDM's ``rho = 7`` grid (eq. 5) the default grid.
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    N: int = 1000

    default_grid = "edm"

    def __post_init__(self):
        if not (0 < self.sigma_min < self.sigma_max):
            raise ValueError(
                f"EDMSDE needs 0 < sigma_min < sigma_max; got sigma_min={self.sigma_min}, sigma_max={self.sigma_max}"
            )
        if not (isinstance(self.N, (int, np.integer)) and self.N >= 2):
            raise ValueError(f"EDMSDE needs an integer N >= 2; got N={self.N!r}")

    @property
    def T(self) -> float:
        return float(self.sigma_max)

    @property
    def default_eps(self) -> float:
        return float(self.sigma_min)

    @property
    def prior_std(self) -> float:
        return float(self.sigma_max)

    def sde(self, x, t):
        return jnp.zeros_like(x), jnp.sqrt(2.0 * t)

    def alpha(self, t):
        return jnp.ones_like(t)

    def sigma(self, t):
        return t

    def log_snr(self, t):
        return -2.0 * jnp.log(t)

    def t_from_log_snr(self, log_snr):
        return jnp.exp(-0.5 * log_snr)


@_static_dataclass
class TrigFlow(LinearSDE):
    """The TrigFlow process ``x_t = cos(t) x_0 + sin(t) σ_d z`` (Lu & Song 2025, Sec. 3).

    ``alpha(t) = cos t`` (clamped at 0: ``cos(float32(π/2))`` is ``-4e-8``, and the prior must be exact at
    ``T``), ``sigma(t) = σ_d sin t``, ``log_snr(t) = -2 log(σ_d tan t)``, prior ``N(0, σ_d² I)``.

    The Itô SDE with these marginals (``f = alpha'/alpha``, ``g² = (sigma²)' - 2 f sigma²``, Kingma et al.
    2021, eq. 33) is ``dx = -tan(t) x dt + σ_d sqrt(2 tan t) dW``, so the score-form probability-flow drift is
    ``-tan(t) (x + σ_d² ∇log p_t(x))``; like :class:`~scoresde.sde.RectifiedFlow` both coefficients are
    infinite at ``T = π/2``: solvers that go through :meth:`sde` need ``T < π/2``. The samplers of
    :func:`scoresde.sampling.sample` that start at ``T`` (``ode``, whose velocity form is
    ``(cos(t) x - D) / sin(t)`` here, and the grid methods) need a model that carries its denoiser, as for
    rectified flow. The maps to and from the other processes are in :mod:`scoresde.fewstep.trigflow`.

    Args:
        sigma_data: ``σ_d``, the data standard deviation (0.5 for images in ``[-1, 1]``, the paper's value).
        N: number of discretisation steps (for the SDE interface).
        T: end time, ``0 < T <= π/2``.

    Raises:
        ValueError: for ``sigma_data <= 0``, ``N < 2`` or ``T`` outside ``(0, π/2]``.
    """

    sigma_data: float = 0.5
    N: int = 1000
    T: float = HALF_PI

    def __post_init__(self):
        if not self.sigma_data > 0:
            raise ValueError(f"TrigFlow needs sigma_data > 0; got {self.sigma_data!r}")
        if not (isinstance(self.N, (int, np.integer)) and self.N >= 2):
            raise ValueError(f"TrigFlow needs an integer N >= 2; got N={self.N!r}")
        if not 0 < self.T <= HALF_PI:
            raise ValueError(f"TrigFlow needs 0 < T <= pi/2; got T={self.T!r}")

    @property
    def prior_std(self) -> float:
        return float(self.sigma_data)

    def sde(self, x, t):
        tan = jnp.tan(t)
        return batch_mul(-tan, x), self.sigma_data * jnp.sqrt(2.0 * tan)

    def alpha(self, t):
        # clamped value, unclamped derivative -sin(t): the velocity form of the probability flow
        # (scoresde.sampling.ode.flow_velocity) differentiates alpha at T, where a plain max gives 0
        cos = jnp.cos(t)
        return cos - jax.lax.stop_gradient(jnp.minimum(cos, 0.0))

    def sigma(self, t):
        return self.sigma_data * jnp.sin(t)

    def log_snr(self, t):
        return 2.0 * (jnp.log(self.alpha(t)) - jnp.log(self.sigma(t)))

    def t_from_log_snr(self, log_snr):
        # sigma/alpha = σ_d tan t = e^{-log_snr/2}
        return jnp.arctan(jnp.exp(-0.5 * log_snr) / self.sigma_data)


def _log_expm1(x):
    """``log(e^x - 1)``, accurate for small and large ``x``."""
    return jnp.where(x > 20.0, x, jnp.log(jnp.expm1(jnp.minimum(x, 20.0))))


def _check_n_t(sde):
    if not (isinstance(sde.N, (int, np.integer)) and sde.N >= 2):
        raise ValueError(f"{type(sde).__name__} needs an integer N >= 2; got N={sde.N!r}")
    if not sde.T > 0:
        raise ValueError(f"{type(sde).__name__} needs T > 0; got T={sde.T!r}")


def probability_flow_drift(score_fn: ScoreFn, sde, x: Array, t: Array) -> Array:
    """The probability-flow drift ``f(x, t) - ½ g(t)² ∇log p_t(x)`` (Song et al. 2021, eq. 13), ``t`` ``(B,)``.

    The one implementation: the reverse SDE, the ODE samplers and the likelihood all call it.
    """
    drift, diffusion = sde.sde(x, t)
    return drift - batch_mul(0.5 * diffusion**2, score_fn(x, t))


@dataclasses.dataclass(frozen=True)
class ReverseSDE:
    """Reverse-time SDE ``dx = [f - g² ∇log p_t] dt + g dW̄`` or probability-flow ODE (eqs. 6, 13).

    Has the forward interface (``sde``, ``discretize``, ``N``, ``T``). The drift is in forward time
    (a reverse step uses ``x - drift dt``), as in the reference.
    """

    forward: SDE
    score_fn: ScoreFn
    probability_flow: bool = False

    @property
    def N(self):
        return self.forward.N

    @property
    def T(self):
        return self.forward.T

    def sde(self, x, t):
        drift, diffusion = self.forward.sde(x, t)
        if self.probability_flow:
            return probability_flow_drift(self.score_fn, self.forward, x, t), jnp.zeros_like(diffusion)
        return drift - batch_mul(diffusion**2, self.score_fn(x, t)), diffusion

    def discretize(self, x, t):
        """Reverse discretisation ``(rev_f, rev_G)`` (the reverse-diffusion predictor uses it)."""
        f, G = self.forward.discretize(x, t)
        scale = 0.5 if self.probability_flow else 1.0
        rev_f = f - batch_mul(G**2 * scale, self.score_fn(x, t))
        rev_G = jnp.zeros_like(G) if self.probability_flow else G
        return rev_f, rev_G

    def marginal_prob(self, x, t):
        return self.forward.marginal_prob(x, t)

    def prior_sampling(self, key, shape):
        return self.forward.prior_sampling(key, shape)

    def prior_logp(self, z):
        return self.forward.prior_logp(z)

    def reverse(self, score_fn, probability_flow=False):
        raise NotImplementedError("the reverse of a reverse SDE is not defined here; use the forward SDE")


_SDES = {
    "vpsde": VPSDE,
    "vp": VPSDE,
    "subvpsde": SubVPSDE,
    "subvp": SubVPSDE,
    "vesde": VESDE,
    "ve": VESDE,
    "ou": OUSDE,
    "rectified_flow": RectifiedFlow,
    "edm": EDMSDE,
    "trigflow": TrigFlow,
}


def get_sde(name: str, **kwargs) -> LinearSDE:
    """Builds an SDE by its reference name (``vpsde``, ``subvpsde``, ``vesde``) or short name.

    ``kwargs`` are the class's fields, e.g. ``get_sde("trigflow", sigma_data=0.5)``.

    Raises:
        ValueError: for an unknown name.
    """
    key = name.lower()
    if key not in _SDES:
        raise ValueError(
            f"unknown sde {name!r}; expected one of: vpsde, subvpsde, vesde, rectified_flow, edm, trigflow (or vp, subvp, ve, ou)"
        )
    return _SDES[key](**kwargs)
