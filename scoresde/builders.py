"""The config edge: the only code that turns a config into objects.

Everything below this module (``sde``, ``parameterization``, ``losses``, ``sampling``, ``likelihood``,
``guidance``, ``models``, ``metrics`` statistics) takes typed arguments and callables; everything above
it (``scoresde.modes``) asks this module for what it needs and never reads a config section twice.

What lives here:

* :func:`load_config`: the one config loader (``path.py[:variant]`` or a JSON dump).
* :data:`PURPOSE` and :func:`purpose_key`: the table of named RNG purposes (``fold_in`` constants).
* :func:`make_sde`, :class:`ScoreModel` / :func:`make_score_model` (the SDE plus the network's output and
  time-label convention, built once), :func:`make_loss_fn`, :func:`make_optimizer` (typed) and
  :func:`optimizer_from_config`.
* :func:`get_model` / :func:`build_model` / :func:`load_model`, :func:`get_classifier` /
  :func:`load_classifier`: networks from their config sections, and from a workdir's checkpoints.
* :func:`sampler_from_config`, :func:`guided_score_fn`, :func:`make_sample_fn`: sampling from
  ``config.sampling`` (ParaDiGMS when ``config.sampling.parallel_window > 0``, :func:`parallel_settings`).
* Latent diffusion: :func:`get_autoencoder`, :class:`AutoencoderTrainee`, the autoencoder record,
  :func:`model_data_shape`, :func:`load_latent_space`, :func:`batch_transform` (``config.latent``).
* Inverse problems (``config.inverse``): :func:`make_operator` (from plain values),
  :func:`operator_from_config`, :func:`posterior_settings`, :func:`make_restore_fn`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

import numpy as np

from scoresde import classifiers, config_defaults, guidance, losses, parallel, parameterization, reflow, sampling
from scoresde import inverse as inverse_lib
from scoresde import data as data_lib
from scoresde import sde as sde_lib
from scoresde.checkpointing import Checkpointer, checkpoint_dir

# ----------------------------------------------------------------------------------------------- config

def load_config(spec: str) -> ml_collections.ConfigDict:
    """Reads a config: ``path/to/config.py`` (its ``get_config()``), ``path.py:variant`` or a ``.json`` dump.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is neither a ``.py`` with ``get_config()`` nor a ``.json``.
    """
    path, _, variant = spec.partition(":") if not os.path.exists(spec) else (spec, "", "")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no config file {path!r}")
    if path.endswith(".json"):
        with open(path) as f:
            return ml_collections.ConfigDict(json.load(f))
    if not path.endswith(".py"):
        raise ValueError(f"unknown config file {path!r}; expected a .py file with get_config() or a .json file")
    module = config_defaults.load_module(path)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path!r} defines no get_config()")
    return module.get_config(variant or None) if variant else module.get_config()


def as_config(config) -> ml_collections.ConfigDict:
    """A ConfigDict from one of our configs, a reference ConfigDict or a plain (JSON) dict."""
    if isinstance(config, ml_collections.ConfigDict):
        return config
    if isinstance(config, dict):
        return ml_collections.ConfigDict(config)
    raise TypeError(f"config must be a ConfigDict or a dict; got {type(config).__name__}")


class ConfigMismatchError(ValueError):
    """Resuming a run whose stored config differs in fields that change the run's meaning."""


# Fields a resumed run may change freely: how long it runs, how it logs and checkpoints, how it is evaluated
# and sampled. Every other field (SDE, model, data, objective, optimiser, batch, seed) changes what the
# checkpoint means. A prefix ending in "." covers a whole section.
RESUME_SAFE_FIELDS = {
    "train": ("training.n_iters", "training.log_freq", "training.eval_freq", "training.snapshot_freq",
              "training.snapshot_freq_for_preemption", "training.snapshot_sampling", "training.snapshot_num_samples",
              "training.keep_checkpoints", "training.tensorboard", "training.progress", "training.max_nonfinite",
              "training.allow_config_change", "eval.", "sampling.", "classifier.", "inverse."),
}
# For trainers of one section, only the fields that section depends on are compared.
RESUME_COMPARED_FIELDS = {
    "classifier": ("classifier.", "data.", "training.sde", "training.continuous", "model.beta_min", "model.beta_max",
                   "model.sigma_min", "model.sigma_max", "model.num_scales", "seed"),
}
RESUME_SAFE_FIELDS["classifier"] = ("classifier.n_iters", "classifier.log_freq", "classifier.snapshot_freq",
                                    "classifier.num_eval_batches", "classifier.tensorboard", "classifier.eval_times")
RESUME_COMPARED_FIELDS["autoencoder"] = ("autoencoder.", "data.", "seed")
RESUME_SAFE_FIELDS["autoencoder"] = ("autoencoder.n_iters", "autoencoder.log_freq", "autoencoder.eval_freq",
                                     "autoencoder.snapshot_freq", "autoencoder.scale_num_examples",
                                     "autoencoder.max_nonfinite", "autoencoder.tensorboard")
# distill and reflow train a score network as train does: the same fields may change ("train"); their own
# sections (distill., reflow.: teacher, method, schedule, couplings) change the run's meaning and are compared.


def _flatten_config(tree, prefix="") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _matches(field: str, patterns) -> bool:
    return any(field == p or (p.endswith(".") and field.startswith(p)) for p in patterns)


def config_differences(stored: dict, config, *, kind: str = "train") -> list[dict]:
    """The fields that change a run's meaning and differ between ``stored`` (a checkpoint's config) and ``config``.

    Fields the stored config does not have (added to the code after it was written) are not compared.

    Returns:
        ``[{"field", "stored", "now"}, ...]``, sorted by field.
    """
    old = _flatten_config(stored or {})
    new = _flatten_config(json.loads(config.to_json_best_effort()))
    compared = RESUME_COMPARED_FIELDS.get(kind)
    safe = RESUME_SAFE_FIELDS.get(kind, ())
    out = []
    for field in sorted(set(old) & set(new)):
        if (compared is not None and not _matches(field, compared)) or _matches(field, safe):
            continue
        if old[field] != new[field]:
            out.append({"field": field, "stored": old[field], "now": new[field]})
    return out


def check_resume_config(stored: dict, config, *, kind: str = "train", workdir: str = "") -> list[dict]:
    """Refuses to resume under a config that changes the run's meaning, unless explicitly allowed.

    Returns:
        The differences (empty when none) when they are allowed by ``config.training.allow_config_change``.

    Raises:
        ConfigMismatchError: naming every differing field with its stored and current value.
    """
    diffs = config_differences(stored, config, kind=kind)
    if diffs and not bool(config.training.get("allow_config_change", False)):
        lines = "; ".join(f"{d['field']}: checkpoint {d['stored']!r}, now {d['now']!r}" for d in diffs)
        raise ConfigMismatchError(
            f"cannot resume {workdir or 'this run'}: the config differs from the checkpoint's in fields that change "
            f"the run's meaning ({lines}). Use the original config, another --workdir, or "
            f"--config.training.allow_config_change=True to continue deliberately (fine-tuning; recorded in "
            f"metrics.jsonl)")
    return diffs


