"""Pixel vs latent digits models: sample quality (the shared SVC scorer), NFE and wall time per sample batch.

    python benchmarks/latent_digits.py --config=configs/digits_ldm.py --workdir=runs/digits_ldm \
        --set latent.autoencoder_workdir=runs/digits_ae
    python benchmarks/latent_digits.py --config=configs/digits_vp.py --workdir=runs/digits

Loads the EMA model of ``workdir`` (nothing is written there), draws ``--num`` samples in one batch with the
config's sampler (latent models decode them), times a second, already compiled batch, and prints one JSON line.
Class-conditional configs are scored for the accuracy of the requested class (every class in turn).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np
from digits_scorer import score_samples  # benchmarks/ is on sys.path: scripts run as python benchmarks/x.py

from scoresde import build, parallel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--num", type=int, default=100)
    ap.add_argument("--set", action="append", default=[], help="section.field=value (Python literal or string)")
    args = ap.parse_args()
    config = build.load_config(args.config)
    for item in args.set:
        path, value = item.split("=", 1)
        section, field = path.rsplit(".", 1)
        node = config
        for part in section.split("."):
            node = node[part]
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
        node[field] = value
    mesh = parallel.make_mesh()
    graphdef, params, rest, step = build.load_ema(config, args.workdir, mesh)
    fn = build.make_sample_fn(config, build.make_sde(config), graphdef, rest, args.num, mesh)
    key = build.purpose_key(build.root_key(config), "sample")
    t0 = time.perf_counter()
    samples, nfe = fn(params, jax.random.fold_in(key, 0))
    samples = parallel.to_host(samples)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(fn(params, jax.random.fold_in(key, 1)))
    second = time.perf_counter() - t0
    conditional = int(config.model.get("num_classes", 0) or 0) > 0
    labels = np.asarray(build.sample_class_labels(config, args.num)) if conditional else None
    result = {
        "config": args.config,
        "workdir": args.workdir,
        "step": step,
        "latent": build.is_latent(config),
        "model_shape": list(build.model_data_shape(config)),
        "nfe": int(nfe),
        "seconds_first_batch_incl_compile": round(first, 2),
        "seconds_per_batch": round(second, 2),
        "batch": args.num,
        "guidance": str(config.sampling.get("guidance", "none")),
        "guidance_scale": float(config.sampling.get("guidance_scale", 0.0)),
        **score_samples(np.clip(samples, 0.0, 1.0), labels),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
