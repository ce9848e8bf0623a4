"""Command line: ``python -m scoresde.main --config=PATH[:variant] --workdir=DIR [--mode=train]``.

The entry point is thin: it parses flags, optionally joins a multi-host job, and dispatches to a mode
function ``fn(config, workdir)`` of :mod:`scoresde.modes`, named in :data:`MODES` and imported only when
chosen (a mode's dependencies load only for that mode).

The command line is checked before anything runs (:func:`check_command_line`): a mistake ends in one
``error:`` line naming the value, what was expected and the nearest valid choice, exit status 2, with nothing
written. A run that fails later prints one line for errors that explain themselves and removes what a failed
start left (empty directories, the log). Library log lines (absl INFO, XLA's compiler messages) go to
``workdir/log.txt``, not to the terminal.

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

import ast
import difflib
import importlib
import logging
import os
import re
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
    "train_prior": "scoresde.modes.train_prior:train_prior",
    "train_autoencoder": "scoresde.modes.train_autoencoder:train_autoencoder",  # latent diffusion, stage 1
    "train_clip": "scoresde.modes.train_clip:train_clip",  # CLIP / noised CLIP from scratch on captioned digits
    "distill": "scoresde.modes.distill:distill",  # cd | ct | pd few-step students (config.distill.method)
    "reflow": "scoresde.modes.reflow:reflow_mode",  # couplings of a trained flow, then the next flow on them
    "posthoc_ema": "scoresde.modes.posthoc_ema:posthoc_ema_mode",  # EDM2: any EMA length from stored profiles
}

# what a run reports as one line (the message names the problem and the fix)
_EXPLAINED_ERRORS = (ValueError, OSError, RuntimeError, ModuleNotFoundError)

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally PATH:variant (e.g. configs/cifar10_vp.py:smoke).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics.jsonl, TensorBoard, samples).")
flags.DEFINE_string("mode", "train", f"One of: {', '.join(MODES)}.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host runs).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host; auto-detected if unset).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host; auto-detected if unset).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-host; auto-detected if unset).")
flags.DEFINE_string("cpu_collectives", None, "CPU cross-process collectives, e.g. 'gloo' (multi-process on CPU).")


def _did_you_mean(value: str, choices) -> str:
    """``"; did you mean X?"`` for the choice nearest to ``value`` (difflib), or ``""`` when none is near."""
    near = difflib.get_close_matches(value, list(choices), n=1)
    return f"; did you mean {near[0]}?" if near else ""


def resolve_mode(mode: str):
    """The function of a mode name.

    Raises:
        ValueError: unknown mode, or a mode whose module is not available.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of: {', '.join(MODES)}{_did_you_mean(mode, MODES)}")
    module_name, fn_name = MODES[mode].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise ValueError(
                f"mode {mode!r} needs module {module_name}, which is not available in this installation yet"
            ) from e
        raise
    if not hasattr(module, fn_name):
        raise ValueError(f"mode {mode!r}: {module_name} has no function {fn_name!r}")
    return getattr(module, fn_name)


def run(config, workdir: str, mode: str = "train"):
    """Runs a mode programmatically (what the CLI does after parsing), with the defaults applied to ``config``."""
    return resolve_mode(mode)(config_defaults.with_defaults(config), workdir)


def _config_spec() -> str | None:
    """The ``--config`` argument as given (``path.py[:variant]``), for the commands the run suggests next."""
    value, following = _flag_values(sys.argv).get("config", (None, None))
    return value or following


def _config_overrides() -> tuple[str, ...]:
    """The ``--config.FIELD=VALUE`` overrides as given, so the commands the run suggests next reproduce it."""
    out, argv = [], sys.argv[1:]
    for i, a in enumerate(argv):
        if a.startswith("--config."):
            joined = "=" in a or i + 1 >= len(argv) or argv[i + 1].startswith("--")
            out.append(a if joined else f"{a}={argv[i + 1]}")
    return tuple(out)


class CommandLineError(ValueError):
    """A command line that cannot start a run; its message is the whole report."""


def _flag_values(argv) -> dict:
    """``{name: (value, following)}`` of the flags of ``argv`` (the last one wins): ``value`` of ``--name=value``
    (else ``None``) and, for ``--name value``, the argument after it (absl takes it unless the flag is a bool)."""
    values = {}
    args = list(argv[1:])
    for i, arg in enumerate(args):
        if not arg.startswith("--"):
            continue
        name, eq, value = arg[2:].partition("=")
        nxt = args[i + 1] if not eq and i + 1 < len(args) and not args[i + 1].startswith("-") else None
        values[name] = (value if eq else None, nxt)
    return values


