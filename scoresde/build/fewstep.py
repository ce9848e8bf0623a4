"""The few-step edge: ``config.distill`` -> teachers, students and the step body of ``--mode=distill``.

Three methods share one trainer (:mod:`scoresde.modes.distill`, run by the :mod:`scoresde.training` harness):

* ``cd``: consistency distillation (:func:`scoresde.fewstep.consistency.cd_loss`) of the score model in
  ``config.distill.teacher_workdir``; the student is a consistency function
  (:func:`scoresde.build.student_consistency_fn`) initialised from the teacher's EMA weights; the target
  network is an EMA of the student with decay ``config.distill.target_ema`` (``μ``; 0 = the online network).
* ``ct``: consistency training with the iCT choices (:func:`scoresde.fewstep.consistency.ct_loss`), no teacher: a
  freshly initialised network, ``μ = 0``, the exponential curriculum :func:`scoresde.fewstep.consistency.ict_num_scales`
  (a traced ``N``: one compile).
* ``pd``: progressive distillation (:func:`scoresde.fewstep.progressive.pd_loss`): rounds halve the DDIM step count
  from ``config.distill.start_steps`` to ``end_steps`` (:func:`scoresde.fewstep.progressive.halving_rounds`),
  ``config.training.n_iters / len(rounds)`` steps each. Round ``r``'s teacher is round ``r-1``'s student (its EMA);
  at a round boundary the student restarts from that teacher. The student predicts
  ``config.model.output`` (``v`` by default: a well-posed 1-step target at ``t = T``); the round-0 teacher
  keeps its own output convention.

Everything a resumed run needs is in the checkpoint: the ``opt_state`` item holds ``{"opt": Adam's state,
"aux": {"target": θ⁻, "teacher": PD's current teacher}}``; the round is a function of the step. The step's
randomness is ``fold_in(key, step)`` and batch ``k`` is a function of ``k``, so a resumed run reproduces the
uninterrupted one exactly.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from scoresde import data as data_lib
from scoresde import parameterization, train_state
from scoresde.build.networks import load_model
from scoresde.build.run import as_config, params_digest
from scoresde.build.score import ScoreModel, make_score_model, sampling_eps, score_convention
from scoresde.checkpointing import Checkpointer
from scoresde.fewstep import consistency as cm
from scoresde.fewstep import progressive

CONSISTENCY_METHODS = ("cd", "ct")  # config.distill.method values whose network is a consistency function


def is_consistency_model(config) -> bool:
    """Whether ``config`` describes a consistency model (``config.distill.method`` ∈ cd | ct)."""
    return str(config.get("distill", {}).get("method", "") or "").lower() in CONSISTENCY_METHODS


def student_consistency_fn(net_fn: Callable, sde, config) -> Callable:
    """The consistency function ``f(x, t)`` of a raw ``net_fn(x, labels)`` for ``config``
    (:func:`scoresde.fewstep.consistency.consistency_fn` with the sampling eps, ``config.distill.sigma_data`` and the
    network's time label); the one wrapper training and sampling share."""
    return cm.consistency_fn(
        net_fn,
        sde,
        sampling_eps(sde),
        sigma_data=float(config.distill.get("sigma_data", 0.5)),
        time_label=score_convention(config, sde)["time_label"],
    )


METHODS = ("cd", "ct", "pd")
STUDENT_FILE = "student.json"

__all__ = [
    "METHODS",
    "STUDENT_FILE",
    "Teacher",
    "distill_method",
    "load_teacher",
    "pd_rounds",
    "total_steps",
    "init_distill_state",
    "make_distill_step",
    "iters_per_round",
    "round_of_step",
    "write_student_file",
    "read_student_file",
]


def distill_method(config) -> str:
    """``config.distill.method`` checked: one of :data:`METHODS`.

    Raises:
        ValueError: a missing or unknown method.
    """
    method = str(config.get("distill", {}).get("method", "") or "").lower()
    if method not in METHODS:
        raise ValueError(f"unknown config.distill.method {method!r}; expected one of: {', '.join(METHODS)}")
    return method


# ----------------------------------------------------------------------------------------------- teacher


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A trained score model read from a workdir: its network pieces, EMA parameters and convention."""

    graphdef: object
    params: object
    rest: object
    score_model: ScoreModel
    config: object
    step: int
    workdir: str
    params_hash: str = ""  # :func:`scoresde.build.params_digest` of ``params``


def teacher_config(config):
    """The config the teacher was trained with: the one stored in its newest checkpoint, else ``config``."""
    workdir = str(config.distill.teacher_workdir)
    ckpt = Checkpointer(workdir, read_only=True)  # no lock: the teacher may be training, or on read-only storage
    try:
        restored = ckpt.restore_latest()
    finally:
        ckpt.close()
    stored = (restored or {}).get("meta", {}).get("config") or {}
    return as_config(stored) if stored else config


def load_teacher(config) -> Teacher:
    """The teacher of ``config.distill.teacher_workdir`` (EMA weights; its own stored config).

    The student is tied to it: ``config.distill.teacher_step`` / ``teacher_hash`` are filled in here when unset
    (so the student's checkpoints record them, and a resumed run whose teacher has changed meanwhile differs in
    them: :func:`scoresde.build.check_resume_config` refuses it); a teacher that differs from pinned ones is
    refused here.

    Raises:
        ValueError: no teacher workdir, a teacher whose SDE differs from ``config.training.sde``, or a teacher
            that is not the one ``config.distill`` pins (naming both).
        FileNotFoundError: no checkpoint in the teacher workdir.
    """
    workdir = str(config.distill.get("teacher_workdir", "") or "")
    if not workdir:
        raise ValueError(
            f"config.distill.method={config.distill.method!r} needs config.distill.teacher_workdir "
            "(a workdir trained with --mode=train, or imported with python -m scoresde.convert)"
        )
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"config.distill.teacher_workdir={workdir!r} does not exist")
    tcfg = teacher_config(config)
    if str(tcfg.training.sde).lower() != str(config.training.sde).lower():
        raise ValueError(
            f"the teacher in {workdir} was trained with sde {tcfg.training.sde!r} but "
            f"config.training.sde={config.training.sde!r}; distil on the teacher's SDE"
        )
    if int(tcfg.model.get("num_classes", 0) or 0) > 0:
        raise ValueError(
            "distilling a class-conditional teacher is not supported; got "
            f"model.num_classes={tcfg.model.num_classes} in {workdir}"
        )
    model, step = load_model(workdir, tcfg, ema=True)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    digest = params_digest(params)
    d = config.distill
    pinned_step, pinned_hash = int(d.get("teacher_step", 0) or 0), str(d.get("teacher_hash", "") or "")
    if (pinned_step and pinned_step != step) or (pinned_hash and pinned_hash != digest):
        raise ValueError(
            f"config.distill pins the teacher in {workdir} at step {pinned_step or '?'} (hash "
            f"{pinned_hash or '?'}), but its newest checkpoint is step {step} (hash {digest}): the "
            "teacher changed. Restore it, or distil the new teacher in another --workdir"
        )
    with config.unlocked():
        if "teacher_step" in d:
            d.teacher_step = int(step)
        if "teacher_hash" in d:
            d.teacher_hash = digest
    return Teacher(graphdef, params, rest, make_score_model(tcfg), tcfg, step, workdir, digest)


def check_same_architecture(student_params, teacher_params, what: str) -> None:
    """Raises ``ValueError`` unless the student's parameter tree has the teacher's structure and shapes."""
    s = jax.tree.map(lambda x: tuple(x.shape), nnx.to_pure_dict(student_params))
    t = jax.tree.map(lambda x: tuple(x.shape), nnx.to_pure_dict(teacher_params))
    if s != t:
        raise ValueError(
            f"the student (config.model) must have the teacher's architecture to start from its "
            f"weights ({what}); the parameter trees differ: set config.model to the teacher's"
        )


# ----------------------------------------------------------------------------------------------- schedules


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

    def f_apply(params, train=False, k_drop=None):
        return student_consistency_fn(student_net(params, train, k_drop), sde, config)

    def cd_objective(params, aux, batch, k_loss, k_drop, step):
        tnet = nnx.merge(teacher.graphdef, teacher.params, teacher.rest)
        teacher_score = teacher.score_model.score_fn(tnet)
        online_f = f_apply(params, True, k_drop)
        apply = lambda p, x, t: online_f(x, t) if p is params else f_apply(p)(x, t)  # noqa: E731
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
        )
        return loss, {"num_scales": jnp.asarray(int(d.num_scales), jnp.float32)}

    def ct_objective(params, aux, batch, k_loss, k_drop, step):
        del aux
        n = cm.ict_num_scales(step, total, int(d.ct_s0), int(d.ct_s1))
        online_f, target_f = f_apply(params, True, k_drop), f_apply(params)
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
    target_mu = float(d.get("target_ema", 0.0))

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


def write_student_file(config, workdir: str, *, teacher: Teacher | None) -> str:
    """``workdir/student.json``: what the network of this workdir is and how it samples by default."""
    method = distill_method(config)
    record = {
        "method": method,
        "network": "consistency" if method in ("cd", "ct") else "score",
        "sampling": {"method": str(config.sampling.method), "steps": int(config.sampling.get("steps", 0))},
        "model_output": make_score_model(config).output,
        "teacher_workdir": os.path.abspath(teacher.workdir) if teacher else None,
        "teacher_step": teacher.step if teacher else None,
        "data_shape": list(data_lib.data_shape(config)),
    }
    path = os.path.join(workdir, STUDENT_FILE)
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump(record, f, indent=1)
        os.replace(path + ".tmp", path)
    return path


def read_student_file(workdir: str) -> dict | None:
    """The record :func:`write_student_file` left in ``workdir``, or ``None``."""
    path = os.path.join(workdir, STUDENT_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)
