"""``--mode=distill``: few-step students (CD, PD, sCD, ECT) and consistency models from scratch (CT, sCT, MeanFlow).

``config.distill.method`` ∈ ``cd | ct | pd | scm | ect | meanflow`` (:mod:`scoresde.build` builds the step).
``cd``, ``pd`` and ``ect`` read the teacher from ``config.distill.teacher_workdir`` (its EMA weights and its
stored config) and start the student from the teacher's weights; ``scm`` does too when a teacher is given (sCD:
Lu & Song 2025) and trains from scratch without one (sCT); ``ct`` and ``meanflow`` need no teacher. The mode supplies the student's step
body (:func:`scoresde.build.make_distill_step`); checkpoints, exact resume, ``metrics.jsonl``, TensorBoard,
snapshots, progress bar and SIGTERM are the harness's (:mod:`scoresde.training`).

The workdir is self-contained: the checkpoints hold the student and its config, and
``workdir/student.json`` records what the network is; ``--mode=sample`` on it needs no teacher and
samples with ``config.sampling`` (``consistency`` at 1 step for CD / CT / ECT, ``scm`` for sCM, ``meanflow``
for MeanFlow, ``ddim`` at the final PD step count in the shipped configs).
"""

from __future__ import annotations

import copy
import os

import jax
from flax import nnx

from scoresde import build, runlog, training
from scoresde import data as data_lib

__all__ = ["distill"]


def _snapshot_config(config, method: str, step: int):
    """``config`` with the sampler of the student at ``step`` (PD: ddim at the round's step count)."""
    if method != "pd":
        return config
    snap = copy.deepcopy(config)
    with snap.unlocked():
        snap.sampling.method = "ddim"
        snap.sampling.noise_removal = False
        snap.sampling.steps = build.pd_rounds(config)[build.round_of_step(config, step)]
    return snap


def distill(config, workdir: str) -> dict:
    """Distils (``cd`` / ``pd`` / ``scm`` with a teacher / ``ect``) or trains from scratch (``ct`` / ``scm`` /
    ``meanflow``) the few-step model of ``config`` in ``workdir``, resuming if it can.

    Returns:
        A summary dict (``step``, ``loss``, ``preempted``, ``method``).

    Raises:
        ValueError: an unknown method, a missing teacher, the teacher's own workdir as ``workdir``, a student whose
            architecture differs from the teacher's.
        NonFiniteError: after ``config.training.max_nonfinite`` consecutive non-finite steps.
    """
    method = build.distill_method(config)
    teacher_dir = str(config.distill.teacher_workdir)
    if teacher_dir and os.path.abspath(teacher_dir) == os.path.abspath(workdir):
        raise ValueError(
            f"config.distill.teacher_workdir={teacher_dir!r} is the distill workdir itself; the student "
            f"needs its own workdir (its checkpoints would replace the teacher's)"
        )
    config = build.with_defaults(config)
    build.refuse_augmentation(config, "distill")
    run = training.prepare(config, workdir, n_iters=build.total_steps(config))
    data_lib.check_dataset_name(config)
    sde = build.make_sde(config)

    with_teacher = method in ("cd", "pd", "ect") or (method == "scm" and build.scm_variant(config) == "scd")
    teacher = build.load_teacher(config) if with_teacher else None
    model = build.build_model(config, seed=int(config.seed))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    if teacher is not None:  # the student starts from the teacher's (EMA) weights
        build.check_same_architecture(params, teacher.params, f"teacher {teacher.workdir}")
        params = jax.tree.map(lambda x: x, teacher.params)
    tx = build.optimizer_from_config(config)
    d, batch_size = config.distill, run.settings.batch_size
    plan = {
        "cd": f"N={d.num_scales}, {d.solver} teacher, mu={d.target_ema}",
        "ct": f"iCT curriculum N {d.ct_s0}..{d.ct_s1}, mu=0",
        "pd": f"DDIM steps {d.start_steps} -> {build.pd_rounds(config)}, "
        f"{build.iters_per_round(config)} steps per round",
        "scm": f"{build.scm_variant(config)}, tangent warm-up {d.scm_warmup} steps, "
        f"{'adaptive' if d.scm_adaptive_weight else 'no'} weighting",
        "ect": f"dt shrinks by {d.ect_q} every {d.ect_stage_steps} steps, metric c={d.ect_huber_c}",
        "meanflow": f"(r, t) logit-normal({d.mf_p_mean}, {d.mf_p_std}), r != t for {d.mf_ratio}, p={d.mf_power}",
    }[method]
    if build.is_continuous(config):
        init_state = lambda: build.init_continuous_state(config, params, tx)  # noqa: E731
        update = build.make_continuous_step(config, sde, graphdef, rest, tx, teacher=teacher)
    else:
        init_state = lambda: build.init_distill_state(  # noqa: E731
            params, tx, teacher_params=teacher.params if teacher else None
        )
        update = build.make_distill_step(config, sde, graphdef, rest, teacher=teacher)
    out = training.fit(
        run,
        training.Trainer(
            title=f"scoresde distill ({method}): {config.model.name} on {config.data.dataset}, sde {config.training.sde}",
            facts={
                "devices": training.devices_fact(),
                "teacher": f"{teacher.workdir} (step {teacher.step})" if teacher else None,
                "plan": plan,
            },
            desc=f"distill {method}",
            tx=tx,
            init_state=init_state,
            batches=lambda start: data_lib.get_dataset(config, split="train", batch_size=batch_size, start_step=start),
            update=update,
            lr_schedule=build.lr_schedule_from_config(config),
            snapshot=build.Snapshots(
                config,
                sde,
                graphdef,
                rest,
                run.mesh,
                run.key("snapshot"),
                workdir,
                config_at=lambda step: _snapshot_config(config, method, step),
            ),
            # written once the resume check passed: a refused resume leaves the run's record as it was
            on_start=lambda start: build.write_student_file(config, workdir, teacher=teacher),
            extra_meta={"method": method},
        ),
    )
    sample_args = f"--config.sampling.method={config.sampling.method} --config.sampling.steps={config.sampling.steps}"
    training.conclude_training(
        out, f"{method} finished", workdir, next_command=runlog.command("sample", workdir, sample_args)
    )
    return {"step": out["step"], "loss": out["loss"], "preempted": out["preempted"], "method": method}
