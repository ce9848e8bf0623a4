"""Linear inverse problems: measurement operators and posterior sampling with a pretrained score.

A measurement is ``y = A(x) + sigma_y n`` with ``n ~ N(0, I)``. The operators here are
:class:`equinox.Module` pytrees (their arrays are traced, so a new mask or matrix does not recompile):

* :class:`Inpainting` (``mask``), :class:`SuperResolution` (``k × k`` box average), :class:`GaussianBlur`
  (``sigma``, odd ``size``, zero padding), :class:`Colorization` (gray = channel mean),
  :class:`RandomProjection` (a dense ``(M, D)`` matrix), and :class:`DifferentiableOperator` for any
  user-supplied differentiable map (DPS and universal guidance only: it has no adjoint).

Each has ``forward(x)`` on a batch in the data's shape (``(B, D)`` for vectors, ``(B, H, W, C)`` for
images), ``adjoint(y)``, ``pinv(y)`` (the Moore–Penrose pseudo-inverse, where it is cheap) and
``solve_gram(v, r2, s2)``, which solves ``(r2 A Aᵀ + s2 I) u = v`` per example (the ΠGDM system) in
closed form where ``A Aᵀ`` is diagonal or small, and by conjugate gradients otherwise.

:func:`posterior_sample` is the front door: ``method`` is the solver (as everywhere, a method of
:func:`scoresde.sampling.sample`) and ``posterior`` ∈ :data:`METHODS` how the measurement enters:

* ``"replacement"``: the known part ``A⁺A x`` of the state is replaced after every step by a draw of
  ``A⁺(alpha_t y + sigma_t A z)`` (Song et al. 2021, App. I.2, generalised from masks to the range of
  ``Aᵀ``; for :class:`Inpainting` / :class:`Colorization` it is :class:`scoresde.guidance.Replacement`).
  With :class:`SuperResolution` this is ILVR (Choi et al. 2021, eq. 7: ``φ_N = A⁺A`` is the low-pass
  filter); see :func:`ilvr`. It ignores ``sigma_y`` (exact only for noiseless measurements).
* ``"dps"`` and ``"pigdm"``: score transformers of :mod:`scoresde.guidance.posterior`.

Examples:
    >>> op = SuperResolution(4)
    >>> y = measure(op, images, key, sigma_y=0.05)
    >>> restored, nfe = posterior_sample(score_fn, sde, op, y, key, posterior="pigdm", sigma_y=0.05,
    ...                                  method="ddim", steps=100)
    >>> psnr(restored, images, data_range=2.0)  # model space [-1, 1]
"""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from scoresde.guidance import conditional
from scoresde.guidance import posterior as pg
from scoresde.sde import batch_mul

__all__ = [
    "METHODS",
    "INPAINTING_MASKS",
    "inpainting_mask",
    "make_operator",
    "naive_restoration",
    "Colorization",
    "DifferentiableOperator",
    "GaussianBlur",
    "Inpainting",
    "Operator",
    "RandomProjection",
    "RangeReplacement",
    "SuperResolution",
    "ilvr",
    "measure",
    "posterior_sample",
]

# The posterior choices of posterior_sample(posterior=...) (config.inverse.method).
METHODS = ("replacement", "dps", "pigdm")


def _per_example(v):
    return v.reshape(v.shape[0], -1)


def _vdot(a, b):
    """Per-example inner product ``(B,)``."""
    return jnp.sum(_per_example(a) * _per_example(b), axis=-1)


