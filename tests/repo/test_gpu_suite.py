"""benchmarks/gpu_suite.py --smoke runs on CPU and prints one well-formed JSON line per figure."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, cli_env

COMMON = {"figure", "device", "backend", "smoke", "peak_memory_gib", "peak_memory_source"}
KEYS = {
    "train": COMMON
    | {
        "dtype",
        "batch",
        "params",
        "compile_s",
        "median_step_s",
        "img_per_s",
        "gflop_per_img",
        "mfu",
        "program_memory_gib",
    },
    "eval": COMMON | {"dtype", "batch", "compile_s", "ms_per_nfe", "img_nfe_per_s", "gflop_per_img"},
    "sampler": COMMON
    | {"method", "batch", "nfe", "compile_s", "ms_per_nfe", "bare_loop_ms_per_nfe", "overhead_pct", "img_per_s"},
    "likelihood": COMMON
    | {"mode", "batch", "nfe_mean", "nfe_max", "compile_s", "img_per_s", "ms_per_nfe", "solved_fraction"},
    "total": {"figure", "device", "backend", "smoke", "wall_s", "jax", "python", "pid"},
}


def _run(*args):
    env = cli_env()
    env["PYTHONPATH"] = REPO
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", "gpu_suite.py"), "--smoke", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.strip()]
    for rec in lines:
        keys = KEYS[rec["figure"]]
        assert keys <= set(rec), (rec["figure"], keys - set(rec))
        assert rec["smoke"] is True and rec["backend"] == "cpu"
    return lines


KEYS["jvp"] = COMMON | {"kind", "dtype", "batch", "compile_s", "median_step_s", "vs_dsm", "program_memory_gib"}
KEYS["consistency"] = COMMON  # plus either "skipped" or the img/s fields, checked below
KEYS["vs_reference"] = COMMON  # skipped without the PyTorch checkouts


def _check_consistency(rec):
    from scoresde import sampling

    if "consistency" in sampling.METHODS:
        assert {"batch", "nfe", "img_per_s"} <= set(rec)
    else:
        assert "no method='consistency'" in rec["skipped"]


@pytest.mark.slow  # over 20 s on 2 cores: run with -m slow
def test_smoke_eval_and_consistency_lines():
    lines = _run("--only=eval,consistency,vs_reference")
    assert [r["figure"] for r in lines] == ["eval", "eval", "consistency", "vs_reference", "total"]
    assert "needs --reference and --dpm-solver" in lines[3]["skipped"]
    assert [r["dtype"] for r in lines[:2]] == ["float32", "bfloat16"]
    for rec in lines[:2]:
        assert rec["img_nfe_per_s"] > 0 and rec["gflop_per_img"] > 0
        assert abs(rec["img_nfe_per_s"] * rec["ms_per_nfe"] / 1e3 - rec["batch"]) < 1e-2 * rec["batch"]
    _check_consistency(lines[2])


@pytest.mark.slow
def test_smoke_suite_prints_every_figure():
    lines = _run()
    figures = [r["figure"] for r in lines]
    assert figures == [
        "train",
        "train",
        "eval",
        "eval",
        "sampler",
        "sampler",
        "likelihood",
        "likelihood",
        "jvp",
        "jvp",
        "jvp",
        "consistency",
        "vs_reference",
        "total",
    ]
    train = lines[:2]
    assert [r["dtype"] for r in train] == ["float32", "bfloat16"] and all(r["mfu"] is None for r in train)
    assert all(r["img_per_s"] > 0 and r["gflop_per_img"] > 0 and r["program_memory_gib"] > 0 for r in train)
    samplers = {r["method"]: r for r in lines[4:6]}
    assert set(samplers) == {"pc", "dpm_solver++"}
    assert samplers["pc"]["nfe"] == 4  # 4 Euler-Maruyama steps; denoising returns the last mean (no extra NFE)
    assert samplers["dpm_solver++"]["nfe"] == 4
    fixed, adaptive = lines[6:8]
    assert fixed["mode"] == "fixed_51_nfe" and fixed["nfe_max"] == fixed["nfe_mean"] == 51  # 3 + 6 * 8 steps
    assert adaptive["mode"] == "adaptive" and adaptive["solved_fraction"] == 1.0
    _check_jvp(lines[8:11])
    _check_consistency(lines[11])


def _check_jvp(lines):
    assert [r["kind"] for r in lines] == ["dsm", "sct", "meanflow"]
    assert lines[0]["vs_dsm"] == 1.0
    for rec in lines:
        assert rec["median_step_s"] > 0 and rec["program_memory_gib"] > 0
        assert abs(rec["vs_dsm"] - rec["median_step_s"] / lines[0]["median_step_s"]) < 2e-3 * rec["vs_dsm"] + 1e-3
    # the tangent's extra buffers: a JVP step's program holds more than the plain DSM step's
    assert lines[1]["program_memory_gib"] > lines[0]["program_memory_gib"]
    assert lines[2]["program_memory_gib"] > lines[0]["program_memory_gib"]


@pytest.mark.slow  # three compilations: 2.5 min on 2 busy cores, 7 min on 2 cores shared with two trainings
def test_smoke_jvp_lines():
    lines = _run("--only=jvp")
    assert [r["figure"] for r in lines] == ["jvp", "jvp", "jvp", "total"]
    _check_jvp(lines[:3])
