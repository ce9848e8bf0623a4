"""The continuous-time few-step trainers of ``--mode=distill``: sCM (sCT / sCD), ECT and MeanFlow.

``config.distill.method`` selects (the CD / CT / PD step is :mod:`scoresde.build.distill`):

* ``scm``: Lu & Song 2025 (:mod:`scoresde.fewstep.scm`). sCT without ``config.distill.teacher_workdir``; sCD with
  one: the teacher's score becomes the TrigFlow velocity :func:`scoresde.fewstep.trigflow.trigflow_velocity_from_score`
  and the student starts from the teacher's EMA weights (as CD's). The network is ``F(x_t/σ_d, c_noise(t))``
  (:func:`trigflow_net`); the learned weight ``w_φ(t)`` (:class:`scoresde.fewstep.scm.AdaptiveWeight`) lives
  beside the optimiser state (``opt_state["aux"]``) with its own Adam state of ``config.optim``.
* ``ect``: Geng et al. 2025 (:mod:`scoresde.fewstep.ect`): the trained diffusion model in
  ``config.distill.teacher_workdir`` is tuned into a consistency model. The network is the CD student's consistency
  function on ``config.training.sde`` (:func:`scoresde.build.student_consistency_fn`), read in EDM noise levels by
  :func:`ect_consistency_fn`; it samples with the ``consistency`` sampler.
* ``meanflow``: Geng et al. 2025 (:mod:`scoresde.fewstep.meanflow`), from scratch on the rectified-flow process:
  ``u(z, r, t)`` is the network built with ``config.model.second_time`` (``model(z, label(t), r=label(r))``).

Sampling: ``scm`` and ``meanflow`` students sample through :func:`continuous_sampler` (``config.sampling.method``
``scm`` | ``meanflow``, ``config.sampling.steps``); ``ect`` through the ``consistency`` sampler.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from scoresde import parameterization, sampling, train_state
from scoresde import sde as sde_lib
from scoresde.build.fewstep import Teacher, distill_method, student_consistency_fn
from scoresde.build.fewstep_condition import batch_condition, call_network, teacher_guidance, teacher_score
from scoresde.build.run import with_defaults
from scoresde.build.score import sampling_eps, score_convention
from scoresde.fewstep import ect, meanflow, scm, trigflow

CONTINUOUS_METHODS = ("scm", "ect", "meanflow")
CONTINUOUS_SAMPLERS = {"scm": "scm", "meanflow": "meanflow"}  # method -> its config.sampling.method
SCM_TIME_LABELS = ("trigflow", "sde")  # config.distill.scm_time_label: see trigflow_net

__all__ = [
    "CONTINUOUS_METHODS",
    "CONTINUOUS_SAMPLERS",
    "is_continuous",
    "scm_variant",
    "trigflow_net",
    "meanflow_u",
    "ect_consistency_fn",
    "init_continuous_state",
    "make_continuous_step",
    "continuous_sampler",
]


def is_continuous(config) -> bool:
    """Whether ``config.distill.method`` is one of :data:`CONTINUOUS_METHODS`."""
    return str(with_defaults(config).distill.method).lower() in CONTINUOUS_METHODS


def scm_variant(config) -> str:
    """``scd`` when ``config.distill.teacher_workdir`` is set, else ``sct``."""
    return "scd" if str(with_defaults(config).distill.teacher_workdir) else "sct"


def _labels(config, sde):
    """``label(s)`` of the network for the SDE time ``s`` (``config``'s convention, e.g. ``999 s``)."""
    time_label = score_convention(config, sde)["time_label"]
    return lambda s: parameterization.time_labels(sde, s, time_label)


def trigflow_net(net_fn, sde, config):
    """``F(x_in, t)``: the network read on TrigFlow time, with the time input ``config.distill.scm_time_label`` picks.

    * ``trigflow`` (the paper's ``c_noise(t) = t``, Lu & Song 2025 Sec. 4.1): ``net_fn(x_in, t)``. The network's
      sinusoidal embedding then varies slowly in ``t``, so ``∂_t F`` in the tangent ``df/dt`` stays of the size of
      the other terms; the paper traces training instability to large time scalings such as ``1000 t``.
    * ``sde``: ``net_fn(x_in, label(s(t)))`` with ``s(t)`` the SDE time of ``config.training.sde`` with the same
      noise level (:func:`scoresde.fewstep.trigflow.sde_time`), clipped to ``[eps, T]``: the time labels of a
      diffusion model of ``sde`` (an sCD student reads them as its teacher did). ``t`` beyond
      ``trigflow_time(T)`` (``σ̃ > σ̃(T)``, e.g. ``π/2``) reads as ``T``.

    Raises:
        ValueError: ``config.distill.scm_time_label`` is neither.
    """
    mode = str(config.distill.scm_time_label).lower()
    if mode not in SCM_TIME_LABELS:
        raise ValueError(f"unknown distill.scm_time_label {mode!r}; expected one of: {', '.join(SCM_TIME_LABELS)}")
    if mode == "trigflow":
        return net_fn
    sigma_data = float(config.distill.sigma_data)
    label, eps = _labels(config, sde), sampling_eps(sde)

    def f(x_in, t):
        t_max = trigflow.trigflow_time(sde, jnp.full_like(t, sde.T), sigma_data)
        s = jnp.clip(trigflow.sde_time(sde, jnp.minimum(t, t_max), sigma_data), eps, sde.T)
        return net_fn(x_in, label(s))

    return f


def meanflow_u(model_call, sde, config):
    """``u(z, r, t) = model_call(z, label(t), r=label(r))`` on the rectified-flow time of ``sde``."""
    label = _labels(config, sde)
    return lambda z, r, t: model_call(z, label(t), r=label(r))


def ect_consistency_fn(f_sde, sde):
    """``f(x, σ)`` in EDM's coordinates (``x = x_0 + σ ε``) of a consistency function ``f_sde(x_s, s)`` of ``sde``.

    ``f(x, σ) = f_sde(alpha(s) x, s) / alpha(eps)`` at the SDE time ``s`` of ``σ`` clipped to ``[eps, T]``;
    ``f(x, σ(eps)) = x`` as the boundary condition of ``f_sde`` at ``eps`` requires.
    """
    eps = sampling_eps(sde)
    a_eps = sde.alpha(jnp.asarray(eps, jnp.float32))

    def f(x, sigma):
        s = jnp.clip(sde.t_from_log_snr(-2.0 * jnp.log(sigma)), eps, sde.T)
        x_s = x * sde.alpha(s).reshape((-1,) + (1,) * (x.ndim - 1))
        return f_sde(x_s, s) / a_eps

    return f


def _weight_module(config):
    return scm.AdaptiveWeight(sigma_data=float(config.distill.sigma_data), rngs=nnx.Rngs(int(config.seed)))


def init_continuous_state(config, params, tx) -> dict:
    """:func:`scoresde.train_state.init_state` with ``opt_state = {"opt", "aux"}``; ``aux`` holds sCM's adaptive
    weight ``w_φ`` and its optimiser state (empty for ``ect`` / ``meanflow``)."""
    state = train_state.init_state(params, tx)
    aux = {}
    if distill_method(config) == "scm" and bool(config.distill.scm_adaptive_weight):
        _, w_params, _ = nnx.split(_weight_module(config), nnx.Param, ...)
        aux = {"weight": w_params, "weight_opt": tx.init(w_params)}
    state["opt_state"] = {"opt": state["opt_state"], "aux": aux}
    return state


def make_continuous_step(config, sde, graphdef, rest, tx, *, teacher: Teacher | None):
    """The :class:`scoresde.training.Trainer` ``update(state, batch, key, apply_gradients)`` of ``scm`` / ``ect`` /
    ``meanflow``: the loss and its gradients, the guarded update (and sCM's weight update under the same guard).

    A conditioned network gets each example's condition ``y`` from the batch (:func:`scoresde.build.batch_condition`)
    and every call of the student (online and stop-gradient target, inside the tangents' ``jvp``) and of sCD's
    teacher (guided with ``config.distill.teacher_guidance``) reads that ``y``: the losses see functions of
    ``(x, t)`` for the batch's fixed condition, so they stay the unconditional ones of :mod:`scoresde.fewstep`.
    """
    method = distill_method(config)
    d = config.distill
    sigma_data = float(d.sigma_data)
    w = teacher_guidance(config, teacher)
    if method == "scm":
        w_graphdef, _, w_rest = nnx.split(_weight_module(config), nnx.Param, ...)
        velocity = None
        if teacher is not None:  # sCD: the teacher's probability flow in TrigFlow coordinates (clipped to its T)
            score = teacher_score(teacher, w)
            tsde = teacher.score_model.sde
            t_top = float(trigflow.trigflow_time(tsde, jnp.asarray(tsde.T, jnp.float32), sigma_data))

            def velocity(x_t, t, y):
                score_y = score if y is None else (lambda x, s: score(x, s, y))
                v_teacher = trigflow.trigflow_velocity_from_score(score_y, tsde, sigma_data=sigma_data)
                return v_teacher(x_t, jnp.minimum(t, t_top))

    def net(params, train, k_drop, y):
        model = nnx.merge(graphdef, params, rest)
        return lambda x, labels, **kw: call_network(model, x, labels, y, train=train, key=k_drop, **kw)

    def scm_objective(params, aux, batch, y, k_loss, k_drop, step):
        # θ⁻ = stop_gradient(θ) (the paper's choice) with the same dropout mask as the online network
        def net_fn(p, x_in, t):
            return trigflow_net(net(p, True, k_drop, y), sde, config)(x_in, t)

        weight_fn = None
        if "weight" in aux:
            weight_fn = lambda _, t: nnx.merge(w_graphdef, aux["weight"], w_rest)(t)  # noqa: E731
        warmup = scm.tangent_warmup(step, int(d.scm_warmup))
        c = float(d.scm_tangent_c)
        kw = dict(
            sigma_data=sigma_data,
            weight_fn=weight_fn,
            warmup=warmup,
            tangent_norm_c=c if c > 0 else None,
            p_mean=float(d.scm_p_mean),
            p_std=float(d.scm_p_std),
        )
        if velocity is None:
            loss, out = scm.sct_loss(net_fn, params, batch, k_loss, **kw)
        else:
            loss, out = scm.scd_loss(net_fn, params, lambda x_t, t: velocity(x_t, t, y), batch, k_loss, **kw)
        return loss, {"mse": jnp.mean(out["mse"]), "tangent_warmup": warmup}

    def ect_objective(params, aux, batch, y, k_loss, k_drop, step):
        del aux

        def f_fn(p, x, sigma):
            return ect_consistency_fn(student_consistency_fn(net(p, True, k_drop, y), sde, config), sde)(x, sigma)

        stage = ect.ect_stage(step, int(d.ect_stage_steps))
        loss, _ = ect.ect_loss(
            f_fn,
            params,
            batch,
            k_loss,
            stage=stage,
            q=float(d.ect_q),
            k=float(d.ect_k),
            b=float(d.ect_b),
            huber_c=float(d.ect_huber_c),
            p_mean=float(d.ect_p_mean),
            p_std=float(d.ect_p_std),
        )
        return loss, {"stage": stage.astype(jnp.float32)}

    def meanflow_objective(params, aux, batch, y, k_loss, k_drop, step):
        del aux
        u = lambda p, z, r, t: meanflow_u(net(p, True, k_drop, y), sde, config)(z, r, t)  # noqa: E731
        loss, out = meanflow.meanflow_loss(
            u,
            params,
            batch,
            k_loss,
            p_mean=float(d.mf_p_mean),
            p_std=float(d.mf_p_std),
            ratio=float(d.mf_ratio),
            power=float(d.mf_power),
            weight_c=float(d.mf_weight_c),
        )
        return loss, {"sq_error": jnp.mean(out["sq_error"])}

    objective = {"scm": scm_objective, "ect": ect_objective, "meanflow": meanflow_objective}[method]

    def update(state, batch, key, apply_gradients):
        k_loss, k_drop = jax.random.split(key)
        y = batch_condition(config, batch, jax.random.fold_in(key, 2))
        opt = state["opt_state"]
        aux = opt["aux"]

        def loss_of(p, wp):
            return objective(
                p,
                {**aux, **({"weight": wp} if wp is not None else {})},
                batch["image"],
                y,
                k_loss,
                k_drop,
                state["step"],
            )

        (loss, extra), (grads, w_grads) = jax.value_and_grad(loss_of, argnums=(0, 1), has_aux=True)(
            state["params"], aux.get("weight")
        )
        inner, stats = apply_gradients({**state, "opt_state": opt["opt"]}, grads, loss)
        if "weight" in aux:  # w_φ moves with the network, only on the steps whose update was applied
            upd, w_opt = tx.update(w_grads, aux["weight_opt"], aux["weight"])
            new = {"weight": optax.apply_updates(aux["weight"], upd), "weight_opt": w_opt}
            aux = jax.tree.map(lambda a, b: jnp.where(stats["finite"], a, b), new, aux)
        return {**inner, "opt_state": {"opt": inner["opt_state"], "aux": aux}}, {"loss": loss, **extra, **stats}

    return update


def continuous_sampler(config, sde, shape, inverse_scaler, options: dict, *, with_rounds: bool = False):
    """``sampler(key, model, y=None) -> (samples, nfe[, rounds])`` of an ``scm`` / ``meanflow`` student, in data space;
    ``y`` the condition of a conditioned student (rows aligned with the samples).

    The front door :func:`scoresde.sampling.sample` with ``method="scm"`` on the
    :class:`~scoresde.sde.TrigFlow` process (the consistency function
    :func:`scoresde.fewstep.trigflow.consistency_fn` of :func:`trigflow_net`; 1 or 2 steps, ``t_mid = 1.1``) or
    ``method="meanflow"`` on ``sde`` (rectified flow; :func:`meanflow_u`), with ``options`` (``steps``, and
    ``times`` where set: :func:`scoresde.build.sampling_options` of ``config``).

    Raises:
        ValueError: ``config.sampling.method`` is not the method's sampler, or options the sampler refuses.
    """
    method = distill_method(config)
    want = CONTINUOUS_SAMPLERS[method]
    if str(config.sampling.method).lower() != want:
        raise ValueError(
            f"this network is a {method} student (config.distill.method={method!r}); sample it with "
            f"--config.sampling.method={want}, not {config.sampling.method!r}"
        )
    sigma_data = float(config.distill.sigma_data)
    process = sde_lib.TrigFlow(sigma_data=sigma_data) if method == "scm" else sde

    def sampler(key, model, y=None):
        call = lambda x, labels, **kw: call_network(model, x, labels, y, **kw)  # noqa: E731
        if method == "scm":
            fn = trigflow.consistency_fn(trigflow_net(call, sde, config), sigma_data=sigma_data)
        else:
            fn = meanflow_u(call, sde, config)
        x, nfe = sampling.sample(fn, process, shape, key, method=want, **options)
        return (inverse_scaler(x), nfe, nfe) if with_rounds else (inverse_scaler(x), nfe)

    return sampler