# ----------------------------------------------------------------------------------------------- RNG purposes

# One table of what each stream of randomness is for: fold_in(key, PURPOSE[name]). The numbers are the
# ones earlier runs used, so checkpoints and reports stay reproducible.
PURPOSE = {
    "train": 1,          # root -> per-step training key (fold_in(key, step) below it)
    "eval": 2,           # root -> eval-loss key during training
    "snapshot": 3,       # root -> snapshot sampling during training
    "eval_loss": 4,      # root -> the eval mode's loss
    "sample": 5,         # root -> the sample mode
    "likelihood": 6,     # root -> bits/dim dequantisation and probes
    "label_dropout": 7,  # step key -> classifier-free-guidance label dropout
    "fid": 8,            # root -> the FID mode's sample rounds
    "classifier": 11,    # root -> classifier training
    "classifier_eval": 12,  # root -> classifier test accuracy noise
    "latent_encode": 15,  # step key -> posterior draw of a latent model's training batch (issue 15)
    "measurement": 16,   # root -> inverse problems: measurement noise (restoration keys use "sample")
    "reflow": 17,        # root -> reflow couplings (fold_in(key, chunk) below it)
}


def purpose_key(key, purpose: str):
    """``fold_in(key, PURPOSE[purpose])``.

    Raises:
        KeyError: an unknown purpose (the table above lists them).
    """
    if purpose not in PURPOSE:
        raise KeyError(f"unknown RNG purpose {purpose!r}; expected one of: {', '.join(PURPOSE)}")
    return jax.random.fold_in(key, PURPOSE[purpose])


def root_key(config):
    """The run's one root key, ``jax.random.key(config.seed)``."""
    return jax.random.key(int(config.get("seed", 0)))


# ----------------------------------------------------------------------------------------------- SDE, score

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


def make_loss_fn(config, sde):
    """``loss_fn(net_fn, x, key) -> (loss, aux)`` for the config's objective.

    Raises:
        ValueError: a discrete objective for an SDE that has none.
    """
    t = config.training
    reduce_mean = bool(t.get("reduce_mean", True))
    if str(t.get("objective", "dsm")).lower() == "ct":
        raise ValueError("config.training.objective='ct' (consistency training) runs with --mode=distill "
                         "(config.distill.method='ct'); see configs/digits_ct.py")
    if training_objective(config) not in ("dsm", "ct"):
        return objective_loss_fn(config, sde)
    if t.continuous:
        conv = score_convention(config, sde)
        importance = bool(t.get("importance_sampling", False))
        t_sampler = losses.likelihood_importance_sampler(sde) if importance else None
        weighting = bool(t.get("likelihood_weighting", False))

        def loss_fn(net_fn, x, key):
            score_fn = parameterization.model_score_fn(net_fn, sde, **conv)
            return losses.continuous_dsm_loss(score_fn, sde, x, key, reduce_mean=reduce_mean,
                                              likelihood_weighting=weighting, importance_sampling=importance,
                                              t_sampler=t_sampler)
        return loss_fn
    if isinstance(sde, sde_lib.VESDE):
        return lambda net_fn, x, key: losses.smld_loss(net_fn, sde, x, key, reduce_mean=reduce_mean)
    if type(sde) is sde_lib.VPSDE:
        return lambda net_fn, x, key: losses.ddpm_loss(net_fn, sde, x, key, reduce_mean=reduce_mean)
    raise ValueError(f"discrete training (continuous=False) supports vpsde and vesde; got {config.training.sde!r}")


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


# ----------------------------------------------------------------------------------------------- objectives
# Issue 17: flow matching and EDM objectives, and reflow couplings. An objective fixes the network's output
# convention (its loss trains that quantity) and the process it is defined on.

# ct (consistency training) trains a consistency function, not a score: it runs in --mode=distill
OBJECTIVES = ("dsm", "flow_matching", "edm", "ct")
OBJECTIVE_CONVENTIONS = {
    "flow_matching": {"output": "flow_velocity", "time_label": "t"},
    "edm": {"output": "edm", "time_label": "edm_noise"},
}
_OBJECTIVE_SDE = {"flow_matching": (sde_lib.RectifiedFlow, "rectified_flow"), "edm": (sde_lib.EDMSDE, "edm")}


def training_objective(config) -> str:
    """``config.training.objective`` (``dsm`` when absent, as in the reference's configs).

    Raises:
        ValueError: an unknown objective.
    """
    objective = str(config.training.get("objective", "dsm") or "dsm").lower()
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {config.training.objective!r}; expected one of: {', '.join(OBJECTIVES)}")
    return objective


def _check_objective_sde(config, sde) -> str:
    objective = training_objective(config)
    if objective in _OBJECTIVE_SDE:
        kind, name = _OBJECTIVE_SDE[objective]
        if not isinstance(sde, kind):
            raise ValueError(f"config.training.objective={objective!r} is defined on the {name} process; got "
                             f"config.training.sde={config.training.sde!r} (set config.training.sde={name!r})")
    return objective


def velocity_fn_of(net_fn: Callable, sde, time_label: str = "t") -> Callable:
    """``velocity_fn(x, t)`` of a network ``net_fn(x, labels)`` trained in the ``flow_velocity`` convention."""
    return lambda x, t: net_fn(x, parameterization.time_labels(sde, t, time_label))


def objective_loss_fn(config, sde):
    """``loss_fn(net_fn, x, key) -> (loss, aux)`` of a non-DSM objective (``flow_matching`` or ``edm``).

    Reads ``config.training``: ``time_sampling``, ``logit_mean``, ``logit_std`` (flow matching),
    ``p_mean``, ``p_std`` (EDM), ``reduce_mean``; and ``config.model.sigma_data`` (EDM).

    Raises:
        ValueError: an unknown objective, or one used on a process it is not defined on.
    """
    t = config.training
    objective = _check_objective_sde(config, sde)
    reduce_mean = bool(t.get("reduce_mean", True))
    conv = score_convention(config, sde)
    if objective == "flow_matching":
        time_sampling = str(t.get("time_sampling", "uniform")).lower()
        if time_sampling not in ("uniform", "logit_normal"):
            raise ValueError(f"unknown config.training.time_sampling {t.time_sampling!r}; expected one of: "
                             f"uniform, logit_normal")
        kw = dict(time_sampling=time_sampling, logit_mean=float(t.get("logit_mean", 0.0)),
                  logit_std=float(t.get("logit_std", 1.0)), reduce_mean=reduce_mean)

        def fm_loss(net_fn, x, key):
            return losses.flow_matching_loss(velocity_fn_of(net_fn, sde, conv["time_label"]), x, key, **kw)
        return fm_loss
    if objective == "edm":
        sigma_data = float(config.model.get("sigma_data", 0.5))
        kw = dict(sigma_data=sigma_data, p_mean=float(t.get("p_mean", -1.2)), p_std=float(t.get("p_std", 1.2)),
                  reduce_mean=reduce_mean)

        def edm_loss(net_fn, x, key):
            denoiser = parameterization.model_denoiser(net_fn, sde, sigma_data=sigma_data, **conv)
            return losses.edm_loss(denoiser, x, key, **kw)
        return edm_loss
    raise ValueError(f"objective_loss_fn handles flow_matching and edm; got {objective!r} (dsm: make_loss_fn)")


