"""The one trainer harness: mesh, state restore and resume check, the jitted step, logging, checkpoints,
snapshots and SIGTERM. A trainer supplies only what differs.

A mode reads top to bottom: :func:`prepare` reads the loop settings of its config section once
(:func:`scoresde.build.read_settings`) and makes the mesh; the mode builds its network, optimizer and fresh state, describes itself as a :class:`Trainer` (its
loss, or for a state beyond parameters its whole update, its batches and optional hooks) and hands it to
:func:`fit`, which restores, checks and runs it. Step ``k`` reads batch ``k`` and derives its randomness
from ``fold_in(key, k)``, so a run resumed from a checkpoint reproduces the uninterrupted run exactly.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator

import jax
import numpy as np
import optax
from jax.sharding import Mesh

from scoresde import build, parallel, runlog, train_state
from scoresde import data as data_lib
from scoresde.checkpointing import Checkpointer, CheckpointSaveError, IncompatibleCheckpointError, check_workdir

__all__ = [
    "NonFiniteError",
    "Run",
    "Trainer",
    "prepare",
    "fit",
    "jit_step",
    "devices_fact",
    "conclude_training",
]

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """Too many consecutive non-finite losses or gradients."""


@dataclasses.dataclass(frozen=True)
class Run:
    """Where and how a trainer runs: its config, workdir, :class:`build.Settings` and ``('data',)`` mesh."""

    config: object
    workdir: str
    settings: build.Settings
    mesh: Mesh

    def key(self, purpose: str):
        """The run's key for ``purpose`` (:func:`scoresde.build.purpose_key` of the root key)."""
        return build.purpose_key(build.root_key(self.config), purpose)


def prepare(config, workdir: str, section: str = "training", *, n_iters: int | None = None) -> Run:
    """Checks ``workdir`` is writable, reads the section's settings and makes the mesh its batch splits over.

    Raises:
        PermissionError: an unwritable workdir.
        ValueError: a batch size that does not split over the devices and processes, or whose batches would not
            fit in memory.
    """
    check_workdir(workdir)
    settings = build.read_settings(config, section, n_iters=n_iters)
    mesh = parallel.make_mesh()
    parallel.check_batch_size(settings.batch_size, mesh, f"{settings.hint}.batch_size")
    _check_batch_memory(config, settings)
    return Run(config, workdir, settings, mesh)


# Batches one process holds at once: the one being made, two prefetched to the device, the step's own.
_BATCHES_HELD = 4


