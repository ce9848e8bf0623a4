"""Controllable generation: guided score functions, inpainting and colorization.

Everything here transforms score functions or sampler states; it reads no config and works with every
sampler of :mod:`scoresde.sampling`.

**Score transformers** return a new batched ``score_fn(x, t)``:

* :func:`classifier_guidance` (Dhariwal & Nichol 2021; Song et al. 2021, Sec. 5 and App. I):
  ``∇log p_t(x) + scale · ∇ₓ log p_t(y | x)``. At ``scale = 1`` with the exact classifier this *is* the
  class-conditional score ``∇log p_t(x | y)`` (Bayes' rule; ``p(y)`` does not depend on ``x``).
* :func:`classifier_free_guidance` (Ho & Salimans 2022):
  ``(1 + w) · s(x, t, y) - w · s(x, t, ∅)``; ``w = 0`` is plain conditional sampling. ``y`` is a class label
  (null: the label ``num_classes``) or an array with a batch axis, caption tokens or an embedding (null:
  ``zeros_like(y)``, the empty caption; GLIDE, Nichol et al. 2022, Sec. 2.4).

  **γ convention.** The lecture notes write the guided score as
  ``γ ∇log p_t(x | y) + (1 - γ) ∇log p_t(x)``, i.e. ``p_t(x) p_t(y | x)^γ``. The two conventions are
  the same family with ``γ = 1 + w`` (:func:`gamma_from_w`, :func:`w_from_gamma`): ``w = 0 ⇔ γ = 1``
  (conditional sampling), ``w = -1 ⇔ γ = 0`` (unconditional). Classifier-free guidance with weight
  ``w`` equals classifier guidance with ``scale = γ = 1 + w`` when the implicit classifier
  ``p_t(x | y) / p_t(x)`` is used.

Both return :class:`equinox.Module` callables whose ``scale`` / ``w`` / ``y`` are array leaves: passed
to the ``equinox.filter_jit``-compiled samplers they are *traced*, so a new guidance scale or class does
not recompile (the wrapped score functions are static by identity, or traced if they are pytrees).

**Inpainting and colorization** (Song et al. 2021, App. I.2–I.3, the reference
``controllable_generation.py``): after every sampler step, the *known* part of the state is replaced by a
draw of the known data from its ``t``-marginal ``alpha(t) y + sigma(t) z``. Colorization does the same
in the reference's orthonormal "decoupling" basis :data:`COLOR_BASIS`, whose first channel is the gray
level ``(R + G + B) / √3``. Both are one class, :class:`Replacement`, used by the samplers through
their ``project_fn(x, t, key) -> x`` hook.

Differences from the reference, all documented where they live:

* the initial state's known part is drawn from the ``T``-marginal (:func:`initial_state`,
  ``init="marginal"``); the reference puts the *clean* data there (``init="reference"``);
* the replacement after a step uses the time the state has *reached*; the reference uses the time
  the step started from (a one-step, ``O(1/N)`` shift);
* for the deterministic samplers the known part follows its own probability-flow path
  ``alpha(t) y + sigma(t) z₀`` with one fixed ``z₀`` (``fixed_noise=True``, the default there); a
  fresh ``z`` every step (the reference, and the default for ``pc``) would make them stochastic;
* the returned sample's known part is the known data itself.

The replacement method is exact when the known and missing parts are independent, and approximate
otherwise (the missing part only sees the known part through the score at the replaced states; see
``tests/test_guidance.py`` for the measured gap on a correlated Gaussian).

Examples:
    >>> guided = classifier_free_guidance(cond_score_fn, y=3, w=2.0, null_label=10)
    >>> samples, nfe = sampling.sample(guided, sde, (16, 8, 8, 1), key, method="dpm_solver++")
    >>> filled, nfe = inpaint(score_fn, sde, images, mask, key, method="pc")
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from scoresde.sde import batch_mul

__all__ = [
    "classifier_guidance",
    "classifier_free_guidance",
    "gamma_from_w",
    "w_from_gamma",
    "ClassifierGuidedScore",
    "ClassifierFreeGuidedScore",
    "class_log_prob_grad",
    "drop_labels",
    "drop_conditioning",
    "COLOR_BASIS",
    "Replacement",
    "inpainting_projection",
    "colorization_projection",
    "initial_state",
    "inpaint",
    "colorize",
    "to_gray",
]


# ----------------------------------------------------------------------------------------------- guidance


def gamma_from_w(w):
    """The notes' guidance strength ``γ = 1 + w`` from the classifier-free weight ``w``."""
    return 1.0 + w


