"""Orbax checkpoints of training runs: parameters, EMA, optimiser state, step and config.

``workdir/checkpoints/<step>/{params, ema_params, opt_state, meta}``, saved asynchronously by one locked
writer, restored newest-loadable-first. Layout and failure handling: ``docs/checkpoints.md``.

Examples:
    >>> save_model_checkpoint("runs/imported", params=p, ema_params=p, step=0, config=config)
    >>> model, step = build.load_model("runs/imported", config)
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import socket
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

__all__ = [
    "Checkpointer",
    "CorruptCheckpointError",
    "IncompatibleCheckpointError",
    "CheckpointSaveError",
    "WorkdirLock",
    "WorkdirLockedError",
    "save_model_checkpoint",
    "checkpoint_dir",
    "check_workdir",
]

log = logging.getLogger(__name__)


class CorruptCheckpointError(RuntimeError):
    """A checkpoint fails its integrity check, or checkpoints exist but none of them could be loaded."""


def checkpoint_dir(workdir: str) -> str:
    """``workdir/checkpoints`` (absolute)."""
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def check_workdir(workdir: str) -> None:
    """Creates ``workdir`` and ``workdir/checkpoints`` and checks both are writable (a clear error at start,
    not a failed save one interval later)."""
    for d in (workdir, checkpoint_dir(workdir)):
        try:
            os.makedirs(d, exist_ok=True)
            probe = os.path.join(d, f".write_test_{jax.process_index()}_{os.getpid()}")
            with open(probe, "w") as f:
                f.write("ok")
            os.remove(probe)
        except OSError as e:
            raise PermissionError(
                f"{d!r} is not writable ({e.strerror or e}); choose a writable --workdir or fix its permissions"
            ) from e


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


class WorkdirLockedError(RuntimeError):
    """Another live process holds the directory's write lock."""


class IncompatibleCheckpointError(ValueError):
    """A checkpoint's parameters do not have the shapes the current config builds."""


class WorkdirLock:
    """An exclusive OS file lock on ``directory/.lock`` (``fcntl.flock``): released when its process dies.

    The file records the holder's pid, host and start time, so a refused second writer can say who holds it.
    """

    def __init__(self, directory: str):
        self.path = os.path.join(directory, ".lock")
        self._fd = None

    def acquire(self) -> WorkdirLock:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 512).decode(errors="replace").strip() or "an unknown process"
            os.close(fd)
            raise WorkdirLockedError(
                f"{os.path.dirname(self.path)} is in use by {holder}; one process writes checkpoints to a workdir "
                f"at a time (wait for it, stop it, or use another --workdir)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _shape_mismatches(stored_tree, target) -> list[str]:
    """``path: stored (a, b) vs expected (c, d)`` for every leaf whose shape differs (or is missing)."""
    stored = {"/".join(map(str, k)): v for k, v in _flat(stored_tree)}
    if not stored:  # unreadable metadata is damage (skip this checkpoint), not a different architecture
        raise ValueError("the checkpoint's parameter metadata is empty or unreadable")
    wanted = {"/".join(map(str, k)): v for k, v in _flat(target)}
    out = []
    for path in sorted(set(stored) | set(wanted)):
        a, b = stored.get(path), wanted.get(path)
        if a is None or b is None:
            out.append(f"{path}: {'missing in the checkpoint' if a is None else 'not in the current model'}")
        elif tuple(a.shape) != tuple(np.shape(b)):
            out.append(f"{path}: stored {tuple(a.shape)} vs expected {tuple(np.shape(b))}")
    return out


def _stored_tree(path: str):
    """The shape metadata tree of a saved pytree item (reads metadata files only, no arrays)."""
    md = ocp.StandardCheckpointer().metadata(path)
    md = getattr(md, "item_metadata", md)
    return getattr(md, "tree", md)


def _host_array(x) -> np.ndarray | None:
    """The whole value of a leaf on this host (a replicated array's first local copy); ``None`` for a leaf
    this host holds only part of, or one with no plain bytes (a typed key)."""
    if isinstance(x, jax.Array):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.extended):
            return None
        if not x.is_fully_addressable:
            shard = x.addressable_shards[0].data
            return np.asarray(shard) if shard.shape == x.shape else None
        return np.asarray(x)
    return x if isinstance(x, np.ndarray) else None


