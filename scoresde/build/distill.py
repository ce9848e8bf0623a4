"""The distillation step of ``--mode=distill``: progressive-distillation rounds, the student's state and its
update for CD, CT and PD (the teacher and the student file are :mod:`scoresde.build.fewstep`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from scoresde import parameterization, train_state
from scoresde.build.fewstep import Teacher, distill_method, student_consistency_fn
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
    """``(online, target)``: each ``params -> f(x, t)``, the student's consistency function for CD / CT.

    The online network runs in train mode with the dropout key ``k_drop``. The target runs in eval mode, or with
    ``config.distill.shared_dropout`` in train mode with the same ``k_drop``, as openai/consistency_models_cifar10
    ``jcm/losses.py`` (``get_consistency_loss_fn``: both calls take ``rng=dropout_rng``): then target and online
    agree exactly when their parameters do (CT's ``mu = 0``), and the loss measures only the change of time.
    """

    def f_apply(params, train=False):
        model = nnx.merge(graphdef, params, rest)
        net = lambda x, labels: model(x, labels, train=train, key=k_drop if train else None)  # noqa: E731
        return student_consistency_fn(net, sde, config)

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
    of ``config.distill.method``: the student's loss and gradients, the guarded update, then CD's target EMA."""
    method = distill_method(config)
    d = config.distill
    eps = sampling_eps(sde)
    student_model = make_score_model(config)
    total = total_steps(config)

    def student_net(params, train, k_drop):
        model = nnx.merge(graphdef, params, rest)
        return lambda x, labels: model(x, labels, train=train, key=k_drop)

    reduction = str(d.metric_reduction)

    def cd_objective(params, aux, batch, k_loss, k_drop, step):
        tnet = nnx.merge(teacher.graphdef, teacher.params, teacher.rest)
        teacher_score = teacher.score_model.score_fn(tnet)
        online, target = consistency_pair(config, sde, graphdef, rest, k_drop)
        online_f = online(params)
        apply = lambda p, x, t: online_f(x, t) if p is params else target(p)(x, t)  # noqa: E731
        loss, out = cm.cd_loss(
            apply,
            params,
            aux["target"],
            teacher_score,
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
        )
        return loss, {"num_scales": jnp.asarray(int(d.num_scales), jnp.float32)}

    def ct_objective(params, aux, batch, k_loss, k_drop, step):
        del aux
        n = cm.ict_num_scales(step, total, int(d.ct_s0), int(d.ct_s1))
        online, target = consistency_pair(config, sde, graphdef, rest, k_drop)
        online_f, target_f = online(params), target(params)
        # mu = 0 (iCT): the target is the online network itself, stop-gradiented inside ct_loss
        apply = lambda p, x, t: online_f(x, t) if p == "online" else target_f(x, t)  # noqa: E731
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

    def pd_objective(params, aux, batch, k_loss, k_drop, step):
        r = jnp.minimum(step // per_round, rounds.shape[0] - 1)
        steps = rounds[r]
        tnet = nnx.merge(graphdef, aux["teacher"], rest)

        def teacher_score(x, t):  # round 0: the teacher's own output convention; later: the student's
            alpha, sigma = parameterization.coefficients(sde, t, t_conv.time_label)
            out = tnet(x, parameterization.time_labels(sde, t, t_conv.time_label))
            own = parameterization.output_to_score(out, x, alpha, sigma, t_conv.output)
            stud = parameterization.output_to_score(out, x, alpha, sigma, student_model.output)
            return jnp.where(r == 0, own, stud)

        denoiser = student_model.net_score_fn(student_net(params, True, k_drop)).denoiser
        loss, _ = progressive.pd_loss(
            denoiser, teacher_score, sde, batch, k_loss, steps=steps, eps=eps, weighting=str(d.pd_weighting)
        )
        return loss, {"round": r.astype(jnp.float32), "student_steps": steps.astype(jnp.float32)}

    objective = {"cd": cd_objective, "ct": ct_objective, "pd": pd_objective}[method]
    target_mu = float(d.target_ema)

    def update(state, batch, key, apply_gradients):
        step = state["step"]
        k_loss, k_drop = jax.random.split(key)
        opt = state["opt_state"]
        aux = opt["aux"]
        if method == "pd":  # a round boundary: the last round's student (EMA) is the new teacher and student
            boundary = (step > 0) & (step % per_round == 0)
            pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(boundary, a, b), new, old)  # noqa: E731
            aux = {**aux, "teacher": pick(state["ema"], aux["teacher"])}
            state = {**state, "params": pick(state["ema"], state["params"])}

        (loss, extra), grads = jax.value_and_grad(
            lambda p: objective(p, aux, batch["image"], k_loss, k_drop, step), has_aux=True
        )(state["params"])
        inner, stats = apply_gradients({**state, "opt_state": opt["opt"]}, grads, loss)
        if method == "cd":  # θ⁻ ← μ θ⁻ + (1 - μ) θ, only when the update was applied
            new_t = cm.ema_update(aux["target"], inner["params"], target_mu)
            aux = {**aux, "target": jax.tree.map(lambda a, b: jnp.where(stats["finite"], a, b), new_t, aux["target"])}
        new_state = {**inner, "opt_state": {"opt": inner["opt_state"], "aux": aux}}
        return new_state, {"loss": loss, **extra, **stats}

    return update


# ----------------------------------------------------------------------------------------------- workdir record
