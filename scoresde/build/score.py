"""The SDE and the network's output convention: ``config.training`` / ``config.model`` -> :class:`ScoreModel`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from scoresde import guidance, parameterization, sampling
from scoresde import sde as sde_lib
from scoresde.data import class_captions

# The constants of each process family from config.model (the edm process reads sigma_min / sigma_max too:
# EDM's are 0.002 / 80, which its configs set).
_SDE_ARGS = {
    "vp": lambda m: dict(beta_min=float(m.beta_min), beta_max=float(m.beta_max), N=int(m.num_scales)),
    "ve": lambda m: dict(sigma_min=float(m.sigma_min), sigma_max=float(m.sigma_max), N=int(m.num_scales)),
    "vp_cosine": lambda m: dict(logsnr_min=float(m.logsnr_min), logsnr_max=float(m.logsnr_max), N=int(m.num_scales)),
    "rectified_flow": lambda m: dict(T=float(m.rf_T), N=int(m.num_scales)),
    "edm": lambda m: dict(sigma_min=float(m.sigma_min), sigma_max=float(m.sigma_max), N=int(m.num_scales)),
}
_SDE_KIND = {
    "vpsde": "vp",
    "vp": "vp",
    "vp_cosine": "vp_cosine",
    "subvpsde": "vp",
    "subvp": "vp",
    "vesde": "ve",
    "ve": "ve",
    "rectified_flow": "rectified_flow",
    "edm": "edm",
}


def make_sde(config) -> sde_lib.LinearSDE:
    """The forward SDE named by ``config.training.sde`` with the reference's ``config.model`` constants.

    Raises:
        ValueError: an unknown SDE name.
    """
    name = str(config.training.sde).lower()
    if name not in _SDE_KIND:
        raise ValueError(
            f"unknown sde {config.training.sde!r}; expected one of: vpsde, vp_cosine, subvpsde, vesde, rectified_flow, "
            "edm"
        )
    return sde_lib.get_sde(name, **_SDE_ARGS[_SDE_KIND[name]](config.model))


def sampling_eps(sde) -> float:
    """The reference's smallest sampling time (:func:`scoresde.sampling.default_eps`)."""
    return sampling.default_eps(sde)


def score_convention(config, sde) -> dict:
    """``{output, time_label}`` of the network: ``config.model.output`` / ``time_label``, else the objective's
    (:data:`OBJECTIVE_CONVENTIONS`), else the reference's. A ``flow_matching`` or ``edm`` objective fixes the
    output (its loss trains that quantity); the time label stays a choice of the network's input (e.g. ``999t``
    for DDPM++'s positional embedding, as the rectified-flow authors feed it).

    Raises:
        ValueError: ``config.model.output`` contradicts the objective.
    """
    objective = training_objective(config)
    if objective in OBJECTIVE_CONVENTIONS:
        conv = dict(OBJECTIVE_CONVENTIONS[objective])
        if config.model.output and config.model.output != conv["output"]:
            raise ValueError(
                f"config.model.output={config.model.output!r} contradicts config.training.objective="
                f"{objective!r}, which trains output {conv['output']!r}; leave config.model.output empty"
            )
    elif config.model.output and config.model.time_label:
        conv = {}
    else:
        conv = parameterization.reference_convention(sde, bool(config.training.continuous))
    if config.model.output:
        conv["output"] = config.model.output
    if config.model.time_label:
        conv["time_label"] = config.model.time_label
    return conv


@dataclasses.dataclass(frozen=True)
class ScoreModel:
    """An SDE and the convention of the network trained on it, built once by :func:`make_score_model`.

    Every mode turns a network into a score function through :meth:`score_fn`, so the output type
    (score / eps / x0 / v) and the time labels (999·t, σ, discrete indices) are decided here only.
    """

    sde: sde_lib.LinearSDE
    output: str
    time_label: str
    sigma_data: float = 0.5  # EDM preconditioning (output "edm" only)

    @property
    def eps(self) -> float:
        """The default smallest sampling time of the SDE."""
        return sampling_eps(self.sde)

    def net_score_fn(self, net_fn: Callable) -> Callable:
        """``score_fn(x, t)`` of a raw ``net_fn(x, labels)``."""
        return parameterization.model_score_fn(
            net_fn, self.sde, output=self.output, time_label=self.time_label, sigma_data=self.sigma_data
        )

    def score_fn(self, model, *, y=None, train: bool = False, key=None) -> Callable:
        """``score_fn(x, t)`` of an NNX network (eval mode by default; ``y`` class labels)."""
        return self.net_score_fn(lambda x, labels: model(x, labels, y, train=train, key=key))


def make_score_model(config) -> ScoreModel:
    """The :class:`ScoreModel` of ``config`` (SDE from ``config.training``, convention from ``config.model``)."""
    sde = make_sde(config)
    return ScoreModel(sde, **score_convention(config, sde), sigma_data=float(config.model.sigma_data))


def make_score_fn(model, sde, config, *, train: bool = False, key=None, y=None):
    """``score_fn(x, t)`` of an NNX network for ``config``'s convention (eval mode by default)."""
    return ScoreModel(sde, **score_convention(config, sde), sigma_data=float(config.model.sigma_data)).score_fn(
        model, y=y, train=train, key=key
    )


