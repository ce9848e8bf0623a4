"""Few-step generation on the digits: teacher vs CD / PD students, scored by the shared SVC (benchmarks/digits_scorer.py).

    python benchmarks/few_step_digits.py --teacher=runs/digits --cd=runs/digits_cd --pd=runs/digits_pd [--n=500]
    python benchmarks/few_step_digits.py --teacher=runs/digits --ct=runs/digits_ct --skip_pc

Prints one JSON line per row (method, NFE, scores, sampling wall seconds incl. compile) and a Markdown table.
PD rows read the checkpoint at the end of each round (8, 4, 2, 1 steps).
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
from flax import nnx

from scoresde import build, parallel
from scoresde.checkpointing import Checkpointer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ema_at(workdir, config, step=None):
    model = nnx.eval_shape(lambda: build.get_model(config, rngs=nnx.Rngs(0)))
    graphdef, state, rest = nnx.split(model, nnx.Param, ...)
    ckpt = Checkpointer(workdir, max_to_keep=None, async_save=False)
    try:
        step = step if step is not None else ckpt.all_steps()[-1]
        restored = ckpt._restore_step(step, None, nnx.to_pure_dict(state), None)
    finally:
        ckpt.close()
    nnx.replace_by_pure_dict(state, restored["ema_params"])
    return graphdef, state, rest, step


def _row(name, config, workdir, n, step=None, **sampling):
    config = copy.deepcopy(config)
    with config.unlocked():
        for k, v in sampling.items():
            config.sampling[k] = v
    mesh = parallel.make_mesh()
    graphdef, params, rest, step = _ema_at(workdir, config, step)
    sde = build.make_sde(config)
    t0 = time.perf_counter()
    fn = build.make_sample_fn(config, sde, graphdef, rest, n, mesh)
    samples, nfe = fn(params, jax.random.key(2026))
    samples = np.clip(np.asarray(jax.block_until_ready(samples)), 0.0, 1.0)  # as the sample mode's uint8 conversion
    wall = time.perf_counter() - t0
    rec = {"method": name, "nfe": int(nfe), "step": step, "sample_wall_s": round(wall, 1), **score_samples(samples)}
    print(json.dumps(rec), flush=True)
    return rec


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--cd", default="")
    ap.add_argument("--pd", default="")
    ap.add_argument("--ct", default="", help="a configs/digits_ct.py workdir (consistency training, no teacher)")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--skip_pc", action="store_true")
    a = ap.parse_args()
    rows = []
    tcfg = _with_teacher(a.teacher)
    rows.append(
        _row("teacher dpm_solver++ (2M)", tcfg, a.teacher, a.n, method="dpm_solver++", steps=20, noise_removal=False)
    )
    if not a.skip_pc:
        rows.append(_row("teacher pc (euler_maruyama, default steps)", tcfg, a.teacher, a.n, method="pc"))
    if a.cd:
        cfg = build.load_config(os.path.join(REPO, "configs/digits_cd.py"))
        for k in (1, 2):
            rows.append(_row(f"CD consistency {k}-step", cfg, a.cd, a.n, method="consistency", steps=k))
    if a.ct:
        cfg = build.load_config(os.path.join(REPO, "configs/digits_ct.py"))
        for k in (1, 2):
            rows.append(_row(f"CT consistency {k}-step", cfg, a.ct, a.n, method="consistency", steps=k))
    if a.pd:
        cfg = build.load_config(os.path.join(REPO, "configs/digits_pd.py"))
        per = build.iters_per_round(cfg)
        for r, k in enumerate(build.pd_rounds(cfg)):
            rows.append(_row(f"PD round {r} ddim {k}-step", cfg, a.pd, a.n, step=(r + 1) * per, method="ddim", steps=k))
    print("| method | NFE | mean p_max | frac p_max>0.9 | classes | class entropy | sampling wall s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['method']} | {r['nfe']} | {r['mean_max_prob']:.3f} | {r['frac_confident']:.3f} | "
            f"{r['classes_present']} | {r['class_entropy_bits']:.3f} | {r['sample_wall_s']} |"
        )


def _with_teacher(workdir):
    cfg = build.load_config(os.path.join(REPO, "configs/digits_cd.py"))
    with cfg.unlocked():
        cfg.distill.teacher_workdir = workdir
    return build.teacher_config(cfg)


if __name__ == "__main__":
    main()