def _check_batch_memory(config, settings: build.Settings) -> None:
    """Refuses a batch whose float32 copies alone would not fit in this machine's memory (the OS would kill the
    run mid-step instead, with no message)."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    per_process = settings.batch_size // jax.process_count()
    need = per_process * int(np.prod(data_lib.data_shape(config))) * 4 * _BATCHES_HELD
    if need > memory:
        most = memory // (int(np.prod(data_lib.data_shape(config))) * 4 * _BATCHES_HELD) * jax.process_count()
        raise ValueError(
            f"{settings.hint}.batch_size={settings.batch_size} needs about {need / 2**30:,.0f} GiB for "
            f"its batches alone; this machine has {memory / 2**30:,.0f} GiB: use at most {most:,}"
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Trainer:
    """What one trainer is; :func:`fit` does the rest.

    Attributes:
        title, facts: the header (:func:`scoresde.runlog.announce`); :func:`fit` adds ``steps`` (unless
            ``facts`` has it), ``workdir`` and ``resuming``.
        desc: the progress bar's label.
        init_state: ``init_state()``, the fresh state (:func:`scoresde.train_state.init_state` or a superset) a
            checkpoint is restored into.
        tx: the optimizer.
        batches: ``batches(start)``, this process's batches from step ``start`` on.
        loss: ``loss(params, batch, key, step) -> (loss, logs)``, differentiated in the step; ``logs`` are
            logged scalars (a ``loss`` among them is logged instead of the differentiated value).
        update: instead of ``loss``, the whole ``update(state, batch, key, apply_gradients) -> (state, metrics)``
            for a state beyond parameters; ``apply_gradients(state, grads, loss) -> (state, stats)`` is the
            guarded update of :func:`scoresde.train_state.guarded_update` with the run's EMA rate.
        lr_schedule: ``lr_schedule(updates)``, logged as ``lr`` when given.
        evaluate: ``evaluate(state, step) -> dict`` merged into the record every ``eval_freq`` steps.
        snapshot: ``snapshot(state, step, logger) -> path | None`` at every checkpoint of ``snapshot_freq`` and at
            the end (when the section's ``snapshot_sampling`` is on).
        on_start: ``on_start(start)`` once the resume check has passed, before the first step.
        extra_meta: stored in every checkpoint's ``meta``.
    """

    title: str
    facts: dict
    desc: str
    init_state: Callable[[], dict]
    tx: optax.GradientTransformation
    batches: Callable[[int], Iterator]
    loss: Callable | None = None
    update: Callable | None = None
    lr_schedule: Callable | None = None
    evaluate: Callable | None = None
    snapshot: Callable | None = None
    on_start: Callable | None = None
    extra_meta: dict | None = None


def devices_fact() -> str:
    """The header's ``devices`` line: how many of which platform, over how many processes."""
    return f"{jax.device_count()} x {jax.devices()[0].platform} ({jax.process_count()} process(es))"


def jit_step(
    tx: optax.GradientTransformation,
    settings: build.Settings,
    mesh: Mesh,
    key,
    *,
    loss: Callable | None = None,
    update: Callable | None = None,
    lr_schedule: Callable | None = None,
) -> Callable:
    """The jitted, state-donating ``step(state, batch) -> (state, metrics)`` of a :class:`Trainer`'s ``loss`` or
    ``update`` (and ``lr_schedule``) over the mesh.

    The step key is ``fold_in(key, state["step"])``; the update is applied only when finite
    (:func:`scoresde.train_state.guarded_update`). ``metrics`` has ``loss``, ``grad_norm``, ``finite``,
    ``nonfinite_run``, the trainer's logs and ``lr`` with a schedule.
    """
    if (loss is None) == (update is None):
        raise ValueError("a trainer step needs exactly one of loss and update")

    def apply_gradients(state, grads, value):
        rate = settings.ema_rate(state["updates"]) if callable(settings.ema_rate) else settings.ema_rate
        return train_state.guarded_update(state, grads, value, tx, ema_rate=rate, max_nonfinite=settings.max_nonfinite)

    def step_fn(state, batch):
        step_key = jax.random.fold_in(key, state["step"])
        lr = {} if lr_schedule is None else {"lr": lr_schedule(state["updates"])}
        if update is not None:
            new_state, metrics = update(state, batch, step_key, apply_gradients)
            return new_state, {**metrics, **lr}
        (value, logs), grads = jax.value_and_grad(loss, has_aux=True)(state["params"], batch, step_key, state["step"])
        new_state, stats = apply_gradients(state, grads, value)
        return new_state, {"loss": value, **logs, **lr, **stats}

    repl, data = parallel.replicated_sharding(mesh), parallel.data_sharding(mesh)
    return jax.jit(step_fn, in_shardings=(repl, data), out_shardings=(repl, repl), donate_argnums=0)


def fit(run: Run, trainer: Trainer) -> dict:
    """Restores ``trainer``'s newest checkpoint in ``run.workdir`` and checks its stored config
    (:func:`scoresde.build.check_resume_config`), announces the run and trains to ``run.settings.n_iters``.

    Returns:
        ``{"step", "loss", "preempted", "last" (the last logged record), "state", "snapshot" (the last file
        the snapshot hook wrote)}``.

    Raises:
        ConfigMismatchError: resuming under a config that changes the run's meaning (another optimizer structure
            included: ``allow_config_change`` continues with a fresh optimizer state, recorded).
        IncompatibleCheckpointError: a stored optimizer state of another structure with no config change to
            explain it.
        NonFiniteError: after ``max_nonfinite`` consecutive non-finite steps.
    """
    s, config, workdir = run.settings, run.config, run.workdir
    ckpt = Checkpointer(workdir, max_to_keep=s.keep_checkpoints, keep_period=s.snapshot_freq)
    try:
        state, meta = train_state.restore_state(ckpt, trainer.init_state(), trainer.tx)
        changes, record = [], {}
        if meta is not None and not meta.get("model_only", False):  # a model-only import is a fresh start
            changes = build.check_resume_config(meta.get("config"), config, kind=s.kind, workdir=workdir)
            if meta.get("opt_state_change"):
                if not changes:  # no config field explains it: do not silently drop the optimizer's moments
                    raise IncompatibleCheckpointError(
                        f"cannot resume {workdir} from step {meta['step']}: its optimizer state does not fit the "
                        f"optimizer this config builds ({meta['opt_state_change']}), and no config field differs "
                        f"from the checkpoint's. Use the code and config the run was trained with, or another "
                        f"--workdir"
                    )
                # allowed (allow_config_change): parameters and EMA restored, the optimizer starts afresh
                record["optimizer_state"] = f"fresh: {meta['opt_state_change']}"
                log.warning(
                    "the optimizer changed (%s); continuing with a fresh optimizer state", meta["opt_state_change"]
                )
        start = int(state["step"])
        if trainer.on_start is not None:
            trainer.on_start(start)
        facts = dict(trainer.facts)
        facts.setdefault("steps", f"{s.n_iters:,} at batch {s.batch_size}")
        runlog.announce(
            trainer.title,
            {
                **facts,
                "workdir": os.path.abspath(workdir),
                "resuming": f"from step {start}" if meta is not None else None,
            },
        )
        state = parallel.replicate(run.mesh, state)
        # metrics.jsonl (process 0 writes) cut back to the checkpoint: what a killed run logged past it is redone
        logger = runlog.MetricsLogger(workdir, enabled=jax.process_index() == 0, tensorboard=s.tensorboard)
        logger.truncate_after(start)
        if changes:  # allowed by config.training.allow_config_change: recorded where they start
            logger.write(start, {"config_change": changes, **record})
        latest = [None]

        def snapshot(st, step):
            latest[0] = trainer.snapshot(st, step, logger)

        try:
            step_fn = jit_step(
                trainer.tx,
                s,
                run.mesh,
                run.key(s.purpose),
                loss=trainer.loss,
                update=trainer.update,
                lr_schedule=trainer.lr_schedule,
            )
            try:
                out = _loop(
                    state,
                    step_fn,
                    trainer.batches(start),
                    run,
                    start=start,
                    logger=logger,
                    desc=trainer.desc,
                    check=ckpt.check,
                    wait=ckpt.wait,
                    evaluate=trainer.evaluate,
                    snapshot=snapshot if trainer.snapshot is not None and s.snapshot_sampling else None,
                    save=lambda st, step: train_state.save_state(
                        ckpt, st, step, config=config, extra_meta=trainer.extra_meta
                    ),
                )
            except OSError as e:
                if isinstance(e, CheckpointSaveError) or e.errno not in _STORAGE_ERRNOS:
                    raise
                raise _storage_failure(e, ckpt) from e
            ckpt.wait()  # a failed last save is an error, not a silent loss
        finally:
            logger.close()
    finally:
        ckpt.close()
    return {**out, "snapshot": latest[0]}


# Errors of the storage itself: the run cannot go on, and what it has kept is the last complete checkpoint.
_STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)


