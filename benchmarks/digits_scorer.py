"""The shared sample-quality scorer for the digits: an RBF SVC trained on scikit-learn's 8×8 digits.

The same scorer for every row of BENCHMARKS.md: ``SVC(kernel="rbf", gamma="scale", probability=True)`` on the
train split as :mod:`scoresde.data` splits it (every example with ``index % 10 != 0``), pixels in [0, 1].
Samples in [0, 1] larger than 8×8 are downsampled by block averaging.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["class_probabilities", "score_samples"]


@functools.lru_cache(maxsize=1)
def _classifier():
    from sklearn.datasets import load_digits
    from sklearn.svm import SVC

    d = load_digits()
    keep = np.arange(len(d.images)) % 10 != 0
    x = (d.images[keep] / 16.0).reshape(int(keep.sum()), -1)
    return SVC(kernel="rbf", gamma="scale", probability=True, random_state=0).fit(x, d.target[keep])


def _to_8x8(images01: np.ndarray) -> np.ndarray:
    if np.asarray(images01).dtype == np.uint8:
        raise ValueError("samples must be floats in [0, 1]; got uint8 (divide by 255)")
    x = np.asarray(images01, np.float64)
    if x.min() < -1e-6 or x.max() > 1.0 + 1e-6:
        raise ValueError(f"samples must be floats in [0, 1]; got range [{x.min():.3g}, {x.max():.3g}]")
    if x.ndim == 4:
        x = x.mean(axis=-1)
    n, h, w = x.shape
    if h % 8 or w % 8:
        raise ValueError(f"samples must be (N, 8k, 8k[, C]); got {images01.shape}")
    return x.reshape(n, 8, h // 8, 8, w // 8).mean(axis=(2, 4)).reshape(n, 64)


def class_probabilities(images01) -> np.ndarray:
    """The shared SVC's class probabilities ``(N, 10)`` for samples in [0, 1]."""
    return _classifier().predict_proba(_to_8x8(images01))


def score_samples(images01, labels=None) -> dict:
    """Scores samples in [0, 1] with the shared SVC.

    Returns:
        ``n``, ``mean_max_prob``, ``frac_confident`` (p_max > 0.9), ``classes_present`` (of 10),
        ``class_entropy_bits`` (of the predicted-class histogram; log2(10) = 3.32 is uniform), ``counts``;
        with ``labels`` also ``accuracy`` (the predicted class is the intended one).
    """
    probs = class_probabilities(images01)
    pred = probs.argmax(-1)
    counts = np.bincount(pred, minlength=10)
    p = counts / counts.sum()
    out = {
        "n": int(len(pred)),
        "mean_max_prob": float(probs.max(-1).mean()),
        "frac_confident": float((probs.max(-1) > 0.9).mean()),
        "classes_present": int((counts > 0).sum()),
        "class_entropy_bits": float(-(p[p > 0] * np.log2(p[p > 0])).sum()),
        "counts": counts.tolist(),
    }
    if labels is not None:
        out["accuracy"] = float((pred == np.asarray(labels)).mean())
    return out
