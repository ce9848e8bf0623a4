"""Inverse problems from ``config.inverse``: the operator, posterior-sampling settings, the restore function.
"""

from __future__ import annotations


import jax
from flax import nnx


from scoresde.guidance import inverse as inverse_lib
from scoresde import data as data_lib


from scoresde.build.run import purpose_key
from scoresde.build.sampling import guided_score_fn, parallel_settings, sampling_options
from scoresde.build.score import sampling_eps

INVERSE_OPERATORS = ("none", "inpainting", "super_resolution", "deblur", "colorization", "random_projection")


def inverse_operator_name(config) -> str:
    """``config.inverse.operator`` (``"none"`` when the config has no ``inverse`` section).

    Raises:
        ValueError: an unknown operator name.
    """
    section = config.get("inverse", None)
    name = str(section.get("operator", "none")).lower() if section is not None else "none"
    if name not in INVERSE_OPERATORS:
        raise ValueError(f"unknown config.inverse.operator {name!r}; expected one of: {', '.join(INVERSE_OPERATORS)}")
    return name


def operator_from_config(config) -> inverse_lib.Operator | None:
    """:func:`scoresde.guidance.inverse.make_operator` of ``config.inverse`` for ``config.data``'s shape; ``None`` for operator ``none``."""
    name = inverse_operator_name(config)
    if name == "none":
        return None
    inv = config.inverse
    return inverse_lib.make_operator(name, data_lib.data_shape(config), mask=str(inv.get("mask", "half")).lower(),
                         mask_fraction=float(inv.get("mask_fraction", 0.5)), seed=int(inv.get("seed", 0)),
                         factor=int(inv.get("factor", 4)), blur_sigma=float(inv.get("blur_sigma", 1.0)),
                         blur_size=int(inv.get("blur_size", 5)), num_measurements=int(inv.get("num_measurements", 0)))


def posterior_settings(config) -> dict:
    """The keyword arguments of :func:`scoresde.guidance.inverse.posterior_sample` that ``config.inverse`` sets.

    ``method`` and ``sigma_y`` always; ``dps``: ``scale``, ``weighting``; ``pigdm``: ``scale``, ``data_var``,
    ``cg_steps``, ``jacobian``; ``replacement``: nothing more (it ignores ``sigma_y``).

    Raises:
        ValueError: an unknown method, a negative ``sigma_y``, an unknown DPS weighting or ΠGDM jacobian.
    """
    inv = config.inverse
    method = str(inv.get("method", "pigdm")).lower()
    if method not in inverse_lib.METHODS:
        raise ValueError(f"unknown config.inverse.method {method!r}; expected one of: {', '.join(inverse_lib.METHODS)}")
    sigma_y = float(inv.get("sigma_y", 0.05))
    if sigma_y < 0:
        raise ValueError(f"config.inverse.sigma_y must be >= 0; got {sigma_y}")
    out = dict(method=method, sigma_y=sigma_y)
    if method == "dps":
        weighting = str(inv.get("weighting", "gaussian")).lower()
        if weighting not in ("gaussian", "normalized"):
            raise ValueError(f"unknown config.inverse.weighting {weighting!r}; expected 'gaussian' or 'normalized'")
        out.update(scale=float(inv.get("scale", 1.0)), weighting=weighting)
    elif method == "pigdm":
        jacobian = str(inv.get("jacobian", "network")).lower()
        if jacobian not in ("network", "isotropic"):
            raise ValueError(f"unknown config.inverse.jacobian {jacobian!r}; expected 'network' or 'isotropic'")
        out.update(scale=float(inv.get("scale", 1.0)), data_var=float(inv.get("data_var", 1.0)),
                   cg_steps=int(inv.get("cg_steps", 50)), jacobian=jacobian)
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
        raise ValueError("config.sampling.parallel_window > 0 (ParaDiGMS) samples without measurements; "
                         "set it to 0 for config.inverse.operator != 'none'")
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
        restored, nfe = inverse_lib.posterior_sample(score_fn, sde, operator, y, sample_key, method=method, eps=eps,
                                                     **options, posterior=settings["method"],
                                                     **{k: v for k, v in settings.items() if k != "method"})
        return y, inverse_scaler(inverse_lib.naive_restoration(operator, y)), inverse_scaler(restored), nfe

    return jax.jit(fn)