def _storage_failure(e: OSError, ckpt: Checkpointer) -> OSError:
    """One line for a failed write of the run's other files (metrics, snapshots): the cause, the file and the last
    complete checkpoint (a save still in flight is waited for first; its own failure is the better message)."""
    try:
        ckpt.wait()
    except CheckpointSaveError as failed:
        return failed
    last = ckpt.last_complete()
    return OSError(
        f"writing {e.filename or 'a file of the run'} failed: {e.strerror or e}; last complete "
        f"checkpoint: {'none' if last is None else last} in {ckpt.directory}"
    )


class _Preemption:
    """Turns SIGTERM into a flag the loop polls (then saves and exits)."""

    def __enter__(self):
        self.requested, self._old = False, None
        try:
            self._old = signal.signal(signal.SIGTERM, self._request)
        except ValueError:  # not the main thread
            pass
        return self

    def _request(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)

    def any_process(self) -> bool:
        """Whether any process was asked to stop (a collective: every process must call it)."""
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils  # noqa: PLC0415  (multi-host only)

        return bool(np.any(multihost_utils.process_allgather(np.array([self.requested]))))


def _loop(
    state,
    step_fn: Callable,
    batches: Iterator,
    run: Run,
    *,
    start: int,
    save: Callable,
    logger,
    desc: str,
    check: Callable,
    wait: Callable,
    evaluate: Callable | None,
    snapshot: Callable | None,
) -> dict:
    """Runs ``step_fn`` from step ``start`` to ``n_iters``: logs every ``log_freq`` steps, evaluates every
    ``eval_freq``, saves every ``ckpt_freq``, at every snapshot and at the end, and saves and stops on SIGTERM
    (``wait()`` for that save before saying it is saved); ``check()`` after every step (a failed background save
    stops the run within a step)."""
    s = run.settings
    is_main = jax.process_index() == 0
    bar = None
    if is_main and s.progress:
        from tqdm import tqdm  # noqa: PLC0415  (only the main process draws a bar)

        bar = tqdm(total=s.n_iters, initial=start, desc=desc, dynamic_ncols=True, mininterval=1.0)
    last = {"loss": float("nan")}
    t_log, steps_since = time.perf_counter(), 0
    prev_run = None
    preempted = False
    step = start
    # two batches in flight: the host pipeline and the copy to the device overlap the step
    device_batches = parallel.prefetch_to_device(batches, run.mesh, size=2)
    try:
        with _Preemption() as preempt:
            while step < s.n_iters:
                state, metrics = step_fn(state, next(device_batches))
                step += 1
                steps_since += 1
                if bar is not None:
                    bar.update(1)
                check()
                # Check the previous step's counter: reading it does not wait for the step just dispatched.
                if prev_run is not None and int(prev_run) >= s.max_nonfinite:
                    raise NonFiniteError(
                        f"stopping at step {step - 1}: {int(prev_run)} consecutive steps had a non-finite loss or "
                        f"gradient ({s.hint}.max_nonfinite={s.max_nonfinite}); lower the learning rate, "
                        f"check the data scaling, or resume from an earlier checkpoint"
                    )
                prev_run = metrics["nonfinite_run"]
                is_eval = bool(s.eval_freq) and evaluate is not None and step % s.eval_freq == 0
                if step % s.log_freq == 0 or step == s.n_iters or is_eval:
                    m = jax.device_get(metrics)
                    dt = time.perf_counter() - t_log
                    rec = {k: float(v) for k, v in m.items() if k not in ("finite", "nonfinite_run")}
                    rec.update(
                        steps_per_sec=steps_since / dt,
                        img_per_sec=steps_since * s.batch_size / dt,
                        nonfinite_total=int(state["nonfinite_total"]),
                    )
                    if is_eval:
                        rec.update(evaluate(state, step))
                    logger.write(step, rec)
                    last = rec
                    if bar is not None:
                        bar.set_postfix(loss=f"{rec['loss']:.4g}")
                    t_log, steps_since = time.perf_counter(), 0
                at_snapshot = step % s.snapshot_freq == 0 or step == s.n_iters
                if step % s.ckpt_freq == 0 or at_snapshot:
                    save(state, step)
                if snapshot is not None and at_snapshot:
                    snapshot(state, step)
                # Several processes must agree on when to stop (the save is collective): poll together.
                if (
                    preempt.any_process()
                    if jax.process_count() > 1 and step % s.log_freq == 0
                    else (jax.process_count() == 1 and preempt.requested)
                ):
                    if not (step % s.ckpt_freq == 0 or at_snapshot):
                        save(state, step)
                    wait()
                    preempted = True
                    log.warning("SIGTERM: saved a checkpoint at step %d; rerun the same command to resume", step)
                    break
    finally:
        if bar is not None:
            bar.close()
    return {"step": step, "loss": last["loss"], "preempted": preempted, "last": last, "state": state}


def conclude_training(out: dict, done: str, workdir: str, *, next_command: str, results: dict | None = None) -> None:
    """The closing line of a trainer: preempted (how to resume) or finished (``results``, by default the final
    loss, checkpoints and latest samples; then the next command)."""
    if out["preempted"]:
        runlog.conclude(
            f"stopped at step {out['step']} (SIGTERM), checkpoint saved",
            next_command="rerun the same command to resume",
        )
    else:
        if results is None:
            results = {
                "final loss": f"{out['loss']:.4g}",
                "checkpoints": os.path.join(workdir, "checkpoints"),
                "latest samples": out["snapshot"],
            }
        runlog.conclude(f"{done} to step {out['step']}", results=results, next_command=next_command)
