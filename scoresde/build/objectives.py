"""Training losses from ``config.training``: DSM, flow matching, EDM, reflow; reflow's coupling sampler."""

from __future__ import annotations

from collections.abc import Callable

from scoresde import guidance, losses, parameterization, sampling
from scoresde import sde as sde_lib
from scoresde.build.score import (
    OBJECTIVE_PROCESS,
    ScoreModel,
    conditioning_kind,
    score_convention,
    training_objective,
)
from scoresde.config_defaults import with_defaults
from scoresde.fewstep import reflow


def make_loss_fn(config, sde):
    """``loss_fn(net_fn, x, key) -> (loss, aux)`` for the config's objective.

    Raises:
        ValueError: a discrete objective for an SDE that has none.
    """
    config = with_defaults(config)
    t = config.training
    reduce_mean = bool(t.reduce_mean)
    if str(t.objective).lower() == "ct":
        raise ValueError(
            "config.training.objective='ct' (consistency training) runs with --mode=distill "
            "(config.distill.method='ct'); see configs/digits_ct.py"
        )
    method = str(config.distill.method or "").lower()
    if method in ("scm", "ect", "meanflow"):
        raise ValueError(
            f"config.distill.method={method!r} is a few-step student: it runs with --mode=distill, not as a "
            f"diffusion objective; see configs/digits_{'sct' if method == 'scm' else method}.py"
        )
    if training_objective(config) not in ("dsm", "ct"):
        return objective_loss_fn(config, sde)
    if t.continuous:
        conv = score_convention(config, sde)
        importance = bool(t.importance_sampling)
        t_sampler = losses.likelihood_importance_sampler(sde) if importance else None
        weighting = bool(t.likelihood_weighting)
        truncation = bool(t.snr_truncation)
        if truncation and weighting:
            raise ValueError(
                "config.training.snr_truncation=True (max(SNR, 1) weighting of the data prediction) replaces the "
                "sigma^2 weighting; it cannot be combined with config.training.likelihood_weighting=True"
            )

        def loss_fn(net_fn, x, key):
            score_fn = parameterization.model_score_fn(net_fn, sde, **conv)
            return losses.continuous_dsm_loss(
                score_fn,
                sde,
                x,
                key,
                reduce_mean=reduce_mean,
                likelihood_weighting=weighting,
                importance_sampling=importance,
                snr_truncation=truncation,
                t_sampler=t_sampler,
            )

        return loss_fn
    if isinstance(sde, sde_lib.VESDE):
        return lambda net_fn, x, key: losses.smld_loss(net_fn, sde, x, key, reduce_mean=reduce_mean)
    if type(sde) is sde_lib.VPSDE:
        return lambda net_fn, x, key: losses.ddpm_loss(net_fn, sde, x, key, reduce_mean=reduce_mean)
    raise ValueError(f"discrete training (continuous=False) supports vpsde and vesde; got {config.training.sde!r}")


def _check_objective_sde(config, sde) -> str:
    objective = training_objective(config)
    if objective in OBJECTIVE_PROCESS:
        kind, name = OBJECTIVE_PROCESS[objective]
        if not isinstance(sde, kind):
            raise ValueError(
                f"config.training.objective={objective!r} is defined on the {name} process; got "
                f"config.training.sde={config.training.sde!r} (set config.training.sde={name!r})"
            )
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
    config = with_defaults(config)
    t = config.training
    objective = _check_objective_sde(config, sde)
    reduce_mean = bool(t.reduce_mean)
    conv = score_convention(config, sde)
    if objective == "flow_matching":
        time_sampling = str(t.time_sampling).lower()
        if time_sampling not in ("uniform", "logit_normal"):
            raise ValueError(
                f"unknown config.training.time_sampling {t.time_sampling!r}; expected one of: uniform, logit_normal"
            )
        kw = dict(
            time_sampling=time_sampling,
            logit_mean=float(t.logit_mean),
            logit_std=float(t.logit_std),
            reduce_mean=reduce_mean,
        )

        def fm_loss(net_fn, x, key):
            return losses.flow_matching_loss(velocity_fn_of(net_fn, sde, conv["time_label"]), x, key, **kw)

        return fm_loss
    if objective == "edm":
        sigma_data = float(config.model.sigma_data)
        kw = dict(sigma_data=sigma_data, p_mean=float(t.p_mean), p_std=float(t.p_std), reduce_mean=reduce_mean)

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
    config = with_defaults(config)
    if training_objective(config) != "flow_matching":
        raise ValueError(
            f"reflow trains a rectified flow: needs config.training.objective='flow_matching'; "
            f"got {config.training.objective!r}"
        )
    _check_objective_sde(config, sde)
    t = config.training
    conv = score_convention(config, sde)
    kw = dict(
        time_sampling=str(t.time_sampling).lower(),
        logit_mean=float(t.logit_mean),
        logit_std=float(t.logit_std),
        reduce_mean=bool(t.reduce_mean),
    )

    def loss_fn(net_fn, samples, noise, key):
        return reflow.reflow_loss(velocity_fn_of(net_fn, sde, conv["time_label"]), noise, samples, key, **kw)

    return loss_fn


