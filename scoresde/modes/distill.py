"""``--mode=distill``: few-step students (CD, PD) and consistency training (CT), read top to bottom.

``config.distill.method`` ∈ ``cd | ct | pd`` (:mod:`scoresde.build` builds the step). ``cd`` and
``pd`` read the teacher from ``config.distill.teacher_workdir`` (its EMA weights and its stored config) and
start the student from the teacher's weights; ``ct`` needs no teacher. Checkpoints, exact resume,
``metrics.jsonl``, TensorBoard, snapshots, progress bar and SIGTERM are those of ``--mode=train``
(:mod:`scoresde.training`, :mod:`scoresde.train_state`).

The workdir is self-contained: the checkpoints hold the student and its config, and
``workdir/student.json`` records what the network is; ``--mode=sample`` on it needs no teacher and
samples with ``config.sampling`` (``consistency`` at 1 step for CD / CT, ``ddim`` at the final PD step count
in the shipped configs).
"""

from __future__ import annotations

import copy
import os

import jax
from flax import nnx

from scoresde import build, parallel, runlog, train_state
from scoresde import data as data_lib
from scoresde.checkpointing import Checkpointer, check_workdir
from scoresde.training import Snapshots, conclude_training, open_metrics, resume, run_loop

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
    """Distils (``cd`` / ``pd``) or consistency-trains (``ct``) ``config`` in ``workdir``, resuming if it can.

    Returns:
        A summary dict (``step``, ``loss``, ``preempted``, ``method``).

    Raises:
        ValueError: an unknown method, a missing teacher, a student whose architecture differs from the teacher's.
        NonFiniteError: after ``config.training.max_nonfinite`` consecutive non-finite steps.
    """
    check_workdir(workdir)
    method = build.distill_method(config)
    tc = config.training
    data_lib.check_dataset_name(config)
    mesh = parallel.make_mesh()
    batch_size = int(tc.batch_size)
    parallel.check_batch_size(batch_size, mesh, "config.training.batch_size")
    sde = build.make_sde(config)
    root = build.root_key(config)
    n_iters = build.total_steps(config)

    teacher = build.load_teacher(config) if method in ("cd", "pd") else None
    model = build.build_model(config, seed=int(config.get("seed", 0)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    if teacher is not None:  # the student starts from the teacher's (EMA) weights
        build.check_same_architecture(params, teacher.params, f"teacher {teacher.workdir}")
        params = jax.tree.map(lambda x: x, teacher.params)
    tx = build.optimizer_from_config(config)
    state = build.init_distill_state(params, tx, teacher_params=teacher.params if teacher else None)
    snapshot_freq = int(tc.snapshot_freq)
    ckpt = Checkpointer(workdir, max_to_keep=int(tc.get("keep_checkpoints", 3)), keep_period=snapshot_freq)
    try:
        state, meta, changes = resume(ckpt, state, tx, config, workdir)
        start = int(state["step"])
        build.write_student_file(config, workdir, teacher=teacher)
        plan = {"cd": f"N={config.distill.num_scales}, {config.distill.solver} teacher, mu={config.distill.target_ema}",
                "ct": f"iCT curriculum N {config.distill.ct_s0}..{config.distill.ct_s1}, mu=0",
                "pd": f"DDIM steps {config.distill.start_steps} -> {build.pd_rounds(config)}, "
                      f"{build.iters_per_round(config)} steps per round"}[method]
        runlog.announce(f"scoresde distill ({method}): {config.model.name} on {config.data.dataset}, sde {tc.sde}", {
            "devices": f"{jax.device_count()} x {jax.devices()[0].platform} ({jax.process_count()} process(es))",
            "teacher": f"{teacher.workdir} (step {teacher.step})" if teacher else None,
            "plan": plan,
            "steps": f"{n_iters:,} at batch {batch_size}",
            "workdir": os.path.abspath(workdir),
            "resuming": f"from step {start}" if meta is not None else None,
        })
        state = parallel.replicate(mesh, state)
        logger = open_metrics(workdir, start, tensorboard=bool(tc.get("tensorboard", True)), config_changes=changes)
        step_fn = build.make_distill_step(config, sde, graphdef, rest, tx, mesh,
                                                 build.purpose_key(root, "train"), teacher=teacher)
        snapshot = Snapshots(config, sde, graphdef, rest, mesh, build.purpose_key(root, "snapshot"), workdir,
                             logger=logger, config_at=lambda step: _snapshot_config(config, method, step))

        def save(s, step):
            train_state.save_state(ckpt, s, step, config=config, extra_meta={"method": method})

        try:
            out = run_loop(state=state, step_fn=step_fn, start=start, n_iters=n_iters, batch_size=batch_size,
                           batches=data_lib.get_dataset(config, split="train", batch_size=batch_size, start_step=start),
                           mesh=mesh, save=save, logger=logger, log_freq=int(tc.log_freq),
                           ckpt_freq=int(tc.get("snapshot_freq_for_preemption", snapshot_freq)),
                           snapshot_freq=snapshot_freq, max_nonfinite=int(tc.get("max_nonfinite", 10)),
                           snapshot=snapshot if bool(tc.get("snapshot_sampling", True)) else None,
                           progress=bool(tc.get("progress", True)), desc=f"distill {method}")
        finally:
            logger.close()
    finally:
        ckpt.close()
    conclude_training(out, f"{method} finished", workdir, latest_samples=snapshot.latest,
                      next_command=runlog.command("sample", workdir))
    return {"step": out["step"], "loss": out["loss"], "preempted": out["preempted"], "method": method}