def w_from_gamma(gamma):
    """The classifier-free weight ``w = γ - 1`` from the notes' ``γ``."""
    return gamma - 1.0


def _labels(y, batch: int) -> jax.Array:
    y = jnp.asarray(y, jnp.int32)
    if y.ndim == 0:
        return jnp.full((batch,), y, jnp.int32)
    if y.shape != (batch,):
        raise ValueError(f"class labels y must be an int or have shape ({batch},); got shape {y.shape}")
    return y


def _conditioning(y, batch: int) -> jax.Array:
    """Array conditioning ``(batch, ...)``: ``y`` as it is, or one row ``(1, ...)`` repeated over the batch."""
    if y.ndim < 1 or y.shape[0] not in (1, batch):
        raise ValueError(
            f"array conditioning y must have a batch axis of {batch} (or 1, repeated), e.g. tokens ({batch}, L) "
            f"or embeddings ({batch}, D); got shape {y.shape}"
        )
    return jnp.broadcast_to(y, (batch,) + y.shape[1:])


def class_log_prob_grad(log_prob_fn: Callable, x, t, y):
    """``∇ₓ log p_t(y | x)`` per example, from ``log_prob_fn(x, t) -> (B, num_classes)`` log-probabilities.

    The examples of a batch are independent, so the gradient of the summed log-probabilities is the
    per-example gradient.
    """
    y = _labels(y, x.shape[0])

    def total(xx):
        lp = log_prob_fn(xx, t)
        if lp.ndim != 2 or lp.shape[0] != x.shape[0]:
            raise ValueError(
                f"log_prob_fn must return (B, num_classes) = ({x.shape[0]}, K) log-probabilities; got shape {lp.shape}"
            )
        return jnp.sum(jnp.take_along_axis(lp, y[:, None], axis=1))

    return jax.grad(total)(x)


class ClassifierGuidedScore(eqx.Module):
    """``score_fn(x, t) + scale · ∇ₓ log p_t(y | x)``; see :func:`classifier_guidance`."""

    score_fn: Callable
    log_prob_fn: Callable
    y: jax.Array
    scale: jax.Array

    def __call__(self, x, t):
        grad = class_log_prob_grad(self.log_prob_fn, x, t, self.y)
        return self.score_fn(x, t) + self.scale.astype(x.dtype) * grad


class ClassifierFreeGuidedScore(eqx.Module):
    """``(1 + w) s(x, t, y) - w s(x, t, ∅)``; see :func:`classifier_free_guidance`."""

    cond_score_fn: Callable
    y: jax.Array
    w: jax.Array
    null_label: int | None = eqx.field(static=True)

    def conditioning(self, b: int):
        """``(y, null)`` for a batch of ``b``: int labels and the null label, or arrays and their zeros."""
        if self.null_label is not None:
            return _labels(self.y, b), jnp.full((b,), self.null_label, jnp.int32)
        y = _conditioning(self.y, b)
        return y, jnp.zeros_like(y)

    def __call__(self, x, t):
        b = x.shape[0]
        y, null = self.conditioning(b)
        # One call on the doubled batch: one network evaluation per step, as Ho & Salimans's implementation.
        s = self.cond_score_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]), jnp.concatenate([y, null]))
        s_cond, s_uncond = s[:b], s[b:]
        w = self.w.astype(x.dtype)
        # Written as s_c + w (s_c - s_u) so that w = 0 returns the conditional score bit for bit; w = -1 (γ = 0)
        # returns the unconditional score itself rather than s_c - (s_c - s_u), which rounds.
        return jnp.where(w == -1, s_uncond, s_cond + w * (s_cond - s_uncond))


