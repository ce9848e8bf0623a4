"""What the CLI shows its user: library log lines go to the workdir's log, closing lines are runnable."""

import os
import subprocess
import sys

from scoresde import runlog

from conftest import REPO

ABSL_INFO = "I1207 05:41:26.444341 140624080427904 likelihood.py:255] bits/dim on test: 15.4488"
XLA_BANNER = [
    "E1207 05:41:26.444341   12345 slow_operation_alarm.cc:73] ",
    "********************************",
    "[Compiling module jit_step] Very slow compile? If you want to file a bug, run with envvar "
    "XLA_FLAGS=--xla_dump_to=/tmp/foo and attach the results.",
    "********************************",
]


def test_library_log_lines_are_told_apart_from_the_runs_own():
    assert runlog.is_library_log(ABSL_INFO)
    assert all(runlog.is_library_log(line) for line in XLA_BANNER)
    assert runlog.is_library_log("2026-12-07 05:41:26.444341: I tensorflow/core/platform/cpu_feature_guard.cc:1] x")
    # a Python warning from the run is for the user; so are the run's own lines
    assert not runlog.is_library_log("W1207 05:41:26.444341 1406 checkpointing.py:80] skipping checkpoint 7")
    assert not runlog.is_library_log("  steps      2 at batch 64")
    assert not runlog.is_library_log("error: unknown sde 'vpp'")


QUIET = """
import os, sys
from scoresde import runlog
quiet = runlog.QuietStderr(log_path=sys.argv[1])
for line in sys.argv[2:]:
    os.write(2, (line + "\\n").encode())
quiet.flush()
"""


def test_quiet_stderr_sends_library_lines_to_the_log_once_the_workdir_exists(tmp_path):
    lines = ["scoresde sample: 4 samples", ABSL_INFO, *XLA_BANNER, "wrote 4 samples"]
    env = {**os.environ, "PYTHONPATH": REPO}
    log = tmp_path / "log.txt"
    proc = subprocess.run(
        [sys.executable, "-c", QUIET, str(log), *lines], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.stderr.splitlines() == ["scoresde sample: 4 samples", "wrote 4 samples"]
    assert log.read_text().splitlines() == [ABSL_INFO, *XLA_BANNER]
    # no workdir: nothing is created for the log
    missing = tmp_path / "not_created" / "log.txt"
    proc = subprocess.run(
        [sys.executable, "-c", QUIET, str(missing), ABSL_INFO], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.stderr == "" and not missing.parent.exists()


def test_the_latent_stage_command_is_real(tmp_path):
    runlog.set_config_spec("configs/digits_ae.py:smoke")
    old = os.getcwd()
    os.chdir(REPO)
    try:
        assert runlog.latent_command("runs/digits_ae") == (
            "python -m scoresde.main --config=configs/digits_ldm.py:smoke --workdir=runs/digits_ldm "
            "--config.latent.autoencoder_workdir=runs/digits_ae"
        )
        runlog.set_config_spec("configs/digits_vp.py")  # not an autoencoder config: nothing to suggest
        assert runlog.latent_command("runs/x") is None
    finally:
        os.chdir(old)
        runlog.set_config_spec(None)


def test_the_suggested_command_keeps_the_runs_overrides_and_quotes_paths():
    """A ``beta_max=5`` model must be sampled as ``beta_max=5``: the next command carries every override."""
    saved = dict(runlog._INVOCATION)
    try:
        runlog.set_config_spec("configs/toy2d_vp.py:smoke", ("--config.model.beta_max=5", "--config.sampling.steps=7"))
        cmd = runlog.command("sample", "runs/my run", "--config.sampling.steps=3")
        assert cmd == (
            "python -m scoresde.main --config=configs/toy2d_vp.py:smoke '--workdir=runs/my run' --mode=sample "
            "--config.model.beta_max=5 --config.sampling.steps=3"
        )
    finally:
        runlog._INVOCATION.update(saved)


def test_the_overrides_are_read_from_the_command_line(monkeypatch):
    from scoresde import main  # noqa: PLC0415  (absl flags are defined on import)

    argv = ["main", "--config=configs/toy2d_vp.py", "--config.model.beta_max", "5", "--config.training.n_iters=3"]
    monkeypatch.setattr(sys, "argv", argv)
    assert main._config_overrides() == ("--config.model.beta_max=5", "--config.training.n_iters=3")