class Operator(eqx.Module):
    """A measurement operator ``A``; subclasses implement ``forward`` and, if linear, ``adjoint``.

    ``cg_steps`` conjugate-gradient iterations solve the ΠGDM system where no closed form is given.
    """

    def forward(self, x):
        raise NotImplementedError

    def adjoint(self, y):
        raise NotImplementedError(f"{type(self).__name__} has no adjoint (it is not a known linear map)")

    def pinv(self, y):
        raise NotImplementedError(f"{type(self).__name__} has no cheap pseudo-inverse; use method 'dps' or 'pigdm'")

    def solve_gram(self, v, r2, s2, *, cg_steps: int = 50):
        """Solves ``(r2 A Aᵀ + s2 I) u = v`` per example by conjugate gradients (``r2`` of shape ``(B,)``).

        The system is symmetric positive (semi-)definite; ``cg_steps`` fixes the work (no early stop, so it
        jit-compiles to a fixed loop). Where the residual vanishes the step is 0, not NaN.
        """

        def apply(u):
            return batch_mul(r2, self.forward(self.adjoint(u))) + s2 * u

        def body(_, c):
            u, r, p, rr = c
            ap = apply(p)
            pap = _vdot(p, ap)
            a = jnp.where(pap > 0, rr / jnp.where(pap > 0, pap, 1.0), 0.0)
            u, r = u + batch_mul(a, p), r - batch_mul(a, ap)
            rr_new = _vdot(r, r)
            beta = jnp.where(rr > 0, rr_new / jnp.where(rr > 0, rr, 1.0), 0.0)
            return u, r, r + batch_mul(beta, p), rr_new

        u0 = jnp.zeros_like(v)
        u, *_ = jax.lax.fori_loop(0, cg_steps, body, (u0, v, v, _vdot(v, v)))
        return u


class Inpainting(Operator):
    """``A x = mask ⊙ x`` (the measurement keeps the data's shape; 0 where missing).

    Attributes:
        mask: ``{0, 1}`` array broadcastable to the batch, with its rank (1 = observed).
    """

    mask: jax.Array

    def forward(self, x):
        return self.mask.astype(x.dtype) * x

    def adjoint(self, y):
        return self.mask.astype(y.dtype) * y

    def pinv(self, y):
        return self.mask.astype(y.dtype) * y

    def solve_gram(self, v, r2, s2, **_):
        # A Aᵀ = diag(mask): u = v / (r2 mask + s2), and 0 on unobserved entries (where v = 0 too).
        m = self.mask.astype(v.dtype)
        den = batch_mul(r2, jnp.broadcast_to(m, v.shape)) + s2
        return jnp.where(den > 0, v / jnp.where(den > 0, den, 1.0), 0.0)


