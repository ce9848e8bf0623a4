"""The host loop every trainer shares: step, log, evaluate, checkpoint, snapshot, stop on SIGTERM.

A trainer (``modes/train.py``, ``modes/train_classifier.py``, ...) builds its jitted ``step_fn(state,
batch) -> (state, metrics)`` and hands it here with callbacks; the loop knows nothing of what is trained.
Step ``k`` reads batch ``k`` and derives its randomness from ``k``, so a run resumed from a checkpoint
reproduces the uninterrupted run exactly.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Iterator

import jax
import numpy as np

from scoresde import build
from scoresde import data as data_lib
from scoresde import images, parallel, runlog, train_state

__all__ = ["NonFiniteError", "Preemption", "open_metrics", "resume", "run_loop", "Snapshots", "write_snapshot", "conclude_training"]

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """Too many consecutive non-finite losses or gradients."""


class Preemption:
    """Turns SIGTERM into a flag the loop polls (then saves and exits)."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGTERM, self._handler)
        except ValueError:  # not the main thread
            self._old = None
        return self

    def _handler(self, signum, frame):
        del signum, frame
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


def resume(ckpt, state, tx, config, workdir: str, *, kind: str = "train"):
    """``(state, meta, config_changes)``: the newest complete checkpoint restored, its stored config checked.

    Every trainer resumes through here (:func:`scoresde.train_state.restore_state`, then
    :func:`scoresde.build.check_resume_config` with the trainer's ``kind``; a model-only import is a fresh
    start and is not compared). ``meta`` is ``None`` without a checkpoint; ``config_changes`` lists the allowed
    differences (``config.training.allow_config_change``), for the trainer to record in ``metrics.jsonl``.

    Raises:
        ConfigMismatchError: the config changes the run's meaning and no change was allowed.
    """
    state, meta = train_state.restore_state(ckpt, state, tx)
    changes = []
    if meta is not None and not meta.get("model_only", False):
        changes = build.check_resume_config(meta.get("config"), config, kind=kind, workdir=workdir)
    return state, meta, changes


def open_metrics(workdir: str, start: int, *, tensorboard: bool, config_changes=()) -> runlog.MetricsLogger:
    """The run's ``metrics.jsonl`` logger (process 0 writes), cut back to ``start`` (records a killed run wrote
    past its last checkpoint are redone), with the allowed config changes of :func:`resume` recorded at ``start``."""
    logger = runlog.MetricsLogger(workdir, enabled=jax.process_index() == 0, tensorboard=tensorboard)
    logger.truncate_after(start)
    if config_changes:
        logger.write(start, {"config_change": config_changes})
    return logger


def run_loop(*, state, step_fn: Callable, batches: Iterator, mesh, start: int, n_iters: int, batch_size: int,
             save: Callable, logger, log_freq: int, ckpt_freq: int, snapshot_freq: int, max_nonfinite: int,
             eval_freq: int = 0, evaluate: Callable | None = None, snapshot: Callable | None = None,
             progress: bool = True, desc: str = "train", config_hint: str = "config.training",
             check: Callable | None = None) -> dict:
    """Runs ``step_fn`` from step ``start`` to ``n_iters``.

    Args:
        state: the (replicated) training state; ``state["nonfinite_total"]`` is logged.
        step_fn: jitted ``(state, batch) -> (state, metrics)``; ``metrics`` has ``loss`` and
            ``nonfinite_run``, and any other scalars to log (``finite`` is not logged).
        batches: iterator of this process's batches from step ``start`` on.
        mesh: the ``('data',)`` mesh the batches are sharded over.
        save: ``save(state, step)`` writes a checkpoint.
        logger: a :class:`scoresde.runlog.MetricsLogger`.
        log_freq, ckpt_freq, snapshot_freq, eval_freq: in steps; a checkpoint is also written at
            every snapshot and at the end.
        max_nonfinite: stop after this many consecutive non-finite steps.
        evaluate: ``evaluate(state, step) -> dict`` merged into the log record every ``eval_freq`` steps.
        snapshot: ``snapshot(state, step)`` every ``snapshot_freq`` steps and at the end.
        config_hint: the config section named in errors.
        check: called after every step (e.g. :meth:`Checkpointer.check`, so a failed background save stops
            the run within a step, not one checkpoint interval later).

    Returns:
        ``{"step", "loss", "preempted", "last"}`` (``last``: the last logged record).

    Raises:
        NonFiniteError: after ``max_nonfinite`` consecutive non-finite steps.
    """
    is_main = jax.process_index() == 0
    bar = None
    if is_main and progress:
        from tqdm import tqdm  # noqa: PLC0415  (only the main process draws a bar)

        bar = tqdm(total=n_iters, initial=start, desc=desc, dynamic_ncols=True, mininterval=1.0)
    last = {"loss": float("nan")}
    t_log, steps_since = time.perf_counter(), 0
    prev_run = None
    preempted = False
    step = start
    # two batches in flight: the host pipeline and the copy to the device overlap the step
    device_batches = parallel.prefetch_to_device(batches, mesh, size=2)
    try:
        with Preemption() as preempt:
            while step < n_iters:
                batch = next(device_batches)
                state, metrics = step_fn(state, batch)
                step += 1
                steps_since += 1
                if bar is not None:
                    bar.update(1)
                if check is not None:
                    check()
                # Check the previous step's counter: reading it does not wait for the step just dispatched.
                if prev_run is not None and int(prev_run) >= max_nonfinite:
                    raise NonFiniteError(
                        f"stopping at step {step - 1}: {int(prev_run)} consecutive steps had a non-finite loss or "
                        f"gradient ({config_hint}.max_nonfinite={max_nonfinite}); lower the learning rate, "
                        f"check the data scaling, or resume from an earlier checkpoint")
                prev_run = metrics["nonfinite_run"]
                is_eval = bool(eval_freq) and evaluate is not None and step % eval_freq == 0
                if step % log_freq == 0 or step == n_iters or is_eval:
                    m = jax.device_get(metrics)
                    dt = time.perf_counter() - t_log
                    rec = {k: float(v) for k, v in m.items() if k not in ("finite", "nonfinite_run")}
                    rec.update(steps_per_sec=steps_since / dt, img_per_sec=steps_since * batch_size / dt,
                               nonfinite_total=int(state["nonfinite_total"]))
                    if is_eval:
                        rec.update(evaluate(state, step))
                    logger.write(step, rec)
                    last = rec
                    if bar is not None:
                        bar.set_postfix(loss=f"{rec['loss']:.4g}")
                    t_log, steps_since = time.perf_counter(), 0
                at_snapshot = step % snapshot_freq == 0 or step == n_iters
                if step % ckpt_freq == 0 or at_snapshot:
                    save(state, step)
                if snapshot is not None and at_snapshot:
                    snapshot(state, step)
                # Several processes must agree on when to stop (the save is collective): poll together.
                if preempt.any_process() if jax.process_count() > 1 and step % log_freq == 0 else \
                        (jax.process_count() == 1 and preempt.requested):
                    if not (step % ckpt_freq == 0 or at_snapshot):
                        save(state, step)
                    preempted = True
                    log.warning("SIGTERM: saved a checkpoint at step %d; rerun the same command to resume", step)
                    break
    finally:
        if bar is not None:
            bar.close()
    return {"step": step, "loss": last["loss"], "preempted": preempted, "last": last, "state": state}


