"""Run logging: ``workdir/metrics.jsonl`` (a contract other tools read), TensorBoard, and what the CLI tells its user.

``metrics.jsonl`` holds one JSON object per logged step with at least ``step`` and ``loss`` (training
also writes ``grad_norm``, ``lr``, ``steps_per_sec``, ``img_per_sec``, ``nonfinite_total``; evaluation
steps write ``eval_loss``). Only process 0 writes. On resume, lines past the restored step are dropped
so the file reads like one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import sys
import threading

import numpy as np

__all__ = [
    "MetricsLogger",
    "read_metrics",
    "announce",
    "conclude",
    "set_config_spec",
    "command",
    "latent_command",
    "is_library_log",
]

_INVOCATION = {"config": None, "overrides": ()}


class MetricsLogger:
    """Appends metrics to ``workdir/metrics.jsonl`` and TensorBoard event files in ``workdir``.

    Args:
        workdir: run directory.
        enabled: write anything at all (False on processes other than 0).
        tensorboard: also write TensorBoard events (tensorboardX).
    """

    def __init__(self, workdir: str, *, enabled: bool = True, tensorboard: bool = True):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.enabled = enabled
        self._tb = None
        if enabled and tensorboard:
            from tensorboardX import SummaryWriter  # noqa: PLC0415  (optional, only with TensorBoard on)

            self._tb = SummaryWriter(logdir=workdir, flush_secs=30)

    def truncate_after(self, step: int) -> None:
        """Drops records with ``step > step`` (written after the checkpoint a run resumes from)."""
        if not self.enabled or not os.path.exists(self.path):
            return
        with open(self.path) as f:
            lines = [ln for ln in f if ln.strip()]
        keep = []
        for ln in lines:
            try:
                if json.loads(ln).get("step", 0) <= step:
                    keep.append(ln)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
        with open(self.path, "w") as f:
            f.writelines(keep)

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"step": int(step)}
        for k, v in metrics.items():
            v = np.asarray(v).item() if np.ndim(v) == 0 else v
            record[k] = v if not isinstance(v, float) or math.isfinite(v) else str(v)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, int(step))

    def image(self, tag: str, step: int, grid_uint8: np.ndarray) -> None:
        if self._tb is not None:
            self._tb.add_image(tag, grid_uint8, int(step), dataformats="HWC")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
    """All records of ``workdir/metrics.jsonl``."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(ln) for ln in f if ln.strip()]


def _enabled() -> bool:
    import jax  # noqa: PLC0415  (jax is imported by every caller anyway; keeps this module light)

    return jax.process_index() == 0


def announce(title: str, facts: dict) -> None:
    """Prints the short block a run starts with: ``title`` then one ``name: value`` line per fact (process 0).

    ``None`` values are left out, so callers can pass optional facts (``resuming from step``) as they are.
    """
    if not _enabled():
        return
    facts = {"config": _INVOCATION["config"], **facts}
    lines = [title] + [f"  {k:<10} {v}" for k, v in facts.items() if v is not None]
    print("\n".join(lines), file=sys.stderr, flush=True)


def conclude(done: str, *, results: dict | None = None, next_command: str | None = None) -> None:
    """Prints how a run ended: what was done, where its outputs are, and what to run next (process 0)."""
    if not _enabled():
        return
    parts = [done]
    for k, v in (results or {}).items():
        if v is not None:
            parts.append(f"{k}: {v}")
    print("; ".join(parts), file=sys.stderr, flush=True)
    if next_command:
        print(f"next: {next_command}", file=sys.stderr, flush=True)


def set_config_spec(spec: str | None, overrides=()) -> None:
    """Remembers this invocation's ``--config`` argument and its ``--config.FIELD=VALUE`` overrides, so that the
    commands a closing line suggests run on the same model."""
    _INVOCATION["config"], _INVOCATION["overrides"] = spec, tuple(overrides)


def command(mode: str, workdir: str, extra: str = "") -> str:
    """The CLI command that runs ``mode`` on ``workdir`` with this invocation's config and overrides (an override
    that ``extra`` sets again is replaced), each argument shell-quoted."""
    extra_args = shlex.split(extra)
    replaced = {a.split("=", 1)[0] for a in extra_args}
    kept = [o for o in _INVOCATION["overrides"] if o.split("=", 1)[0] not in replaced]
    config = _INVOCATION["config"] or "CONFIG"
    args = ["python", "-m", "scoresde.main", f"--config={config}", f"--workdir={workdir}", f"--mode={mode}"]
    return shlex.join([*args, *kept, *extra_args])


