"""Inverse problems and training-free guidance against closed forms.

Gaussian data ``N(μ, c I)``, a linear operator ``A`` and Gaussian noise ``sigma_y`` give a Gaussian posterior
``N(μ_post, Σ_post)`` and a Gaussian ``p(y | x_t)``; the posterior's noised marginals are Gaussian, so the
exact probability-flow map of the posterior (:meth:`GaussianMixture.flow_map`) is the answer a
deterministic sampler must reach from the same prior draw.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import guidance, sampling
from scoresde import sde as sde_lib
from scoresde.analytic import GaussianMixture
from scoresde.guidance import inverse
from scoresde.guidance import posterior as pg

VP = sde_lib.VPSDE()
VE = sde_lib.VESDE()
D, M = 4, 2
MU = np.array([0.5, -0.3, 0.2, 1.0])
C = 0.64  # data variance (std 0.8), isotropic
SIGMA_Y = 0.3
A = np.asarray(jax.random.normal(jax.random.key(10), (M, D))) / np.sqrt(D)
Y = np.array([0.7, -0.4])
PRIOR = GaussianMixture(MU[None], np.array([np.sqrt(C)]))


def _posterior():
    """Exact posterior of ``x ~ N(μ, c I)`` given ``y = A x + sigma_y n``."""
    prec = np.eye(D) / C + A.T @ A / SIGMA_Y**2
    cov = np.linalg.inv(prec)
    return cov @ (MU / C + A.T @ Y / SIGMA_Y**2), cov


def _exact_likelihood_grad(x, t, sde):
    """``∇ₓ log p(y | x_t)`` in closed form: ``p(y | x_t) = N(A m(x_t), r² A Aᵀ + sigma_y² I)``."""
    a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    k = a * C / (a**2 * C + s**2)  # ∂E[x₀|x_t]/∂x_t (a scalar per example)
    m = MU[None] + k * (x - a * MU[None])
    r2 = C * s**2 / (a**2 * C + s**2)
    grads = []
    for i in range(x.shape[0]):
        cov_y = r2[i, 0] * A @ A.T + SIGMA_Y**2 * np.eye(M)
        grads.append(k[i, 0] * A.T @ np.linalg.solve(cov_y, Y - A @ m[i]))
    return np.stack(grads)


def _batch(n):
    return jnp.broadcast_to(jnp.asarray(Y, jnp.float32), (n, M))


# ------------------------------------------------------------------------------------------- operators


def _ops():
    mask = jnp.ones((1, 8, 8, 1)).at[:, :, :4].set(0.0)
    return [
        inverse.Inpainting(mask),
        inverse.SuperResolution(2),
        inverse.GaussianBlur(1.2, 5),
        inverse.Colorization(),
        inverse.RandomProjection(jax.random.normal(jax.random.key(3), (20, 192)), event_shape=(8, 8, 3)),
    ]


@pytest.mark.parametrize("op", _ops(), ids=lambda o: type(o).__name__)
def test_adjoint_and_gram_solve_are_exact(op):
    """``<Ax, y> = <x, Aᵀy>``, and ``solve_gram`` inverts ``r2 A Aᵀ + s2 I`` (dense check, float64)."""
    with jax.enable_x64(True):
        op = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), op)
        x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3), jnp.float64)
        y = jax.random.normal(jax.random.key(1), op.forward(x).shape, jnp.float64)
        assert abs(float(jnp.sum(op.forward(x) * y) - jnp.sum(x * op.adjoint(y)))) < 1e-10
        if isinstance(op, inverse.Inpainting):
            y = op.forward(y)  # measurements live on the observed entries
        r2, s2 = jnp.array([0.3, 2.0]), 0.05
        u = op.solve_gram(y, r2, s2, cg_steps=200)
        back = jax.vmap(lambda ui, ri: ri * op.forward(op.adjoint(ui[None]))[0] + s2 * ui)(u, r2)
        np.testing.assert_allclose(np.asarray(back), np.asarray(y), atol=1e-8)


@pytest.mark.parametrize(
    "op", [o for o in _ops() if not isinstance(o, inverse.GaussianBlur)], ids=lambda o: type(o).__name__
)
def test_pseudo_inverse_is_moore_penrose(op):
    """``A A⁺ A = A`` and ``A⁺A`` is symmetric (an orthogonal projection)."""
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    x2 = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    np.testing.assert_allclose(op.forward(op.pinv(op.forward(x))), op.forward(x), atol=2e-4)
    p = lambda v: op.pinv(op.forward(v))
    assert abs(float(jnp.sum(p(x) * x2) - jnp.sum(x * p(x2)))) < 1e-3


def test_blur_has_no_pseudo_inverse_and_says_so():
    with pytest.raises(NotImplementedError, match="GaussianBlur has no cheap pseudo-inverse"):
        inverse.GaussianBlur(1.0).pinv(jnp.zeros((1, 4, 4, 1)))
    with pytest.raises(ValueError, match="odd int; got 4"):
        inverse.GaussianBlur(1.0, 4)


# ---------------------------------------------------------------------------------- exact posteriors


@pytest.mark.parametrize("sde", [VP, VE], ids=["vp", "ve"])
def test_pigdm_term_is_the_exact_likelihood_gradient(sde):
    """ΠGDM with ``r_t² = Cov[x₀ | x_t]`` of ``N(μ, c I)`` data equals ``∇log p(y | x_t)``, also at eps and T."""
    with jax.enable_x64(True):
        score = PRIOR.score_fn(sde)
        score64 = lambda x, t: score(x, t).astype(x.dtype)
        guided = pg.pigdm_guidance(score64, sde, inverse.RandomProjection(A), _batch(5), sigma_y=SIGMA_Y, data_var=C)
        x = jax.random.normal(jax.random.key(0), (5, D), jnp.float64) * 3.0
        t = jnp.array([1e-5, 1e-3, 0.3, 0.7, 1.0], jnp.float64)
        term = guided(x, t) - score64(x, t)
        exact = _exact_likelihood_grad(np.asarray(x), np.asarray(t), sde)
        assert np.all(np.isfinite(np.asarray(term)))
        # float32 mixture parameters limit the agreement to ~1e-6 relative
        np.testing.assert_allclose(np.asarray(term), exact, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("sde", [VP, VE], ids=["vp", "ve"])
def test_pigdm_isotropic_jacobian_is_the_exact_likelihood_gradient_at_one_evaluation(sde):
    """``jacobian="isotropic"``: ``J = alpha r_t² / sigma_t² I`` is Tweedie's exact Jacobian for ``N(μ, c I)`` data."""
    with jax.enable_x64(True):
        score = PRIOR.score_fn(sde)
        score64 = lambda x, t: score(x, t).astype(x.dtype)
        guided = pg.pigdm_guidance(
            score64, sde, inverse.RandomProjection(A), _batch(5), sigma_y=SIGMA_Y, data_var=C, jacobian="isotropic"
        )
        assert guided.evaluations_per_call == 1
        x = jax.random.normal(jax.random.key(0), (5, D), jnp.float64) * 3.0
        t = jnp.array([1e-5, 1e-3, 0.3, 0.7, 1.0], jnp.float64)
        term = guided(x, t) - score64(x, t)
        np.testing.assert_allclose(
            np.asarray(term), _exact_likelihood_grad(np.asarray(x), np.asarray(t), sde), rtol=2e-5, atol=2e-5
        )
    with pytest.raises(ValueError, match="unknown ΠGDM jacobian 'exact'"):
        pg.pigdm_guidance(score, sde, inverse.RandomProjection(A), _batch(5), sigma_y=SIGMA_Y, jacobian="exact")


