"""The condition of a few-step student and its teacher: ``config.distill`` on a class-, caption- or vector-conditioned
network.

A conditioned student (``model.num_classes``, ``model.text_vocab`` or ``model.cond_dim`` > 0, as its teacher:
:func:`scoresde.build.check_same_conditioning`) learns the few-step map of ``p(x | c)``: every training step
reads the condition ``c`` of each example from the batch (:func:`batch_condition`, the entries ``--mode=train``
reads) and calls the student, its target and the teacher with that same ``c``. With
``config.distill.teacher_guidance = w > 0`` the teacher is read with classifier-free guidance (guided
distillation, Meng et al. 2023, "On distillation of guided diffusion models", Sec. 3: the student learns the
guided teacher at one fixed ``w``).
"""

from __future__ import annotations

from collections.abc import Callable

from flax import nnx

from scoresde import guidance
from scoresde.build.fewstep import Teacher, distill_method
from scoresde.build.run import with_defaults
from scoresde.build.score import class_labels, conditioning_kind, num_classes

__all__ = [
    "batch_condition",
    "call_network",
    "guided_conditional_score",
    "null_condition",
    "teacher_guidance",
    "teacher_score",
]


def batch_condition(config, batch, key):
    """The condition ``y`` of a training batch for a few-step student, ``None`` for an unconditional network.

    The same entries ``--mode=train`` reads (:func:`scoresde.build.class_labels`: ``batch["label"]`` for
    ``model.num_classes``, ``batch["caption"]`` tokens for ``model.text_vocab``, ``batch["cond"]`` for
    ``model.cond_dim``), never dropped to the null condition: the student learns the conditional flow of each
    example's own condition, and its teacher is called with the same one.
    """
    if conditioning_kind(config) == "none":
        return None
    return class_labels(config, batch, key, drop=False)


def null_condition(config) -> int | None:
    """The null condition of :func:`scoresde.guidance.classifier_free_guidance` for ``config``'s network: the label
    ``model.num_classes`` for classes, ``None`` (``zeros_like(y)``: the empty caption, the zero vector) otherwise."""
    return num_classes(config) if conditioning_kind(config) == "class" else None


def teacher_guidance(config, teacher: Teacher | None) -> float:
    """``config.distill.teacher_guidance`` checked against the run: the CFG weight ``w`` its teacher is read with.

    Raises:
        ValueError: ``w > 0`` without a teacher that is called during training (``ct``, ``ect``, ``meanflow``,
            sCT), with an unconditional teacher, or with a teacher trained without condition dropout
            (``training.p_uncond = 0``: it has no unconditional score to guide with).
    """
    w = float(with_defaults(config).distill.teacher_guidance)
    if w == 0:
        return 0.0
    method = distill_method(config)
    if teacher is None or method == "ect":
        raise ValueError(
            f"config.distill.teacher_guidance={w} guides a teacher's score, but config.distill.method={method!r} "
            f"{'tunes the teacher weights and never calls the teacher' if method == 'ect' else 'has no teacher'}; "
            "set it to 0 (guided distillation: cd, pd, or scm with config.distill.teacher_workdir)"
        )
    kind = conditioning_kind(teacher.config)
    if kind == "none":
        raise ValueError(
            f"config.distill.teacher_guidance={w} needs a class- or caption-conditioned teacher; the teacher in "
            f"{teacher.workdir} is unconditional: set it to 0"
        )
    p_uncond = float(teacher.config.training.get("p_uncond", 0.0) or 0.0)
    if p_uncond <= 0:
        raise ValueError(
            f"config.distill.teacher_guidance={w} needs the teacher's unconditional score, but the teacher in "
            f"{teacher.workdir} was trained with training.p_uncond={p_uncond} (no condition dropout): set it to 0"
        )
    return w


def guided_conditional_score(cond_score_fn: Callable, w: float, null: int | None) -> Callable:
    """``score_fn(x, t, y)``: ``cond_score_fn`` itself for ``w = 0``, else the classifier-free guided score
    ``(1 + w) s(x, t, y) - w s(x, t, ∅)`` of :func:`scoresde.guidance.classifier_free_guidance` for the condition
    ``y`` given at each call (guided distillation, Meng et al. 2023, "On distillation of guided diffusion models")."""
    if w == 0:
        return cond_score_fn
    return lambda x, t, y: guidance.classifier_free_guidance(cond_score_fn, y, w, null)(x, t)


def teacher_score(teacher: Teacher, w: float = 0.0) -> Callable:
    """The teacher's ``score_fn(x, t)`` (unconditional) or ``score_fn(x, t, y)`` (conditioned, guided with ``w``)."""
    tnet = nnx.merge(teacher.graphdef, teacher.params, teacher.rest)
    if conditioning_kind(teacher.config) == "none":
        return teacher.score_model.score_fn(tnet)

    def cond_score_fn(x, t, y):
        return teacher.score_model.score_fn(tnet, y=y)(x, t)

    return guided_conditional_score(cond_score_fn, w, null_condition(teacher.config))


def call_network(model, x, labels, y, **kwargs):
    """``model(x, labels, y, **kwargs)``, or ``model(x, labels, **kwargs)`` for ``y = None`` (unconditional)."""
    return model(x, labels, **kwargs) if y is None else model(x, labels, y, **kwargs)
