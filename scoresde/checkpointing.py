"""Orbax checkpoints of training runs: parameters, EMA, optimiser state, step and config.

Layout: ``workdir/checkpoints/<step>/{params, ema_params, opt_state, meta}``. ``params`` and
``ema_params`` are pure-dict pytrees of the network's ``nnx.Param`` state (``State.to_pure_dict()``);
``opt_state`` (absent in imported checkpoints) is the optax state; ``meta`` is JSON with the step, the
non-finite counters and the config.

Saves are asynchronous (Orbax writes into a temporary directory and renames it when complete, so an
interrupted save is never listed). The manager keeps the last ``max_to_keep`` checkpoints plus every
one whose step is a multiple of ``keep_period``. On restore, a checkpoint that fails to load (truncated
or corrupt files) is skipped with a warning and the next older one is tried.

Examples:
    >>> save_model_checkpoint("runs/imported", params=p, ema_params=p, step=0, config=config)
    >>> model, step = builders.load_model("runs/imported", config)
"""

from __future__ import annotations

import json
import logging
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

__all__ = ["Checkpointer", "CorruptCheckpointError", "save_model_checkpoint", "checkpoint_dir", "check_workdir"]

log = logging.getLogger(__name__)


class CorruptCheckpointError(RuntimeError):
    """Checkpoints exist but none of them could be loaded."""


def checkpoint_dir(workdir: str) -> str:
    """``workdir/checkpoints`` (absolute)."""
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def check_workdir(workdir: str) -> None:
    """Creates ``workdir`` and checks that it is writable (a clear error instead of a late crash)."""
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test_{jax.process_index()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise PermissionError(f"workdir {workdir!r} is not writable: {e}") from e


def _config_json(config) -> dict:
    if config is None:
        return {}
    if hasattr(config, "to_json_best_effort"):
        return json.loads(config.to_json_best_effort())
    return dict(config)


def _pure(tree):
    return nnx.to_pure_dict(tree) if isinstance(tree, nnx.State) else tree


def _abstract(tree):
    def leaf(x):
        sharding = getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)

    return jax.tree.map(leaf, tree)


class Checkpointer:
    """A thin wrapper over ``ocp.CheckpointManager`` for training state.

    Args:
        workdir: run directory; checkpoints go to ``workdir/checkpoints``.
        max_to_keep: how many of the most recent checkpoints to keep.
        keep_period: also keep every checkpoint whose step is a multiple of this.
        async_save: write in a background thread.
    """

    def __init__(self, workdir: str, *, max_to_keep: int = 3, keep_period: int | None = None,
                 async_save: bool = True):
        self.directory = checkpoint_dir(workdir)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, keep_period=keep_period, create=True,
            enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, *, params, ema_params, opt_state=None, meta: dict | None = None, config=None,
             force: bool = True) -> bool:
        items = {
            "params": ocp.args.StandardSave(_pure(params)),
            "ema_params": ocp.args.StandardSave(_pure(ema_params)),
            "meta": ocp.args.JsonSave({"step": int(step), **(meta or {}), "config": _config_json(config)}),
        }
        if opt_state is not None:
            items["opt_state"] = ocp.args.StandardSave(opt_state)
        return self.manager.save(int(step), args=ocp.args.Composite(**items), force=force)

    def _restore_step(self, step, params, ema_params, opt_state):
        present = set(os.listdir(os.path.join(self.directory, str(step))))
        for needed in ("params", "ema_params", "meta"):
            if needed not in present:
                raise FileNotFoundError(f"item {needed!r} missing")
        items = {
            "params": ocp.args.StandardRestore(_abstract(_pure(params))) if params is not None else None,
            "ema_params": ocp.args.StandardRestore(_abstract(_pure(ema_params))) if ema_params is not None else None,
            "meta": ocp.args.JsonRestore(),
        }
        if opt_state is not None and "opt_state" in present:
            items["opt_state"] = ocp.args.StandardRestore(_abstract(opt_state))
        items = {k: v for k, v in items.items() if v is not None}
        out = self.manager.restore(step, args=ocp.args.Composite(**items))
        restored = {k: out[k] for k in items}
        restored.setdefault("opt_state", None)
        if int(restored["meta"]["step"]) != int(step):
            raise ValueError(f"meta step {restored['meta']['step']} != directory step {step}")
        return restored

    def restore_latest(self, *, params=None, ema_params=None, opt_state=None) -> dict | None:
        """Restores the newest loadable checkpoint into the structure of the given (abstract) trees.

        Returns:
            ``None`` when there is no checkpoint, else a dict with ``params``, ``ema_params``,
            ``opt_state`` (``None`` if the checkpoint has none) and ``meta``.

        Raises:
            CorruptCheckpointError: checkpoints exist but none can be loaded.
        """
        steps = self.all_steps()
        bad = []
        for step in reversed(steps):
            try:
                restored = self._restore_step(step, params, ema_params, opt_state)
            except Exception as e:  # noqa: BLE001  (any failure means: do not trust this checkpoint)
                log.warning("skipping checkpoint %s/%d: it could not be loaded (%s: %s)",
                            self.directory, step, type(e).__name__, str(e).splitlines()[0][:300] if str(e) else "")
                bad.append(step)
                continue
            self._move_aside(bad)
            return restored
        if steps:
            raise CorruptCheckpointError(
                f"none of the checkpoints {steps} in {self.directory} could be loaded (corrupt or incompatible "
                f"with this config); move them away to start from scratch")
        return None

    def _move_aside(self, steps):
        """Renames unreadable checkpoints newer than the restored one so the run can save those steps again."""
        if not steps or jax.process_index() != 0:
            return
        for step in steps:
            src = os.path.join(self.directory, str(step))
            dst = os.path.join(self.directory, f"corrupt_{step}")
            if os.path.exists(dst):
                dst = f"{dst}_{os.getpid()}"
            os.rename(src, dst)
            log.warning("moved unreadable checkpoint %s aside to %s", src, dst)
        self.manager.reload()

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def save_model_checkpoint(workdir: str, *, params, ema_params, step: int, config) -> None:
    """Writes a model-only checkpoint (no optimiser state) that every mode can load.

    Args:
        workdir: run directory.
        params, ema_params: ``nnx.State`` or pure-dict pytrees of the network's parameters.
        step: the training step to record.
        config: the config of the model (stored as JSON).
    """
    ckpt = Checkpointer(workdir, max_to_keep=None, async_save=False)
    ckpt.save(step, params=params, ema_params=ema_params, meta={"nonfinite_total": 0, "nonfinite_run": 0},
              config=config)
    ckpt.close()