def _checksums(tree) -> dict[str, str]:
    """``path -> sha256`` of the dtype, shape and bytes of every array leaf of ``tree``."""
    out = {}
    for path, leaf in _flat(tree):
        a = _host_array(leaf)
        if a is not None:
            h = hashlib.sha256(f"{a.dtype.str}{tuple(a.shape)}".encode())
            h.update(np.ascontiguousarray(a).tobytes())
            out["/".join(map(str, path))] = h.hexdigest()
    return out


def _verify(name: str, tree, expected: dict[str, str] | None) -> None:
    """Raises unless every array of the restored item ``name`` has the checksum it was saved with (a checkpoint
    written before checksums were recorded has none to compare)."""
    if not expected:
        return
    got = _checksums(tree)
    bad = sorted(p for p in got.keys() & expected.keys() if got[p] != expected[p])
    if bad:
        raise CorruptCheckpointError(
            f"item {name!r} is corrupt: {len(bad)} array(s) differ from the sha256 recorded "
            f"at save ({', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''})"
        )


def _flat(tree):
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))
    return [
        (tuple(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path), leaf)
        for path, leaf in leaves
    ]


def _structure_change(stored_tree, target) -> str | None:
    """What differs between a stored item's arrays (paths and shapes) and ``target``'s, or ``None``."""

    def name(path):  # a stored nnx Variable is its value: its ``value`` attribute is no level of the saved tree
        return "/".join(str(k) for k in path if k != "value")

    stored = {name(k): tuple(v.shape) for k, v in _flat(stored_tree) if hasattr(v, "shape")}
    wanted = {name(k): tuple(np.shape(v)) for k, v in _flat(target)}
    if not stored:
        raise ValueError("the checkpoint's optimizer state metadata is empty or unreadable")
    if stored == wanted:
        return None
    differ = sorted(p for p in stored.keys() | wanted.keys() if stored.get(p) != wanted.get(p))
    return (
        f"the checkpoint holds {len(stored)} arrays, the optimizer now builds {len(wanted)}; they differ at "
        + ", ".join(differ[:4])
        + (" ..." if len(differ) > 4 else "")
    )


# How often a reader lists the checkpoints again after the ones it listed were deleted under it.
_RELISTS = 3