def write_snapshot(config, samples01, workdir: str, step: int, logger=None, title: str | None = None) -> str | None:
    """``workdir/samples/snapshot_<step>.png`` of samples in [0, 1] (process 0; also to TensorBoard with
    ``logger``): an image grid, or a scatter plot of 2-D data. Returns the path (``None`` elsewhere)."""
    if jax.process_index() != 0:
        return None
    path = os.path.join(workdir, "samples", f"snapshot_{step:08d}.png")
    if data_lib.is_image_data(config):
        size = data_lib.data_shape(config)[0]
        images.save_image_grid(path, images.to_uint8(samples01), upscale=max(1, 64 // size))
        if logger is not None:
            logger.image("samples", step, images.image_grid(images.to_uint8(samples01)))
    elif samples01.shape[-1] == 2:
        images.save_scatter(path, samples01, title=title or f"step {step}")
    else:
        return None
    return path


class Snapshots:
    """The ``snapshot(state, step)`` callback of :func:`run_loop`: EMA samples written by :func:`write_snapshot`.

    ``config.training.snapshot_num_samples`` samples (rounded to the mesh), randomness ``fold_in(key, step)``.
    The sample function is built on first use, once per distinct ``config.sampling`` that ``config_at(step)``
    returns (a distilled student's step count changes between rounds); :attr:`latest` is the last file written.
    """

    def __init__(self, config, sde, graphdef, rest, mesh, key, workdir: str, *, logger=None, title: str = "step",
                 config_at=None):
        n = int(config.training.get("snapshot_num_samples", 64))
        self.num = max(mesh.size, n // mesh.size * mesh.size)
        self._args = (sde, graphdef, rest, mesh)
        self._config, self._config_at, self._key = config, config_at, key
        self._workdir, self._logger, self._title = workdir, logger, title
        self._fns = {}
        self.latest = None

    def __call__(self, state, step: int) -> None:
        config = self._config_at(step) if self._config_at is not None else self._config
        which = config.sampling.to_json_best_effort()
        if which not in self._fns:
            sde, graphdef, rest, mesh = self._args
            self._fns[which] = build.make_sample_fn(config, sde, graphdef, rest, self.num, mesh)
        samples, _ = self._fns[which](state["ema"], jax.random.fold_in(self._key, step))
        self.latest = write_snapshot(self._config, parallel.to_host(samples), self._workdir, step, self._logger,
                                     title=f"{self._title} {step}")


def conclude_training(out: dict, done: str, workdir: str, *, latest_samples: str | None, next_command: str) -> None:
    """The closing line of a trainer: preempted (how to resume) or finished (loss, checkpoints, samples, next)."""
    if out["preempted"]:
        runlog.conclude(f"stopped at step {out['step']} (SIGTERM), checkpoint saved",
                        next_command="rerun the same command to resume")
    else:
        runlog.conclude(f"{done} to step {out['step']}", results={
            "final loss": f"{out['loss']:.4g}", "checkpoints": os.path.join(workdir, "checkpoints"),
            "latest samples": latest_samples}, next_command=next_command)
