"""ParaDiGMS vs the sequential DDIM sampler with the digits model, on 8 (fake) CPU devices.

Same prior draw (sharded over a ``('data',)`` mesh of all devices), same noise, same grid: the sequential
``sampling.sample(method="ddim")`` against ``sampling.parallel_sample`` for each window / tolerance.
Reports rounds vs steps, NFE, wall time (after a compile run), the max |difference| from the sequential
samples, and the shared SVC's confidence on the samples.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/paradigms_digits.py --workdir=runs/digits
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import numpy as np  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks.digits_scorer import score_samples  # noqa: E402
from scoresde import build, parallel, sampling  # noqa: E402
from scoresde import data as data_lib  # noqa: E402


def _timed(fn, *args):
    jax.block_until_ready(fn(*args))  # compile
    start = time.time()
    out = jax.block_until_ready(fn(*args))
    return out, time.time() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--config", default=os.path.join(REPO, "configs", "digits_vp.py"))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--eta", type=float, default=0.0)
    parser.add_argument("--windows", default="8,16,32")
    parser.add_argument("--tols", default="1e-3,1e-2")
    args = parser.parse_args()

    config = build.load_config(args.config)
    mesh = parallel.make_mesh()
    sde = build.make_sde(config)
    model, step = build.load_model(args.workdir, config)
    score_fn = build.make_score_fn(model, sde, config)
    shape = (args.batch,) + data_lib.data_shape(config)
    key = jax.random.key(0)
    x_init = jax.device_put(sde.prior_sampling(jax.random.key(1), shape), parallel.data_sharding(mesh))
    inverse = data_lib.get_data_inverse_scaler(config)

    def to01(x):  # as the sample mode's uint8 conversion: the scorer takes images in [0, 1]
        return np.clip(np.asarray(inverse(x)), 0.0, 1.0)

    seq = jax.jit(
        lambda x: sampling.sample(score_fn, sde, shape, key, method="ddim", x_init=x, steps=args.steps, eta=args.eta)
    )
    (ref, nfe), wall = _timed(seq, x_init)
    rows = [
        dict(
            sampler="sequential ddim",
            window=1,
            tol=None,
            steps=args.steps,
            rounds=int(nfe),
            nfe=int(nfe),
            wall_s=round(wall, 3),
            max_abs_diff=0.0,
            **score_samples(np.asarray(to01(ref))),
        )
    ]
    for window in (int(w) for w in args.windows.split(",")):
        for tol in (float(t) for t in args.tols.split(",")):
            par = jax.jit(
                lambda x, w=window, t=tol: sampling.parallel_sample(
                    score_fn,
                    sde,
                    shape,
                    key,
                    method="ddim",
                    window=w,
                    tol=t,
                    x_init=x,
                    steps=args.steps,
                    eta=args.eta,
                    stats=True,
                )
            )
            (x, nfe, stats), wall = _timed(par, x_init)
            rounds = stats["rounds"]
            rows.append(
                dict(
                    sampler="paradigms ddim",
                    window=window,
                    tol=tol,
                    steps=args.steps,
                    rounds=int(rounds),
                    nfe=int(nfe),
                    wall_s=round(wall, 3),
                    max_abs_diff=float(np.max(np.abs(np.asarray(x - ref)))),
                    **score_samples(np.asarray(to01(x))),
                )
            )
    print(
        json.dumps(
            dict(
                devices=f"{jax.device_count()} x {jax.devices()[0].platform}",
                checkpoint_step=step,
                batch=args.batch,
                eta=args.eta,
            )
        )
    )
    print(
        "| sampler | window | tol | steps | rounds | NFE | wall s | max abs diff | mean p_max | frac p>0.9 | classes |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['sampler']} | {r['window']} | {r['tol']} | {r['steps']} | {r['rounds']} | {r['nfe']} | "
            f"{r['wall_s']} | {r['max_abs_diff']:.2e} | {r['mean_max_prob']:.3f} | {r['frac_confident']:.2f} | "
            f"{r['classes_present']} |"
        )


if __name__ == "__main__":
    main()