def test_pigdm_isotropic_jacobian_stays_bounded_where_a_network_jacobian_error_is_amplified():
    """A score with a bounded ε-error ``δ sin(ω x)`` (what a trained network has) near t = T on the VP SDE.

    ``x̂₀ = (x + sigma² s) / alpha`` turns the error's Jacobian ``δ ω`` into ``sigma δ ω / alpha`` ≈ 150 δ ω in
    ``J``, so the network-VJP ΠGDM term is off by ~``c δ ω`` / ``alpha`` there; the isotropic term only sees the
    error through ``x̂₀`` (``gain · sigma δ / alpha ≈ c δ``). The exact term at T is ~``alpha c`` ≈ 0.004.
    """
    delta, omega = 0.05, 5.0
    exact_score = PRIOR.score_fn(VP)
    rough = lambda x, t: exact_score(x, t) - delta * jnp.sin(omega * x) / VP.sigma(t)[:, None]
    op, t = inverse.RandomProjection(A), jnp.full((256,), VP.T)
    x = VP.prior_sampling(jax.random.key(1), (256, D))
    exact = _exact_likelihood_grad(np.asarray(x, np.float64), np.asarray(t, np.float64), VP)
    errs = {}
    for jac in ("network", "isotropic"):
        g = pg.pigdm_guidance(rough, VP, op, _batch(256), sigma_y=SIGMA_Y, data_var=C, jacobian=jac)
        errs[jac] = float(np.sqrt(np.mean((np.asarray(g(x, t) - rough(x, t)) - exact) ** 2)))
    print(
        f"rms error of the ΠGDM term at t = T: network VJP {errs['network']:.3g}, isotropic {errs['isotropic']:.3g}, "
        f"rms exact term {np.sqrt(np.mean(exact**2)):.3g}"
    )
    assert errs["network"] > 1.0  # c δ ω / alpha(T) ~ 24 before the Gram solve: the blow-up, not a small bias
    assert errs["isotropic"] < 2 * C * delta  # gain · sigma δ / alpha ≤ c δ, times ‖Aᵀ(...)⁻¹A‖ ≤ 1/c