def classifier_guidance(score_fn: Callable, log_prob_fn: Callable, y, scale) -> ClassifierGuidedScore:
    """Classifier guidance: ``score_fn(x, t) + scale · ∇ₓ log p_t(y | x)``.

    Args:
        score_fn: the unconditional score ``score_fn(x, t)``.
        log_prob_fn: a noise-conditional classifier ``log_prob_fn(x, t) -> (B, num_classes)``
            log-probabilities (e.g. :func:`scoresde.models.classifiers.classifier_log_prob_fn`, or the exact
            :meth:`scoresde.analytic.GaussianMixture.class_log_prob`).
        y: the requested class, an int or a ``(B,)`` int array.
        scale: the guidance scale (``γ`` of the notes; 1 = the class-conditional law with an exact
            classifier). Converted to an array, so changing it does not recompile a sampler.

    Returns:
        A batched ``score_fn(x, t)`` (an :class:`equinox.Module`).
    """
    return ClassifierGuidedScore(score_fn, log_prob_fn, jnp.asarray(y, jnp.int32), jnp.asarray(scale, jnp.float32))


def classifier_free_guidance(cond_score_fn: Callable, y, w, null_label: int | None) -> ClassifierFreeGuidedScore:
    """Classifier-free guidance: ``(1 + w) · s(x, t, y) - w · s(x, t, ∅)``.

    ``w = 0`` samples the conditional model and ``w = -1`` the unconditional one (both bit for bit); ``w > 0``
    sharpens towards the condition (the notes' ``γ = 1 + w``, see the module docstring).

    Args:
        cond_score_fn: ``cond_score_fn(x, t, y) -> score``; the null condition gives the unconditional score
            (a network trained with label or caption dropout).
        y: the condition. With an int ``null_label``: the requested class, an int or a ``(B,)`` int array.
            With ``null_label=None``: an array with a batch axis, ``(B, ...)`` or ``(1, ...)`` (repeated), kept in
            its dtype: caption tokens ``(B, L)`` (GLIDE, Nichol et al. 2022) or an embedding ``(B, D)``
            (the unCLIP decoder); its null is ``zeros_like(y)`` (the empty caption, the zero embedding).
        w: the guidance weight (an array after this call: changing it does not recompile).
        null_label: the label of the unconditional model (``num_classes`` for the networks here), or ``None``
            for array conditioning.

    Returns:
        A batched ``score_fn(x, t)`` (an :class:`equinox.Module`); each call evaluates
        ``cond_score_fn`` once on a doubled batch.

    Raises:
        ValueError: ``null_label`` is neither a Python int nor ``None``, or array conditioning has no batch axis.
    """
    if null_label is None:
        y = jnp.asarray(y)
        if y.ndim < 1:
            raise ValueError(
                f"null_label=None means array conditioning (tokens (B, L), embeddings (B, D)); got a scalar y={y!r} "
                "(class labels need the int null_label)"
            )
        return ClassifierFreeGuidedScore(cond_score_fn, y, jnp.asarray(w, jnp.float32), None)
    if not isinstance(null_label, (int, np.integer)) or isinstance(null_label, bool):
        raise ValueError(
            f"null_label must be a Python int (the unconditional label) or None (array conditioning); got {null_label!r}"
        )
    return ClassifierFreeGuidedScore(
        cond_score_fn, jnp.asarray(y, jnp.int32), jnp.asarray(w, jnp.float32), int(null_label)
    )


