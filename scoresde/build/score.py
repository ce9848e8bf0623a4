"""The SDE and the network's output convention: ``config.training`` / ``config.model`` -> :class:`ScoreModel`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp


from scoresde import guidance, parameterization, sampling
from scoresde import sde as sde_lib




_SDE_ARGS = {
    "vp": lambda m: dict(beta_min=float(m.get("beta_min", 0.1)), beta_max=float(m.get("beta_max", 20.0)),
                         N=int(m.get("num_scales", 1000))),
    "ve": lambda m: dict(sigma_min=float(m.get("sigma_min", 0.01)), sigma_max=float(m.get("sigma_max", 50.0)),
                         N=int(m.get("num_scales", 1000))),
}
_SDE_ARGS.update({  # issue 17: flow matching and EDM processes
    "rectified_flow": lambda m: dict(T=float(m.get("rf_T", 1.0)), N=int(m.get("num_scales", 1000))),
    "edm": lambda m: dict(sigma_min=float(m.get("sigma_min", 0.002)), sigma_max=float(m.get("sigma_max", 80.0)),
                          N=int(m.get("num_scales", 1000))),
})
_SDE_KIND = {"vpsde": "vp", "vp": "vp", "subvpsde": "vp", "subvp": "vp", "vesde": "ve", "ve": "ve",
             "rectified_flow": "rectified_flow", "edm": "edm"}


def make_sde(config) -> sde_lib.LinearSDE:
    """The forward SDE named by ``config.training.sde`` with the reference's ``config.model`` constants.

    Raises:
        ValueError: an unknown SDE name.
    """
    name = str(config.training.sde).lower()
    if name not in _SDE_KIND:
        raise ValueError(f"unknown sde {config.training.sde!r}; expected one of: vpsde, subvpsde, vesde, "
                         f"rectified_flow, edm")
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
        if config.model.get("output", "") and config.model.output != conv["output"]:
            raise ValueError(f"config.model.output={config.model.output!r} contradicts config.training.objective="
                             f"{objective!r}, which trains output {conv['output']!r}; leave config.model.output empty")
    elif config.model.get("output", "") and config.model.get("time_label", ""):
        conv = {}
    else:
        conv = parameterization.reference_convention(sde, bool(config.training.get("continuous", True)))
    if config.model.get("output", ""):
        conv["output"] = config.model.output
    if config.model.get("time_label", ""):
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
        return parameterization.model_score_fn(net_fn, self.sde, output=self.output, time_label=self.time_label,
                                               sigma_data=self.sigma_data)

    def score_fn(self, model, *, y=None, train: bool = False, key=None) -> Callable:
        """``score_fn(x, t)`` of an NNX network (eval mode by default; ``y`` class labels)."""
        return self.net_score_fn(lambda x, labels: model(x, labels, y, train=train, key=key))


def make_score_model(config) -> ScoreModel:
    """The :class:`ScoreModel` of ``config`` (SDE from ``config.training``, convention from ``config.model``)."""
    sde = make_sde(config)
    return ScoreModel(sde, **score_convention(config, sde), sigma_data=float(config.model.get("sigma_data", 0.5)))


def make_score_fn(model, sde, config, *, train: bool = False, key=None, y=None):
    """``score_fn(x, t)`` of an NNX network for ``config``'s convention (eval mode by default)."""
    return ScoreModel(sde, **score_convention(config, sde), sigma_data=float(config.model.get("sigma_data", 0.5))
                      ).score_fn(model, y=y, train=train, key=key)


def class_labels(config, batch, key):
    """Class labels for a class-conditional model (``config.model.num_classes > 0``), else ``None``.

    With ``config.training.p_uncond > 0`` each label is replaced by the null label ``num_classes``
    with that probability (classifier-free guidance training, :func:`scoresde.guidance.drop_labels`).
    """
    num_classes = int(config.model.get("num_classes", 0) or 0)
    if num_classes <= 0:
        return None
    y = batch["label"].astype(jnp.int32)
    p_uncond = float(config.training.get("p_uncond", 0.0))
    return guidance.drop_labels(key, y, p_uncond, num_classes) if p_uncond > 0 else y


# Issue 17: flow matching and EDM objectives, and reflow couplings. An objective fixes the network's output
# convention (its loss trains that quantity) and the process it is defined on.

# ct (consistency training) trains a consistency function, not a score: it runs in --mode=distill
OBJECTIVES = ("dsm", "flow_matching", "edm", "ct")
OBJECTIVE_CONVENTIONS = {
    "flow_matching": {"output": "flow_velocity", "time_label": "t"},
    "edm": {"output": "edm", "time_label": "edm_noise"},
}
OBJECTIVE_PROCESS = {"flow_matching": (sde_lib.RectifiedFlow, "rectified_flow"), "edm": (sde_lib.EDMSDE, "edm")}


def training_objective(config) -> str:
    """``config.training.objective`` (``dsm`` when absent, as in the reference's configs).

    Raises:
        ValueError: an unknown objective.
    """
    objective = str(config.training.get("objective", "dsm") or "dsm").lower()
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {config.training.objective!r}; expected one of: {', '.join(OBJECTIVES)}")
    return objective
