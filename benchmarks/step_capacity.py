"""What a new step count costs: one compiled sampler per step count, against one padded grid for all of them.

    python benchmarks/step_capacity.py [--config=configs/cifar10_vp.py] [--batch=1] [--steps=20,10,50] \
        [--method=dpm_solver++] [--capacity=64]

For each mode (``exact``: ``steps`` static, one program per count; ``padded``: ``step_capacity``, ``steps`` traced)
samples the config's network (fresh weights) once per step count in ``--steps`` order, each from the same prior
draw, and prints per call the wall seconds of the first call (trace + compile + run), of a second call (run only),
the programs compiled (XLA backend compiles of ``_sample_jit``) and the NFE; then the largest difference between
the two modes' samples at each count, beside the largest sample value. One JSON line per call, then a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np
from flax import nnx

from scoresde import build, sampling
from scoresde import data as data_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Compiles:
    """Counts XLA backend compiles of ``_sample_jit`` programs in a block."""

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __enter__(self):
        self.count = 0
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def _listen(self, event, duration, **kwargs):
        if event == self.EVENT and "_sample_jit" in str(kwargs.get("fun_name", "")):
            self.count += 1

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listen)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=os.path.join(REPO, "configs", "cifar10_vp.py"))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", default="20,10,50")
    ap.add_argument("--method", default="dpm_solver++")
    ap.add_argument("--capacity", type=int, default=64)
    args = ap.parse_args()
    config = build.load_config(args.config)
    sde = build.make_sde(config)
    graphdef, params, rest = nnx.split(build.build_model(config, seed=0), nnx.Param, ...)

    def forward(p, x, t):
        return build.make_score_fn(nnx.merge(graphdef, p, rest), sde, config)(x, t)

    score = jax.tree_util.Partial(forward, params)  # the weights are traced arguments, not constants
    shape = (args.batch,) + data_lib.data_shape(config)
    x_init = sde.prior_sampling(jax.random.key(0), shape)
    counts = [int(s) for s in args.steps.split(",")]
    rows, samples = [], {}
    for mode in ("exact", "padded"):
        extra = {"step_capacity": args.capacity} if mode == "padded" else {}
        for steps in counts:

            def call(steps=steps, extra=extra):
                t0 = time.perf_counter()
                out, nfe = sampling.sample(
                    score, sde, shape, jax.random.key(1), method=args.method, x_init=x_init, steps=steps, **extra
                )
                jax.block_until_ready(out)
                return out, int(nfe), time.perf_counter() - t0

            with Compiles() as c:
                out, nfe, first = call()
            _, _, again = call()
            samples[(mode, steps)] = np.asarray(out)
            row = dict(
                mode=mode,
                steps=steps,
                capacity=args.capacity if extra else None,
                compiles=c.count,
                first_call_s=round(first, 3),
                cached_call_s=round(again, 3),
                nfe=nfe,
                config=os.path.basename(args.config),
                method=args.method,
                batch=args.batch,
                backend=jax.default_backend(),
            )
            rows.append(row)
            print(json.dumps(row), flush=True)
    for steps in counts:
        exact = samples[("exact", steps)]
        diff = float(np.max(np.abs(exact - samples[("padded", steps)])))
        scale = float(np.max(np.abs(exact)))
        print(json.dumps({"steps": steps, "max_abs_difference": diff, "max_abs_sample": scale}), flush=True)
    print("\n| mode | steps | programs compiled | first call s | cached call s | NFE |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        mode = "exact" if r["capacity"] is None else f"padded to {r['capacity']}"
        print(f"| {mode} | {r['steps']} | {r['compiles']} | {r['first_call_s']} | {r['cached_call_s']} | {r['nfe']} |")


if __name__ == "__main__":
    main()
