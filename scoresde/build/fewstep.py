"""The few-step edge: ``config.distill`` -> teachers, students and the step body of ``--mode=distill``.

Six methods share one trainer (:mod:`scoresde.modes.distill`, run by the :mod:`scoresde.training` harness); the
continuous-time ``scm``, ``ect`` and ``meanflow`` are :mod:`scoresde.build.continuous`, the three below
:mod:`scoresde.build.distill`:

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
from flax import nnx

from scoresde import data as data_lib
from scoresde.build.networks import load_model
from scoresde.build.run import as_config, params_digest, with_defaults
from scoresde.build.score import ScoreModel, conditioning_kind, make_score_model, sampling_eps, score_convention
from scoresde.checkpointing import Checkpointer
from scoresde.fewstep import consistency as cm

# config.distill.method values whose network is a consistency function of config.training.sde (``ect`` tunes one)
CONSISTENCY_METHODS = ("cd", "ct", "ect")


def is_consistency_model(config) -> bool:
    """Whether ``config`` describes a consistency model (``config.distill.method`` ∈ cd | ct | ect)."""
    return str(with_defaults(config).distill.method).lower() in CONSISTENCY_METHODS


def student_consistency_fn(net_fn: Callable, sde, config) -> Callable:
    """The consistency function ``f(x, t)`` of a raw ``net_fn(x, labels)`` for ``config``
    (:func:`scoresde.fewstep.consistency.consistency_fn` with the sampling eps, ``config.distill.sigma_data`` and the
    network's time label); the one wrapper training and sampling share."""
    return cm.consistency_fn(
        net_fn,
        sde,
        sampling_eps(sde),
        sigma_data=float(with_defaults(config).distill.sigma_data),
        time_label=score_convention(config, sde)["time_label"],
    )


METHODS = ("cd", "ct", "pd", "scm", "ect", "meanflow")
# the network of each method's workdir, as student.json records it
NETWORK_KIND = {"scm": "trigflow_consistency", "meanflow": "average_velocity", "pd": "score"}
STUDENT_FILE = "student.json"

__all__ = [
    "METHODS",
    "STUDENT_FILE",
    "CONDITIONING_FIELDS",
    "Teacher",
    "check_same_conditioning",
    "distill_method",
    "load_teacher",
    "write_student_file",
    "read_student_file",
]


def distill_method(config) -> str:
    """``config.distill.method`` checked: one of :data:`METHODS`.

    Raises:
        ValueError: a missing or unknown method.
    """
    method = str(with_defaults(config).distill.method).lower()
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
        ValueError: no teacher workdir, a teacher whose SDE differs from ``config.training.sde``, a teacher
            conditioned otherwise than the student (:func:`check_same_conditioning`), or a teacher that is not
            the one ``config.distill`` pins (naming both).
        FileNotFoundError: no checkpoint in the teacher workdir.
    """
    workdir = str(config.distill.teacher_workdir)
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
    check_same_conditioning(config, tcfg, f"the teacher in {workdir}")
    model, step = load_model(workdir, tcfg, ema=True)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    digest = params_digest(params)
    d = config.distill
    pinned_step, pinned_hash = int(d.teacher_step), str(d.teacher_hash)
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


# the config fields that say what a network is conditioned on; a student must read its teacher's condition
CONDITIONING_FIELDS = (
    "model.num_classes",
    "model.text_vocab",
    "model.cond_dim",
    "model.cond_tokens",
    "data.caption_len",
    "data.caption_set",
)


def _field(config, name: str):
    section, key = name.split(".")
    value = config[section].get(key, None)
    if key in ("num_classes", "text_vocab", "cond_dim"):
        return int(value or 0)
    if key == "caption_set":
        return str(value or "")
    kind = conditioning_kind(config)
    if key == "caption_len":  # the token length matters to caption-conditioned networks only
        return int(value) if kind == "text" else None
    return int(value) if kind == "vector" else None  # cond_tokens


def check_same_conditioning(config, teacher_config, what: str) -> None:
    """Raises ``ValueError`` unless the student (``config``) is conditioned as the teacher is.

    A distilled student is called with the teacher's condition (class labels, caption tokens or vectors of the
    batch), so the fields of :data:`CONDITIONING_FIELDS` must agree: ``model.num_classes``, ``model.text_vocab``,
    ``model.cond_dim`` / ``cond_tokens`` and, for captions, ``data.caption_len`` / ``data.caption_set``.
    """
    for name in CONDITIONING_FIELDS:
        mine, theirs = _field(config, name), _field(teacher_config, name)
        if mine != theirs:
            raise ValueError(
                f"the student's config.{name}={mine!r} but {what} has {theirs!r}: a distilled student keeps its "
                f"teacher's conditioning; set --config.{name}={theirs!r}"
            )


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


def write_student_file(config, workdir: str, *, teacher: Teacher | None) -> str:
    """``workdir/student.json``: what the network of this workdir is and how it samples by default."""
    method = distill_method(config)
    record = {
        "method": method,
        "network": NETWORK_KIND.get(method, "consistency"),
        "sampling": {"method": str(config.sampling.method), "steps": int(config.sampling.steps)},
        "model_output": make_score_model(config).output,
        "teacher_workdir": os.path.abspath(teacher.workdir) if teacher else None,
        "teacher_step": teacher.step if teacher else None,
        "teacher_hash": teacher.params_hash if teacher else None,
        "data_shape": list(data_lib.data_shape(config)),
    }
    if method == "scm":  # sCD with a teacher, sCT without
        record["variant"] = "scd" if teacher else "sct"
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
