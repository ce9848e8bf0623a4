"""Sample-quality statistics on feature vectors: Fréchet distance, kernel distance (KID), Inception Score.

Pure numpy in float64, for the matrix square root of near-singular 2048×2048 covariances. FID: Heusel et
al. 2017; KID: Bińkowski et al. 2018; IS: Salimans et al. 2016. Numerics: ``docs/metrics.md``.
"""

from __future__ import annotations

import numpy as np


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (``np.cov`` convention, ddof=1) of ``(N, D)`` features, in float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be (N, D) with N >= 2; got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _sym_sqrt_psd(a: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix by eigendecomposition."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    # tiny negative eigenvalues are round-off of a PSD matrix; larger ones mean a bad input
    tol = 1e-8 * max(1.0, float(np.abs(w).max(initial=0.0)))
    if w.min(initial=0.0) < -tol:
        raise ValueError(f"covariance is not positive semi-definite: smallest eigenvalue {w.min():.3e}")
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al. 2017).

    Stable for singular covariances: no complex parts or NaNs (``docs/metrics.md``).

    Args:
        mu1, mu2: ``(D,)`` means.
        sigma1, sigma2: ``(D, D)`` covariances.

    Returns:
        The squared Fréchet distance (the quantity reported as "FID"), a Python float >= 0.

    Raises:
        ValueError: on mismatched shapes or a covariance that is not PSD.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"expected mu (D,) and sigma (D, D) with one D; got mu1 {mu1.shape}, sigma1 "
            f"{s1.shape}, mu2 {mu2.shape}, sigma2 {s2.shape}"
        )
    sqrt_s1 = _sym_sqrt_psd(s1)
    m = sqrt_s1 @ s2 @ sqrt_s1
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = np.sqrt(np.clip(eig, 0.0, None)).sum()
    diff = mu1 - mu2
    value = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean
    # identical inputs can give -1e-12; the distance is non-negative
    return float(max(value, 0.0))


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The KID kernel k(x, y) = (x·y / d + 1)³ between rows of ``x (N, D)`` and ``y (M, D)``."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x, y) -> float:
    """Unbiased estimate of MMD² with the cubic polynomial kernel (Bińkowski et al. 2018, eq. 2).

    Unbiased for any set sizes ``N, M >= 2`` (so it can be negative).

    Raises:
        ValueError: for fewer than 2 rows or mismatched feature widths.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"need (N>=2, D) and (M>=2, D) features; got {x.shape} and {y.shape}")
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


def kernel_distance(
    feats1, feats2, *, num_subsets: int | None = 100, subset_size: int = 1000, seed: int = 0, return_std: bool = False
):
    """Kernel Inception Distance: unbiased MMD² with the kernel (x·y/d + 1)³, averaged over subsets.

    Bińkowski et al. 2018, as TF-GAN / torch-fidelity: the mean over random subsets drawn without
    replacement, or one full-set estimate (``docs/metrics.md``).

    Args:
        feats1: ``(N, D)`` features (e.g. of samples).
        feats2: ``(M, D)`` features (e.g. of the data).
        num_subsets: number of random subsets, or None for the full-set estimate.
        subset_size: rows per subset and per set; clipped to ``min(N, M)``.
        seed: seed of the numpy generator that draws the subsets.
        return_std: also return the standard deviation over subsets (0 for the full-set estimate).

    Returns:
        The KID as a float, or ``(kid, std)`` with ``return_std=True``.

    Raises:
        ValueError: for malformed features or ``num_subsets < 1``.
    """
    f1, f2 = np.asarray(feats1, np.float64), np.asarray(feats2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"expected (N, D) and (M, D) features; got {f1.shape} and {f2.shape}")
    if num_subsets is None:
        values = np.array([mmd2_unbiased(f1, f2)])
    else:
        if num_subsets < 1:
            raise ValueError(f"num_subsets must be >= 1 or None; got {num_subsets}")
        m = min(subset_size, f1.shape[0], f2.shape[0])
        rng = np.random.default_rng(seed)
        values = np.array(
            [
                mmd2_unbiased(
                    f1[rng.choice(f1.shape[0], m, replace=False)], f2[rng.choice(f2.shape[0], m, replace=False)]
                )
                for _ in range(num_subsets)
            ]
        )
    kid = float(values.mean())
    return (kid, float(values.std())) if return_std else kid


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def inception_score(logits, splits: int = 10, *, return_std: bool = False):
    """Inception Score exp(E_x KL(p(y|x) || p(y))) from classifier logits (Salimans et al. 2016).

    As OpenAI and TF-GAN: ``p(y)`` is the mean prediction within each of ``splits`` consecutive chunks and the
    score is the mean over chunks.

    Args:
        logits: ``(N, K)`` unnormalised log-probabilities (softmax is applied here).
        splits: number of chunks, ``1 <= splits <= N``.
        return_std: also return the standard deviation over chunks.

    Returns:
        The score as a float in ``[1, K]``, or ``(mean, std)`` with ``return_std=True``.

    Raises:
        ValueError: for logits that are not ``(N, K)`` or ``splits`` outside ``[1, N]``.
    """
    lg = np.asarray(logits, np.float64)
    if lg.ndim != 2 or not 1 <= splits <= lg.shape[0]:
        raise ValueError(f"expected (N, K) logits with 1 <= splits <= N; got shape {lg.shape}, splits={splits}")
    logp = _log_softmax(lg)
    scores = []
    for chunk in np.array_split(logp, splits):
        p = np.exp(chunk)
        with np.errstate(divide="ignore"):
            log_py = np.log(p.mean(axis=0))
        # KL(p(y|x) || p(y)) with 0 log 0 = 0 (classes a chunk never predicts have p = 0 exactly).
        kl = np.where(p > 0, p * (chunk - np.where(p > 0, log_py, 0.0)), 0.0).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    scores = np.array(scores)
    return (float(scores.mean()), float(scores.std())) if return_std else float(scores.mean())