def drop_labels(key, y, p_uncond, null_label: int):
    """Label dropout for classifier-free guidance training: each label becomes ``null_label`` w.p. ``p_uncond``.

    One network trained on these labels gives the conditional (``y``) and unconditional (``null_label``)
    scores (Ho & Salimans 2022; ``p_∅`` of the notes).
    """
    drop = jax.random.bernoulli(key, p_uncond, y.shape)
    return jnp.where(drop, jnp.asarray(null_label, y.dtype), y)


def drop_conditioning(key, y, p_uncond):
    """Condition dropout for array conditioning: each row of ``y`` ``(B, ...)`` becomes zeros w.p. ``p_uncond``.

    The zero row is the null condition of :func:`classifier_free_guidance` with ``null_label=None``: the empty
    caption (all padding tokens) or the zero embedding; the whole caption is dropped, never single tokens.
    """
    drop = jax.random.bernoulli(key, p_uncond, (y.shape[0],)).reshape((-1,) + (1,) * (y.ndim - 1))
    return jnp.where(drop, jnp.zeros_like(y), y)


# ------------------------------------------------------------------------------ inpainting / colorization

# The reference's orthonormal colour basis (controllable_generation.py): x_decoupled = x @ COLOR_BASIS.
# Its first column is (1, 1, 1)/√3, so channel 0 of the decoupled image is the gray level (R + G + B)/√3;
# being orthonormal, it keeps isotropic Gaussian noise isotropic, which makes the replacement consistent.
COLOR_BASIS = np.array(
    [
        [5.7735014e-01, -8.1649649e-01, 4.7008697e-08],
        [5.7735026e-01, 4.0824834e-01, 7.0710671e-01],
        [5.7735026e-01, 4.0824822e-01, -7.0710683e-01],
    ],
    dtype=np.float32,
)


def to_gray(images):
    """RGB ``(..., 3)`` -> gray replicated on 3 channels (the mean of R, G, B), the colorizer's input."""
    return jnp.broadcast_to(jnp.mean(images, axis=-1, keepdims=True), images.shape)


class Replacement(eqx.Module):
    """``project_fn(x, t, key) -> x``: the known part of ``x`` replaced by a draw from its ``t``-marginal.

    In the basis ``B`` (acting on the last axis; identity when ``basis`` is ``None``) the state is
    ``u = x B``; coordinates with ``mask == 1`` are set to ``alpha(t) k + sigma(t) z`` where ``k`` is the
    known data in that basis, and the result is mapped back with ``Bᵀ`` (``B`` is orthonormal).

    Attributes:
        sde: the forward SDE.
        known: the known data in the basis, shape ``(B, ...)`` (values where ``mask == 0`` are ignored).
        mask: 1 for known and 0 for missing coordinates, broadcastable to ``known``.
        basis: optional orthonormal ``(C, C)`` matrix on the channel axis.
        noise: a fixed ``z₀`` (shape of ``known``) for deterministic samplers, or ``None`` to draw a fresh
            ``z`` from ``key`` at every call (the reference).
    """

    sde: object
    known: jax.Array
    mask: jax.Array
    basis: jax.Array | None = None
    noise: jax.Array | None = None

    def to_basis(self, x):
        return x if self.basis is None else jnp.einsum("...i,ij->...j", x, self.basis.astype(x.dtype))

    def from_basis(self, u):
        return u if self.basis is None else jnp.einsum("...j,ij->...i", u, self.basis.astype(u.dtype))

    def known_at(self, t, key, dtype=jnp.float32):
        """A draw of the known data from its ``t``-marginal (in the basis); ``t`` scalar or ``(B,)``."""
        b = self.known.shape[0]
        tv = jnp.broadcast_to(jnp.asarray(t, dtype), (b,))
        z = self.noise if self.noise is not None else jax.random.normal(key, self.known.shape, dtype)
        return batch_mul(self.sde.alpha(tv), self.known.astype(dtype)) + batch_mul(self.sde.sigma(tv), z.astype(dtype))

    def replace(self, x, values):
        """``x`` with its known part (in the basis) set to ``values``."""
        mask = self.mask.astype(x.dtype)
        u = self.to_basis(x)
        return self.from_basis(u * (1.0 - mask) + values.astype(x.dtype) * mask)

    def __call__(self, x, t, key):
        return self.replace(x, self.known_at(t, key, x.dtype))

    def finalize(self, x):
        """The known part set to the known data itself (the end of sampling)."""
        return self.replace(x, self.known)


