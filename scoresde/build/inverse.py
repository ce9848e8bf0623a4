"""Inverse problems from ``config.inverse``: the operator, posterior-sampling settings, the restore function."""

from __future__ import annotations

import jax
from flax import nnx

from scoresde import data as data_lib
from scoresde.build.run import purpose_key
from scoresde.build.sampling import guided_score_fn, parallel_settings, sampling_options
from scoresde.build.score import sampling_eps
from scoresde.guidance import inverse as inverse_lib

INVERSE_OPERATORS = ("none", "inpainting", "super_resolution", "deblur", "colorization", "random_projection")


def inverse_operator_name(config) -> str:
    """``config.inverse.operator`` (``"none"``: no inverse problem).

    Raises:
        ValueError: an unknown operator name.
    """
    name = str(config.inverse.operator).lower()
    if name not in INVERSE_OPERATORS:
        raise ValueError(f"unknown config.inverse.operator {name!r}; expected one of: {', '.join(INVERSE_OPERATORS)}")
    return name


def operator_from_config(config) -> inverse_lib.Operator | None:
    """:func:`scoresde.guidance.inverse.make_operator` of ``config.inverse`` for ``config.data``'s shape; ``None`` for operator ``none``."""
    name = inverse_operator_name(config)
    if name == "none":
        return None
    inv = config.inverse
    return inverse_lib.make_operator(
        name,
        data_lib.data_shape(config),
        mask=str(inv.mask).lower(),
        mask_fraction=float(inv.mask_fraction),
        seed=int(inv.seed),
        factor=int(inv.factor),
        blur_sigma=float(inv.blur_sigma),
        blur_size=int(inv.blur_size),
        num_measurements=int(inv.num_measurements),
    )


def restore_counts(config) -> tuple[int, int]:
    """``(num_images, samples_per_image)`` of ``config.inverse``: test images restored, posterior samples of each.

    Raises:
        ValueError: either is below 1.
    """
    total, per_image = int(config.inverse.num_images), int(config.inverse.samples_per_image)
    if per_image < 1:
        raise ValueError(f"config.inverse.samples_per_image must be >= 1; got {per_image}")
    if total < 1:
        raise ValueError(f"config.inverse.num_images must be >= 1; got {total}")
    return total, per_image


def posterior_settings(config) -> dict:
    """The keyword arguments of :func:`scoresde.guidance.inverse.posterior_sample` that ``config.inverse`` sets.

    ``method`` and ``sigma_y`` always; ``dps``: ``scale``, ``weighting``; ``pigdm``: ``scale``, ``data_var``,
    ``cg_steps``, ``jacobian``; ``replacement``: nothing more (it ignores ``sigma_y``).

    Raises:
        ValueError: an unknown method, a negative ``sigma_y``, an unknown DPS weighting or ΠGDM jacobian.
    """
    inv = config.inverse
    method = str(inv.method).lower()
    if method not in inverse_lib.METHODS:
        raise ValueError(f"unknown config.inverse.method {method!r}; expected one of: {', '.join(inverse_lib.METHODS)}")
    sigma_y = float(inv.sigma_y)
    if sigma_y < 0:
        raise ValueError(f"config.inverse.sigma_y must be >= 0; got {sigma_y}")
    out = dict(method=method, sigma_y=sigma_y)
    if method == "dps":
        weighting = str(inv.weighting).lower()
        if weighting not in ("gaussian", "normalized"):
            raise ValueError(f"unknown config.inverse.weighting {weighting!r}; expected 'gaussian' or 'normalized'")
        out.update(scale=float(inv.scale), weighting=weighting)
    elif method == "pigdm":
        jacobian = str(inv.jacobian).lower()
        if jacobian not in ("network", "isotropic"):
            raise ValueError(f"unknown config.inverse.jacobian {jacobian!r}; expected 'network' or 'isotropic'")
        out.update(scale=float(inv.scale), data_var=float(inv.data_var), cg_steps=int(inv.cg_steps), jacobian=jacobian)
    return out


def make_restore_fn(config, sde, graphdef, rest, operator: inverse_lib.Operator, classifier=None):
    """A jitted ``fn(params, x, key, k=0) -> (y, naive, restored, nfe)`` for ``config.inverse`` and ``config.sampling``.

    ``x`` is a batch of ground-truth images in model space. ``y = A x + sigma_y n`` (noise from
    ``fold_in(key, PURPOSE["measurement"])``, the same for every ``k``); ``restored`` is posterior sample
    ``k`` (key ``fold_in(fold_in(key, PURPOSE["sample"]), k)``; ``k`` is traced). ``naive`` (:func:`scoresde.guidance.inverse.naive_restoration`) and ``restored``
    (:func:`scoresde.guidance.inverse.posterior_sample` with the sampler of ``config.sampling``; the prior score
    guided as :func:`guided_score_fn` says) are in data space ``[0, 1]``, unclipped. Pass ``x`` sharded over
    a ``('data',)`` mesh (:func:`scoresde.parallel.shard_batch`) and the whole solve runs sharded.

    Raises:
        ValueError: ParaDiGMS (``config.sampling.parallel_window``) with an inverse problem, or a bad
            ``config.inverse`` (:func:`posterior_settings`).
    """
    if parallel_settings(config) is not None:
        raise ValueError(
            "config.sampling.parallel_window > 0 (ParaDiGMS) samples without measurements; "
            "set it to 0 for config.inverse.operator != 'none'"
        )
    method, options = sampling_options(config)
    settings = posterior_settings(config)
    inverse_scaler = data_lib.get_data_inverse_scaler(config)
    eps = sampling_eps(sde)
    sigma_y = settings["sigma_y"]

    def fn(params, x, key, k=0):
        model = nnx.merge(graphdef, params, rest)
        score_fn = guided_score_fn(config, model, sde, x.shape[0], classifier=classifier)
        y = inverse_lib.measure(operator, x, purpose_key(key, "measurement"), sigma_y)
        sample_key = jax.random.fold_in(purpose_key(key, "sample"), k)
        restored, nfe = inverse_lib.posterior_sample(
            score_fn,
            sde,
            operator,
            y,
            sample_key,
            method=method,
            eps=eps,
            **options,
            posterior=settings["method"],
            **{k: v for k, v in settings.items() if k != "method"},
        )
        return y, inverse_scaler(inverse_lib.naive_restoration(operator, y)), inverse_scaler(restored), nfe

    return jax.jit(fn)