def _leaf_fields(config, prefix: str = "") -> list[str]:
    out = []
    for k, v in config.items():
        if hasattr(v, "items"):
            out += _leaf_fields(v, f"{prefix}{k}.")
        out.append(f"{prefix}{k}")
    return out


_BOOLS = {"true": True, "t": True, "1": True, "false": False, "f": False, "0": False}


def _check_value(field: str, value: str | None, current) -> None:
    """Raises :class:`CommandLineError` when ``value`` cannot be parsed as the type of the field's current value."""
    if value is None:  # a bare --config.a.b sets a bool field to True; absl checks the rest
        if not isinstance(current, bool):
            raise CommandLineError(f"config field {field} needs a value: --config.{field}=VALUE (now {current!r})")
        return
    expected, ok = None, True
    if isinstance(current, bool):
        expected, ok = "True or False", value.lower() in _BOOLS
    elif isinstance(current, int):
        expected = "an integer"
        try:
            int(value)
        except ValueError:
            ok = False
    elif isinstance(current, float):
        expected = "a number"
        try:
            float(value)
        except ValueError:
            ok = False
    elif isinstance(current, (tuple, list)):
        expected = "a tuple such as (1, 2)"
        try:
            ok = isinstance(ast.literal_eval(value), (tuple, list, int, float))
        except (ValueError, SyntaxError):
            ok = False
    if not ok:
        raise CommandLineError(f"bad value {value!r} for config field {field}; expected {expected} (now {current!r})")


def check_command_line(argv) -> None:
    """Checks what a command line names before anything runs or is written: the mode, the config file and its
    variant, every ``--config.*`` field and the type of its value, and that ``--workdir`` is given.

    Raises:
        CommandLineError: one line naming the bad value, what was expected and the nearest valid choice.
    """
    flag_values = _flag_values(argv)
    values = {name: value if value is not None else following for name, (value, following) in flag_values.items()}
    mode = values.get("mode") or "train"
    if mode not in MODES:
        raise CommandLineError(
            f"unknown mode {mode!r}; expected one of: {', '.join(MODES)}{_did_you_mean(mode, MODES)}"
        )
    spec = values.get("config")
    if not spec:
        raise CommandLineError(
            "no --config given; expected --config=PATH[:variant], e.g. --config=configs/digits_vp.py"
        )
    if not values.get("workdir"):
        raise CommandLineError("no --workdir given; expected --workdir=DIR, the run directory")
    path, _, variant = spec.partition(":")
    if not os.path.isfile(path):
        folder = os.path.dirname(path)
        known = [f for f in os.listdir(folder or ".") if f.endswith(".py")] if os.path.isdir(folder or ".") else []
        near = difflib.get_close_matches(os.path.basename(path), known, n=1)
        hint = f"; did you mean {os.path.join(folder, near[0])}?" if near else ""
        raise CommandLineError(f"no config file {path!r}; expected a .py file with get_config(){hint}")
    module = config_defaults.load_module(path)
    if not hasattr(module, "get_config"):
        raise CommandLineError(f"config file {path!r} defines no get_config()")
    try:
        config = module.get_config(variant) if variant else module.get_config()
    except ValueError as e:  # an unknown variant names itself
        raise CommandLineError(str(e)) from e
    fields = _leaf_fields(config)
    for name, value in values.items():
        if not name.startswith("config."):
            continue
        field = name[len("config.") :]
        if field not in fields:
            raise CommandLineError(
                f"unknown config field {field}{_did_you_mean(field, fields)}"
                if _did_you_mean(field, fields)
                else f"unknown config field {field}; expected a field of {path} "
                f"(top-level names: {', '.join(k for k in config)})"
            )
        current = config
        for part in field.split("."):
            current = current[part]
        if hasattr(current, "items"):
            raise CommandLineError(
                f"config field {field} is a section; expected one of its fields, e.g. "
                f"{field}.{next(iter(current), 'NAME')}"
            )
        if isinstance(current, bool):  # a bare bool flag takes no following argument
            value = flag_values[name][0]
        _check_value(field, value, current)


def _parse_flags(argv):
    """absl's flag parsing, with the one-line report of :func:`_fail_command_line` for whatever it rejects."""
    try:
        if not any(a.split("=")[0] in ("--help", "--helpshort", "--helpfull", "-h", "-?") for a in argv[1:]):
            check_command_line(argv)
        return FLAGS(argv)
    except CommandLineError as e:
        _fail_command_line(str(e))
    except (flags.Error, ValueError, AttributeError, KeyError) as e:
        # absl and ml_collections wrap their reasons in several layers of quoting and newlines
        _fail_command_line(" ".join(str(e).replace("\\n", " ").split()))


