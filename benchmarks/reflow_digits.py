"""Reflow on the digits: 1-, 2- and 4-step Euler samples of the source flow (1-RF) and of its reflow (2-RF).

    python benchmarks/reflow_digits.py --source=runs/digits_fm --reflow=runs/digits_reflow [--n=256]

Both flows start from the same prior draws. Each row: the shared SVC's scores (benchmarks/digits_scorer.py),
the NFE, and the mean absolute distance (in [0, 1] pixels) to the source's 20-step DPM-Solver++ samples from the
same draws, which is the map the reflow was trained to reproduce in a straight line. Nothing is written to the
workdirs; prints one JSON line per row and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np
from digits_scorer import score_samples  # benchmarks/ is on sys.path: scripts run as python benchmarks/x.py
from flax import nnx

from scoresde import build, parallel, sampling
from scoresde import data as data_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = (("ddim", 1), ("ddim", 2), ("ddim", 4), ("dpm_solver++", 20))


def _sampler(config, workdir, mesh):
    graphdef, params, rest, step = build.load_ema(config, workdir, mesh)
    score_model = build.make_score_model(config)
    sde = score_model.sde
    eps = build.sampling_eps(sde)
    inverse = data_lib.get_data_inverse_scaler(config)

    def run(z, method, steps):
        model = nnx.merge(graphdef, params, rest)
        opts = dict(steps=steps, eta=0.0) if method == "ddim" else dict(steps=steps, order=2)
        x, nfe = sampling.sample(
            score_model.score_fn(model), sde, z.shape, jax.random.key(0), method=method, x_init=z, eps=eps, **opts
        )
        return np.clip(np.asarray(inverse(x)), 0.0, 1.0), int(nfe)

    return run, step, sde


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", required=True, help="the digits_fm workdir the reflow was made from")
    ap.add_argument("--reflow", required=True, help="the digits_reflow workdir")
    ap.add_argument("--n", type=int, default=256)
    a = ap.parse_args()
    mesh = parallel.make_mesh()
    config = build.load_config(os.path.join(REPO, "configs/digits_reflow.py"))
    flows = {"1-RF (source)": _sampler(config, a.source, mesh), "2-RF (reflow)": _sampler(config, a.reflow, mesh)}
    sde = flows["1-RF (source)"][2]
    z = sde.prior_sampling(jax.random.key(2026), (a.n,) + data_lib.data_shape(config))
    target, _ = flows["1-RF (source)"][0](z, "dpm_solver++", 20)
    rows = []
    for name, (run, step, _) in flows.items():
        for method, steps in ROWS:
            t0 = time.perf_counter()
            x, nfe = run(z, method, steps)
            wall = time.perf_counter() - t0
            rec = {
                "flow": name,
                "step": step,
                "sampler": f"{'euler' if method == 'ddim' else method} {steps}",
                "nfe": nfe,
                "dist_to_source_ode": float(np.mean(np.abs(x - target))),
                "wall_s_incl_compile": round(wall, 1),
                **score_samples(x),
            }
            print(json.dumps(rec), flush=True)
            rows.append(rec)
    print(
        "| flow | sampler | NFE | mean p_max | p_max > 0.9 | classes | class entropy (bits) | mean abs dist. to "
        "source's 20-step ODE |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['flow']} | {r['sampler']} | {r['nfe']} | {r['mean_max_prob']:.3f} | {r['frac_confident']:.3f} "
            f"| {r['classes_present']} | {r['class_entropy_bits']:.3f} | {r['dist_to_source_ode']:.4f} |"
        )


if __name__ == "__main__":
    main()
