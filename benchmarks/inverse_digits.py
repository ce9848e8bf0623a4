"""End to end: inverse problems on the test digits through the CLI, scored by the shared SVC.

For every (variant, method) it runs
``python -m scoresde.main --config=configs/digits_inverse.py:<variant> --workdir=W --mode=sample
--config.inverse.method=<method> [extra overrides]``, times it (wall and the child's user+sys CPU), reads
``W/inverse/<operator>_<method>/report.json`` and scores the restorations and the naive ``A⁺y`` with
:func:`benchmarks.digits_scorer.score_samples` against the true classes. Prints a markdown table and
writes ``W/inverse/summary.json``.

    python benchmarks/inverse_digits.py --workdir=runs/digits
    python benchmarks/inverse_digits.py --workdir=runs/digits --runs=sr4:dps,inpaint:pigdm -- --config.sampling.steps=50
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks.digits_scorer import score_samples  # noqa: E402

OPERATOR = {"sr4": "super_resolution", "inpaint": "inpainting", "deblur": "deblur"}
DEFAULT_RUNS = ("sr4:replacement,sr4:dps,sr4:pigdm,inpaint:replacement,inpaint:dps,inpaint:pigdm,"
                "deblur:dps,deblur:pigdm")


def run_one(workdir, variant, method, extra):
    cmd = [sys.executable, "-m", "scoresde.main", f"--config=configs/digits_inverse.py:{variant}",
           f"--workdir={workdir}", "--mode=sample", f"--config.inverse.method={method}", *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.time() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    out = os.path.join(workdir, "inverse", f"{OPERATOR[variant]}_{method}")
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    with np.load(os.path.join(out, "restorations.npz")) as f:
        restored, naive, labels = f["restoration"], f["measurement_pinv"], f["labels"]
    return {
        "command": "python -m scoresde.main " + " ".join(cmd[3:]), "variant": variant, "method": method,
        "psnr": report["psnr_mean"], "baseline_psnr": report["baseline_psnr_mean"], "baseline": report["baseline"],
        "accuracy": score_samples(restored, labels)["accuracy"],
        "baseline_accuracy": score_samples(naive, labels)["accuracy"], "nfe": report["nfe"], "step": report["step"],
        "sigma_y": report["sigma_y"], "scale": report["scale"], "num_images": report["num_images"],
        "sampler": report["sampler"], "sampler_options": report["sampler_options"],
        "wall_s": round(wall, 1), "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--runs", default=DEFAULT_RUNS, help="comma-separated variant:method")
    parser.add_argument("extra", nargs="*", help="config overrides passed to every run (after --)")
    args = parser.parse_args()
    rows = []
    for spec in args.runs.split(","):
        variant, method = spec.split(":")
        row = run_one(args.workdir, variant, method, args.extra)
        print(json.dumps(row), flush=True)
        rows.append(row)
    path = os.path.join(args.workdir, "inverse", "summary.json")
    with open(path, "w") as f:
        json.dump(rows, f, indent=1)
    print("\n| operator | method | PSNR (dB) | baseline PSNR | SVC acc. | baseline acc. | NFE | wall s | CPU s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {OPERATOR[r['variant']]} | {r['method']} | {r['psnr']:.2f} | {r['baseline_psnr']:.2f} ({r['baseline']}) "
              f"| {r['accuracy']:.2f} | {r['baseline_accuracy']:.2f} | {r['nfe']} | {r['wall_s']} | {r['cpu_s']} |")


if __name__ == "__main__":
    main()