@pytest.mark.parametrize("sampler", ["dpm_solver++", "ddim"])
def test_pigdm_isotropic_follows_the_exact_posterior_flow_at_one_evaluation_per_step(sampler):
    mean, cov = _posterior()
    x_init = jax.random.normal(jax.random.key(7), (256, D))
    exact = GaussianMixture(mean[None], covs=cov[None]).flow_map(VP, x_init, VP.T, sampling.default_eps(VP))
    err = []
    for steps in (20, 80):
        x, nfe = inverse.posterior_sample(
            PRIOR.score_fn(VP),
            VP,
            inverse.RandomProjection(A),
            _batch(256),
            jax.random.key(8),
            posterior="pigdm",
            sigma_y=SIGMA_Y,
            data_var=C,
            jacobian="isotropic",
            method=sampler,
            steps=steps,
            x_init=x_init,
        )
        assert int(nfe) == steps
        err.append(float(jnp.max(jnp.abs(x - exact))))
    order = np.log(err[0] / err[1]) / np.log(4.0)
    print(
        f"{sampler} isotropic ΠGDM max |x - exact flow|: 20 steps {err[0]:.2e}, 80 steps {err[1]:.2e}, order {order:.2f}"
    )
    assert order > (1.7 if sampler == "dpm_solver++" else 0.8), order  # the solver's order: no bias


def _flow_errors(posterior, steps, n=512, **opts):
    mean, cov = _posterior()
    x_init = jax.random.normal(jax.random.key(7), (n, D))
    x, nfe = inverse.posterior_sample(
        PRIOR.score_fn(VP),
        VP,
        inverse.RandomProjection(A),
        _batch(n),
        jax.random.key(8),
        posterior=posterior,
        sigma_y=SIGMA_Y,
        method="dpm_solver++",
        steps=steps,
        x_init=x_init,
        **opts,
    )
    post = GaussianMixture(mean[None], covs=cov[None])
    exact = post.flow_map(VP, x_init, VP.T, sampling.default_eps(VP))
    return x, exact, nfe


