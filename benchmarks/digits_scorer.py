"""The shared sample-quality scorer for the 8x8 digits: an RBF SVC trained on scikit-learn's digits.

Train split as :mod:`scoresde.data` splits it (every example with index % 10 != 0), pixels in [0, 1]
(``images / 16``). ``score_samples(images01, labels=None)`` takes samples in [0, 1] of shape (N, 8, 8[, 1])
(larger images are average-pooled to 8x8) and returns, unconditionally, the mean max-probability, the
fraction of samples with p_max > 0.9, the number of classes that appear and the entropy of the predicted
class distribution (nats; log 10 = 2.303 for a uniform one); with ``labels``, also the accuracy of the
intended class.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=1)
def _classifier():
    from sklearn.datasets import load_digits
    from sklearn.svm import SVC

    d = load_digits()
    x = d.images.reshape(len(d.images), -1).astype(np.float64) / 16.0
    train = np.arange(len(x)) % 10 != 0
    return SVC(kernel="rbf", gamma="scale", probability=True, random_state=0).fit(x[train], d.target[train])


def _to_8x8(images01) -> np.ndarray:
    x = np.asarray(images01, np.float64)
    if x.ndim == 4:
        x = x.mean(-1)
    n, h, w = x.shape
    if (h, w) != (8, 8):
        x = x.reshape(n, 8, h // 8, 8, w // 8).mean((2, 4))
    return np.clip(x.reshape(n, 64), 0.0, 1.0)


def score_samples(images01, labels=None) -> dict:
    """Scores samples in [0, 1] with the shared SVC (see the module docstring)."""
    clf = _classifier()
    p = clf.predict_proba(_to_8x8(images01))
    pred = clf.classes_[np.argmax(p, axis=1)]
    counts = np.bincount(pred, minlength=10) / len(pred)
    nz = counts[counts > 0]
    out = {"n": int(len(pred)), "mean_max_prob": float(p.max(1).mean()),
           "frac_confident": float((p.max(1) > 0.9).mean()), "classes_present": int((counts > 0).sum()),
           "class_entropy": float(-(nz * np.log(nz)).sum())}
    if labels is not None:
        out["accuracy"] = float((pred == np.asarray(labels)).mean())
    return out