def reflow_sampler_options(config) -> tuple[str, dict]:
    """``(method, options)`` of the deterministic sampler that makes reflow couplings (``config.reflow``).

    Raises:
        ValueError: an unknown or stochastic method, or a bad option.
    """
    config = with_defaults(config)
    r = config.reflow
    method = str(r.method).lower()
    options = {"steps": int(r.steps)}
    if int(r.order or 0) > 0:
        options["order"] = int(r.order)
    if not sampling.is_deterministic(method, options):
        flow_maps = ", ".join(name for name in sampling.METHODS if sampling.is_deterministic(name))
        raise ValueError(
            f"config.reflow.method={method!r} is stochastic or not a flow map; reflow couplings need a "
            f"deterministic sampler ({flow_maps})"
        )
    if method == "ode":
        options.pop("steps")
    sampling.check_options(method, options)
    return method, options


def reflow_source_guidance(config) -> float:
    """``config.reflow.source_guidance`` checked: the classifier-free guidance weight ``w`` the source flow is read
    with when it makes the couplings of a conditioned flow (0: its conditional flow).

    Raises:
        ValueError: a negative weight, ``w > 0`` for an unconditional flow, or for one trained without condition
            dropout (``training.p_uncond = 0``: it has no unconditional velocity to guide with).
    """
    config = with_defaults(config)
    w = float(config.reflow.get("source_guidance", 0.0))
    if w < 0:
        raise ValueError(f"config.reflow.source_guidance must be >= 0 (a classifier-free guidance weight); got {w}")
    if w == 0:
        return 0.0
    if conditioning_kind(config) == "none":
        raise ValueError(
            f"config.reflow.source_guidance={w} guides a conditioned flow; this one is unconditional "
            "(model.num_classes, text_vocab and cond_dim are 0): set it to 0"
        )
    p_uncond = float(config.training.get("p_uncond", 0.0) or 0.0)
    if p_uncond <= 0:
        raise ValueError(
            f"config.reflow.source_guidance={w} needs the source's unconditional velocity, but it was trained with "
            f"training.p_uncond={p_uncond} (no condition dropout): set it to 0"
        )
    return w


def reflow_source_score(config, score_model: ScoreModel, model, y, w: float = 0.0):
    """The source flow's score for reflow couplings: unconditional for ``y = None``, else conditioned on ``y``
    (one condition per example), guided with weight ``w`` against the null condition (score and denoiser, as
    ``--mode=sample`` guides)."""
    if y is None:
        return score_model.score_fn(model)
    if w == 0:
        return score_model.score_fn(model, y=y)
    null = int(config.model.num_classes) if conditioning_kind(config) == "class" else None

    def cond_score_fn(x, t, labels):
        return score_model.score_fn(model, y=labels)(x, t)

    guided = guidance.classifier_free_guidance(cond_score_fn, y, w, null)
    return cfg_with_denoiser(guided, score_model, model, y, w, null)


def cfg_with_denoiser(guided, score_model: ScoreModel, model, y, scale, null_label: int | None):
    """``guided`` (a classifier-free-guided score) paired with the same guidance on the denoiser.

    The guided denoiser ``(1 + w) D(x, y) - w D(x, ∅)`` is what samplers need where ``alpha(T) = 0``
    (rectified flow at ``T = 1``): there the score alone does not determine ``E[x_0 | x_T]``. Elsewhere the
    guided score is returned unchanged (its samplers use Tweedie's formula as before).
    """
    if not sampling.alpha_vanishes_at_T(score_model.sde):
        return guided

    def cond_denoiser(x, t, labels):
        return score_model.score_fn(model, y=labels).denoiser(x, t)

    return parameterization.with_denoiser(
        guided, guidance.classifier_free_guidance(cond_denoiser, y, scale, null_label)
    )