def test_pigdm_exact_covariance_follows_the_exact_posterior_flow():
    """Deterministic ΠGDM from the same prior draw converges to the exact posterior flow map (no MC error).

    Observed max |x - exact|: 20 steps 3.7e-2, 80 steps 2.5e-3 (320 steps 1.6e-4): second order, to 0.
    """
    err = []
    for steps in (20, 80):
        x, exact, nfe = _flow_errors("pigdm", steps, data_var=C)
        err.append(float(jnp.max(jnp.abs(x - exact))))
        assert int(nfe) == 2 * steps
    order = np.log(err[0] / err[1]) / np.log(4.0)
    print(f"PiGDM max |x - exact flow|: 20 steps {err[0]:.2e}, 80 steps {err[1]:.2e}, order {order:.2f}")
    assert err[1] < 4e-3, err
    assert order > 1.7, order  # DPM-Solver++(2M)'s order: the gap is discretisation, not bias


def test_pigdm_with_a_stochastic_sampler_has_the_posterior_moments():
    """Ancestral DDPM (ddim eta=1) with exact-likelihood guidance: moments within MC error (N = 4000)."""
    n = 4000
    mean, cov = _posterior()
    x, _ = inverse.posterior_sample(
        PRIOR.score_fn(VP),
        VP,
        inverse.RandomProjection(A),
        _batch(n),
        jax.random.key(11),
        posterior="pigdm",
        sigma_y=SIGMA_Y,
        data_var=C,
        method="ddim",
        eta=1.0,
        steps=200,
    )
    x = np.asarray(x, np.float64)
    sd = np.sqrt(np.diag(cov))
    np.testing.assert_array_less(np.abs(x.mean(0) - mean), 4 * sd / np.sqrt(n))
    emp = np.cov(x.T)
    se = np.sqrt((cov**2 + np.outer(np.diag(cov), np.diag(cov))) / n)  # std error of a sample covariance
    np.testing.assert_array_less(np.abs(emp - cov), 5 * se + 1e-3)


def test_dps_bias_on_the_gaussian_posterior():
    """DPS ignores Cov[x₀|x_t]: measured mean / std errors on the exact Gaussian posterior (flow, 40 steps).

    Observed (N = 4000, scale 1, gaussian weighting): DPS mean gap 0.68, std gap 0.22, max distance to the
    exact flow map 1.64; ΠGDM on the same draws 0.013 / 0.015 (MC standard error of the mean ~0.006).
    """
    mean, cov = _posterior()
    x_dps, exact, nfe = _flow_errors("dps", 40, n=4000, scale=1.0)
    x_pig, _, _ = _flow_errors("pigdm", 40, n=4000, data_var=C)
    assert int(nfe) == 80

    def gaps(x):
        x = np.asarray(x, np.float64)
        return np.max(np.abs(x.mean(0) - mean)), np.max(np.abs(x.std(0) - np.sqrt(np.diag(cov))))

    dps, pig = gaps(x_dps), gaps(x_pig)
    flow_gap = float(jnp.max(jnp.abs(x_dps - exact)))
    print(
        f"DPS mean gap {dps[0]:.3f}, std gap {dps[1]:.3f}, max |x - exact flow| {flow_gap:.3f}; "
        f"PiGDM mean gap {pig[0]:.4f}, std gap {pig[1]:.4f}"
    )
    assert max(dps) > 0.1 and flow_gap > 0.5  # biased, far beyond the MC error (~0.006) ...
    assert max(pig) < 0.03  # ... where ΠGDM on the same draws is within it
    assert np.all(np.isfinite(np.asarray(x_dps)))


