"""Feature extraction for the metrics: the FID Inception as a batched, data-parallel ``feature_fn``, and
streaming float64 moments of features across batches and processes.

A ``feature_fn`` maps uint8 NHWC images to ``(pool (N, D), logits (N, K))``. The standard one is
:func:`inception_feature_fn`; tests and explicit choices may pass any other.
"""

from __future__ import annotations

import math
import os
import pickle
from collections.abc import Callable, Iterable

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from scoresde.images import to_uint8  # noqa: F401  (the protocol's uint8 map, re-exported)

FeatureFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def inception_feature_fn(
    weights: str | None = None,
    *,
    batch_size: int = 250,
    resize_method: str = "pytorch_fid",
    download: bool | None = None,
) -> FeatureFn:
    """The standard FID feature extractor: uint8 NHWC images → (pool_3 ``(N, 2048)``, logits ``(N, 1008)``).

    The forward pass is compiled once for ``batch_size`` images split over this process's devices (a
    ``('data',)`` mesh); the last chunk is padded and the padding dropped, so every image counts once.

    Args:
        weights: a weights file (see :mod:`scoresde.metrics.weights` for the search order).
        batch_size: images per compiled call; rounded up to a multiple of the local device count.
        resize_method: ``"pytorch_fid"`` (standard) or ``"tf_legacy"``.
        download: allow downloading the weights (None: unless ``SCORESDE_OFFLINE`` is set).

    Raises:
        InceptionWeightsError: when the weights cannot be found (never falls back to other features).
    """
    from flax import nnx  # noqa: PLC0415  (flax and the Inception only when it is built)

    from scoresde.metrics.weights import build_inception, load_params, resolve_weights_path  # noqa: PLC0415  (as flax)

    path = resolve_weights_path(weights, download=download)
    model = build_inception(load_params(path), resize_method=resize_method)
    devices = jax.local_devices()
    mesh = Mesh(np.asarray(devices), ("data",))
    batch_size = int(math.ceil(batch_size / len(devices)) * len(devices))
    graphdef, state = nnx.split(model)
    state = jax.device_put(state, NamedSharding(mesh, P()))
    in_sharding = NamedSharding(mesh, P("data"))

    @jax.jit
    def forward(state, images):
        return nnx.merge(graphdef, state)(images)

    def feature_fn(images):
        images = np.asarray(images)
        n = len(images)
        pools, logits = [], []
        for start in range(0, n, batch_size):
            chunk = images[start : start + batch_size]
            pad = batch_size - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
            p, lg = forward(state, jax.device_put(chunk, in_sharding))
            pools.append(np.asarray(p)[: batch_size - pad])
            logits.append(np.asarray(lg)[: batch_size - pad])
        return np.concatenate(pools), np.concatenate(logits)

    feature_fn.name = f"inception_v3_fid(weights={os.path.basename(path)}, resize={resize_method})"
    return feature_fn


def feature_name(feature_fn) -> str:
    return getattr(feature_fn, "name", getattr(feature_fn, "__name__", type(feature_fn).__name__))


class FeatureAccumulator:
    """Streams ``(pool, logits)`` batches into float64 moments; keeps features up to ``keep_max`` rows.

    The sums are shifted by the first batch's mean, so the covariance does not lose digits to
    cancellation when the features have a large mean.
    """

    def __init__(self, keep_max: int | None = None):
        self.keep_max = keep_max
        self.n = 0
        self._shift = self._s1 = self._s2 = None
        self._pools, self._logits = [], []

    def add(self, pool, logits=None) -> None:
        pool = np.asarray(pool, np.float64)
        if pool.ndim != 2:
            raise ValueError(f"features must be (N, D); got shape {pool.shape}")
        if self._shift is None:
            self._shift = pool.mean(axis=0)
            self._s1 = np.zeros(pool.shape[1])
            self._s2 = np.zeros((pool.shape[1], pool.shape[1]))
        c = pool - self._shift
        self._s1 += c.sum(axis=0)
        self._s2 += c.T @ c
        self.n += len(pool)
        if self.keep_max is None or self.n <= self.keep_max:
            self._pools.append(pool.astype(np.float32))
            if logits is not None:
                self._logits.append(np.asarray(logits, np.float32))
        else:
            self._pools, self._logits = [], []

    def merge(self, other: FeatureAccumulator) -> None:
        """Adds another accumulator's data (e.g. another process's)."""
        if other.n == 0:
            return
        if self.n == 0:
            self.__dict__.update({k: v for k, v in other.__dict__.items() if k != "keep_max"})
            return
        d = other._shift - self._shift
        # Re-centre the other sums on our shift: sum (x - a) = sum (x - b) + n (b - a).
        s1 = other._s1 + other.n * d
        s2 = other._s2 + np.outer(other._s1, d) + np.outer(d, other._s1) + other.n * np.outer(d, d)
        self._s1 += s1
        self._s2 += s2
        self.n += other.n
        keep = self.keep_max is None or self.n <= self.keep_max
        self._pools = self._pools + other._pools if keep else []
        self._logits = self._logits + other._logits if keep else []

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mu (D,), sigma (D, D))`` with the unbiased (N - 1) covariance, like ``np.cov``."""
        if self.n < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance; got {self.n}")
        m1 = self._s1 / self.n
        sigma = (self._s2 - self.n * np.outer(m1, m1)) / (self.n - 1)
        return self._shift + m1, (sigma + sigma.T) / 2

    @property
    def pool(self) -> np.ndarray | None:
        return np.concatenate(self._pools) if self._pools and self.keep_max_ok else None

    @property
    def logits(self) -> np.ndarray | None:
        return np.concatenate(self._logits) if self._logits and self.keep_max_ok else None

    @property
    def keep_max_ok(self) -> bool:
        return self.keep_max is None or self.n <= self.keep_max


def _allgather_accumulators(acc: FeatureAccumulator) -> FeatureAccumulator:
    """Combines every process's accumulator (one process: returned as is)."""
    if jax.process_count() == 1:
        return acc
    blob = np.frombuffer(pickle.dumps(acc), np.uint8)
    sizes = multihost_utils.process_allgather(np.array([blob.size]))
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: blob.size] = blob
    blobs = multihost_utils.process_allgather(padded)
    total = FeatureAccumulator(acc.keep_max)
    for b, s in zip(blobs, sizes.reshape(-1), strict=True):
        total.merge(pickle.loads(np.asarray(b[: int(s)]).tobytes()))
    return total


def accumulate_features(
    feature_fn: FeatureFn, batches: Iterable[np.ndarray], *, keep_max: int | None = None
) -> FeatureAccumulator:
    """Runs ``feature_fn`` over uint8 batches (this process's) and combines all processes' results."""
    acc = FeatureAccumulator(keep_max)
    for images in batches:
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise ValueError(f"feature extraction takes uint8 images; got dtype {images.dtype}")
        if len(images):
            pool, logits = feature_fn(images)
            acc.add(pool, logits)
    return _allgather_accumulators(acc)
