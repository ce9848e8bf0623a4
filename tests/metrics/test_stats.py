"""FID, KID and IS against independent computations and exact population values."""

import numpy as np
import pytest
import scipy.linalg

from scoresde.metrics import frechet_distance, inception_score, kernel_distance, mmd2_unbiased


def _random_stats(rng, d, n):
    a = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) + rng.standard_normal(d)
    return a.mean(0), np.cov(a, rowvar=False)


def _scipy_fid(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("d,n", [(8, 100), (64, 500)])
def test_fid_matches_scipy_sqrtm(d, n):
    rng = np.random.default_rng(d)
    mu1, s1 = _random_stats(rng, d, n)
    mu2, s2 = _random_stats(rng, d, n)
    ours, ref = frechet_distance(mu1, s1, mu2, s2), _scipy_fid(mu1, s1, mu2, s2)
    assert ref > 1.0
    np.testing.assert_allclose(ours, ref, rtol=1e-9)


def test_fid_closed_form_for_commuting_covariances():
    # Diagonal covariances: FID = |mu1-mu2|^2 + sum (sqrt(a) - sqrt(b))^2 exactly.
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = 1.0 + 4.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    np.testing.assert_allclose(frechet_distance(mu1, np.diag(a), mu2, np.diag(b)), expected, rtol=1e-12)


def test_fid_identity_and_symmetry():
    rng = np.random.default_rng(1)
    mu1, s1 = _random_stats(rng, 32, 200)
    mu2, s2 = _random_stats(rng, 32, 200)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-8 * np.trace(s1)
    np.testing.assert_allclose(frechet_distance(mu1, s1, mu2, s2), frechet_distance(mu2, s2, mu1, s1), rtol=1e-9)


def test_fid_singular_covariance_is_finite_and_matches_scipy():
    # Fewer samples than dimensions (rank-deficient covariances), where sqrtm is delicate.
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((20, 50)), rng.standard_normal((20, 50)) + 0.3
    mu1, s1, mu2, s2 = x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
    ours = frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(ours)
    np.testing.assert_allclose(ours, _scipy_fid(mu1, s1, mu2, s2), rtol=1e-5)


def test_fid_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="expected mu"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# KID: discrete feature distributions give the exact population MMD^2 by enumeration.
_SUPPORT_P = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0], [1.5, -0.5, 0.0]])
_SUPPORT_Q = np.array([[1.0, 0.5, 2.0], [-1.0, 1.0, 0.0]])
_W_P, _W_Q = np.array([0.5, 0.3, 0.2]), np.array([0.6, 0.4])


def _kernel(a, b):
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def _population_mmd2(sp, wp, sq, wq):
    return wp @ _kernel(sp, sp) @ wp + wq @ _kernel(sq, sq) @ wq - 2 * wp @ _kernel(sp, sq) @ wq


def _draws(rng, support, w, shape):
    return support[rng.choice(len(w), size=shape, p=w)]


@pytest.mark.parametrize("same", [True, False])
def test_kid_is_unbiased_on_small_sets(same):
    rng = np.random.default_rng(3 + same)
    sq, wq = (_SUPPORT_P, _W_P) if same else (_SUPPORT_Q, _W_Q)
    exact = _population_mmd2(_SUPPORT_P, _W_P, sq, wq)
    if same:
        assert exact == 0.0
    else:
        assert exact > 0.1
    m, n, reps = 6, 9, 4000  # tiny, unequal sets: the biased V-statistic is far off here
    xs, ys = _draws(rng, _SUPPORT_P, _W_P, (reps, m)), _draws(rng, sq, wq, (reps, n))
    est = np.array([kernel_distance(x, y, num_subsets=None) for x, y in zip(xs, ys)])
    se = est.std(ddof=1) / np.sqrt(reps)
    assert abs(est.mean() - exact) < 4 * se, (est.mean(), exact, se)
    # Power check: the biased estimate (diagonals kept) is many standard errors away on the same draws.
    biased = np.array([_kernel(x, x).mean() + _kernel(y, y).mean() - 2 * _kernel(x, y).mean() for x, y in zip(xs, ys)])
    assert abs(biased.mean() - exact) > 10 * se


def test_kid_subsets_average_unbiased_subset_estimates():
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((300, 16)), rng.standard_normal((200, 16)) + 0.5
    kid, std = kernel_distance(x, y, num_subsets=50, subset_size=100, seed=7, return_std=True)
    # The same subsets by hand.
    r = np.random.default_rng(7)
    vals = [
        mmd2_unbiased(x[r.choice(300, 100, replace=False)], y[r.choice(200, 100, replace=False)]) for _ in range(50)
    ]
    np.testing.assert_allclose([kid, std], [np.mean(vals), np.std(vals)], rtol=1e-12)
    # Every subset estimate and the full-set one estimate the same population value.
    full = kernel_distance(x, y, num_subsets=None)
    assert abs(kid - full) < 4 * std / np.sqrt(50) + 0.05 * full
    # subset_size larger than the data is clipped to min(N, M).
    assert np.isfinite(kernel_distance(x, y, num_subsets=2, subset_size=10_000))


def test_kid_symmetric_full_set():
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((40, 5)), rng.standard_normal((30, 5)) * 1.5
    np.testing.assert_allclose(
        kernel_distance(x, y, num_subsets=None), kernel_distance(y, x, num_subsets=None), rtol=1e-12
    )


def test_inception_score_uniform_is_one():
    assert inception_score(np.zeros((100, 7)), splits=10) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("k", [2, 10, 1008])
def test_inception_score_one_hot_balanced_is_k(k):
    n = k * 5  # each of the 5 splits sees every class once
    logits = np.full((n, k), -1e4)
    logits[np.arange(n), np.arange(n) % k] = 1e4
    mean, std = inception_score(logits, splits=5, return_std=True)
    assert mean == pytest.approx(k, rel=1e-12)
    assert std < 1e-9


def test_inception_score_matches_direct_formula():
    rng = np.random.default_rng(8)
    logits = rng.standard_normal((60, 5)) * 3
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    expected = []
    for chunk in np.split(p, 3):
        py = chunk.mean(0)
        expected.append(np.exp(np.mean(np.sum(chunk * (np.log(chunk) - np.log(py)), axis=1))))
    np.testing.assert_allclose(inception_score(logits, splits=3), np.mean(expected), rtol=1e-10)
    # Invariant to a per-row shift of the logits (softmax), not to a per-class one.
    np.testing.assert_allclose(
        inception_score(logits + rng.standard_normal((60, 1)), splits=3), np.mean(expected), rtol=1e-10
    )