def test_universal_guidance_with_gaussian_nll_is_dps():
    op = inverse.RandomProjection(A)
    score = PRIOR.score_fn(VP)
    y = _batch(6)
    dps = pg.dps_guidance(score, VP, op, y, sigma_y=SIGMA_Y, scale=0.7)
    uni = pg.universal_guidance(
        score, VP, lambda p, c: pg.gaussian_nll_loss(p, c, SIGMA_Y), y, scale=0.7, predictor=op.forward
    )
    x = jax.random.normal(jax.random.key(0), (6, D))
    t = jnp.linspace(1e-3, 1.0, 6)
    np.testing.assert_allclose(np.asarray(uni(x, t)), np.asarray(dps(x, t)), rtol=1e-5, atol=1e-5)
    a, na = sampling.sample(dps, VP, (6, D), jax.random.key(1), method="ddim", steps=20)
    b, nb = sampling.sample(uni, VP, (6, D), jax.random.key(1), method="ddim", steps=20)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


def test_universal_backward_and_embedding_guidance_closed_forms():
    """Isotropic Gaussian data: ``∂x̂₀/∂x_t = k I`` with ``k = alpha c / (alpha² c + sigma²)``, so both terms are closed forms."""
    score = PRIOR.score_fn(VP)
    x = jax.random.normal(jax.random.key(0), (3, D))
    t = jnp.array([0.05, 0.5, 0.95])
    a, s = np.asarray(VP.alpha(t))[:, None], np.asarray(VP.sigma(t))[:, None]
    k = a * C / (a**2 * C + s**2)
    x0 = np.asarray(pg.denoiser_vjp(score, VP, x, t)[1])
    # embedding guidance: ℓ = -cos(W x̂₀, c); term = scale k Wᵀ ∇_u cos(u, c)
    w = np.asarray(jax.random.normal(jax.random.key(1), (3, D)))
    c = np.array([1.0, -2.0, 0.5])
    emb = pg.embedding_guidance(score, VP, lambda v: v @ jnp.asarray(w.T, jnp.float32), c, scale=2.0)
    u = x0 @ w.T
    nu, nc = np.linalg.norm(u, axis=1, keepdims=True), np.linalg.norm(c)
    cos = (u @ c)[:, None] / (nu * nc)
    grad_u = c[None] / (nu * nc) - cos * u / nu**2
    np.testing.assert_allclose(np.asarray(emb(x, t) - score(x, t)), 2.0 * k * grad_u @ w, rtol=1e-4, atol=1e-4)
    # backward guidance alone on ℓ = ‖x̂₀ + Δ - g‖²/2: k steps of rate lr give Δ = (1 - (1 - lr)^k)(g - x̂₀)
    g = np.array([[1.0, 0.0, -1.0, 2.0]] * 3)
    back = pg.universal_guidance(
        score, VP, lambda p, c_: pg.gaussian_nll_loss(p, c_, 1.0), g, scale=0.0, backward_steps=5, backward_lr=0.3
    )
    delta = (1 - 0.7**5) * (g - x0)
    np.testing.assert_allclose(np.asarray(back(x, t) - score(x, t)), a / s**2 * delta, rtol=1e-4, atol=1e-4)


def test_recurrence_one_is_the_plain_sampler_and_nfe_counts_repeats():
    score = PRIOR.score_fn(VP)
    guided = pg.dps_guidance(score, VP, inverse.RandomProjection(A), _batch(4), sigma_y=SIGMA_Y)
    x_init = jax.random.normal(jax.random.key(2), (4, D))
    a, na = pg.recurrent_sample(guided, VP, (4, D), jax.random.key(3), recurrence=1, steps=15, x_init=x_init)
    b, nb = sampling.sample(guided, VP, (4, D), jax.random.key(3), method="ddim", steps=15, x_init=x_init)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
    assert int(na) == 2 * int(nb) == 2 * 15
    c, nc = pg.recurrent_sample(guided, VP, (4, D), jax.random.key(3), recurrence=3, steps=15, x_init=x_init)
    assert int(nc) == 3 * 2 * 15 and bool(jnp.all(jnp.isfinite(c)))


# ------------------------------------------------------------------------------- replacement / ILVR