def inpainting_projection(sde, data, mask, *, noise=None) -> Replacement:
    """The inpainting :class:`Replacement`: ``mask == 1`` marks known entries of ``data``.

    Args:
        sde: the forward SDE.
        data: ``(B, ...)`` images (or vectors) in model space; missing entries are ignored.
        mask: ``{0, 1}`` array broadcastable to ``data`` (1 = known).
        noise: optional fixed noise (see :class:`Replacement`).

    Raises:
        ValueError: if ``mask`` does not broadcast to ``data``.
    """
    data = jnp.asarray(data)
    mask = jnp.asarray(mask, data.dtype)
    try:
        jnp.broadcast_shapes(mask.shape, data.shape)
    except ValueError as e:
        raise ValueError(f"mask of shape {mask.shape} does not broadcast to data of shape {data.shape}") from e
    if len(mask.shape) != len(data.shape):
        raise ValueError(f"mask must have the rank of data {data.shape} (use size-1 axes); got {mask.shape}")
    return Replacement(sde, data, mask, None, noise)


def colorization_projection(sde, gray, *, noise=None) -> Replacement:
    """The colorization :class:`Replacement`: the gray channel of :data:`COLOR_BASIS` is known.

    Args:
        sde: the forward SDE.
        gray: ``(B, H, W, 3)`` gray-scale images in model space (R = G = B; see :func:`to_gray`).
        noise: optional fixed noise (see :class:`Replacement`).

    Raises:
        ValueError: if ``gray`` does not have 3 channels.
    """
    gray = jnp.asarray(gray)
    if gray.shape[-1] != 3:
        raise ValueError(f"colorization needs RGB images (..., 3); got shape {gray.shape}")
    basis = jnp.asarray(COLOR_BASIS)
    known = jnp.einsum("...i,ij->...j", gray, basis.astype(gray.dtype))
    mask = jnp.asarray([1.0, 0.0, 0.0], gray.dtype).reshape((1,) * (gray.ndim - 1) + (3,))
    return Replacement(sde, known, mask, basis, noise)


def initial_state(projection: Replacement, key, *, init: str = "marginal"):
    """The sampler's state at ``T``: a prior draw whose known part is set by ``init``.

    Args:
        projection: the :class:`Replacement` of the task.
        key: PRNG key.
        init: ``"marginal"`` draws the known part from its ``T``-marginal (consistent with the rest of
            the state); ``"reference"`` puts the clean known data there, as the reference does.

    Raises:
        ValueError: for an unknown ``init``.
    """
    k_prior, k_known = jax.random.split(key)
    sde, shape = projection.sde, projection.known.shape
    x = sde.prior_sampling(k_prior, shape)
    if init == "marginal":
        return projection(x, jnp.asarray(sde.T, x.dtype), k_known)
    if init == "reference":
        return projection.finalize(x)
    raise ValueError(f"unknown init {init!r}; expected 'marginal' or 'reference'")