def _fail_command_line(message: str) -> None:
    """A command line that cannot start: one line, exit status 2 (a usage error), nothing written."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


class _WorkdirGuard:
    """Undoes what a run that fails at its start left in the workdir: directories it created that are still
    empty, and the log file when nothing else remains. Anything with a file in it stays.
    """

    def __init__(self, workdir: str, log_name: str):
        self.workdir, self.log_name = workdir, log_name
        self.existed = os.path.isdir(workdir)

    def undo(self) -> None:
        # An existing workdir may belong to a run that is writing right now (a second trainer refused by its
        # lock): nothing in it is touched. Only a workdir this run created is cleaned up.
        if self.existed or not os.path.isdir(self.workdir):
            return
        try:
            for d, _, _ in sorted(os.walk(self.workdir), key=lambda w: -len(w[0])):  # deepest first
                if d != self.workdir and not os.listdir(d):
                    os.rmdir(d)
            if os.listdir(self.workdir) in ([], [self.log_name]):
                log = os.path.join(self.workdir, self.log_name)
                if os.path.exists(log):
                    os.remove(log)
                os.rmdir(self.workdir)
        except OSError:  # something else appeared meanwhile: it stays
            pass


def _log_name() -> str:
    """Where this process's library log lines go, inside the workdir, in a multi-process run."""
    import jax  # noqa: PLC0415  (already imported by the modes; after multi-host init on purpose)

    return "log.txt" if jax.process_index() == 0 else f"log.{jax.process_index()}.txt"


def main(argv):
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax / JAX INFO logs drown the run's own
    # Orbax's own log lines are internal detail: partial restores ("found but could not be restored"),
    # read-only managers, and after a failed background write every failing thread's traceback (hundreds of
    # lines). The run reports what matters itself (Checkpointer's skips and its one-line save failure).
    absl_logging.get_absl_handler().addFilter(lambda record: "/orbax/" not in record.pathname)
    logging.getLogger("scoresde").setLevel(logging.INFO)
    if FLAGS.distributed or FLAGS.coordinator_address:
        parallel.initialize_distributed(
            FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id, FLAGS.cpu_collectives
        )
    log_name = _log_name() if FLAGS.distributed or FLAGS.coordinator_address else "log.txt"
    guard = _WorkdirGuard(FLAGS.workdir, log_name)
    quiet = runlog.QuietStderr(log_path=os.path.join(FLAGS.workdir, log_name))
    try:
        fn = resolve_mode(FLAGS.mode)
        runlog.set_config_spec(_config_spec(), _config_overrides())
        compilation.enable_compilation_cache()  # a restarted run does not compile again
        result = fn(config_defaults.with_defaults(FLAGS.config), FLAGS.workdir)
    except Exception as e:  # noqa: BLE001  (every failure ends the same way: one message, a non-zero exit)
        _fail(e, quiet, guard)
    finally:
        quiet.flush()
    if isinstance(result, dict) and result.get("preempted"):
        sys.exit(143)  # 128 + SIGTERM: stopped early, checkpoint written; rerun to resume


# "unknown sde 'vpp'; expected one of: vpsde, subvpsde" -> the value and the choices, for a suggestion
_UNKNOWN_CHOICE = re.compile(r"unknown [\w ]+ '([^']+)'; expected one of: ([^;()]+?)(?:[;(]|$)")


def explain(e: BaseException) -> str:
    """The one-line report of an error that explains itself, with the nearest valid choice when it names a
    choice among several and does not suggest one already."""
    message = str(e)
    match = _UNKNOWN_CHOICE.search(message)
    if match and "did you mean" not in message:
        choices = [c.strip() for c in match.group(2).split(",")]
        message += _did_you_mean(match.group(1), choices)
    return message


def _fail(e: BaseException, quiet: runlog.QuietStderr, guard: _WorkdirGuard) -> None:
    """Reports a failed run and exits 1 at once.

    Errors that explain themselves (bad config or data, storage, locks, mismatched checkpoints) print one
    line; anything else prints its traceback. What a failed start created in the workdir (empty directories,
    the log) is removed. ``os._exit`` because a failed asynchronous checkpoint write can leave non-daemon
    threads that would otherwise keep the process alive.
    """
    if isinstance(e, _EXPLAINED_ERRORS):
        print(f"\nerror: {explain(e)}", file=sys.stderr)  # on a line of its own, whatever a progress bar left
    else:
        traceback.print_exception(e)
    sys.stdout.flush()
    quiet.flush()  # the message goes out through the noise filter; then wait until it is out
    guard.undo()
    os._exit(1)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