def test_replacement_inpainting_is_guidance_inpaint():
    gm = GaussianMixture(np.zeros((1, 16)), np.array([0.5]), event_shape=(4, 4, 1))
    data = gm.sample(jax.random.key(0), 3)
    mask = jnp.ones((1, 4, 4, 1)).at[:, :, 2:].set(0.0)
    op = inverse.Inpainting(mask)
    a, na = inverse.posterior_sample(
        gm.score_fn(VP),
        VP,
        op,
        op.forward(data),
        jax.random.key(1),
        posterior="replacement",
        sigma_y=0.0,
        method="ddim",
        steps=10,
    )
    b, nb = guidance.inpaint(gm.score_fn(VP), VP, data, mask, jax.random.key(1), method="ddim", steps=10)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(na) == int(nb) == 10


def test_ilvr_low_pass_band_is_the_reference():
    """The result's 2×2 low-pass band is the reference's; before the final replacement it is the noised one."""
    gm = GaussianMixture(np.zeros((1, 16)), np.array([0.7]), event_shape=(4, 4, 1))
    ref = gm.sample(jax.random.key(0), 4)
    op = inverse.SuperResolution(2)
    x, _ = inverse.ilvr(gm.score_fn(VP), VP, ref, jax.random.key(1), factor=2, method="ddim", steps=20)
    np.testing.assert_allclose(np.asarray(op.forward(x)), np.asarray(op.forward(ref)), atol=1e-6)
    assert float(jnp.max(jnp.abs(x - ref))) > 0.1  # the high-pass band is a new sample, not a copy
    # at the final step (t = eps), the state's low-pass band is that of alpha ref + sigma z exactly
    z = jax.random.normal(jax.random.key(2), ref.shape)
    proj = inverse.RangeReplacement(VP, op, op.forward(ref), op.pinv(op.forward(ref)), z)
    xs, _ = sampling.sample(gm.score_fn(VP), VP, ref.shape, jax.random.key(3), method="ddim", steps=20, project_fn=proj)
    eps = jnp.full((4,), sampling.default_eps(VP))
    noised = VP.alpha(eps)[:, None, None, None] * ref + VP.sigma(eps)[:, None, None, None] * z
    np.testing.assert_allclose(np.asarray(op.forward(xs)), np.asarray(op.forward(noised)), atol=1e-6)


# ------------------------------------------------------------------------------------------ numerics


@pytest.mark.parametrize("sde", [VP, VE], ids=["vp", "ve"])
def test_guidance_terms_are_finite_at_eps_and_T_with_zero_residual(sde):
    """A zero residual ``y = A x̂₀`` at t = eps and t = T: the DPS step is 0, not ``0/0``; ΠGDM with sigma_y = 0 is finite."""
    score = PRIOR.score_fn(sde)
    op = inverse.RandomProjection(A)
    t = jnp.array([sampling.default_eps(sde), sde.T])
    x = jax.random.normal(jax.random.key(0), (2, D)) * jnp.array([[0.1], [float(sde.sigma(jnp.array(sde.T)))]])
    y = op.forward(pg.denoiser_vjp(score, sde, x, t)[1])
    dps = pg.dps_guidance(score, sde, op, y, sigma_y=0.0, weighting="normalized", scale=1.0)
    term = dps(x, t) - score(x, t)
    assert np.all(np.isfinite(np.asarray(term))) and float(jnp.max(jnp.abs(term))) < 1e-3
    # the failure mode it avoids: autodiff of the norm at a zero residual is NaN
    naive = jax.grad(lambda v: jnp.linalg.norm(y[0] - op.forward(pg.denoiser_vjp(score, sde, v, t)[1])[0]))(x)
    assert not np.all(np.isfinite(np.asarray(naive)))
    pig = pg.pigdm_guidance(score, sde, op, y + 0.1, sigma_y=0.0, data_var=C)
    assert np.all(np.isfinite(np.asarray(pig(x, t))))


