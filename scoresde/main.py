"""Command line: ``python -m scoresde.main --config=PATH[:variant] --workdir=DIR [--mode=train]``.

The entry point is thin: it parses flags, optionally joins a multi-host job, and dispatches to a mode
function ``fn(config, workdir)`` of :mod:`scoresde.modes`, named in :data:`MODES` and imported only when
chosen (a mode's dependencies load only for that mode).

Config overrides use ``ml_collections.config_flags`` on a locked config, e.g.
``--config.training.batch_size=64``; an unknown key is an error. Fields the config file does not set (a
reference config lacks ours) then come from :func:`scoresde.config_defaults.with_defaults`, as for
:func:`scoresde.build.load_config`.

Examples:
    python -m scoresde.main --config=configs/digits_vp.py --workdir=runs/digits
    python -m scoresde.main --config=configs/cifar10_vp.py:smoke --workdir=runs/smoke --config.training.n_iters=10
    python -m scoresde.main --config=configs/digits_vp.py --workdir=runs/digits --mode=sample
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from scoresde import compilation, config_defaults, parallel, runlog

# mode -> "module:function"; every function is fn(config, workdir).
MODES = {
    "train": "scoresde.modes.train:train",
    "eval": "scoresde.modes.evaluate:evaluate",
    "sample": "scoresde.modes.sample:sample",
    "likelihood": "scoresde.modes.likelihood:likelihood",
    "fid_stats": "scoresde.modes.fid_stats:fid_stats",
    "fid": "scoresde.modes.fid:evaluate_samples",  # FID / IS / KID of workdir/samples or of fresh samples
    "train_classifier": "scoresde.modes.train_classifier:train_classifier",
    "train_autoencoder": "scoresde.modes.train_autoencoder:train_autoencoder",  # latent diffusion, stage 1
    "distill": "scoresde.modes.distill:distill",  # cd | ct | pd few-step students (config.distill.method)
    "reflow": "scoresde.modes.reflow:reflow_mode",  # couplings of a trained flow, then the next flow on them
}

# what a run reports as one line (the message names the problem and the fix)
_EXPLAINED_ERRORS = (ValueError, OSError, RuntimeError, ModuleNotFoundError)

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, optionally PATH:variant (e.g. configs/cifar10_vp.py:smoke).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics.jsonl, TensorBoard, samples).")
flags.DEFINE_string("mode", "train", f"One of: {', '.join(MODES)}.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host runs).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host; auto-detected if unset).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host; auto-detected if unset).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-host; auto-detected if unset).")
flags.DEFINE_string("cpu_collectives", None, "CPU cross-process collectives, e.g. 'gloo' (multi-process on CPU).")


def resolve_mode(mode: str):
    """The function of a mode name.

    Raises:
        ValueError: unknown mode, or a mode whose module is not available.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of: {', '.join(MODES)}")
    module_name, fn_name = MODES[mode].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise ValueError(f"mode {mode!r} needs module {module_name}, which is not available in this "
                             f"installation yet") from e
        raise
    if not hasattr(module, fn_name):
        raise ValueError(f"mode {mode!r}: {module_name} has no function {fn_name!r}")
    return getattr(module, fn_name)


def run(config, workdir: str, mode: str = "train"):
    """Runs a mode programmatically (what the CLI does after parsing), with the defaults applied to ``config``."""
    return resolve_mode(mode)(config_defaults.with_defaults(config), workdir)


def _config_spec() -> str | None:
    """The ``--config`` argument as given (``path.py[:variant]``), for the commands the run suggests next."""
    for arg in sys.argv[1:]:
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def main(argv):
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax / JAX INFO logs drown the run's own
    # Orbax's own log lines are internal detail: partial restores ("found but could not be restored"),
    # read-only managers, and after a failed background write every failing thread's traceback (hundreds of
    # lines). The run reports what matters itself (Checkpointer's skips and its one-line save failure).
    absl_logging.get_absl_handler().addFilter(lambda record: "/orbax/" not in record.pathname)
    logging.getLogger("scoresde").setLevel(logging.INFO)
    if FLAGS.distributed or FLAGS.coordinator_address:
        parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                               FLAGS.cpu_collectives)
    fn = resolve_mode(FLAGS.mode)
    runlog.set_config_spec(_config_spec())
    compilation.enable_compilation_cache()  # a restarted run does not compile again
    quiet = runlog.QuietStderr()
    try:
        result = fn(config_defaults.with_defaults(FLAGS.config), FLAGS.workdir)
    except Exception as e:  # noqa: BLE001  (every failure ends the same way: one message, a non-zero exit)
        _fail(e, quiet)
    finally:
        quiet.flush()
    if isinstance(result, dict) and result.get("preempted"):
        sys.exit(143)  # 128 + SIGTERM: stopped early, checkpoint written; rerun to resume


def _fail(e: BaseException, quiet: runlog.QuietStderr) -> None:
    """Reports a failed run and exits 1 at once.

    Errors that explain themselves (bad config or data, storage, locks, mismatched checkpoints) print one
    line; anything else prints its traceback. ``os._exit`` because a failed asynchronous checkpoint write can
    leave non-daemon threads that would otherwise keep the process alive.
    """
    if isinstance(e, _EXPLAINED_ERRORS):
        print(f"\nerror: {e}", file=sys.stderr)  # on a line of its own, whatever a progress bar left
    else:
        traceback.print_exception(e)
    sys.stdout.flush()
    quiet.flush()  # the message goes out through the noise filter; then wait until it is out
    os._exit(1)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
