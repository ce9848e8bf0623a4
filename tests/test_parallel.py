"""Data parallelism: 1 vs 8 (fake CPU) devices and 1 vs 2 processes give the same training losses."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import cli_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable

# Trains the toy smoke config for 3 steps (batch 64) and prints the per-step losses as JSON.
SCRIPT = r"""
import json, sys
import jax
jax.config.update("jax_numpy_rank_promotion", "raise")
from scoresde import build, parallel
from scoresde.modes import train
from scoresde.runlog import read_metrics
config = build.load_config("configs/toy2d_vp.py:smoke")
config.training.n_iters = 3
config.training.snapshot_sampling = False
out = {"devices": jax.device_count()}
try:
    parallel.check_batch_size(12, parallel.make_mesh(), "config.training.batch_size")
except ValueError as e:
    out["batch_error"] = str(e)
train.train(config, sys.argv[1])
out["losses"] = [r["loss"] for r in read_metrics(sys.argv[1])]
print("RESULT " + json.dumps(out))
"""


def _run(args, env_extra=None, timeout=240):
    env = dict(os.environ, **(env_extra or {}))
    env.pop("XLA_FLAGS", None) if not env_extra or "XLA_FLAGS" not in env_extra else None
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _result(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    return _result(_run([PY, "-c", SCRIPT, str(tmp_path_factory.mktemp("one"))]))


def test_eight_devices_match_one_device(one_device, tmp_path):
    eight = _result(_run([PY, "-c", SCRIPT, str(tmp_path)], {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}))
    assert one_device["devices"] == 1 and eight["devices"] == 8
    assert len(one_device["losses"]) == 3
    np.testing.assert_allclose(eight["losses"], one_device["losses"], rtol=1e-5, atol=1e-6)
    # the update changed something (a constant loss would make the comparison vacuous)
    assert len(set(one_device["losses"])) == 3
    assert "batch_size=12 is not divisible by the number of devices (8)" in eight["batch_error"]
    assert "batch_error" not in one_device


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(one_device, tmp_path):
    port = _free_port()
    workdir = str(tmp_path / "run")
    cmd = [
        PY,
        "-m",
        "scoresde.main",
        "--config=configs/toy2d_vp.py:smoke",
        f"--workdir={workdir}",
        f"--coordinator_address=localhost:{port}",
        "--num_processes=2",
        "--cpu_collectives=gloo",
        "--config.training.n_iters=3",
        "--config.training.snapshot_sampling=False",
    ]
    env = cli_env()
    procs = [
        subprocess.Popen(
            cmd + [f"--process_id={i}"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(ln) for ln in f]
    assert [r["step"] for r in records] == [1, 2, 3]  # written once, by process 0
    np.testing.assert_allclose([r["loss"] for r in records], one_device["losses"], rtol=1e-5, atol=1e-6)