def reflow_loss_fn(config, sde):
    """``loss_fn(net_fn, samples, noise, key) -> (loss, aux)``: flow matching on fixed reflow couplings.

    Raises:
        ValueError: the config does not train a flow (``objective`` must be ``flow_matching``).
    """
    if training_objective(config) != "flow_matching":
        raise ValueError(f"reflow trains a rectified flow: needs config.training.objective='flow_matching'; "
                         f"got {config.training.objective!r}")
    _check_objective_sde(config, sde)
    t = config.training
    conv = score_convention(config, sde)
    kw = dict(time_sampling=str(t.get("time_sampling", "uniform")).lower(), logit_mean=float(t.get("logit_mean", 0.0)),
              logit_std=float(t.get("logit_std", 1.0)), reduce_mean=bool(t.get("reduce_mean", True)))

    def loss_fn(net_fn, samples, noise, key):
        return reflow.reflow_loss(velocity_fn_of(net_fn, sde, conv["time_label"]), noise, samples, key, **kw)
    return loss_fn


def reflow_sampler_options(config) -> tuple[str, dict]:
    """``(method, options)`` of the deterministic sampler that makes reflow couplings (``config.reflow``).

    Raises:
        ValueError: an unknown or stochastic method, or a bad option.
    """
    r = config.reflow
    method = str(r.get("method", "dpm_solver++")).lower()
    options = {"steps": int(r.get("steps", 20))}
    if int(r.get("order", 0) or 0) > 0:
        options["order"] = int(r.order)
    if method in ("pc", "euler_ancestral", "dpm_solver++_sde", "consistency"):
        raise ValueError(f"config.reflow.method={method!r} is stochastic or not a flow map; reflow couplings need a "
                         f"deterministic sampler (dpm_solver++, unipc, deis, ddim, dpm_solver, edm_heun, ode)")
    if method == "ode":
        options.pop("steps")
    sampling.check_options(method, options)
    return method, options


def check_drift_finite_at_T(sde, what: str) -> None:
    """Raises a clear error where ``what`` integrates the SDE's drift from ``T`` and ``alpha(T) = 0``.

    Raises:
        ValueError: the process is rectified flow at ``T = 1`` (set ``config.model.rf_T`` below 1).
    """
    if sampling.alpha_vanishes_at_T(sde):
        raise ValueError(f"{what} integrates the probability-flow drift from T={sde.T}, infinite where alpha(T) = 0 "
                         f"({type(sde).__name__}); set config.model.rf_T below 1, e.g. --config.model.rf_T=0.999")


def cfg_with_denoiser(guided, score_model: ScoreModel, model, y, scale, null_label: int):
    """``guided`` (a classifier-free-guided score) paired with the same guidance on the denoiser.

    The guided denoiser ``(1 + w) D(x, y) - w D(x, ∅)`` is what samplers need where ``alpha(T) = 0``
    (rectified flow at ``T = 1``): there the score alone does not determine ``E[x_0 | x_T]``. Elsewhere the
    guided score is returned unchanged (its samplers use Tweedie's formula as before).
    """
    if not sampling.alpha_vanishes_at_T(score_model.sde):
        return guided

    def cond_denoiser(x, t, labels):
        return score_model.score_fn(model, y=labels).denoiser(x, t)

    return parameterization.with_denoiser(guided, guidance.classifier_free_guidance(cond_denoiser, y, scale, null_label))


# ----------------------------------------------------------------------------------------------- optimiser

def lr_schedule(lr: float, warmup: int = 0):
    """``count -> lr`` with a linear warm-up over ``warmup`` updates."""
    if warmup > 0:
        return lambda count: lr * jnp.minimum(count / warmup, 1.0)
    return lambda count: lr * jnp.ones_like(count, dtype=jnp.float32)


def make_optimizer(*, lr: float, warmup: int = 0, grad_clip: float = -1.0, beta1: float = 0.9,
                   beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0) -> optax.GradientTransformation:
    """Adam with linear warm-up and global-norm clipping (skipped if ``grad_clip < 0``), as the reference."""
    parts = []
    if grad_clip >= 0:
        parts.append(optax.clip_by_global_norm(grad_clip))
    parts.append(optax.scale_by_adam(b1=beta1, b2=beta2, eps=eps))
    if weight_decay > 0:
        parts.append(optax.add_decayed_weights(weight_decay))
    parts.append(optax.scale_by_learning_rate(lr_schedule(lr, warmup)))
    return optax.chain(*parts)


def optimizer_settings(section, *, grad_clip: float = -1.0, lr: float | None = None) -> dict:
    """The typed arguments of :func:`make_optimizer` from a config section (``config.optim`` or ``config.classifier``).

    Raises:
        ValueError: an optimizer other than Adam.
    """
    if str(section.get("optimizer", "Adam")).lower() != "adam":
        raise ValueError(f"unknown optimizer {section.get('optimizer')!r}; expected 'Adam'")
    return dict(lr=float(section.get("lr", lr) if lr is not None else section.lr), warmup=int(section.get("warmup", 0)),
                grad_clip=float(section.get("grad_clip", grad_clip)), beta1=float(section.get("beta1", 0.9)),
                beta2=float(section.get("beta2", 0.999)), eps=float(section.get("eps", 1e-8)),
                weight_decay=float(section.get("weight_decay", 0.0)))


def optimizer_from_config(config) -> optax.GradientTransformation:
    """:func:`make_optimizer` of ``config.optim``."""
    return make_optimizer(**optimizer_settings(config.optim))


# ----------------------------------------------------------------------------------------------- networks

def _mlp(config, rngs):
    from scoresde.models.mlp import MLPScore

    m = config.model
    return MLPScore(math.prod(model_data_shape(config)), hidden=m.get("hidden", 128), num_layers=m.get("num_layers", 3),
                    embed_dim=m.get("embed_dim", 64), num_classes=m.get("num_classes", 0), rngs=rngs)


def _unet_common(config) -> dict:
    """Keyword arguments shared by the image U-Nets, read from the reference's config fields."""
    m, d = config.model, config.data
    size, _, channels = model_data_shape(config)  # a latent model works on the autoencoder's latent grid
    sigma_range = None
    if m.get("scale_by_sigma", False):
        sigma_range = (m.get("sigma_min", 0.01), m.get("sigma_max", 50.0), m.get("num_scales", 1000))
    return dict(
        image_size=size, num_channels=channels, centered=d.get("centered", False) or is_latent(config),
        nf=m.nf, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
        attn_resolutions=tuple(m.attn_resolutions), dropout=m.get("dropout", 0.1),
        resamp_with_conv=m.get("resamp_with_conv", True), conditional=m.get("conditional", True),
        scale_by_sigma=m.get("scale_by_sigma", False), sigma_range=sigma_range,
        nonlinearity=m.get("nonlinearity", "swish"), num_classes=m.get("num_classes", 0),
        dtype=m.get("dtype", "float32"), remat=bool(m.get("remat", False)))


