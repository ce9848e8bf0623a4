"""The distillation step of ``--mode=distill``: progressive-distillation rounds, the student's state and its
update for CD, CT and PD (the teacher and the student file are :mod:`scoresde.build.fewstep`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from scoresde import parameterization, train_state
from scoresde.build.fewstep import Teacher, distill_method, student_consistency_fn
from scoresde.build.fewstep_condition import (
    batch_condition,
    call_network,
    guided_conditional_score,
    null_condition,
    teacher_guidance,
    teacher_score,
)
from scoresde.build.score import make_score_model, sampling_eps
from scoresde.fewstep import consistency as cm
from scoresde.fewstep import progressive


def pd_rounds(config) -> list[int]:
    """The student step counts of the PD rounds, ``[start/2, .., end]``."""
    d = config.distill
    return progressive.halving_rounds(int(d.start_steps), int(d.end_steps))


def iters_per_round(config) -> int:
    """PD: ``config.training.n_iters // len(rounds)`` training steps per halving round (at least 1)."""
    return max(1, int(config.training.n_iters) // len(pd_rounds(config)))


def total_steps(config) -> int:
    """Training steps of the run: ``config.training.n_iters`` (PD: rounded down to whole rounds)."""
    if distill_method(config) == "pd":
        return len(pd_rounds(config)) * iters_per_round(config)
    return int(config.training.n_iters)


def round_of_step(config, step: int) -> int:
    """The PD round that the (1-based) step ``step`` belongs to."""
    return min(max(step - 1, 0) // iters_per_round(config), len(pd_rounds(config)) - 1)


# ----------------------------------------------------------------------------------------------- state and step


def consistency_pair(config, sde, graphdef, rest, k_drop):
    """``(online, target)``: each ``params -> f(x, t, y=None)``, the student's consistency function for CD / CT
    (``y``: the condition of a conditioned network, rows aligned with ``x``).

    The online network runs in train mode with the dropout key ``k_drop``. The target runs in eval mode, or with
    ``config.distill.shared_dropout`` in train mode with the same ``k_drop``, as openai/consistency_models_cifar10
    ``jcm/losses.py`` (``get_consistency_loss_fn``: both calls take ``rng=dropout_rng``): then target and online
    agree exactly when their parameters do (CT's ``mu = 0``), and the loss measures only the change of time.
    """

    def f_apply(params, train=False):
        model = nnx.merge(graphdef, params, rest)

        def f(x, t, y=None):
            net = lambda xx, labels: call_network(  # noqa: E731
                model, xx, labels, y, train=train, key=k_drop if train else None
            )
            return student_consistency_fn(net, sde, config)(x, t)

        return f

    online = lambda params: f_apply(params, True)  # noqa: E731
    target = (lambda params: f_apply(params, True)) if bool(config.distill.shared_dropout) else f_apply
    return online, target


def init_distill_state(params, tx, *, teacher_params=None) -> dict:
    """:func:`scoresde.train_state.init_state` with ``opt_state = {"opt", "aux": {"target", "teacher"}}``."""
    state = train_state.init_state(params, tx)
    copy = lambda tree: jax.tree.map(jnp.copy, tree)  # noqa: E731  (separate buffers: the step donates)
    aux = {"target": copy(params), "teacher": copy(teacher_params if teacher_params is not None else params)}
    state["opt_state"] = {"opt": state["opt_state"], "aux": aux}
    return state


def make_distill_step(config, sde, graphdef, rest, *, teacher: Teacher | None):
    """The :class:`scoresde.training.Trainer` ``update(state, batch, key, apply_gradients) -> (state, metrics)``
    of ``config.distill.method``: the student's loss and gradients, the guarded update, then CD's target EMA.

    A conditioned network gets each example's condition from the batch (:func:`scoresde.build.batch_condition`);
    the teacher (guided with ``config.distill.teacher_guidance``), the student and CD's target all read it.
    """
    method = distill_method(config)
    w = teacher_guidance(config, teacher)
    d = config.distill
    eps = sampling_eps(sde)
    student_model = make_score_model(config)
    total = total_steps(config)

    def student_net(params, train, k_drop, y):
        model = nnx.merge(graphdef, params, rest)
        return lambda x, labels: call_network(model, x, labels, y, train=train, key=k_drop)

    reduction = str(d.metric_reduction)

    def cd_objective(params, aux, batch, y, k_loss, k_drop, step):
        online, target = consistency_pair(config, sde, graphdef, rest, k_drop)
        online_f = online(params)
        apply = lambda p, x, t, *c: online_f(x, t, *c) if p is params else target(p)(x, t, *c)  # noqa: E731
        loss, out = cm.cd_loss(
            apply,
            params,
            aux["target"],
            teacher_score(teacher, w),
            sde,
            batch,
            k_loss,
            num_scales=int(d.num_scales),
            eps=eps,
            rho=float(d.rho),
            solver=str(d.solver),
            metric=str(d.metric),
            weighting=str(d.weighting),
            schedule=str(d.schedule),
            reduction=reduction,
            cond=y,
        )
        return loss, {"num_scales": jnp.asarray(int(d.num_scales), jnp.float32)}

    def ct_objective(params, aux, batch, y, k_loss, k_drop, step):
        del aux
        n = cm.ict_num_scales(step, total, int(d.ct_s0), int(d.ct_s1))
        online, target = consistency_pair(config, sde, graphdef, rest, k_drop)
        online_f, target_f = online(params), target(params)
        # mu = 0 (iCT): the target is the online network itself, stop-gradiented inside ct_loss
        apply = lambda p, x, t: online_f(x, t, y) if p == "online" else target_f(x, t, y)  # noqa: E731
        loss, _ = cm.ct_loss(
            apply,
            "online",
            "target",
            sde,
            batch,
            k_loss,
            num_scales=n,
            eps=eps,
            rho=float(d.rho),
            metric=str(d.metric),
            weighting=str(d.weighting),
            schedule=str(d.schedule),
            reduction=reduction,
        )
        return loss, {"num_scales": n.astype(jnp.float32)}

    if method == "pd":
        rounds = jnp.asarray(pd_rounds(config), jnp.int32)
        per_round = iters_per_round(config)
        t_conv = teacher.score_model
        null = null_condition(config)

    def pd_objective(params, aux, batch, y, k_loss, k_drop, step):  # y reaches teacher and student via pd_loss
        r = jnp.minimum(step // per_round, rounds.shape[0] - 1)
        steps = rounds[r]
        tnet = nnx.merge(graphdef, aux["teacher"], rest)

        def read(x, t, c):  # the teacher network's raw output and the (alpha, sigma) of t
            alpha, sigma = parameterization.coefficients(sde, t, t_conv.time_label)
            return call_network(tnet, x, parameterization.time_labels(sde, t, t_conv.time_label), c), alpha, sigma

        def own_score(x, t, c):  # round 0's teacher: its own output convention
            out, alpha, sigma = read(x, t, c)
            return parameterization.output_to_score(out, x, alpha, sigma, t_conv.output)

        guided_own = guided_conditional_score(own_score, w, null)

        def pd_teacher(x, t, *c):  # round 0: the teacher, guided with w; later: the last student, unguided
            c = c[0] if c else None
            out, alpha, sigma = read(x, t, c)
            own = guided_own(x, t, c) if w else parameterization.output_to_score(out, x, alpha, sigma, t_conv.output)
            return jnp.where(r == 0, own, parameterization.output_to_score(out, x, alpha, sigma, student_model.output))

        def denoiser(x, t, *c):
            net = student_net(params, True, k_drop, c[0] if c else None)
            return student_model.net_score_fn(net).denoiser(x, t)

        loss, _ = progressive.pd_loss(
            denoiser, pd_teacher, sde, batch, k_loss, steps=steps, eps=eps, weighting=str(d.pd_weighting), cond=y
        )
        return loss, {"round": r.astype(jnp.float32), "student_steps": steps.astype(jnp.float32)}

    objective = {"cd": cd_objective, "ct": ct_objective, "pd": pd_objective}[method]
    target_mu = float(d.target_ema)

    def update(state, batch, key, apply_gradients):
        step = state["step"]
        k_loss, k_drop = jax.random.split(key)
        y = batch_condition(config, batch, jax.random.fold_in(key, 2))
        opt = state["opt_state"]
        aux = opt["aux"]
        if method == "pd":  # a round boundary: the last round's student (EMA) is the new teacher and student
            boundary = (step > 0) & (step % per_round == 0)
            pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(boundary, a, b), new, old)  # noqa: E731
            aux = {**aux, "teacher": pick(state["ema"], aux["teacher"])}
            state = {**state, "params": pick(state["ema"], state["params"])}

        (loss, extra), grads = jax.value_and_grad(
            lambda p: objective(p, aux, batch["image"], y, k_loss, k_drop, step), has_aux=True
        )(state["params"])
        inner, stats = apply_gradients({**state, "opt_state": opt["opt"]}, grads, loss)
        if method == "cd":  # θ⁻ ← μ θ⁻ + (1 - μ) θ, only when the update was applied
            new_t = cm.ema_update(aux["target"], inner["params"], target_mu)
            aux = {**aux, "target": jax.tree.map(lambda a, b: jnp.where(stats["finite"], a, b), new_t, aux["target"])}
        new_state = {**inner, "opt_state": {"opt": inner["opt_state"], "aux": aux}}
        return new_state, {"loss": loss, **extra, **stats}

    return update


# ----------------------------------------------------------------------------------------------- workdir record