def latent_command(autoencoder_workdir: str) -> str | None:
    """The command that trains stage 2 of latent diffusion on the autoencoder in ``autoencoder_workdir``: the
    latent config next to this invocation's autoencoder config (``name_ae.py`` -> ``name_ldm.py``, same
    variant) into a workdir named alike (``runs/x_ae`` -> ``runs/x_ldm``), or ``None`` when there is no such
    config (a closing line suggests only what can be run).
    """
    spec = _INVOCATION["config"]
    path, _, variant = (spec or "").partition(":")
    stem, ext = os.path.splitext(path)
    if not stem.endswith("_ae") or not os.path.isfile(stem[:-3] + "_ldm" + ext):
        return None
    latent_spec = stem[:-3] + "_ldm" + ext + (f":{variant}" if variant else "")
    base = autoencoder_workdir.rstrip("/")
    workdir = base[:-3] + "_ldm" if base.endswith("_ae") else base + "_ldm"
    return (
        f"python -m scoresde.main --config={latent_spec} --workdir={workdir} "
        f"--config.latent.autoencoder_workdir={autoencoder_workdir}"
    )


# A library's log line: absl / glog ("I1207 05:12:34.567890  1234 file.py:255] ...") or TensorFlow's
# ("2026-12-07 05:12:34.567890: I tensorflow/...").
_LIBRARY_LOG = re.compile(
    r"^(?P<level>[IWEF])\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ (?P<file>[^:\s]+):\d+\]"
    r"|^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: (?P<tf_level>[IWEF]) "
)
# The rest of XLA's "Very slow compile? If you want to file a bug..." banner, which follows a glog line.
_XLA_BANNER = re.compile(r"^\*{8,}$|Very slow compile\?|^\[Compiling module |The operation took ")


def is_library_log(line: str) -> bool:
    """Whether ``line`` is for the log file rather than the terminal: a library's INFO line, any log line from
    compiled code (XLA, TensorFlow), or XLA's slow-compile banner. Python WARNING and ERROR lines stay visible.
    """
    match = _LIBRARY_LOG.match(line)
    if match is None:
        return bool(_XLA_BANNER.search(line))
    if match.group("tf_level"):
        return True
    return match.group("level") == "I" or not match.group("file").endswith(".py")


class QuietStderr:
    """Keeps the terminal for the run's own lines while the run lasts: file descriptor 2 becomes a pipe through a
    filter, so every writer (Python, absl, XLA's C++) goes through it. Two kinds of line are held back:

    - library log lines (:func:`is_library_log`) go to ``log_path`` (appended; held in memory until the
      workdir exists, so a run that fails before creating it leaves nothing behind);
    - the "RuntimeError: Event loop is closed" tracebacks tensorstore prints from C++ threads after a failed
      asynchronous checkpoint write (dozens, interleaved) are dropped, at Python's unraisable hook and on fd 2.

    Every other line passes through, progress bars included. Used by the CLI only; :meth:`flush` restores the
    real stderr and waits until what was written is out.

    Args:
        log_path: the file for library log lines; ``None`` drops them.
    """

    # a line made only of these pieces (threads interleave them) is that noise
    _NOISE = re.compile(
        r"Traceback \(most recent call last\):|\s*File \"[^\"]*asyncio/base_events\.py\", line \d+, "
        r"in \w+|\s*self\._check_closed\(\)|\s*raise RuntimeError\('Event loop is closed'\)|"
        r"RuntimeError: Event loop is closed|RuntimeError|: Event loop is closed"
    )

    def __init__(self, log_path: str | None = None):
        self._thread = None
        self._log_path = log_path
        self._log_lines = []  # library log lines not yet in the file
        # The same noise also reaches Python's unraisable hook (a callback on a closed event loop, run from a
        # C++ thread). Caught there it never reaches the file at all, even after :meth:`flush` restored it.
        self._hook = sys.unraisablehook
        sys.unraisablehook = self._unraisable
        sys.stderr.flush()
        self._saved = os.dup(2)
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        self._read = read
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _unraisable(self, unraisable):
        exc = unraisable.exc_value
        if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
            return
        self._hook(unraisable)

    def _pump(self):
        pending = ""
        while chunk := os.read(self._read, 65536):
            pending += chunk.decode(errors="replace")
            *lines, pending = pending.split("\n")
            out = []
            for ln in lines:
                if is_library_log(ln):
                    self._log_lines.append(ln + "\n")
                elif ln.strip() == "" or self._NOISE.sub("", ln).strip():
                    out.append(ln + "\n")
            self._write_log()
            if "\r" in pending:  # a progress bar redraws with \r: show all of it now, not at its next redraw
                out.append(pending)
                pending = ""
            if out:
                os.write(self._saved, "".join(out).encode())
        if pending:
            os.write(self._saved, pending.encode())

    def _write_log(self, final: bool = False):
        """Appends the held library log lines to the log file once its folder exists (at the end: if it does)."""
        if not self._log_lines or self._log_path is None:
            self._log_lines = [] if self._log_path is None else self._log_lines
            return
        if os.path.isdir(os.path.dirname(self._log_path) or "."):
            with open(self._log_path, "a") as f:
                f.writelines(self._log_lines)
            self._log_lines = []
        elif final:
            self._log_lines = []

    def flush(self):
        """Restores the real stderr and waits for everything written so far to come out."""
        if self._thread is None:
            return
        sys.stderr.flush()
        os.dup2(self._saved, 2)  # drops fd 2's hold on the pipe: the pump reads to the end and stops
        self._thread.join(timeout=5)
        self._thread = None
        self._write_log(final=True)