def _ncsnpp(config, rngs):
    from scoresde.models.ncsnpp import NCSNpp

    m = config.model
    embedding_type = m.get("embedding_type", "fourier").lower()
    training = config.get("training", None)
    if embedding_type == "fourier" and training is not None and not training.get("continuous", True):
        raise ValueError("embedding_type='fourier' is only used with continuous training "
                         "(config.training.continuous=True), as in the reference")
    return NCSNpp(
        **_unet_common(config), fir=m.get("fir", False), fir_kernel=tuple(m.get("fir_kernel", (1, 3, 3, 1))),
        skip_rescale=m.get("skip_rescale", True), resblock_type=m.get("resblock_type", "biggan"),
        progressive=m.get("progressive", "none"), progressive_input=m.get("progressive_input", "none"),
        progressive_combine=m.get("progressive_combine", "sum"), embedding_type=embedding_type,
        fourier_scale=m.get("fourier_scale", 16.0), init_scale=m.get("init_scale", 0.0), rngs=rngs)


def _ddpm(config, rngs):
    from scoresde.models.ddpm import DDPM

    return DDPM(**_unet_common(config), rngs=rngs)


def get_model(config, *, rngs: nnx.Rngs) -> nnx.Module:
    """The network named by ``config.model.name`` (``mlp``, ``ncsnpp``/``ddpmpp``, ``ddpm``).

    Raises:
        ValueError: for an unknown model name.
    """
    builders = {"mlp": _mlp, "ncsnpp": _ncsnpp, "ddpmpp": _ncsnpp, "ddpm": _ddpm}
    name = config.model.name
    if name not in builders:
        raise ValueError(f"unknown model {name!r}; expected one of: {', '.join(sorted(builders))}")
    return builders[name](config, rngs)


def build_model(config, *, seed: int):
    """The network of ``config.model``, checked on one example of the data's shape.

    Raises:
        ValueError: if the network cannot take the configured data shape.
    """
    model = get_model(config, rngs=nnx.Rngs(seed))
    shape = (1,) + model_data_shape(config)
    try:
        out = jax.eval_shape(lambda x, t: model(x, t), jax.ShapeDtypeStruct(shape, jnp.float32),
                             jax.ShapeDtypeStruct((1,), jnp.float32))
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"model {config.model.name!r} cannot take data of shape {shape[1:]} "
                         f"(config.data.image_size={config.data.get('image_size')}): {type(e).__name__}: {e}") from e
    if out.shape != shape:
        raise ValueError(f"model {config.model.name!r} maps data of shape {shape[1:]} to {out.shape[1:]}; "
                         f"check config.data.image_size / num_channels")
    return model


def abstract_model(config) -> nnx.Module:
    """The network of ``config`` with shape-only parameters (nothing is initialised or allocated)."""
    return nnx.eval_shape(lambda: get_model(as_config(config), rngs=nnx.Rngs(0)))


def _restore_params(directory: str, model, *, ema: bool, what: str):
    """Loads the newest checkpoint of ``directory`` into ``model``'s parameters; returns ``(model, step)``."""
    graphdef, state, rest = nnx.split(model, nnx.Param, ...)
    target = nnx.to_pure_dict(state)
    ckpt = Checkpointer(directory, read_only=True)  # never touches a live trainer's files
    try:
        restored = ckpt.restore_latest(params=None if ema else target, ema_params=target if ema else None)
    finally:
        ckpt.close()
    if restored is None:
        if what == "classifier":
            raise FileNotFoundError(f"no classifier checkpoint in {directory}; train one with --mode=train_classifier")
        raise FileNotFoundError(f"no checkpoint found in {checkpoint_dir(directory)}; train first or import one")
    nnx.replace_by_pure_dict(state, restored["ema_params" if ema else "params"])
    return nnx.merge(graphdef, state, rest), int(restored["meta"]["step"])


def load_model(workdir: str, config, *, ema: bool = True):
    """The network of ``config`` with the newest valid checkpoint of ``workdir`` (EMA weights by default).

    Returns:
        ``(model, step)``.

    Raises:
        FileNotFoundError: no checkpoint in ``workdir``.
        CorruptCheckpointError: checkpoints exist but none loads.
    """
    seed = int(config.get("seed", 0))
    # Shapes only: initialising a U-Net eagerly costs tens of seconds on a CPU, and every parameter is
    # overwritten by the checkpoint anyway.
    model = nnx.eval_shape(lambda: get_model(config, rngs=nnx.Rngs(seed)))
    if jax.tree_util.tree_leaves(nnx.state(model, nnx.Not(nnx.Param))):
        model = get_model(config, rngs=nnx.Rngs(seed))  # non-parameter state a checkpoint does not hold
    return _restore_params(workdir, model, ema=ema, what="model")


def load_ema(config, workdir: str, mesh):
    """``(graphdef, ema params replicated over mesh, rest, step)`` of ``workdir``'s newest checkpoint."""
    model, step = load_model(workdir, config, ema=True)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, parallel.replicate(mesh, params), rest, step


def get_classifier(config, *, rngs: nnx.Rngs) -> nnx.Module:
    """The classifier of ``config.classifier`` (``name`` ∈ wrn | mlp) for the score model's state (pixels or latents).

    Reads ``config.classifier``: ``name``, ``num_classes`` (default ``config.model.num_classes``) and,
    for ``wrn``, ``depth`` [28], ``width`` [10], ``embed_size`` [128], ``fourier_scale`` [16]; for
    ``mlp``, ``hidden`` [128], ``num_layers`` [3], ``embed_size`` [32], ``fourier_scale`` [4].

    Raises:
        ValueError: for an unknown name or a missing class count.
    """
    c = config.classifier
    num_classes = int(c.get("num_classes", 0) or config.model.get("num_classes", 0))
    if num_classes < 2:
        raise ValueError(f"a classifier needs config.classifier.num_classes >= 2; got {num_classes}")
    shape = model_data_shape(config)  # a latent model's classifier reads latents, as its sampler's state is

    def wrn():
        if len(shape) != 3:
            raise ValueError(f"classifier 'wrn' needs image data (H, W, C); got data shape {shape}")
        return classifiers.WideResNet(num_classes, in_channels=shape[-1], depth=int(c.get("depth", 28)),
                                      width=int(c.get("width", 10)), embed_size=int(c.get("embed_size", 128)),
                                      fourier_scale=float(c.get("fourier_scale", 16.0)), rngs=rngs)

    def mlp():
        return classifiers.MLPClassifier(math.prod(shape), num_classes, hidden=int(c.get("hidden", 128)),
                                         num_layers=int(c.get("num_layers", 3)), embed_size=int(c.get("embed_size", 32)),
                                         fourier_scale=float(c.get("fourier_scale", 4.0)), rngs=rngs)

    factories = {"wrn": wrn, "mlp": mlp}
    name = str(c.name).lower()
    if name not in factories:
        raise ValueError(f"unknown classifier {c.name!r}; expected one of: {', '.join(factories)}")
    return factories[name]()


