"""Continuous-time few-step students on the digits (sCD, sCT, ECT, MeanFlow), scored by the shared SVC
(benchmarks/digits_scorer.py) like the CD / CT / PD rows of benchmarks/few_step_digits.py.

    python benchmarks/digits_fewstep_continuous.py --teacher=runs/digits --scd=runs/digits_scd --sct=runs/digits_sct \
        --ect=runs/digits_ect --meanflow=runs/digits_meanflow [--n=256] [--seed=2026]

Each student is sampled with the sampler of its method at 1 and 2 steps from the newest checkpoint's EMA weights,
through the same jitted sample function as `--mode=sample` (`scoresde.build.make_sample_fn`). Prints one JSON line per
row (method, NFE, training step, scores, sampling wall seconds incl. compile, training wall seconds from
metrics.jsonl) and a Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

import jax
import numpy as np
from digits_scorer import score_samples  # benchmarks/ is on sys.path: scripts run as python benchmarks/x.py
from few_step_digits import REPO, _row, _with_teacher

from scoresde import build, parallel
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


def _student_row(name, config, workdir, n, seed=2026, **sampling):
    """As few_step_digits._row, reading the newest checkpoint read-only (a run may still be training); ``seed``
    draws the prior samples."""
    config = copy.deepcopy(config)
    with config.unlocked():
        config.distill.teacher_workdir = ""  # sampling needs no teacher
        for k, v in sampling.items():
            config.sampling[k] = v
    mesh = parallel.make_mesh()
    graphdef, params, rest, step = build.load_ema(config, workdir, mesh)
    t0 = time.perf_counter()
    fn = build.make_sample_fn(config, build.make_sde(config), graphdef, rest, n, mesh)
    samples, nfe = fn(params, jax.random.key(seed))
    samples = np.clip(np.asarray(jax.block_until_ready(samples)), 0.0, 1.0)
    wall = time.perf_counter() - t0
    rec = {"method": name, "nfe": int(nfe), "step": step, "sample_wall_s": round(wall, 1), **score_samples(samples)}
    print(json.dumps(rec), flush=True)
    return rec


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default="", help="the digits_vp workdir: its 20-step dpm_solver++ row, for reference")
    for flag, (_, label, _) in STUDENTS.items():
        ap.add_argument(f"--{flag}", default="", help=f"a configs/{STUDENTS[flag][0]}.py workdir ({label})")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--seed", type=int, default=2026, help="the students' sampling seed (the teacher row keeps 2026)")
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
            row = _student_row(f"{label} {sampler} {k}-step", cfg, workdir, a.n, a.seed, method=sampler, steps=k)
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
