"""Sample-quality metrics: FID, Inception Score and KID, with the FID Inception-v3 in Flax NNX.

The statistics (:mod:`scoresde.metrics.stats`) are pure numpy and work on any features. The feature
extractor is any ``feature_fn(uint8 NHWC images) -> (pool (N, D), logits (N, K))``; the standard one
is the FID Inception (:mod:`scoresde.metrics.inception`, weights via :mod:`scoresde.metrics.weights`),
and :mod:`scoresde.metrics.protocol` holds the protocol's pieces (the modes ``fid_stats`` and ``fid`` run it).
Importing this package imports only numpy.
"""

from scoresde.metrics.stats import (
    feature_statistics,
    frechet_distance,
    inception_score,
    kernel_distance,
    mmd2_unbiased,
    polynomial_kernel,
)

__all__ = [
    "feature_statistics",
    "frechet_distance",
    "inception_score",
    "kernel_distance",
    "mmd2_unbiased",
    "polynomial_kernel",
]