def classifier_dir(workdir: str) -> str:
    """Where the classifier of a run lives: ``workdir/classifier``."""
    return os.path.join(workdir, "classifier")


def load_classifier(workdir: str, config, *, ema: bool = True):
    """The classifier of ``config`` with the newest checkpoint of ``workdir/classifier``.

    Returns:
        ``(classifier, step)``.

    Raises:
        FileNotFoundError: no classifier checkpoint (train one with ``--mode=train_classifier``).
    """
    model = get_classifier(config, rngs=nnx.Rngs(int(config.get("seed", 0))))
    return _restore_params(classifier_dir(workdir), model, ema=ema, what="classifier")


# ----------------------------------------------------------------------------------------------- sampling

GUIDANCE = ("none", "cfg", "classifier")

# config.sampling names of the options of scoresde.sampling.sample that the configs carry
_PC_NAMES = {"predictor": "predictor", "corrector": "corrector", "snr": "snr", "n_steps_each": "n_steps",
             "probability_flow": "probability_flow"}


def sampling_options(config) -> tuple[str, dict]:
    """``(method, options)`` of :func:`scoresde.sampling.sample` from ``config.sampling``.

    Reads the reference's names (``method``, ``predictor``, ``corrector``, ``snr``, ``n_steps_each``,
    ``noise_removal``, ``probability_flow``) and, where set, every option of the method (``steps``,
    ``order``, ``eta``, ``solver``, ``rtol``, ``atol``, ``grid``, ``S_*``, ``rho``, ...). ``noise_removal``
    is the ``denoise`` option. Typed placeholders ``""`` / ``0`` mean "this method's default".

    Raises:
        ValueError: an unknown method.
    """
    cfg = config.sampling
    method = str(cfg.method).lower()
    defaults = sampling.method_options(method)
    options = {}
    if "denoise" in defaults and method != "consistency":  # a consistency function returns x_eps itself
        options["denoise"] = bool(cfg.get("noise_removal", defaults["denoise"]))
    if method == "pc":
        options.update(predictor=cfg.get("predictor", "euler_maruyama").lower(),
                       corrector=cfg.get("corrector", "none").lower(), snr=cfg.get("snr", 0.16),
                       n_steps=cfg.get("n_steps_each", 1), probability_flow=cfg.get("probability_flow", False))
    for name in defaults:
        if name in options or name in _PC_NAMES.values() or name == "project_fn":
            continue
        value = cfg.get(name, None)
        if value is None or (isinstance(value, (str, tuple, list)) and not value) or \
                (name in ("steps", "order") and value == 0) or (name == "eta" and value < 0):
            continue
        if name == "times":
            value = tuple(float(v) for v in value)
        options[name] = value.lower() if isinstance(value, str) else value
    sampling.check_options(method, options)
    return method, options


def parallel_settings(config) -> tuple[int, float] | None:
    """``(window, tol)`` of ParaDiGMS from ``config.sampling.parallel_window`` / ``parallel_tol``; ``None`` when off.

    ``parallel_window = 0`` (the default) is the sequential sampler. ParaDiGMS runs the ``ddim`` sampler
    (``eta`` as configured; ``eta = 1`` is DDPM ancestral) with :func:`scoresde.sampling.parallel_sample`.

    Raises:
        ValueError: a negative window or tolerance, or a window with a method other than ``ddim``.
    """
    cfg = config.sampling
    window = int(cfg.get("parallel_window", 0) or 0)
    tol = float(cfg.get("parallel_tol", 1e-3))
    if window < 0 or tol < 0:
        raise ValueError(f"config.sampling.parallel_window={window} / parallel_tol={tol} must be >= 0 "
                         "(window 0 = the sequential sampler)")
    if window == 0:
        return None
    if str(cfg.method).lower() != "ddim":
        raise ValueError(f"config.sampling.parallel_window={window} (ParaDiGMS) needs config.sampling.method='ddim'; "
                         f"got {cfg.method!r}")
    return window, tol


def sampler_from_config(config, sde, shape, inverse_scaler=None, eps=None, *, with_rounds: bool = False,
                        sharding=None):
    """``sampler(key, score_fn, x_init=None) -> (samples, nfe)`` for ``config.sampling`` (see :func:`sampling_options`).

    With ``config.sampling.parallel_window > 0`` (:func:`parallel_settings`) the ``ddim`` sampler runs as
    ParaDiGMS (:func:`scoresde.sampling.parallel_sample`) from the same prior draw and noise as
    :func:`scoresde.sampling.sample`; ``noise_removal`` adds the same final Tweedie step (1 NFE, 1 round).

    Args:
        config: a config with a ``sampling`` section.
        sde: the SDE.
        shape: the batch shape ``(B, ...)``.
        inverse_scaler: applied to the samples (e.g. ``[-1, 1] -> [0, 1]``); identity if ``None``.
        eps: the final time; :func:`scoresde.sampling.default_eps` if ``None``.
        with_rounds: return ``(samples, nfe, rounds)``: the sequential rounds of network evaluation
            (ParaDiGMS's Picard rounds; ``= nfe`` for the sequential samplers, whose every call waits on the last).
        sharding: a sharding for the prior draw (e.g. the batch over a ``('data',)`` mesh), so the
            ParaDiGMS window's ``W · B`` rows spread over the devices.
    """
    method, options = sampling_options(config)
    inverse_scaler = inverse_scaler if inverse_scaler is not None else (lambda x: x)
    paradigms = parallel_settings(config)
    if sharding is not None:
        options = {**options, "sharding": sharding}

    def sequential(key, score_fn, x_init):
        samples, nfe = sampling.sample(score_fn, sde, shape, key, method=method, x_init=x_init, eps=eps, **options)
        return samples, nfe, nfe

    def picard(key, score_fn, x_init):
        window, tol = paradigms
        t_end = sampling_eps(sde) if eps is None else eps
        if x_init is None:  # the draw sample() makes from this key
            x_init = sde.prior_sampling(jax.random.split(key)[0], shape)
            if sharding is not None:
                x_init = jax.lax.with_sharding_constraint(x_init, sharding)
        opts = {k: v for k, v in options.items() if k in ("steps", "eta", "grid")}
        samples, nfe, rounds = sampling.parallel_sample(score_fn, sde, shape, key, method="ddim", window=window,
                                                        tol=tol, x_init=x_init, eps=t_end, **opts)
        if options.get("denoise", False):
            samples, nfe = sampling.grids.denoiser_call(score_fn, sde, samples, t_end, nfe)
            rounds = rounds + 1
        return samples, nfe, rounds

    def sampler(key, score_fn, x_init=None):
        samples, nfe, rounds = (picard if paradigms else sequential)(key, score_fn, x_init)
        return (inverse_scaler(samples), nfe, rounds) if with_rounds else (inverse_scaler(samples), nfe)

    return sampler