# The class-conditional fields (model.num_classes, training.p_uncond, sampling.guidance / class_label /
# guidance_scale) come as one block (config_defaults.add_guidance); an unconditional config has none of them.
# They are not in the defaults table because a sampler's description lists every config.sampling field and is
# stored with samples: an unconditional config must not gain them.


def num_classes(config) -> int:
    """``config.model.num_classes`` of a class-conditional config; 0 when the config has no class labels."""
    return int(config.model.get("num_classes", 0) or 0)


def guidance_kind(config) -> str:
    """``config.sampling.guidance`` (``none`` | ``cfg`` | ``classifier``); ``none`` for an unconditional config."""
    return str(config.sampling.get("guidance", "none")).lower()


def conditioning_kind(config) -> str:
    """What the network is conditioned on: ``class`` (``model.num_classes``), ``text`` (``model.text_vocab``),
    ``vector`` (``model.cond_dim``) or ``none``."""
    if num_classes(config) > 0:
        return "class"
    if int(config.model.get("text_vocab", 0) or 0) > 0:
        return "text"
    if int(config.model.get("cond_dim", 0) or 0) > 0:
        return "vector"
    return "none"


# the batch entry that carries each kind of array conditioning
CONDITIONING_KEYS = {"text": "caption", "vector": "cond"}


def class_labels(config, batch, key, *, drop: bool = True):
    """The network's conditioning ``y`` from a training batch, ``None`` for an unconditional model.

    Class labels (``config.model.num_classes > 0``): ``batch["label"]``; with ``config.training.p_uncond > 0``
    each is replaced by the null label ``num_classes`` with that probability (classifier-free guidance training,
    :func:`scoresde.guidance.drop_labels`). Captions (``model.text_vocab > 0``): the tokens ``batch["caption"]``
    (``config.data.captions``), or, with ``config.data.caption_set``, a caption of each ``batch["label"]`` in a
    template drawn with ``fold_in(key, 1)`` (:mod:`scoresde.data.class_captions`); a vector (``model.cond_dim > 0``): ``batch["cond"]``; each row is replaced by
    zeros, the empty caption / the zero vector, with probability ``p_uncond``
    (:func:`scoresde.guidance.drop_conditioning`; GLIDE drops 20% of captions, Nichol et al. 2022, Sec. 3).

    ``drop=False`` (evaluation, e.g. the conditional likelihood) never drops.

    Raises:
        ValueError: a caption- or vector-conditioned model whose batches lack that entry.
    """
    kind = conditioning_kind(config)
    p_uncond = float(config.training.get("p_uncond", 0.0)) if drop else 0.0
    if kind == "text" and "caption" not in batch and config.data.get("caption_set", ""):
        # captions of the batch's class labels, a template drawn per example (scoresde.data.class_captions)
        table = jnp.asarray(class_captions.caption_table(str(config.data.caption_set), int(config.data.caption_len)))
        template = jax.random.randint(jax.random.fold_in(key, 1), batch["label"].shape, 0, table.shape[1])
        y = table[batch["label"].astype(jnp.int32), template]
        return guidance.drop_conditioning(key, y, p_uncond) if p_uncond > 0 else y
    if kind in CONDITIONING_KEYS:
        name = CONDITIONING_KEYS[kind]
        if name not in batch:
            hint = (
                "set config.data.captions=True, or config.data.caption_set for class captions"
                if kind == "text"
                else "the batches must carry the vectors"
            )
            raise ValueError(
                f"a {kind}-conditioned model (config.model.{'text_vocab' if kind == 'text' else 'cond_dim'} > 0) "
                f"trains on batch[{name!r}]; the batches hold {sorted(batch)} ({hint})"
            )
        y = batch[name]
        return guidance.drop_conditioning(key, y, p_uncond) if p_uncond > 0 else y
    k = num_classes(config)
    if k <= 0:
        return None
    y = batch["label"].astype(jnp.int32)
    return guidance.drop_labels(key, y, p_uncond, k) if p_uncond > 0 else y


# Flow matching and EDM objectives, and reflow couplings. An objective fixes the network's output
# convention (its loss trains that quantity) and the process it is defined on.

# ct (consistency training) trains a consistency function, not a score: it runs in --mode=distill
OBJECTIVES = ("dsm", "flow_matching", "edm", "ct")
OBJECTIVE_CONVENTIONS = {
    "flow_matching": {"output": "flow_velocity", "time_label": "t"},
    "edm": {"output": "edm", "time_label": "edm_noise"},
}
OBJECTIVE_PROCESS = {"flow_matching": (sde_lib.RectifiedFlow, "rectified_flow"), "edm": (sde_lib.EDMSDE, "edm")}


def training_objective(config) -> str:
    """``config.training.objective`` (``dsm`` when empty).

    Raises:
        ValueError: an unknown objective.
    """
    objective = str(config.training.objective or "dsm").lower()
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {config.training.objective!r}; expected one of: {', '.join(OBJECTIVES)}")
    return objective
