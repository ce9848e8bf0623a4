"""Data distributions whose every noised marginal is known in closed form.

For a linear SDE with kernel ``x_t = alpha(t) x_0 + sigma(t) z``, a Gaussian mixture
``sum_k w_k N(mu_k, C_k)`` stays a Gaussian mixture: ``p_t = sum_k w_k N(alpha mu_k, alpha² C_k + sigma² I)``.
This gives exact scores, exact log-densities, an exact Bayes classifier ``p(k | x_t)`` and, for a single
Gaussian, the exact probability-flow map. Tests and benchmarks of losses, samplers, likelihoods and
guidance compare against these.

Examples:
    >>> from scoresde import sde as sde_lib
    >>> gm = GaussianMixture(means=jnp.array([[-2.0, 0.0], [2.0, 0.0]]), stds=jnp.array([0.5, 0.5]))
    >>> score_fn = gm.score_fn(sde_lib.VPSDE())
    >>> s = score_fn(jnp.zeros((3, 2)), jnp.full((3,), 0.5))
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["GaussianMixture", "random_rotation"]


def random_rotation(key, dim: int) -> jax.Array:
    """A random orthogonal ``(dim, dim)`` matrix (QR of a Gaussian matrix, sign-corrected)."""
    a = jax.random.normal(key, (dim, dim))
    q, r = jnp.linalg.qr(a)
    return q * jnp.sign(jnp.diag(r))[None, :]


class GaussianMixture:
    """A mixture of Gaussians with diagonal or full covariances.

    Args:
        means: ``(K, D)`` component means.
        stds: ``(K,)`` isotropic or ``(K, D)`` diagonal standard deviations.
        weights: ``(K,)`` mixture weights (normalised here); uniform by default.
        covs: alternatively to ``stds``, ``(K, D, D)`` full covariance matrices.
        rotation: optional ``(D, D)`` orthogonal matrix ``R``; the components become
            ``N(R mu_k, R diag(stds_k²) Rᵀ)`` (a non-diagonal covariance from diagonal stds).
        event_shape: optional shape of one example (e.g. ``(8, 8, 1)``) with ``prod == D``; samples are
            reshaped to it and functions accept inputs of shape ``(B, *event_shape)``.

    Raises:
        ValueError: for inconsistent shapes or non-positive stds/weights.
    """

    def __init__(self, means, stds=None, weights=None, *, covs=None, rotation=None, event_shape=None):
        # Parameters are concrete (numpy) so that a mixture can be built inside a jitted function too.
        means = np.asarray(means, dtype=np.float64)
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, D); got {means.shape}")
        k, d = means.shape
        if (stds is None) == (covs is None):
            raise ValueError("give exactly one of stds (K,) / (K, D) or covs (K, D, D)")
        evecs = None
        if covs is not None:
            covs = np.asarray(covs, dtype=np.float64)
            if covs.shape != (k, d, d):
                raise ValueError(f"covs must have shape {(k, d, d)}; got {covs.shape}")
            variances, evecs = np.linalg.eigh(0.5 * (covs + np.swapaxes(covs, -1, -2)))
            if not np.all(variances > 0):
                raise ValueError("covs must be positive definite")
        else:
            stds = np.asarray(stds, dtype=np.float64)
            if stds.shape == (k,):
                stds = np.broadcast_to(stds[:, None], (k, d))
            if stds.shape != (k, d):
                raise ValueError(f"stds must have shape ({k},) or ({k}, {d}); got {stds.shape}")
            if not np.all(stds > 0):
                raise ValueError("stds must be positive")
            variances = stds**2
        if rotation is not None:
            rotation = np.asarray(rotation, dtype=np.float64)
            if rotation.shape != (d, d):
                raise ValueError(f"rotation must have shape {(d, d)}; got {rotation.shape}")
            base = evecs if evecs is not None else np.broadcast_to(np.eye(d), (k, d, d))
            evecs = np.einsum("ij,kjl->kil", rotation, base)
            means = means @ rotation.T
        if weights is None:
            weights = np.full((k,), 1.0 / k)
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != (k,) or not np.all(weights > 0):
            raise ValueError(f"weights must be positive with shape ({k},); got {weights}")
        self.weights = jnp.asarray(weights / weights.sum(), jnp.float32)
        self.means = jnp.asarray(means, jnp.float32)
        self.variances = jnp.asarray(variances, jnp.float32)
        self.evecs = None if evecs is None else jnp.asarray(evecs, jnp.float32)
        self.num_components, self.dim = k, d
        self.event_shape = tuple(event_shape) if event_shape is not None else (d,)
        if int(np.prod(self.event_shape)) != d:
            raise ValueError(f"event_shape {self.event_shape} does not have {d} elements")

    # -- helpers -----------------------------------------------------------------------------------
    def _flat(self, x):
        if x.shape[1:] != self.event_shape:
            raise ValueError(f"expected inputs of shape (B, {', '.join(map(str, self.event_shape))}); got {x.shape}")
        return x.reshape(x.shape[0], self.dim)

    def _to_eig(self, v):
        """``(B, K, D)`` residuals in each component's eigenbasis."""
        if self.evecs is None:
            return v
        return jnp.einsum("kdj,bkd->bkj", self.evecs, v)

    def _from_eig(self, v):
        if self.evecs is None:
            return v
        return jnp.einsum("kdj,bkj->bkd", self.evecs, v)

    def _component_terms(self, x, alpha, sigma):
        """Per-component log-densities ``(B, K)`` and precision-weighted residuals ``(B, K, D)``."""
        xf = self._flat(x)
        a = alpha[:, None, None]
        var = a**2 * self.variances[None] + (sigma**2)[:, None, None]  # (B, K, D)
        y = self._to_eig(xf[:, None, :] - a * self.means[None])
        logn = -0.5 * jnp.sum(y * y / var + jnp.log(2 * math.pi * var), axis=-1)
        return logn, y / var

    # -- distribution at t = 0 ---------------------------------------------------------------------
    def sample(self, key, n: int, *, return_labels: bool = False):
        """Draws ``n`` samples (and optionally their component labels)."""
        kc, kz = jax.random.split(key)
        labels = jax.random.choice(kc, self.num_components, (n,), p=self.weights)
        z = jax.random.normal(kz, (n, self.dim)) * jnp.sqrt(self.variances[labels])
        if self.evecs is not None:
            z = jnp.einsum("bdj,bj->bd", self.evecs[labels], z)
        x = (self.means[labels] + z).reshape((n,) + self.event_shape)
        return (x, labels) if return_labels else x

    def log_prob(self, x):
        """``log p_0(x)``, shape ``(B,)``."""
        b = x.shape[0]
        return self._log_prob_at(x, jnp.ones((b,)), jnp.zeros((b,)))

    def _log_prob_at(self, x, alpha, sigma):
        logn, _ = self._component_terms(x, alpha, sigma)
        return jax.nn.logsumexp(logn + jnp.log(self.weights)[None], axis=-1)

    def _score_at(self, x, alpha, sigma):
        logn, prec_res = self._component_terms(x, alpha, sigma)
        resp = jax.nn.softmax(logn + jnp.log(self.weights)[None], axis=-1)  # (B, K)
        grads = -self._from_eig(prec_res)  # (B, K, D)
        return jnp.einsum("bk,bkd->bd", resp, grads).reshape(x.shape)

    # -- noised marginals --------------------------------------------------------------------------
    def log_prob_t(self, sde, x, t):
        """``log p_t(x)`` of the noised marginal under ``sde``, shape ``(B,)``."""
        return self._log_prob_at(x, sde.alpha(t), sde.sigma(t))

    def score_fn(self, sde):
        """The exact score ``∇ log p_t`` as a batched ``score_fn(x, t)``."""
        return lambda x, t: self._score_at(x, sde.alpha(t), sde.sigma(t))

    def class_log_prob(self, sde, x, t):
        """Exact Bayes classifier ``log p(k | x_t)``, shape ``(B, K)``."""
        logn, _ = self._component_terms(x, sde.alpha(t), sde.sigma(t))
        return jax.nn.log_softmax(logn + jnp.log(self.weights)[None], axis=-1)

    def component(self, k: int) -> GaussianMixture:
        """Component ``k`` as a one-component mixture (the class-conditional law)."""
        covs = np.asarray(self._covs())[k : k + 1]
        return GaussianMixture(np.asarray(self.means)[k : k + 1], covs=covs, event_shape=self.event_shape)

    def conditional_score_fn(self, sde):
        """Exact class-conditional score ``score_fn(x, t, y)`` with ``y`` an int array of shape ``(B,)``."""

        def score(x, t, y):
            alpha, sigma = sde.alpha(t), sde.sigma(t)
            _, prec_res = self._component_terms(x, alpha, sigma)
            grads = -self._from_eig(prec_res)  # (B, K, D)
            return jnp.take_along_axis(grads, y[:, None, None], axis=1)[:, 0].reshape(x.shape)

        return score

    def _covs(self):
        if self.evecs is None:
            return jax.vmap(jnp.diag)(self.variances)
        return jnp.einsum("kij,kj,klj->kil", self.evecs, self.variances, self.evecs)

    def mean(self):
        return jnp.sum(self.weights[:, None] * self.means, axis=0).reshape(self.event_shape)

    def covariance(self):
        """Covariance of the mixture at ``t = 0``, ``(D, D)``."""
        m = jnp.sum(self.weights[:, None] * self.means, axis=0)
        dm = self.means - m[None]
        return jnp.sum(self.weights[:, None, None] * (self._covs() + dm[:, :, None] * dm[:, None, :]), axis=0)

    def marginal(self, sde, t: float) -> GaussianMixture:
        """The noised marginal ``p_t`` at a scalar time ``t`` as a :class:`GaussianMixture`."""
        tt = jnp.asarray([t], dtype=jnp.float32)
        a, s = float(sde.alpha(tt)[0]), float(sde.sigma(tt)[0])
        covs = a**2 * np.asarray(self._covs(), np.float64) + s**2 * np.eye(self.dim)[None]
        return GaussianMixture(
            a * np.asarray(self.means), covs=covs, weights=np.asarray(self.weights), event_shape=self.event_shape
        )

    # -- exact probability-flow map (one Gaussian) -------------------------------------------------
    def flow_map(self, sde, x, t_from, t_to):
        """Exact probability-flow ODE map from time ``t_from`` to ``t_to`` (one Gaussian only).

        Along the flow the standardised coordinate ``Qᵀ(x - alpha_t mu) / sqrt(alpha_t² λ + sigma_t²)``
        is invariant (``C = Q diag(λ) Qᵀ``). ``t_from`` and ``t_to`` are ``(B,)`` arrays or scalars.
        """
        if self.num_components != 1:
            raise ValueError(
                f"the closed-form flow map needs a single Gaussian; this mixture has {self.num_components}"
            )
        b = x.shape[0]
        t_from = jnp.broadcast_to(jnp.asarray(t_from, jnp.float32), (b,))
        t_to = jnp.broadcast_to(jnp.asarray(t_to, jnp.float32), (b,))
        xf = self._flat(x)
        a0, s0 = sde.alpha(t_from)[:, None], sde.sigma(t_from)[:, None]
        a1, s1 = sde.alpha(t_to)[:, None], sde.sigma(t_to)[:, None]
        lam = self.variances[0][None]
        q = self.evecs[0] if self.evecs is not None else None
        r = xf - a0 * self.means[0][None]
        if q is not None:
            r = r @ q
        z = r / jnp.sqrt(a0**2 * lam + s0**2)
        r1 = z * jnp.sqrt(a1**2 * lam + s1**2)
        if q is not None:
            r1 = r1 @ q.T
        return (a1 * self.means[0][None] + r1).reshape(x.shape)

    def flow_log_det(self, sde, t_from, t_to):
        """``log |det ∂ flow_map / ∂x|`` (a scalar, the map is affine)."""
        a0, s0 = sde.alpha(jnp.asarray(t_from)), sde.sigma(jnp.asarray(t_from))
        a1, s1 = sde.alpha(jnp.asarray(t_to)), sde.sigma(jnp.asarray(t_to))
        lam = self.variances[0]
        return 0.5 * jnp.sum(jnp.log(a1**2 * lam + s1**2) - jnp.log(a0**2 * lam + s0**2))
