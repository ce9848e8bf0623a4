"""2-D toy datasets for the fastest demos: Gaussian-mixture grid, checkerboard, two moons, swiss roll.

All samplers are pure JAX: ``sample(name, key, n) -> (n, 2) float32``, roughly standardised to unit scale.
The Gaussian-mixture grid is also available as an exact :class:`~scoresde.analytic.GaussianMixture`
(:func:`gmm_grid`), so models trained on it can be checked against the exact score.

Examples:
    >>> x = sample("two_moons", jax.random.key(0), 512)
    >>> x.shape
    (512, 2)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from scoresde.analytic import GaussianMixture

__all__ = ["DATASETS", "sample", "gmm_grid"]


@functools.cache
def gmm_grid(grid: int = 3, spacing: float = 1.5, std: float = 0.15) -> GaussianMixture:
    """A ``grid × grid`` mixture of isotropic Gaussians centred on the origin; class k = component k."""
    c = (np.arange(grid, dtype=np.float64) - (grid - 1) / 2) * spacing
    means = np.stack(np.meshgrid(c, c, indexing="ij"), axis=-1).reshape(-1, 2)
    return GaussianMixture(means, np.full((grid * grid,), std))


def _gmm_grid(key, n):
    return gmm_grid().sample(key, n, return_labels=True)


def _checkerboard(key, n):
    k1, k2, k3 = jax.random.split(key, 3)
    x1 = jax.random.uniform(k1, (n,), minval=-2.0, maxval=2.0)
    x2 = jax.random.uniform(k2, (n,), minval=0.0, maxval=1.0) + jax.random.randint(k3, (n,), -2, 2).astype(jnp.float32)
    # shift every other column's squares so the pattern alternates
    x2 = x2 + (jnp.floor(x1) % 2)
    x2 = jnp.where(x2 >= 2.0, x2 - 4.0, x2)
    x = jnp.stack([x1, x2], axis=-1)
    labels = (jnp.floor(x1) + 2).astype(jnp.int32)
    return x, labels


def _two_moons(key, n):
    k1, k2, k3 = jax.random.split(key, 3)
    labels = jax.random.bernoulli(k1, 0.5, (n,)).astype(jnp.int32)
    theta = jax.random.uniform(k2, (n,), minval=0.0, maxval=jnp.pi)
    upper = jnp.stack([jnp.cos(theta), jnp.sin(theta)], axis=-1)
    lower = jnp.stack([1.0 - jnp.cos(theta), 0.5 - jnp.sin(theta)], axis=-1)
    x = jnp.where(labels[:, None] == 0, upper, lower) + 0.05 * jax.random.normal(k3, (n, 2))
    return (x - jnp.array([0.5, 0.25])) * 1.2, labels


def _swiss_roll(key, n):
    k1, k2 = jax.random.split(key)
    t = 1.5 * jnp.pi * (1.0 + 2.0 * jax.random.uniform(k1, (n,)))
    x = jnp.stack([t * jnp.cos(t), t * jnp.sin(t)], axis=-1) / 5.0
    labels = jnp.floor((t / jnp.pi - 1.5) / 1.0).astype(jnp.int32)
    return x + 0.05 * jax.random.normal(k2, (n, 2)), labels


DATASETS = {
    "gmm_grid": _gmm_grid,
    "checkerboard": _checkerboard,
    "two_moons": _two_moons,
    "swiss_roll": _swiss_roll,
}


def sample(name: str, key: jax.Array, n: int, *, return_labels: bool = False):
    """Draws ``n`` points of the named dataset (and their class labels if asked).

    Raises:
        ValueError: for an unknown dataset name.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown toy dataset {name!r}; expected one of: {', '.join(DATASETS)}")
    x, labels = DATASETS[name](key, n)
    x = x.astype(jnp.float32)
    return (x, labels.astype(jnp.int32)) if return_labels else x
