"""``python -m scoresde.bench`` prints one JSON line with the documented fields (synthetic data)."""

import json
import os
import subprocess
import sys

from conftest import cli_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = {
    "device",
    "config",
    "batch",
    "dtype",
    "compile_s",
    "median_step_s",
    "img_per_s",
    "peak_memory_gib",
    "peak_memory_source",
    "gflop_per_img",
    "forward_gflop_per_img",
    "mfu",
}


def test_bench_prints_one_json_line():
    env = cli_env()
    out = {}
    for what in ("train", "nfe"):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "scoresde.bench",
                "--config=configs/toy2d_vp.py:smoke",
                f"--what={what}",
                "--batch_size=32",
                "--steps=3",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
        assert len(lines) == 1
        out[what] = json.loads(lines[0])
    for what, rec in out.items():
        assert FIELDS <= set(rec)
        assert rec["batch"] == 32 and rec["what"] == what and rec["config"] == "configs/toy2d_vp.py:smoke"
        assert (
            rec["median_step_s"] > 0 and abs(rec["img_per_s"] - 32 / rec["median_step_s"]) < 1e-3 * rec["img_per_s"] + 1
        )
        assert rec["compile_s"] > 0
        assert rec["mfu"] is None  # no peak FLOP/s for a CPU
        assert rec["peak_memory_source"] == "host_max_rss" and rec["peak_memory_gib"] > 0.05  # a JAX process
        assert rec["gflop_per_img"] > 0 and rec["forward_gflop_per_img"] > 0
    # The train step (forward, backward ~2x forward, Adam, EMA) costs more than one forward pass but less
    # than 5 of them; the nfe record's timed program is the forward pass itself.
    assert out["nfe"]["gflop_per_img"] == out["nfe"]["forward_gflop_per_img"]
    assert abs(out["train"]["forward_gflop_per_img"] / out["nfe"]["forward_gflop_per_img"] - 1) < 0.05
    assert (
        2 * out["train"]["forward_gflop_per_img"]
        < out["train"]["gflop_per_img"]
        < 5 * out["train"]["forward_gflop_per_img"]
    )


def test_peak_flops_table():
    from scoresde.bench import peak_flops

    assert peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
    assert peak_flops("NVIDIA H200", "float32") == 67e12
    assert peak_flops("NVIDIA A100-SXM4-80GB", "bfloat16") == 312e12
    assert peak_flops("TPU v5 lite", "bfloat16") == 197e12
    assert peak_flops("NVIDIA H100 PCIe", "bfloat16") is None  # a different card: unknown, not H100 SXM
    assert peak_flops("cpu", "float32") is None


def test_bench_likelihood_record():
    """The likelihood record times the whole solve, counts its NFE and carries the AOT compile seconds (the
    sample record is the same code with the sampler as the program)."""
    from scoresde import bench
    from scoresde.build import load_config

    config = load_config(os.path.join(REPO, "configs/toy2d_vp.py") + ":smoke")
    rec = bench.run(config, what="likelihood", batch_size=8, steps=1)
    assert rec["what"] == "likelihood" and rec["compile_s"] > 0 and rec["median_step_s"] > 0
    assert rec["load_avg_1m"] >= 0 and 0 < rec["lower_s"] <= rec["compile_s"] and rec["compile_cpu_s"] > 0
    assert rec["nfe"] > 6  # an adaptive Tsit5 solve: the first evaluation, then 6 new ones per step