def _conditional_sample(score_fn, projection_fn, sde, key, *, method, init, fixed_noise, eps, options):
    from scoresde import sampling  # noqa: PLC0415  (guidance does not need the samplers to import)

    if not sampling.method_traits(method).projects:
        hooked = ", ".join(name for name, traits in sampling.TABLE.items() if traits.projects and traits.deterministic)
        raise ValueError(
            f"method {method!r} cannot inpaint/colorize: the known part is replaced after every step, "
            f"which it does not expose (no project_fn hook); use a deterministic sampler ({hooked}) "
            "or 'pc'"
        )
    if fixed_noise is None:
        fixed_noise = sampling.is_deterministic(method)
    k_init, k_noise, k_sample = jax.random.split(key, 3)
    projection = projection_fn(None)
    if fixed_noise:
        projection = projection_fn(jax.random.normal(k_noise, projection.known.shape, projection.known.dtype))
    x_init = initial_state(projection, k_init, init=init)
    x, nfe = sampling.sample(
        score_fn, sde, x_init.shape, k_sample, method=method, x_init=x_init, eps=eps, project_fn=projection, **options
    )
    return projection.finalize(x), nfe


def inpaint(
    score_fn,
    sde,
    data,
    mask,
    key,
    *,
    method: str = "pc",
    init: str = "marginal",
    fixed_noise: bool | None = None,
    eps=None,
    **options,
):
    """Fills the entries of ``data`` where ``mask == 0`` (Song et al. 2021, App. I.2).

    Args:
        score_fn: the (unconditional) score ``score_fn(x, t)``.
        sde: the forward SDE.
        data: ``(B, ...)`` in model space.
        mask: ``{0, 1}`` broadcastable to ``data`` (1 = known).
        key: PRNG key.
        method: a sampler of :mod:`scoresde.sampling` that takes the ``project_fn`` hook (all but ``"ode"``).
        init: see :func:`initial_state`.
        fixed_noise: one noise draw for the known part along the whole path (default for the methods the
            sampler table declares deterministic, :func:`scoresde.sampling.is_deterministic`) or a fresh one
            per step (default for the others, e.g. ``pc``, the reference).
        eps: the final time (the sampler's default if ``None``).
        **options: the sampler's options.

    Returns:
        ``(samples, nfe)``; the known entries of the samples equal ``data``.
    """
    return _conditional_sample(
        score_fn,
        lambda z: inpainting_projection(sde, data, mask, noise=z),
        sde,
        key,
        method=method,
        init=init,
        fixed_noise=fixed_noise,
        eps=eps,
        options=options,
    )


def colorize(
    score_fn,
    sde,
    gray,
    key,
    *,
    method: str = "pc",
    init: str = "marginal",
    fixed_noise: bool | None = None,
    eps=None,
    **options,
):
    """Colorizes gray-scale RGB images (Song et al. 2021, App. I.3); arguments as :func:`inpaint`.

    Returns:
        ``(samples, nfe)``; the gray level ``(R + G + B) / 3`` of each sample equals that of ``gray``.
    """
    return _conditional_sample(
        score_fn,
        lambda z: colorization_projection(sde, gray, noise=z),
        sde,
        key,
        method=method,
        init=init,
        fixed_noise=fixed_noise,
        eps=eps,
        options=options,
    )


def classifier_inputs(sde, x, t):
    """``(x_t / alpha(t), sigma(t) / alpha(t))``: the classifier's input and noise level (VE coordinates)."""
    alpha, sigma = sde.alpha(t), sde.sigma(t)
    return batch_mul(1.0 / alpha, x), sigma / alpha


def classifier_log_prob_fn(classifier, sde):
    """``log_prob_fn(x, t) -> (B, num_classes)`` log-probabilities of a noise-conditional classifier.

    Args:
        classifier: a callable ``classifier(x_ve, noise_level) -> logits`` (e.g. from :func:`scoresde.build.get_classifier`).
        sde: the SDE of the sampler (its ``alpha``, ``sigma`` map ``t`` to the classifier's inputs).
    """

    def log_prob_fn(x, t):
        xv, level = classifier_inputs(sde, x, t)
        return jax.nn.log_softmax(classifier(xv, level), axis=-1)

    return log_prob_fn
