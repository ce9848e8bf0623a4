"""benchmarks/readme_timings.py --smoke runs every README figure's command on tiny variants and reports them."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, cli_env

FIGURES = {
    "train_digits",
    "likelihood_digits",
    "distill_digits",
    "latent_digits_autoencoder",
    "latent_digits_score_model",
    "latent_digits",
    "flow_matching_digits",
    "reflow_digits",
}


# Seven CLI runs end to end (about a minute on an idle machine): the default suite stays within its budget.
@pytest.mark.slow
def test_smoke_measures_every_figure_with_the_machine(tmp_path):
    env = cli_env()
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", "readme_timings.py"), "--smoke", f"--root={tmp_path}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("machine: ") and "cores" in lines[0] and "load average" in lines[0]
    report = json.loads(lines[-1])
    assert set(report["seconds"]) == FIGURES and all(s > 0 for s in report["seconds"].values())
    assert report["smoke"] is True and report["machine"]["cores"] == os.cpu_count()
    assert len(report["machine"]["load_average"]) == 3 and report["machine"]["cpu"]
    for name in FIGURES - {"latent_digits"}:  # each figure names the command it timed
        assert any(ln.startswith(f"{name}: ") and "python -m scoresde.main --config=configs/" in ln for ln in lines)
    assert os.path.isdir(tmp_path / "digits" / "checkpoints")  # the runs went where they were told