class Checkpointer:
    """A thin wrapper over ``ocp.CheckpointManager`` for training state.

    A writer holds the workdir's :class:`WorkdirLock` until :meth:`close`; a ``read_only`` one creates, cleans
    up and deletes nothing (``docs/checkpoints.md``).

    Args:
        workdir: run directory; checkpoints go to ``workdir/checkpoints``.
        max_to_keep: how many of the most recent checkpoints to keep (at least 1; ``None``: all).
        keep_period: also keep every checkpoint whose step is a multiple of this.
        async_save: write in a background thread.
        read_only: open for reading only (no lock, no temporary-directory cleanup, nothing created).

    Raises:
        WorkdirLockedError: another live process writes to this workdir.
        ValueError: ``max_to_keep < 1``.
    """

    def __init__(
        self,
        workdir: str,
        *,
        max_to_keep: int = 3,
        keep_period: int | None = None,
        async_save: bool = True,
        read_only: bool = False,
    ):
        if max_to_keep is not None and int(max_to_keep) < 1:  # 0 would delete the checkpoint just written
            raise ValueError(f"max_to_keep={max_to_keep} would delete every checkpoint; expected None or >= 1")
        self.directory = checkpoint_dir(workdir)
        self.read_only = read_only
        self._lock = None
        self.manager = None
        if read_only:
            if os.path.isdir(self.directory):
                options = ocp.CheckpointManagerOptions(
                    read_only=True, create=False, cleanup_tmp_directories=False, enable_async_checkpointing=False
                )
                self.manager = ocp.CheckpointManager(self.directory, options=options)
            return
        if jax.process_index() == 0:
            self._lock = WorkdirLock(os.path.dirname(self.directory)).acquire()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            keep_period=keep_period,
            create=True,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
        try:
            self.manager = ocp.CheckpointManager(self.directory, options=options)
        except BaseException:
            self._release()
            raise

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps()) if self.manager is not None else []

    def save(
        self,
        step: int,
        *,
        params,
        ema_params,
        opt_state=None,
        meta: dict | None = None,
        config=None,
        force: bool = True,
    ) -> bool:
        """Starts writing checkpoint ``step`` (asynchronously); a failed earlier save raises here.

        Raises:
            CheckpointSaveError: this or an earlier save failed (disk full, read-only storage, ...).
        """
        if self.read_only:
            raise RuntimeError(f"{self.directory} was opened read-only")
        trees = {"params": _pure(params), "ema_params": _pure(ema_params)}
        if opt_state is not None:
            trees["opt_state"] = opt_state
        # a sha256 per array, checked on restore: storage that flips a byte gives a skipped checkpoint, not NaN
        checksums = {name: _checksums(tree) for name, tree in trees.items()}
        items = {name: ocp.args.StandardSave(tree) for name, tree in trees.items()}
        items["meta"] = ocp.args.JsonSave(
            {"step": int(step), **(meta or {}), "config": _config_json(config), "checksums": checksums}
        )
        self.check()
        try:
            return self.manager.save(int(step), args=ocp.args.Composite(**items), force=force)
        except Exception as e:  # noqa: BLE001  (orbax wraps OSErrors in its own types)
            raise CheckpointSaveError(self._save_failure(step, e)) from e

    def last_complete(self) -> int | None:
        """The newest finished checkpoint on disk (a save in flight is still in a temporary directory)."""
        try:
            complete = sorted(int(d) for d in os.listdir(self.directory) if d.isdigit())
        except OSError:
            return None
        return complete[-1] if complete else None

    def _save_failure(self, step, e) -> str:
        last = self.last_complete()
        text = str(e)
        known = re.search(r"No space left on device|Read-only file system|Permission denied|Disk quota exceeded", text)
        cause = known.group(0) if known else (text.strip().splitlines()[-1][:200] if text.strip() else type(e).__name__)
        what = f"saving checkpoint {step}" if step >= 0 else "a checkpoint save"
        return (
            f"{what} to {self.directory} failed: {cause}; last complete checkpoint: {'none' if last is None else last}"
        )

    def _restore_step(self, step, params, ema_params, opt_state):
        present = set(os.listdir(os.path.join(self.directory, str(step))))
        for needed in ("params", "ema_params", "meta"):
            if needed not in present:
                raise FileNotFoundError(f"item {needed!r} missing")
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        model_only = bool(meta.get("model_only", False))
        if opt_state is not None and "opt_state" not in present and not model_only:
            raise FileNotFoundError(
                "item 'opt_state' missing (a training checkpoint without optimizer state is incomplete)"
            )
        for name, target in (("params", params), ("ema_params", ema_params)):
            if target is not None:
                bad = _shape_mismatches(_stored_tree(os.path.join(self.directory, str(step), name)), _pure(target))
                if bad:
                    raise IncompatibleCheckpointError(
                        f"checkpoint {step} in {self.directory} does not fit the model this config builds "
                        f"({len(bad)} parameter(s) differ): "
                        + "; ".join(bad[:8])
                        + (" ..." if len(bad) > 8 else "")
                        + ". Use the config the run was trained with, or another --workdir for a new model."
                    )
        items = {
            "params": ocp.args.StandardRestore(_abstract(_pure(params))) if params is not None else None,
            "ema_params": ocp.args.StandardRestore(_abstract(_pure(ema_params))) if ema_params is not None else None,
        }
        changed = None
        if opt_state is not None and "opt_state" in present:
            # another optimizer (e.g. clipping switched on or off) is a config question, not damage: the caller
            # decides whether to continue with a fresh optimizer state
            changed = _structure_change(_stored_tree(os.path.join(self.directory, str(step), "opt_state")), opt_state)
            if changed is None:
                items["opt_state"] = ocp.args.StandardRestore(_abstract(opt_state))
        items = {k: v for k, v in items.items() if v is not None}
        out = self.manager.restore(step, args=ocp.args.Composite(**items))
        restored = {k: out[k] for k in items}
        for name, tree in restored.items():
            _verify(name, tree, (meta.get("checksums") or {}).get(name))
        restored["meta"] = meta
        restored.setdefault("opt_state", None)
        restored["opt_state_change"] = changed
        if int(meta["step"]) != int(step):
            raise ValueError(f"meta step {meta['step']} != directory step {step}")
        return restored

    def restore(self, step: int, *, params=None, ema_params=None, opt_state=None) -> dict:
        """Restores checkpoint ``step`` as :meth:`restore_latest` does the newest (same dict, checksums verified).

        Raises:
            IncompatibleCheckpointError: the parameters' shapes differ from the given trees.
            FileNotFoundError, ValueError: the checkpoint is incomplete or inconsistent.
        """
        return self._restore_step(step, params, ema_params, opt_state)

    def restore_latest(self, *, params=None, ema_params=None, opt_state=None) -> dict | None:
        """Restores the newest complete checkpoint into the structure of the given (abstract) trees.

        One that cannot be loaded is skipped with a warning for the next older one (``docs/checkpoints.md``); one
        that a writer's retention deletes while it is read sends the reader back to the newer ones.

        Returns:
            ``None`` when there is no checkpoint, else a dict with ``params``, ``ema_params``,
            ``opt_state`` (``None`` if the checkpoint has none, or one of another structure than ``opt_state``),
            ``opt_state_change`` (what differs in that structure, else ``None``) and ``meta``.

        Raises:
            IncompatibleCheckpointError: the parameters' shapes differ from the given trees (names each).
            CorruptCheckpointError: checkpoints exist but none can be loaded.
        """
        bad, gone, tried = [], [], set()
        for _ in range(_RELISTS):
            for step in reversed(self.all_steps()):
                if step in tried:
                    continue
                tried.add(step)
                try:
                    restored = self._restore_step(step, params, ema_params, opt_state)
                except IncompatibleCheckpointError:
                    raise
                except Exception as e:  # noqa: BLE001  (any failure means: do not trust this checkpoint)
                    if not os.path.isdir(os.path.join(self.directory, str(step))):
                        # not damage: the writer's retention removed it after this reader listed it
                        log.warning(
                            "checkpoint %s/%d was deleted while being read (the trainer writing this workdir "
                            "keeps only its newest checkpoints); trying the others",
                            self.directory,
                            step,
                        )
                        gone.append(step)
                        continue
                    log.warning(
                        "skipping checkpoint %s/%d: it could not be loaded (%s: %s)",
                        self.directory,
                        step,
                        type(e).__name__,
                        str(e).splitlines()[0][:300] if str(e) else "",
                    )
                    bad.append(step)
                    continue
                self._move_aside(bad)
                return restored
            if not gone or self.manager is None:
                break
            self.manager.reload()  # what replaced the deleted ones
            if not set(self.all_steps()) - tried:
                break
        if tried:
            parts = []
            if bad:
                parts.append(
                    f"{sorted(bad)} could not be loaded (each was truncated, corrupt or incomplete; the "
                    f"warnings above say why)"
                )
            if gone:
                parts.append(
                    f"{sorted(gone)} were deleted by the trainer writing this workdir while being read, and "
                    f"no newer one could be read either (run again, or keep more with "
                    f"config.training.keep_checkpoints)"
                )
            raise CorruptCheckpointError(f"no checkpoint in {self.directory} could be loaded: " + "; ".join(parts))
        return None

    def _move_aside(self, steps):
        """Renames unreadable checkpoints newer than the restored one so the run can save those steps again."""
        if not steps or self.read_only or jax.process_index() != 0:
            return
        for step in steps:
            src = os.path.join(self.directory, str(step))
            dst = os.path.join(self.directory, f"corrupt_{step}")
            if os.path.exists(dst):
                dst = f"{dst}_{os.getpid()}"
            os.rename(src, dst)
            log.warning("moved unreadable checkpoint %s aside to %s", src, dst)
        self.manager.reload()

    def check(self) -> None:
        """Raises at once if a background save has failed (cheap; the training loop calls it every step).

        Raises:
            CheckpointSaveError: a save failed.
        """
        if self.manager is None or self.read_only:
            return
        try:
            self.manager.check_for_errors()
        except Exception as e:  # noqa: BLE001
            raise CheckpointSaveError(self._save_failure(-1, e)) from e

    def wait(self):
        """Blocks until pending saves finish.

        Raises:
            CheckpointSaveError: a save failed.
        """
        if self.manager is None or self.read_only:
            return
        try:
            self.manager.wait_until_finished()
            self.manager.check_for_errors()
        except Exception as e:  # noqa: BLE001
            raise CheckpointSaveError(self._save_failure(-1, e)) from e

    def close(self):
        """Waits for pending saves, closes the manager and releases the lock; never raises.

        A failed save is only logged here, so closing in a ``finally`` does not mask the original error.
        """
        try:
            if self.manager is not None:
                if not self.read_only:
                    try:
                        self.wait()
                    except CheckpointSaveError as e:
                        log.error("%s", e)
                self.manager.close()
        except Exception as e:  # noqa: BLE001
            log.error("closing %s: %s: %s", self.directory, type(e).__name__, e)
        finally:
            self._release()

    def _release(self):
        if self._lock is not None:
            self._lock.release()
            self._lock = None