class SuperResolution(Operator):
    """``k × k`` box average: ``(B, H, W, C) -> (B, H/k, W/k, C)``; ``A Aᵀ = I / k²``, ``A⁺`` = nearest upsampling."""

    factor: int = eqx.field(static=True)

    def __check_init__(self):
        if not isinstance(self.factor, int) or self.factor < 1:
            raise ValueError(f"super-resolution factor must be a positive int; got {self.factor!r}")

    def forward(self, x):
        b, h, w, c = x.shape
        k = self.factor
        if h % k or w % k:
            raise ValueError(f"image size {h}x{w} is not divisible by the factor {k}")
        return x.reshape(b, h // k, k, w // k, k, c).mean(axis=(2, 4))

    def pinv(self, y):
        k = self.factor
        return jnp.repeat(jnp.repeat(y, k, axis=1), k, axis=2)

    def adjoint(self, y):
        return self.pinv(y) / self.factor**2

    def solve_gram(self, v, r2, s2, **_):
        return batch_mul(1.0 / (r2 / self.factor**2 + s2), v)


class GaussianBlur(Operator):
    """Per-channel convolution with a normalised ``size × size`` Gaussian (std ``sigma`` pixels), zero padding.

    The kernel is symmetric and the padding zero, so the matrix is symmetric: ``adjoint = forward``.
    No cheap pseudo-inverse; the ΠGDM system is solved by conjugate gradients.
    """

    sigma: jax.Array
    size: int = eqx.field(static=True)

    def __init__(self, sigma, size: int = 5):
        if not isinstance(size, int) or size < 1 or size % 2 == 0:
            raise ValueError(f"blur kernel size must be a positive odd int; got {size!r}")
        self.sigma = jnp.asarray(sigma, jnp.float32)
        self.size = size

    def kernel(self, dtype=jnp.float32):
        r = jnp.arange(self.size, dtype=dtype) - (self.size - 1) / 2
        g = jnp.exp(-0.5 * (r / self.sigma.astype(dtype)) ** 2)
        k = g[:, None] * g[None, :]
        return k / jnp.sum(k)

    def forward(self, x):
        c = x.shape[-1]
        k = jnp.tile(self.kernel(x.dtype)[:, :, None, None], (1, 1, 1, c))  # HWIO, one filter per channel
        return jax.lax.conv_general_dilated(
            x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c
        )

    def adjoint(self, y):
        return self.forward(y)


class Colorization(Operator):
    """Gray level = mean of the ``channels`` colour channels: ``(B, H, W, C) -> (B, H, W, 1)``; ``A Aᵀ = I / C``."""

    channels: int = eqx.field(static=True, default=3)

    def forward(self, x):
        if x.shape[-1] != self.channels:
            raise ValueError(f"colorization expects {self.channels} channels; got shape {x.shape}")
        return jnp.mean(x, axis=-1, keepdims=True)

    def adjoint(self, y):
        return jnp.broadcast_to(y, y.shape[:-1] + (self.channels,)) / self.channels

    def pinv(self, y):
        return jnp.broadcast_to(y, y.shape[:-1] + (self.channels,))

    def solve_gram(self, v, r2, s2, **_):
        return batch_mul(1.0 / (r2 / self.channels + s2), v)


class RandomProjection(Operator):
    """``y = A vec(x)`` with a dense ``(M, D)`` matrix; ``event_shape`` is one example's shape (``(D,)`` default)."""

    matrix: jax.Array
    event_shape: tuple = eqx.field(static=True)

    def __init__(self, matrix, event_shape=None):
        self.matrix = jnp.asarray(matrix)
        if self.matrix.ndim != 2:
            raise ValueError(f"projection matrix must be (M, D); got shape {self.matrix.shape}")
        self.event_shape = tuple(event_shape) if event_shape is not None else (self.matrix.shape[1],)
        if int(jnp.prod(jnp.asarray(self.event_shape))) != self.matrix.shape[1]:
            raise ValueError(f"event_shape {self.event_shape} does not have D = {self.matrix.shape[1]} elements")

    def forward(self, x):
        return _per_example(x) @ self.matrix.T.astype(x.dtype)

    def adjoint(self, y):
        return (y @ self.matrix.astype(y.dtype)).reshape((y.shape[0],) + self.event_shape)

    def pinv(self, y):
        return (y @ jnp.linalg.pinv(self.matrix).T.astype(y.dtype)).reshape((y.shape[0],) + self.event_shape)

    def solve_gram(self, v, r2, s2, **_):
        # A Aᵀ = Q diag(λ) Qᵀ (M × M): u = Q (Qᵀ v / (r2 λ + s2)), exact and batched over r2.
        a = self.matrix.astype(v.dtype)
        lam, q = jnp.linalg.eigh(a @ a.T)
        w = (v @ q) / (r2[:, None] * lam[None, :] + s2)
        return w @ q.T


class DifferentiableOperator(Operator):
    """Any differentiable ``fn(x_batch) -> measurement batch`` (e.g. a network); DPS / universal guidance only."""

    fn: Callable

    def forward(self, x):
        return self.fn(x)


def measure(operator: Operator, x, key, sigma_y):
    """``y = A(x) + sigma_y n`` with ``n ~ N(0, I)``."""
    ax = operator.forward(x)
    return ax + jnp.asarray(sigma_y, ax.dtype) * jax.random.normal(key, ax.shape, ax.dtype)


class RangeReplacement(eqx.Module):
    """``project_fn(x, t, key)``: ``x + A⁺(alpha_t y + sigma_t A z - A x)``, the known part ``A⁺A x`` replaced.

    ``A⁺A`` is the orthogonal projection on the range of ``Aᵀ`` (the low-pass band for
    :class:`SuperResolution`: ILVR's ``φ_N``). ``noise`` is a fixed ``z`` (data shape) for deterministic
    samplers, or ``None`` for a fresh draw per call. Interface of :class:`scoresde.guidance.Replacement`.
    """

    sde: object
    operator: Operator
    y: jax.Array
    known: jax.Array  # A⁺ y, in data shape (its shape and dtype set the state's)
    noise: jax.Array | None = None

    def __call__(self, x, t, key):
        b = x.shape[0]
        tv = jnp.broadcast_to(jnp.asarray(t, x.dtype), (b,))
        z = self.noise if self.noise is not None else jax.random.normal(key, x.shape, x.dtype)
        y_t = batch_mul(self.sde.alpha(tv), self.y.astype(x.dtype)) + batch_mul(
            self.sde.sigma(tv), self.operator.forward(z)
        )
        return x + self.operator.pinv(y_t - self.operator.forward(x))

    def finalize(self, x):
        return x + self.operator.pinv(self.y.astype(x.dtype) - self.operator.forward(x))


def _replacement_projection(sde, operator, y, noise):
    if isinstance(operator, Inpainting):
        mask = jnp.broadcast_to(operator.mask, y.shape).astype(y.dtype)
        return conditional.Replacement(sde, y, mask, None, noise)
    if isinstance(operator, Colorization) and operator.channels == 3:
        gray = jnp.broadcast_to(y, y.shape[:-1] + (3,))
        proj = conditional.colorization_projection(sde, gray)
        return proj if noise is None else conditional.Replacement(sde, proj.known, proj.mask, proj.basis, noise)
    return RangeReplacement(sde, operator, y, operator.pinv(y), noise)


_GUIDANCE_OPTIONS = {
    "replacement": dict(fixed_noise=None, init="marginal"),
    "dps": dict(scale=1.0, weighting="gaussian"),
    "pigdm": dict(scale=1.0, data_var=1.0, cg_steps=50, jacobian="network"),
}


def posterior_sample(
    score_fn, sde, operator: Operator, y, key, *, posterior: str, sigma_y, method: str = "ddim", **options
):
    """One posterior sample per row of ``y`` through :func:`scoresde.sampling.sample`.

    Args:
        score_fn: the unconditional score ``score_fn(x, t)``.
        sde: the forward SDE.
        operator: an :class:`Operator`.
        y: measurements ``(B, ...)`` (``operator.forward``'s output shape).
        key: PRNG key.
        posterior: one of :data:`METHODS`.
        sigma_y: the measurement-noise std (traced). ``replacement`` ignores it.
        method: a method of :func:`scoresde.sampling.sample` (``replacement`` needs one that takes the
            per-step ``project_fn`` hook: all but ``"ode"``).
        **options: the sampler's options (``steps``, ``eta``, ``x_init``, ``eps``, ...) plus the
            posterior's own: ``replacement``: ``fixed_noise`` [None: fixed for deterministic samplers],
            ``init`` ["marginal"]; ``dps``: ``scale`` [1.0], ``weighting`` ["gaussian" | "normalized"];
            ``pigdm``: ``scale`` [1.0], ``data_var`` [1.0], ``cg_steps`` [50], ``jacobian``
            ["network" | "isotropic"]
            (see :mod:`scoresde.guidance.posterior`). ``x_init`` is not used by ``replacement``.

    Returns:
        ``(samples, nfe)``: ``samples`` in the data's shape; ``nfe`` counts score forward passes plus
        vector–Jacobian products through the score (each counts as one evaluation).

    Raises:
        ValueError: for an unknown posterior, method or option.
    """
    from scoresde import sampling  # noqa: PLC0415  lazy, as in guidance: the operators do not need the samplers to import

    if posterior not in _GUIDANCE_OPTIONS:
        raise ValueError(f"unknown posterior {posterior!r}; expected one of: {', '.join(METHODS)}")
    own = dict(_GUIDANCE_OPTIONS[posterior])
    for name in list(options):
        if name in own:
            own[name] = options.pop(name)
    y = jnp.asarray(y)
    if posterior == "replacement":
        x_example = operator.pinv(y)
        if not sampling.method_traits(method).projects:
            raise ValueError(
                f"posterior 'replacement' needs a fixed-grid sampler with the project_fn hook; got method {method!r}"
            )
        fixed = own["fixed_noise"] if own["fixed_noise"] is not None else sampling.is_deterministic(method)
        if "x_init" in options:
            raise ValueError(
                "posterior 'replacement' draws its own initial state (known part from its "
                "T-marginal); x_init is not accepted"
            )
        k_init, k_noise, k_sample = jax.random.split(key, 3)
        noise = jax.random.normal(k_noise, x_example.shape, x_example.dtype) if fixed else None
        projection = _replacement_projection(sde, operator, y, noise)
        x_init = conditional.initial_state(projection, k_init, init=own["init"])
        x, nfe = sampling.sample(
            score_fn, sde, x_init.shape, k_sample, method=method, x_init=x_init, project_fn=projection, **options
        )
        return projection.finalize(x), nfe
    if posterior == "dps":
        guided = pg.dps_guidance(
            score_fn, sde, operator, y, sigma_y=sigma_y, scale=own["scale"], weighting=own["weighting"]
        )
    else:
        guided = pg.pigdm_guidance(
            score_fn,
            sde,
            operator,
            y,
            sigma_y=sigma_y,
            scale=own["scale"],
            data_var=own["data_var"],
            cg_steps=own["cg_steps"],
            jacobian=own["jacobian"],
        )
    x_init = options.pop("x_init", None)
    shape = x_init.shape if x_init is not None else _data_shape(operator, y)
    x, nfe = sampling.sample(guided, sde, shape, key, method=method, x_init=x_init, **options)
    return x, nfe * guided.evaluations_per_call


def _data_shape(operator, y):
    try:
        return jax.eval_shape(operator.adjoint, y).shape
    except NotImplementedError as e:
        raise ValueError(f"cannot infer the data shape for {type(operator).__name__}; pass x_init") from e


def ilvr(score_fn, sde, reference, key, *, factor: int, method: str = "ddim", **options):
    """ILVR (Choi et al. 2021): generation whose ``factor``-low-pass band follows ``reference``.

    After every step the state's low-pass component ``φ_N(x) = A⁺A x`` (``A`` the ``factor × factor``
    box average) is replaced by that of the noised reference ``alpha_t ref + sigma_t z``; the returned
    sample's low-pass band is the reference's exactly. ``method`` and ``options``: the sampler, as for
    :func:`posterior_sample` with ``posterior="replacement"``.

    Returns:
        ``(samples, nfe)``.
    """
    op = SuperResolution(factor)
    return posterior_sample(
        score_fn,
        sde,
        op,
        op.forward(jnp.asarray(reference)),
        key,
        posterior="replacement",
        sigma_y=0.0,
        method=method,
        **options,
    )


INPAINTING_MASKS = ("half", "random")


def inpainting_mask(kind: str, shape: tuple, *, fraction: float = 0.5, seed: int = 0) -> np.ndarray:
    """A ``{0, 1}`` float32 mask ``(1, *shape)`` (1 = observed) for one example's ``shape``.

    ``"half"``: the lower half of an image (rows ``>= H/2``; for vectors the second half of the coordinates)
    is missing. ``"random"``: each pixel (all channels together) is missing with probability ``fraction``,
    from ``numpy``'s generator seeded with ``seed`` (the same mask for every image).

    Raises:
        ValueError: an unknown kind, or a fraction outside ``[0, 1)``.
    """
    if kind not in INPAINTING_MASKS:
        raise ValueError(f"unknown inpainting mask {kind!r}; expected one of: {', '.join(INPAINTING_MASKS)}")
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"inpainting mask_fraction must be in [0, 1); got {fraction!r}")
    pixel_shape = tuple(shape[:-1]) + (1,) if len(shape) == 3 else tuple(shape)
    if kind == "half":
        mask = np.ones(pixel_shape, np.float32)
        mask[pixel_shape[0] // 2 :] = 0.0
    else:
        mask = (np.random.default_rng(seed).random(pixel_shape) >= fraction).astype(np.float32)
    return mask[None]


def make_operator(
    name: str,
    shape: tuple,
    *,
    mask: str = "half",
    mask_fraction: float = 0.5,
    seed: int = 0,
    factor: int = 4,
    blur_sigma: float = 1.0,
    blur_size: int = 5,
    num_measurements: int = 0,
) -> Operator:
    """The measurement operator ``name`` of :mod:`scoresde.guidance.inverse` for examples of ``shape``, from plain values.

    Args:
        name: one of :data:`INVERSE_OPERATORS` but ``none``: ``inpainting`` (``mask``, ``mask_fraction``,
            ``seed``: :func:`inpainting_mask`), ``super_resolution`` (``factor × factor`` box average),
            ``deblur`` (Gaussian, ``blur_sigma`` pixels, odd ``blur_size``), ``colorization`` (3 channels to
            gray), ``random_projection`` (``num_measurements × D`` Gaussian matrix with ``N(0, 1/D)`` entries
            from ``seed``; ``0`` means ``D // 4``).
        shape: one example's shape, ``(H, W, C)`` or ``(D,)``.

    Raises:
        ValueError: an unknown operator, or settings the data cannot take (named with the expected values).
    """
    shape = tuple(int(s) for s in shape)
    is_image = len(shape) == 3

    def need_image():
        if not is_image:
            raise ValueError(f"operator {name!r} needs image data (H, W, C); got data shape {shape}")

    def inpainting():
        return Inpainting(jnp.asarray(inpainting_mask(mask, shape, fraction=mask_fraction, seed=seed)))

    def super_resolution():
        need_image()
        if isinstance(factor, bool) or int(factor) != factor or factor < 1 or shape[0] % factor or shape[1] % factor:
            raise ValueError(
                f"super_resolution factor {factor!r} must be a positive int dividing the image size "
                f"{shape[0]}x{shape[1]}"
            )
        return SuperResolution(int(factor))

    def deblur():
        need_image()
        if not blur_sigma > 0:
            raise ValueError(f"deblur blur_sigma must be > 0 pixels; got {blur_sigma!r}")
        if int(blur_size) != blur_size or blur_size < 1 or blur_size % 2 == 0:
            raise ValueError(f"deblur blur_size must be a positive odd int; got {blur_size!r}")
        return GaussianBlur(float(blur_sigma), int(blur_size))

    def colorization():
        need_image()
        if shape[-1] != 3:
            raise ValueError(
                f"operator 'colorization' needs 3 colour channels; got data shape {shape} (config.data.num_channels)"
            )
        return Colorization(3)

    def random_projection():
        d = math.prod(shape)
        m = int(num_measurements) or max(1, d // 4)
        if not 1 <= m <= d:
            raise ValueError(
                f"random_projection num_measurements must be in 1..{d} (D) or 0 for D // 4; got {num_measurements!r}"
            )
        matrix = np.random.default_rng(seed).standard_normal((m, d)).astype(np.float32) / np.sqrt(d)
        return RandomProjection(jnp.asarray(matrix), shape)

    factories = {
        "inpainting": inpainting,
        "super_resolution": super_resolution,
        "deblur": deblur,
        "colorization": colorization,
        "random_projection": random_projection,
    }
    if name not in factories:
        raise ValueError(f"unknown inverse operator {name!r}; expected one of: {', '.join(factories)}")
    return factories[name]()


def naive_restoration(operator: Operator, y):
    """The baseline a restoration is compared with: ``A⁺y``, or ``y`` itself for a blur (no cheap ``A⁺``)."""
    if isinstance(operator, GaussianBlur):
        return y
    return operator.pinv(y)
