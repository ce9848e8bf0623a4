"""Throughput benchmark on synthetic data: prints one JSON line.

``python -m scoresde.bench --config=configs/cifar10_vp.py [--what=train|nfe] [--batch_size=128] [--steps=20]``

* ``train``: the real jitted training step (loss, gradients, Adam, EMA) over the ``('data',)`` mesh.
* ``nfe``: one network evaluation through the score function (the unit of sampling cost).

Fields: ``device``, ``num_devices``, ``config``, ``what``, ``batch``, ``dtype``, ``params``, ``compile_s``,
``median_step_s``, ``img_per_s``, ``peak_memory_gib`` (None where the backend does not report it).
Set ``--config.model.dtype=bfloat16`` for bf16 compute (parameters stay float32).
"""

from __future__ import annotations

import json
import sys
import time

import jax
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from scoresde import builders, parallel, train_state
from scoresde import data as data_lib
from scoresde.modes.train import make_train_step

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, optionally PATH:variant.", lock_config=True)
flags.DEFINE_enum("what", "train", ["train", "nfe"], "What to time.")
flags.DEFINE_integer("batch_size", None, "Global batch (default: config.training.batch_size).")
flags.DEFINE_integer("steps", 20, "Timed steps (after one warm-up step).")


def _peak_memory_gib():
    stats = [d.memory_stats() or {} for d in jax.local_devices()]
    peaks = [s.get("peak_bytes_in_use") for s in stats if s.get("peak_bytes_in_use") is not None]
    return round(max(peaks) / 2**30, 3) if peaks else None


def run(config, *, what: str = "train", batch_size: int | None = None, steps: int = 20, config_name: str = "") -> dict:
    """Times ``what`` for ``config`` and returns the JSON record (also what the CLI prints)."""
    mesh = parallel.make_mesh()
    batch = int(batch_size or config.training.batch_size)
    parallel.check_batch_size(batch, mesh, "--batch_size")
    sde = builders.make_sde(config)
    model = builders.build_model(config, seed=0)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    n_params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
    shape = (batch,) + data_lib.data_shape(config)
    x = parallel.shard_batch(mesh, {"image": np.random.default_rng(0).standard_normal(shape).astype(np.float32)})
    key = jax.random.key(0)
    if what == "train":
        tx = builders.optimizer_from_config(config)
        state = parallel.replicate(mesh, train_state.init_state(params, tx))
        step_fn = make_train_step(config, sde, graphdef, rest, tx, mesh, key)
        t0 = time.perf_counter()
        compiled = step_fn.lower(state, x).compile()
        compile_s = time.perf_counter() - t0

        def one(s):
            s, m = compiled(s, x)
            jax.block_until_ready(m["loss"])
            return s
    else:
        repl = parallel.replicated_sharding(mesh)
        t = parallel.shard_batch(mesh, np.full((batch,), 0.5, np.float32))

        def nfe(p, xx, tt):
            return builders.make_score_fn(nnx.merge(graphdef, p, rest), sde, config)(xx, tt)

        fn = jax.jit(nfe, in_shardings=(repl, parallel.data_sharding(mesh), parallel.data_sharding(mesh)))
        params = parallel.replicate(mesh, params)
        t0 = time.perf_counter()
        compiled = fn.lower(params, x["image"], t).compile()
        compile_s = time.perf_counter() - t0
        state = params

        def one(s):
            jax.block_until_ready(compiled(s, x["image"], t))
            return s
    state = one(state)  # warm-up
    times = []
    for _ in range(int(steps)):
        t0 = time.perf_counter()
        state = one(state)
        times.append(time.perf_counter() - t0)
    median = float(np.median(times))
    dev = jax.devices()[0]
    return {
        "device": getattr(dev, "device_kind", dev.platform), "num_devices": jax.device_count(),
        "config": config_name, "what": what, "batch": batch, "dtype": str(config.model.get("dtype", "float32")),
        "params": n_params, "compile_s": round(compile_s, 3), "median_step_s": float(f"{median:.6g}"),
        "img_per_s": round(batch / median, 2), "peak_memory_gib": _peak_memory_gib(),
    }


def main(argv):
    del argv
    name = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--config=")), "")
    record = run(FLAGS.config, what=FLAGS.what, batch_size=FLAGS.batch_size, steps=FLAGS.steps, config_name=name)
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