class CheckpointSaveError(OSError):
    """Writing a checkpoint failed (what, where, and the last complete step are in the message)."""


def save_model_checkpoint(workdir: str, *, params, ema_params, step: int, config) -> None:
    """Writes a model-only checkpoint (no optimiser state) that every mode can load.

    Args:
        workdir: run directory.
        params, ema_params: ``nnx.State`` or pure-dict pytrees of the network's parameters.
        step: the training step to record.
        config: the config of the model (stored as JSON).
    """
    ckpt = Checkpointer(workdir, max_to_keep=None, async_save=False)
    try:
        ckpt.save(
            step,
            params=params,
            ema_params=ema_params,
            meta={"nonfinite_total": 0, "nonfinite_run": 0, "model_only": True},
            config=config,
        )
    finally:
        ckpt.close()


def restore_params(directory: str, model, *, ema: bool, what: str):
    """Loads the newest checkpoint of ``directory`` into ``model``'s parameters; returns ``(model, step)``."""
    graphdef, state, rest = nnx.split(model, nnx.Param, ...)
    target = nnx.to_pure_dict(state)
    ckpt = Checkpointer(directory, read_only=True)  # never touches a live trainer's files
    try:
        restored = ckpt.restore_latest(params=None if ema else target, ema_params=target if ema else None)
    finally:
        ckpt.close()
    if restored is None:
        if what == "classifier":
            raise FileNotFoundError(f"no classifier checkpoint in {directory}; train one with --mode=train_classifier")
        raise FileNotFoundError(f"no checkpoint found in {checkpoint_dir(directory)}; train first or import one")
    nnx.replace_by_pure_dict(state, restored["ema_params" if ema else "params"])
    return nnx.merge(graphdef, state, rest), int(restored["meta"]["step"])
