"""Samples a trained digits workdir with several samplers and scores each with the shared SVC
(:mod:`benchmarks.digits_scorer`): mean max-probability, fraction confident (p_max > 0.9), classes present.

    python benchmarks/score_workdir.py --config=configs/digits_fm.py --workdir=runs/digits_fm \
        --num=512 --method=dpm_solver++:20 --method=unipc:10 --method=ddim:10 --method=euler_ancestral:30

Each ``--method`` is ``name:steps[:key=value,...]`` (e.g. ``unipc:10:order=3``); the options go to
:func:`scoresde.sampling.sample` through ``config.sampling`` as ``--mode=sample`` would use them.
Prints one JSON line per sampler (with the NFE it reported and the seconds it took).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.digits_scorer import score_samples  # noqa: E402
from scoresde import build, parallel  # noqa: E402


def _parse(spec: str) -> tuple[str, dict]:
    parts = spec.split(":")
    fields = {"method": parts[0], "steps": int(parts[1]) if len(parts) > 1 else 0}
    for kv in parts[2].split(",") if len(parts) > 2 else []:
        k, v = kv.split("=")
        try:
            fields[k] = int(v)
        except ValueError:
            try:
                fields[k] = float(v)
            except ValueError:
                fields[k] = {"true": True, "false": False}.get(v.lower(), v)
    return spec, fields


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--num", type=int, default=512)
    parser.add_argument("--method", action="append", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = build.load_config(args.config)
    mesh = parallel.make_mesh()
    graphdef, params, rest, step = build.load_ema(config, args.workdir, mesh)
    sde = build.make_sde(config)
    for spec in args.method:
        label, fields = _parse(spec)
        c = build.load_config(args.config)
        c.sampling.order = 0
        for k, v in fields.items():
            c.sampling[k] = v
        fn = build.make_sample_fn(c, sde, graphdef, rest, args.num, mesh)
        t0 = time.perf_counter()
        samples, nfe = fn(params, jax.random.key(args.seed))
        samples = np.asarray(parallel.to_host(samples))
        seconds = time.perf_counter() - t0
        out = {
            "sampler": label,
            "nfe": int(nfe),
            "step": step,
            "seconds_incl_compile": round(seconds, 1),
            "finite": bool(np.all(np.isfinite(samples))),
            **score_samples(np.clip(samples, 0.0, 1.0)),
        }  # as the sample mode's uint8 conversion
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
