"""``python -m scoresde.bench`` prints one JSON line with the documented fields (synthetic data)."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = {"device", "config", "batch", "dtype", "compile_s", "median_step_s", "img_per_s", "peak_memory_gib"}


def test_bench_prints_one_json_line():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = {}
    for what in ("train", "nfe"):
        proc = subprocess.run([sys.executable, "-m", "scoresde.bench", "--config=configs/toy2d_vp.py:smoke",
                               f"--what={what}", "--batch_size=32", "--steps=3"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
        assert len(lines) == 1
        out[what] = json.loads(lines[0])
    for what, rec in out.items():
        assert FIELDS <= set(rec)
        assert rec["batch"] == 32 and rec["what"] == what and rec["config"] == "configs/toy2d_vp.py:smoke"
        assert rec["median_step_s"] > 0 and abs(rec["img_per_s"] - 32 / rec["median_step_s"]) < 1e-3 * rec["img_per_s"] + 1