def sampler_description(config) -> dict:
    """The sampler settings reported with every number (``config.sampling`` as a plain dict)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.sampling.items()}


def sample_class_labels(config, batch: int) -> jax.Array:
    """The ``(batch,)`` classes to sample: ``config.sampling.class_label``, or, if it is negative, every
    class in turn in contiguous blocks (``y_i = i K // batch``), so a square grid shows one class per row."""
    k = int(config.model.get("num_classes", 0) or config.get("classifier", {}).get("num_classes", 0) or 0)
    label = int(config.sampling.get("class_label", -1))
    if k <= 0:
        raise ValueError("class-guided sampling needs config.model.num_classes > 0 (or config.classifier.num_classes)")
    if label >= k:
        raise ValueError(f"config.sampling.class_label={label} is not a class of this model (0..{k - 1}, or -1 for all)")
    if label >= 0:
        return jnp.full((batch,), label, jnp.int32)
    return (jnp.arange(batch) * k // batch).astype(jnp.int32)


def guided_score_fn(config, model, sde, batch: int, *, classifier=None, scale=None):
    """The sample mode's score: ``config.sampling.guidance`` ∈ none | cfg | classifier applied to ``model``.

    Args:
        config: the run config (``sampling.guidance``, ``sampling.class_label``, ``sampling.guidance_scale``).
        model: the score network (class-conditional for ``cfg``, null label ``num_classes``).
        sde: the SDE.
        batch: the batch size (for the labels).
        classifier: the noise-conditional classifier for ``classifier`` guidance (see :func:`load_classifier`).
        scale: the guidance scale, possibly a traced array (``w`` for cfg, ``scale`` for the classifier);
            ``config.sampling.guidance_scale`` if ``None``.

    Raises:
        ValueError: unknown guidance, or classifier guidance without a classifier.
    """
    kind = str(config.sampling.get("guidance", "none")).lower()
    if kind not in GUIDANCE:
        raise ValueError(f"unknown config.sampling.guidance {kind!r}; expected one of: {', '.join(GUIDANCE)}")
    score_model = ScoreModel(sde, **score_convention(config, sde), sigma_data=float(config.model.get("sigma_data", 0.5)))
    if kind == "none":
        return score_model.score_fn(model)
    scale = config.sampling.get("guidance_scale", 1.0) if scale is None else scale
    y = sample_class_labels(config, batch)
    if kind == "cfg":
        def cond_score_fn(x, t, labels):
            return score_model.score_fn(model, y=labels)(x, t)

        guided = guidance.classifier_free_guidance(cond_score_fn, y, scale, int(config.model.num_classes))
        return cfg_with_denoiser(guided, score_model, model, y, scale, int(config.model.num_classes))
    if classifier is None:
        raise ValueError("config.sampling.guidance='classifier' needs a trained classifier in workdir/classifier "
                         "(--mode=train_classifier)")
    if sampling.alpha_vanishes_at_T(sde):
        raise ValueError(f"classifier guidance needs the score at T, undefined where alpha(T) = 0 "
                         f"({type(sde).__name__}(T={sde.T})); set config.model.rf_T < 1 (e.g. 0.999) or use cfg")
    return guidance.classifier_guidance(score_model.score_fn(model), classifiers.classifier_log_prob_fn(classifier, sde),
                                        y, scale)


CONSISTENCY_METHODS = ("cd", "ct")  # config.distill.method values whose network is a consistency function


def is_consistency_model(config) -> bool:
    """Whether ``config`` describes a consistency model (``config.distill.method`` ∈ cd | ct)."""
    return str(config.get("distill", {}).get("method", "") or "").lower() in CONSISTENCY_METHODS


def student_consistency_fn(net_fn: Callable, sde, config) -> Callable:
    """The consistency function ``f(x, t)`` of a raw ``net_fn(x, labels)`` for ``config``
    (:func:`scoresde.consistency.consistency_fn` with the sampling eps, ``config.distill.sigma_data`` and the
    network's time label); the one wrapper training and sampling share."""
    from scoresde import consistency  # noqa: PLC0415  (only consistency models need it)

    return consistency.consistency_fn(net_fn, sde, sampling_eps(sde),
                                      sigma_data=float(config.distill.get("sigma_data", 0.5)),
                                      time_label=score_convention(config, sde)["time_label"])


def make_sample_fn(config, sde, graphdef, rest, num_samples: int, mesh=None, classifier=None, *,
                   with_rounds: bool = False):
    """A jitted ``fn(params, key, guidance_scale=None) -> (samples in data space [0, 1], nfe)``, sharded over the mesh.

    ``config.sampling.guidance`` (none | cfg | classifier, :func:`guided_score_fn`) guides the samples;
    ``guidance_scale`` overrides ``config.sampling.guidance_scale`` as a traced value. Classifier
    guidance needs ``classifier``; without one (snapshots during training) sampling is unguided.
    ``with_rounds``: ``fn`` returns ``(samples, nfe, rounds)`` (see :func:`sampler_from_config`).
    """
    shape = (num_samples,) + model_data_shape(config)
    mesh = mesh or parallel.make_mesh()
    inverse_scaler = data_lib.get_data_inverse_scaler(config)
    if is_latent(config):  # latent samples are decoded to images in [0, 1]
        space, to_unit = load_latent_space(config, mesh), inverse_scaler
        inverse_scaler = lambda z: to_unit(space.decode(z))  # noqa: E731
    # ParaDiGMS batches W steps into one call: shard its prior draw so those rows spread over the mesh.
    draw = parallel.data_sharding(mesh) if parallel_settings(config) and num_samples % mesh.size == 0 else None
    sampler = sampler_from_config(config, sde, shape, inverse_scaler, sampling_eps(sde), with_rounds=with_rounds,
                                  sharding=draw)
    unguided = classifier is None and str(config.sampling.get("guidance", "none")).lower() == "classifier"
    consistency_model = is_consistency_model(config)
    if consistency_model and str(config.sampling.method).lower() != "consistency":
        raise ValueError(f"this network is a consistency model (config.distill.method={config.distill.method!r}); "
                         f"sample it with --config.sampling.method=consistency, not {config.sampling.method!r}")

    def fn(params, key, guidance_scale=None):
        model = nnx.merge(graphdef, params, rest)
        if consistency_model:
            return sampler(key, student_consistency_fn(lambda x, labels: model(x, labels), sde, config))
        if unguided:
            return sampler(key, make_score_fn(model, sde, config))
        return sampler(key, guided_score_fn(config, model, sde, num_samples, classifier=classifier,
                                            scale=guidance_scale))

    out = parallel.data_sharding(mesh) if num_samples % mesh.size == 0 else parallel.replicated_sharding(mesh)
    counts = (parallel.replicated_sharding(mesh),) * (2 if with_rounds else 1)
    return jax.jit(fn, out_shardings=(out, *counts))


# ----------------------------------------------------------------------------------------------- inverse problems

INVERSE_OPERATORS = ("none", "inpainting", "super_resolution", "deblur", "colorization", "random_projection")
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
        mask[pixel_shape[0] // 2:] = 0.0
    else:
        mask = (np.random.default_rng(seed).random(pixel_shape) >= fraction).astype(np.float32)
    return mask[None]


def make_operator(name: str, shape: tuple, *, mask: str = "half", mask_fraction: float = 0.5, seed: int = 0,
                  factor: int = 4, blur_sigma: float = 1.0, blur_size: int = 5,
                  num_measurements: int = 0) -> inverse_lib.Operator:
    """The measurement operator ``name`` of :mod:`scoresde.inverse` for examples of ``shape``, from plain values.

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
        return inverse_lib.Inpainting(jnp.asarray(inpainting_mask(mask, shape, fraction=mask_fraction, seed=seed)))

    def super_resolution():
        need_image()
        if isinstance(factor, bool) or int(factor) != factor or factor < 1 or shape[0] % factor or shape[1] % factor:
            raise ValueError(f"super_resolution factor {factor!r} must be a positive int dividing the image size "
                             f"{shape[0]}x{shape[1]}")
        return inverse_lib.SuperResolution(int(factor))

    def deblur():
        need_image()
        if not blur_sigma > 0:
            raise ValueError(f"deblur blur_sigma must be > 0 pixels; got {blur_sigma!r}")
        if int(blur_size) != blur_size or blur_size < 1 or blur_size % 2 == 0:
            raise ValueError(f"deblur blur_size must be a positive odd int; got {blur_size!r}")
        return inverse_lib.GaussianBlur(float(blur_sigma), int(blur_size))

    def colorization():
        need_image()
        if shape[-1] != 3:
            raise ValueError(f"operator 'colorization' needs 3 colour channels; got data shape {shape} "
                             "(config.data.num_channels)")
        return inverse_lib.Colorization(3)

    def random_projection():
        d = math.prod(shape)
        m = int(num_measurements) or max(1, d // 4)
        if not 1 <= m <= d:
            raise ValueError(f"random_projection num_measurements must be in 1..{d} (D) or 0 for D // 4; "
                             f"got {num_measurements!r}")
        matrix = np.random.default_rng(seed).standard_normal((m, d)).astype(np.float32) / np.sqrt(d)
        return inverse_lib.RandomProjection(jnp.asarray(matrix), shape)

    factories = {"inpainting": inpainting, "super_resolution": super_resolution, "deblur": deblur,
                 "colorization": colorization, "random_projection": random_projection}
    if name not in factories:
        raise ValueError(f"unknown inverse operator {name!r}; expected one of: {', '.join(factories)}")
    return factories[name]()


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
    """:func:`make_operator` of ``config.inverse`` for ``config.data``'s shape; ``None`` for operator ``none``."""
    name = inverse_operator_name(config)
    if name == "none":
        return None
    inv = config.inverse
    return make_operator(name, data_lib.data_shape(config), mask=str(inv.get("mask", "half")).lower(),
                         mask_fraction=float(inv.get("mask_fraction", 0.5)), seed=int(inv.get("seed", 0)),
                         factor=int(inv.get("factor", 4)), blur_sigma=float(inv.get("blur_sigma", 1.0)),
                         blur_size=int(inv.get("blur_size", 5)), num_measurements=int(inv.get("num_measurements", 0)))


def posterior_settings(config) -> dict:
    """The keyword arguments of :func:`scoresde.inverse.posterior_sample` that ``config.inverse`` sets.

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


def naive_restoration(operator: inverse_lib.Operator, y):
    """The baseline a restoration is compared with: ``A⁺y``, or ``y`` itself for a blur (no cheap ``A⁺``)."""
    if isinstance(operator, inverse_lib.GaussianBlur):
        return y
    return operator.pinv(y)


def make_restore_fn(config, sde, graphdef, rest, operator: inverse_lib.Operator, classifier=None):
    """A jitted ``fn(params, x, key, k=0) -> (y, naive, restored, nfe)`` for ``config.inverse`` and ``config.sampling``.

    ``x`` is a batch of ground-truth images in model space. ``y = A x + sigma_y n`` (noise from
    ``fold_in(key, PURPOSE["measurement"])``, the same for every ``k``); ``restored`` is posterior sample
    ``k`` (key ``fold_in(fold_in(key, PURPOSE["sample"]), k)``; ``k`` is traced). ``naive`` (:func:`naive_restoration`) and ``restored``
    (:func:`scoresde.inverse.posterior_sample` with the sampler of ``config.sampling``; the prior score
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
        restored, nfe = inverse_lib.posterior_sample(score_fn, sde, operator, y, sample_key,
                                                     sampler=method, eps=eps, **options, **settings)
        return y, inverse_scaler(naive_restoration(operator, y)), inverse_scaler(restored), nfe

    return jax.jit(fn)


# ----------------------------------------------------------------------------------------------- metrics

def get_feature_fn(config):
    """The feature extractor ``config.eval.feature_extractor`` names (default and only one: ``inception``)."""
    from scoresde.metrics.features import inception_feature_fn  # noqa: PLC0415  (jax model only when used)

    name = str(config.eval.get("feature_extractor", "inception")).lower()
    factories = {"inception": lambda: inception_feature_fn(config.eval.get("inception_weights", "") or None,
                                                            batch_size=int(config.eval.get("inception_batch_size", 250)))}
    if name not in factories:
        raise ValueError(f"unknown config.eval.feature_extractor {name!r}; expected one of: {', '.join(factories)}")
    return factories[name]()


def reference_stats_path(config, workdir: str, split: str | None = None) -> str:
    """``config.eval.fid_stats_path`` if set, else ``workdir/fid_stats/<dataset>_<split>_<size>.npz``."""
    explicit = config.eval.get("fid_stats_path", "")
    if explicit:
        return explicit
    split = split or config.eval.get("stats_split", "train")
    name = f"{str(config.data.dataset).lower()}_{split}_{int(config.data.image_size)}.npz"
    return os.path.join(workdir, "fid_stats", name)


# ----------------------------------------------------------------------------------------------- latent
# Latent diffusion (issue 15). ``config.autoencoder`` builds the KL autoencoder that --mode=train_autoencoder
# trains in its own workdir; that run ends by writing AUTOENCODER_RECORD (scale factor, decoder std, the
# checkpoint step they belong to, shapes, the autoencoder section). ``config.latent.autoencoder_workdir``
# then turns any training config into a latent one: the score model's data shape is the latent shape
# (:func:`model_data_shape`), every training batch is encoded on the device inside the jitted step
# (:func:`batch_transform`), and :func:`make_sample_fn` decodes samples to images in [0, 1].

AUTOENCODER_RECORD = "autoencoder.json"


def get_autoencoder(section, image_shape, *, rngs: nnx.Rngs):
    """The :class:`~scoresde.models.autoencoder.AutoencoderKL` of a ``config.autoencoder`` section for ``(H, W, C)`` images."""
    from scoresde.models.autoencoder import AutoencoderKL  # noqa: PLC0415

    ch_mult = tuple(section.get("ch_mult", ()) or ()) or None
    return AutoencoderKL(in_channels=int(image_shape[-1]), latent_channels=int(section.latent_channels),
                         downsample_factor=int(section.f), base_width=int(section.get("base_width", 64)),
                         num_res_blocks=int(section.get("num_res_blocks", 2)), ch_mult=ch_mult, rngs=rngs)


class AutoencoderTrainee(nnx.Module):
    """What ``--mode=train_autoencoder`` trains and checkpoints: ``ae`` and, if configured, ``disc``.

    One module, so that the parameters are one state (``ae/...``, ``disc/...``) that the shared training
    state, checkpoints and EMA handle as they handle a score network.
    """

    def __init__(self, section, image_shape, *, rngs: nnx.Rngs):
        from scoresde.models.autoencoder import PatchDiscriminator  # noqa: PLC0415

        self.ae = get_autoencoder(section, image_shape, rngs=rngs)
        # assigned once: NNX fixes an attribute's kind (None is static, a Module is data) at first assignment
        self.disc = (PatchDiscriminator(int(image_shape[-1]), base_width=int(section.get("disc_width", 64)),
                                        num_layers=int(section.get("disc_layers", 3)), rngs=rngs)
                     if bool(section.get("discriminator", False)) else None)


def autoencoder_record_path(workdir: str) -> str:
    """``workdir/autoencoder.json``: the scale factor and decoder std of a trained autoencoder."""
    return os.path.join(workdir, AUTOENCODER_RECORD)


def write_autoencoder_record(workdir: str, record: dict) -> str:
    """Writes the record atomically (a reader sees the old file or the whole new one); returns its path."""
    path = autoencoder_record_path(workdir)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1)
    os.replace(tmp, path)
    return path


def read_autoencoder_record(workdir: str) -> dict:
    """The record of a trained autoencoder.

    Raises:
        FileNotFoundError: the autoencoder run has not finished (no record), with the command that makes one.
    """
    path = autoencoder_record_path(workdir)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"no {AUTOENCODER_RECORD} in config.latent.autoencoder_workdir={workdir!r}; train the autoencoder "
            f"first (python -m scoresde.main --config=<its config> --workdir={workdir} --mode=train_autoencoder)")
    with open(path) as f:
        return json.load(f)


def is_latent(config) -> bool:
    """Whether ``config`` is a latent model (``config.latent.autoencoder_workdir`` is set)."""
    section = config.get("latent", None)
    return bool(section is not None and section.get("autoencoder_workdir", ""))


def _checked_record(config) -> dict:
    record = read_autoencoder_record(str(config.latent.autoencoder_workdir))
    shape, centered = list(data_lib.data_shape(config)), bool(config.data.get("centered", False))
    if list(record["image_shape"]) != shape or bool(record["centered"]) != centered:
        raise ValueError(f"the autoencoder in {config.latent.autoencoder_workdir!r} was trained on images of shape "
                         f"{record['image_shape']} (centered={record['centered']}); this config's data are "
                         f"{shape} (centered={centered}): set config.data to match")
    return record


def model_data_shape(config) -> tuple[int, ...]:
    """The shape the score model sees: the latent shape of a latent config, else :func:`scoresde.data.data_shape`."""
    if is_latent(config):
        return tuple(int(s) for s in _checked_record(config)["latent_shape"])
    return data_lib.data_shape(config)


@dataclasses.dataclass(frozen=True)
class LatentSpace:
    """A frozen, trained autoencoder and its scale factor ``c`` (``ẑ = c z``), loaded by :func:`load_latent_space`.

    Parameters are replicated over the mesh and closed over by the jitted functions that use them.
    """

    graphdef: object
    params: object
    rest: object
    scale_factor: float
    decoder_std: float
    step: int
    image_shape: tuple
    latent_shape: tuple
    use_posterior_mean: bool = True

    def autoencoder(self):
        return nnx.merge(self.graphdef, self.params, self.rest).ae

    def encoder_fn(self, x):
        """``(mean, logvar)`` of ``q(z | x)`` (unscaled) for data ``x`` in the model's space."""
        return self.autoencoder().encode(x)

    def decoder_fn(self, z):
        """Data (model space) of unscaled latents ``z``."""
        return self.autoencoder().decode(z)

    def encode(self, x, key=None):
        """Scaled latents of ``x``: the posterior mean, or a posterior sample if ``use_posterior_mean`` is off."""
        from scoresde import latent  # noqa: PLC0415

        return latent.encode(self.encoder_fn, x, self.scale_factor, key=None if self.use_posterior_mean else key)

    def decode(self, z_scaled):
        """Data (model space) of scaled latents (e.g. a latent model's samples)."""
        from scoresde import latent  # noqa: PLC0415

        return latent.decode(self.decoder_fn, z_scaled, self.scale_factor)


_LATENT_CACHE: dict = {}


def load_latent_space(config, mesh=None) -> LatentSpace:
    """The frozen autoencoder of ``config.latent.autoencoder_workdir`` (EMA weights of its recorded step).

    Raises:
        FileNotFoundError: no record or no checkpoint in the autoencoder's workdir.
        ValueError: the record belongs to another checkpoint than the newest, or the data do not match.
    """
    workdir = os.path.abspath(str(config.latent.autoencoder_workdir))
    record = _checked_record(config)
    mesh = mesh or parallel.make_mesh()
    cache_key = (workdir, record["step"], record["scale_factor"], tuple(d.id for d in mesh.devices.flat))
    if cache_key not in _LATENT_CACHE:
        section = ml_collections.ConfigDict(record["autoencoder"])
        shape = tuple(record["image_shape"])
        model = nnx.eval_shape(lambda: AutoencoderTrainee(section, shape, rngs=nnx.Rngs(0)))
        model, step = _restore_params(workdir, model, ema=True, what="autoencoder")
        if step != int(record["step"]):
            raise ValueError(f"{autoencoder_record_path(workdir)} belongs to step {record['step']} but the newest "
                             f"checkpoint is step {step}; rerun --mode=train_autoencoder there to finish the run")
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        _LATENT_CACHE.clear()  # one autoencoder at a time
        _LATENT_CACHE[cache_key] = (graphdef, parallel.replicate(mesh, params), rest)
    graphdef, params, rest = _LATENT_CACHE[cache_key]
    return LatentSpace(graphdef, params, rest, float(record["scale_factor"]), float(record["decoder_std"]),
                       int(record["step"]), tuple(record["image_shape"]), tuple(record["latent_shape"]),
                       bool(config.latent.get("use_posterior_mean", True)))


def batch_transform(config, mesh=None) -> Callable:
    """``fn(batch, key) -> batch`` applied inside the jitted train / eval step.

    For a latent config it replaces ``batch["image"]`` by its scaled latents (posterior mean, or a draw with
    ``key`` when ``config.latent.use_posterior_mean`` is off); otherwise it is the identity.
    """
    if not is_latent(config):
        return lambda batch, key: batch
    space = load_latent_space(config, mesh)
    return lambda batch, key: {**batch, "image": space.encode(batch["image"], key)}