def test_posterior_sample_errors_name_the_bad_value():
    op = inverse.RandomProjection(A)
    with pytest.raises(ValueError, match="'ddrm'"):
        inverse.posterior_sample(
            PRIOR.score_fn(VP), VP, op, _batch(2), jax.random.key(0), posterior="ddrm", sigma_y=0.1
        )
    with pytest.raises(ValueError, match="sigma_y=0.0"):
        pg.dps_guidance(PRIOR.score_fn(VP), VP, op, _batch(2), sigma_y=0.0)


def _pigdm_flow_error(sampler, steps, n=64):
    mean, cov = _posterior()
    x_init = jax.random.normal(jax.random.key(7), (n, D))
    x, nfe = inverse.posterior_sample(
        PRIOR.score_fn(VP),
        VP,
        inverse.RandomProjection(A),
        _batch(n),
        jax.random.key(8),
        posterior="pigdm",
        sigma_y=SIGMA_Y,
        data_var=C,
        method=sampler,
        steps=steps,
        x_init=x_init,
    )
    exact = GaussianMixture(mean[None], covs=cov[None]).flow_map(VP, x_init, VP.T, sampling.default_eps(VP))
    return float(jnp.max(jnp.abs(x - exact))), int(nfe), x


@pytest.mark.parametrize("sampler", ["dpm_solver", "edm_heun"])
def test_pigdm_converges_to_the_exact_flow_with_other_samplers(sampler):
    """ΠGDM (2 evaluations per call) through singlestep DPM-Solver-2 / EDM Heun: second order to the exact map."""
    (e1, n1, _), (e2, n2, _) = _pigdm_flow_error(sampler, 20), _pigdm_flow_error(sampler, 40)
    order = np.log2(e1 / e2)
    print(f"{sampler}: max |x - exact flow| 20 steps {e1:.2e}, 40 steps {e2:.2e}, order {order:.2f}")
    assert n1 == 2 * 2 * 20 and n2 == 2 * 2 * 40
    assert order > 1.6, order


def test_pigdm_runs_through_pc():
    _, nfe, x = _pigdm_flow_error("pc", 30)
    assert bool(jnp.all(jnp.isfinite(x)))
    assert nfe == 2 * 30  # pc's denoise is the last predictor's mean: no extra call


def test_new_guidance_scale_does_not_recompile():
    op, score = inverse.RandomProjection(A), PRIOR.score_fn(VP)  # one score function: static by identity
    kw = dict(posterior="dps", sigma_y=SIGMA_Y, method="ddim", steps=5)
    inverse.posterior_sample(score, VP, op, _batch(3), jax.random.key(0), scale=0.5, **kw)
    size = sampling._sample_jit._cached._cache_size()
    a, _ = inverse.posterior_sample(score, VP, op, _batch(3), jax.random.key(0), scale=0.5, **kw)
    b, _ = inverse.posterior_sample(
        score,
        VP,
        op,
        _batch(3) + 1.0,
        jax.random.key(0),
        scale=2.0,
        sigma_y=0.2,
        **{k: v for k, v in kw.items() if k != "sigma_y"},
    )
    assert sampling._sample_jit._cached._cache_size() == size
    assert float(jnp.max(jnp.abs(a - b))) > 1e-3  # the new scale and measurement did take effect


def test_replacement_colorization_is_guidance_colorize():
    gm = GaussianMixture(np.zeros((1, 48)), np.array([0.5]), event_shape=(4, 4, 3))
    rgb = gm.sample(jax.random.key(0), 2)
    op = inverse.Colorization()
    a, _ = inverse.posterior_sample(
        gm.score_fn(VP),
        VP,
        op,
        op.forward(rgb),
        jax.random.key(1),
        posterior="replacement",
        sigma_y=0.0,
        method="ddim",
        steps=8,
    )
    b, _ = guidance.colorize(gm.score_fn(VP), VP, guidance.to_gray(rgb), jax.random.key(1), method="ddim", steps=8)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    np.testing.assert_allclose(np.asarray(op.forward(a)), np.asarray(op.forward(rgb)), atol=1e-5)
