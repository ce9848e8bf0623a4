"""Continuous-time few-step students on the digits (sCD, sCT, ECT, MeanFlow), scored by the shared SVC
(benchmarks/digits_scorer.py) like the CD / CT / PD rows of benchmarks/few_step_digits.py.

    python benchmarks/digits_fewstep_continuous.py --teacher=runs/digits --scd=runs/digits_scd --sct=runs/digits_sct \
        --ect=runs/digits_ect --meanflow=runs/digits_meanflow [--n=256]

Each student is sampled with the sampler of its method at 1 and 2 steps from the newest checkpoint's EMA weights,
through the same jitted sample function as `--mode=sample` (`scoresde.build.make_sample_fn`). Prints one JSON line per
row (method, NFE, training step, scores, sampling wall seconds incl. compile, training wall seconds from
metrics.jsonl) and a Markdown table.
"""

from __future__ import annotations

import argparse
import os

from few_step_digits import (
    REPO,
    _row,
    _with_teacher,
)  # benchmarks/ is on sys.path: scripts run as python benchmarks/x.py

from scoresde import build
from scoresde.runlog import read_metrics

# flag -> (config, label, sampler)
STUDENTS = {
    "scd": ("digits_scd", "sCD", "scm"),
    "sct": ("digits_sct", "sCT", "scm"),
    "ect": ("digits_ect", "ECT", "consistency"),
    "meanflow": ("digits_meanflow", "MeanFlow", "meanflow"),
}


def _train_wall_s(workdir) -> float:
    """The training time the run logged: steps / (its logged steps per second), summed over logged intervals."""
    records = read_metrics(workdir)
    total, last = 0.0, 0
    for r in records:
        if r.get("steps_per_sec"):
            total += (r["step"] - last) / r["steps_per_sec"]
            last = r["step"]
    return round(total, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default="", help="the digits_vp workdir: its 20-step dpm_solver++ row, for reference")
    for flag, (_, label, _) in STUDENTS.items():
        ap.add_argument(f"--{flag}", default="", help=f"a configs/{STUDENTS[flag][0]}.py workdir ({label})")
    ap.add_argument("--n", type=int, default=256)
    a = ap.parse_args()
    rows = []
    if a.teacher:
        tcfg = _with_teacher(a.teacher)
        rows.append(
            _row(
                "teacher dpm_solver++ (2M)", tcfg, a.teacher, a.n, method="dpm_solver++", steps=20, noise_removal=False
            )
        )
    for flag, (name, label, sampler) in STUDENTS.items():
        workdir = getattr(a, flag)
        if not workdir:
            continue
        cfg = build.load_config(os.path.join(REPO, f"configs/{name}.py"))
        wall = _train_wall_s(workdir)
        for k in (1, 2):
            row = _row(f"{label} {sampler} {k}-step", cfg, workdir, a.n, method=sampler, steps=k)
            row["train_wall_s"] = wall
            rows.append(row)
    print("| method | NFE | train step | mean p_max | frac p_max>0.9 | classes | sampling wall s | training wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['method']} | {r['nfe']} | {r['step']} | {r['mean_max_prob']:.3f} | {r['frac_confident']:.3f} | "
            f"{r['classes_present']} | {r['sample_wall_s']} | {r.get('train_wall_s', '–')} |"
        )


if __name__ == "__main__":
    main()
