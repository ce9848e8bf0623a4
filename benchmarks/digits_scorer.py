"""The independent digit classifier every sample-quality row of BENCHMARKS.md uses.

An sklearn SVC (RBF kernel, ``gamma="scale"``) trained on scikit-learn's 8×8 digits, train split as
:mod:`scoresde.data` splits it (every example with index % 10 != 0), pixels scaled to [0, 1].

    from benchmarks.digits_scorer import score_samples
    score_samples(images01, labels)  # {"accuracy": ..., "mean_max_prob": ..., ...}
"""

from __future__ import annotations

import functools
import warnings

import numpy as np

__all__ = ["score_samples"]


@functools.lru_cache(maxsize=1)
def _classifier():
    from sklearn.datasets import load_digits
    from sklearn.svm import SVC

    d = load_digits()
    train = np.arange(len(d.images)) % 10 != 0
    x = (d.images[train] / 16.0).reshape(-1, 64)
    with warnings.catch_warnings():  # sklearn >= 1.9 deprecates probability=True; its Platt scaling is what we report
        warnings.simplefilter("ignore", FutureWarning)
        return SVC(kernel="rbf", gamma="scale", probability=True, random_state=0).fit(x, d.target[train])


def _to_8x8(images01: np.ndarray) -> np.ndarray:
    x = np.clip(np.asarray(images01, np.float64), 0.0, 1.0)
    if x.ndim == 4:
        x = x.mean(axis=-1)  # channels -> gray
    n, h, w = x.shape
    if (h, w) != (8, 8):
        if h % 8 or w % 8:
            raise ValueError(f"images of {h}x{w} cannot be box-downsampled to 8x8")
        x = x.reshape(n, 8, h // 8, 8, w // 8).mean(axis=(2, 4))
    return x.reshape(n, 64)


def score_samples(images01, labels=None) -> dict:
    """Scores images in [0, 1] (``(N, H, W[, C])``, box-downsampled to 8×8 if larger).

    Returns:
        ``mean_max_prob``, ``frac_confident`` (p_max > 0.9), ``num_classes_present`` (of 10, by the
        predicted class), ``class_entropy`` (nats, of the predicted-class histogram), ``n``; with
        ``labels`` also ``accuracy`` (predicted class == label).
    """
    clf = _classifier()
    x = _to_8x8(images01)
    prob = clf.predict_proba(x)
    pred = clf.predict(x)
    hist = np.bincount(pred, minlength=10) / len(pred)
    nz = hist[hist > 0]
    out = {"n": int(len(x)), "mean_max_prob": float(prob.max(axis=1).mean()),
           "frac_confident": float((prob.max(axis=1) > 0.9).mean()), "num_classes_present": int((hist > 0).sum()),
           "class_entropy": float(-(nz * np.log(nz)).sum())}
    if labels is not None:
        out["accuracy"] = float((pred == np.asarray(labels)).mean())
    return out
