"""Throughput benchmark on synthetic data: prints one JSON line.

``python -m scoresde.bench --config=configs/cifar10_vp.py [--what=train|nfe|sample|likelihood] [--batch_size=128]
[--steps=20] [--sample_steps=20] [--compilation_cache=PATH]``

* ``train``: the real jitted training step (loss, gradients, Adam, EMA) over the ``('data',)`` mesh.
* ``nfe``: one network evaluation through the score function (the unit of sampling cost).
* ``sample``: one whole DPM-Solver++(2M) sample of ``--sample_steps`` steps (as many NFE) through
  :func:`scoresde.sampling.sample`, from a given prior draw.
* ``likelihood``: one exact-likelihood solve of the batch through :func:`scoresde.likelihood.log_likelihood`
  (Tsit5, rtol = atol = 1e-5, Hutchinson with Rademacher probes); ``nfe`` is its mean count per example.

Fields: ``device``, ``num_devices``, ``config``, ``what``, ``batch``, ``dtype``, ``params``, ``compile_s``
(seconds of ``jax.jit(...).lower(...).compile()`` of the timed program: tracing, lowering and XLA's compile,
ahead of time, nothing run; with ``--compilation_cache`` a cache hit is what it times), ``lower_s`` (the
tracing and lowering part of it), ``compile_cpu_s`` (CPU seconds of both, all threads), ``median_step_s``
(and ``median_step_cpu_s``, the CPU seconds of a step, all threads),
``img_per_s``, ``nfe`` (network evaluations per image of one timed call), ``load_avg_1m`` (the host's load
average when the record was written: compile and step times on a shared host depend on it),
``gflop_per_img`` (XLA cost analysis of the timed program per image: the whole train step, sample or solve,
or the forward pass; XLA counts a loop's body once, so for ``sample`` / ``likelihood`` it is about one step's),
``forward_gflop_per_img`` (the forward pass), ``mfu`` (model FLOP utilisation: step FLOPs / time / the
device's peak from :data:`PEAK_FLOPS`; null where the peak is unknown, CPU included),
``peak_memory_gib`` and ``peak_memory_source`` (``device_peak_bytes_in_use``, or ``host_max_rss``
where the backend reports no device memory, as on CPU).
Set ``--config.model.dtype=bfloat16`` for bf16 compute (parameters stay float32).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from scoresde import build, compilation, likelihood, parallel, sampling, train_state
from scoresde import data as data_lib
from scoresde.modes.train import make_train_step

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """The command's flags, defined only when it runs: importing ``bench`` (for :func:`run`, :data:`PEAK_FLOPS`)
    next to ``scoresde.main`` must not define ``--config`` twice."""
    config_flags.DEFINE_config_file("config", None, "Config file, optionally PATH:variant.", lock_config=True)
    flags.DEFINE_enum("what", "train", list(WHATS), "What to time.")
    flags.DEFINE_integer("batch_size", None, "Global batch (default: config.training.batch_size).")
    flags.DEFINE_integer("steps", 20, "Timed steps (after one warm-up step).")
    flags.DEFINE_integer("sample_steps", 20, "Sampler steps of --what=sample (DPM-Solver++(2M): as many NFE).")
    flags.DEFINE_string(
        "compilation_cache", "off", "Persistent compilation cache directory ('off': none, so compile_s is a compile)."
    )


WHATS = ("train", "nfe", "sample", "likelihood")


# Dense peak FLOP/s per device (no sparsity) from the vendors' data sheets: (bf16, f32). f32 is the
# plain FP32 (non-tensor-core) rate on GPUs; TPUs have no separate f32 matmul rate, bf16 is quoted.
PEAK_FLOPS = {
    "H200": (989e12, 67e12),  # NVIDIA H200 SXM
    "H100": (989e12, 67e12),  # NVIDIA H100 SXM (the PCIe card is lower: 756e12 / 51e12)
    "A100": (312e12, 19.5e12),  # NVIDIA A100 (40/80 GB, SXM)
    "TPU v4": (275e12, 275e12),
    "TPU v5 lite": (197e12, 197e12),  # TPU v5e reports its device_kind as "TPU v5 lite"
    "TPU v5e": (197e12, 197e12),
}


def peak_flops(device_kind: str, dtype: str) -> float | None:
    """The device's peak FLOP/s for ``dtype`` compute from :data:`PEAK_FLOPS`, ``None`` when unknown (CPU)."""
    kind = device_kind.upper()
    for name, (bf16, f32) in PEAK_FLOPS.items():
        if name.upper() in kind and not ("H100" in name and "PCIE" in kind):
            return bf16 if "bfloat16" in dtype or dtype == "bf16" else f32
    return None


def cost_flops(compiled) -> float | None:
    """FLOPs of one call of a compiled / lowered program from XLA's cost analysis (``None`` if absent)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001  (some backends do not implement it)
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return float(flops) if flops is not None and flops >= 0 else None


def peak_memory() -> tuple[float | None, str]:
    """``(GiB, source)``: the devices' ``peak_bytes_in_use`` where reported, else this host process's
    maximum resident set size (``ru_maxrss``), labelled so the two are never confused."""
    import resource  # noqa: PLC0415  (POSIX only)

    stats = [d.memory_stats() or {} for d in jax.local_devices()]
    peaks = [s.get("peak_bytes_in_use") for s in stats if s.get("peak_bytes_in_use") is not None]
    if peaks:
        return round(max(peaks) / 2**30, 3), "device_peak_bytes_in_use"
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return round(rss_kib / 2**20, 3), "host_max_rss"


def aot_compile(jitted, *args):
    """``(compiled, timing)``: ``jitted.lower(*args).compile()`` ahead of time, with ``timing`` = ``compile_s``
    (wall seconds of both), ``lower_s`` (wall seconds of tracing and lowering alone) and ``compile_cpu_s``
    (CPU seconds this process spent in both, all threads: on a loaded host the wall time mostly measures the
    other jobs, the CPU time the work)."""
    t0, c0 = time.perf_counter(), time.process_time()
    lowered = jitted.lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2, c2 = time.perf_counter(), time.process_time()
    return compiled, {"compile_s": round(t2 - t0, 3), "lower_s": round(t1 - t0, 3), "compile_cpu_s": round(c2 - c0, 3)}


def run(
    config,
    *,
    what: str = "train",
    batch_size: int | None = None,
    steps: int = 20,
    sample_steps: int = 20,
    config_name: str = "",
) -> dict:
    """Times ``what`` (one of :data:`WHATS`) for ``config`` and returns the JSON record (also what the CLI prints).

    Raises:
        ValueError: an unknown ``what``.
    """
    if what not in WHATS:
        raise ValueError(f"unknown bench target {what!r}; expected one of: {', '.join(WHATS)}")

    mesh = parallel.make_mesh()
    batch = int(batch_size or config.training.batch_size)
    parallel.check_batch_size(batch, mesh, "--batch_size")
    sde = build.make_sde(config)
    model = build.build_model(config, seed=0)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    n_params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
    shape = (batch,) + data_lib.data_shape(config)
    x = parallel.shard_batch(mesh, {"image": np.random.default_rng(0).standard_normal(shape).astype(np.float32)})
    key = jax.random.key(0)
    t = parallel.shard_batch(mesh, np.full((batch,), 0.5, np.float32))

    def forward_fn(p, xx, tt):
        return build.make_score_fn(nnx.merge(graphdef, p, rest), sde, config)(xx, tt)

    if what == "train":
        tx = build.optimizer_from_config(config)
        state = parallel.replicate(mesh, train_state.init_state(params, tx))
        step_fn = make_train_step(config, sde, graphdef, rest, tx, mesh, key)
        compiled, timing = aot_compile(step_fn, state, x)
        forward = jax.jit(forward_fn).lower(params, x["image"], t)  # cost analysis only: no compile

        def one(s):
            s, m = compiled(s, x)
            jax.block_until_ready(m["loss"])
            return s
    elif what == "nfe":
        repl = parallel.replicated_sharding(mesh)
        fn = jax.jit(forward_fn, in_shardings=(repl, parallel.data_sharding(mesh), parallel.data_sharding(mesh)))
        params = parallel.replicate(mesh, params)
        compiled, timing = aot_compile(fn, params, x["image"], t)
        forward = compiled
        state = params

        def one(s):
            jax.block_until_ready(compiled(s, x["image"], t))
            return s
    else:
        params = parallel.replicate(mesh, params)
        forward = jax.jit(forward_fn).lower(params, x["image"], t)  # cost analysis only: no compile
        if what == "sample":

            def program(p, xx, k):
                score = functools.partial(forward_fn, p)
                out, n = sampling.sample(score, sde, xx.shape, k, method="dpm_solver++", x_init=xx, steps=sample_steps)
                return out, jnp.broadcast_to(n, (xx.shape[0],))
        else:

            def program(p, xx, k):
                score = functools.partial(forward_fn, p)
                logp, _, n = likelihood.log_likelihood(score, sde, xx, k, hutchinson="rademacher")
                return logp, n

        compiled, timing = aot_compile(jax.jit(program), params, x["image"], key)
        state = params

        def one(s):
            nfe_per_img.append(float(np.mean(jax.block_until_ready(compiled(s, x["image"], key))[1])))
            return s

    nfe_per_img = [1.0] if what == "nfe" else []
    state = one(state)  # warm-up
    times, cpu_times = [], []
    for _ in range(int(steps)):
        t0, c0 = time.perf_counter(), time.process_time()
        state = one(state)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    median = float(np.median(times))
    dev = jax.devices()[0]
    dtype = str(config.model.dtype)
    kind = getattr(dev, "device_kind", dev.platform)
    step_flops, fwd_flops = cost_flops(compiled), cost_flops(forward)
    peak = peak_flops(kind, dtype) if dev.platform != "cpu" else None
    memory_gib, memory_source = peak_memory()

    def per_img(f):
        return None if f is None else float(f"{f / batch / 1e9:.6g}")

    return {
        "device": kind,
        "num_devices": jax.device_count(),
        "config": config_name,
        "what": what,
        "batch": batch,
        "dtype": dtype,
        "params": n_params,
        **timing,
        "median_step_s": float(f"{median:.6g}"),
        "median_step_cpu_s": float(f"{np.median(cpu_times):.6g}"),
        "img_per_s": round(batch / median, 2),
        "nfe": float(np.median(nfe_per_img)) if nfe_per_img else None,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        # XLA cost analysis of the timed program (train step or forward pass) and of the forward pass.
        # With several devices the compiled step is the per-device program over its batch slice.
        "gflop_per_img": per_img(None if step_flops is None else step_flops * jax.device_count()),
        "forward_gflop_per_img": per_img(
            None if fwd_flops is None else fwd_flops * (jax.device_count() if forward is compiled else 1)
        ),
        "mfu": (
            None if peak is None or step_flops is None else round(step_flops / median / peak, 4)
        ),  # per device: the step's FLOPs / time / peak
        "peak_memory_gib": memory_gib,
        "peak_memory_source": memory_source,
    }


def main(argv):
    del argv
    name = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--config=")), "")
    compilation.enable_compilation_cache(FLAGS.compilation_cache, min_compile_time_s=0)
    record = run(
        FLAGS.config,
        what=FLAGS.what,
        batch_size=FLAGS.batch_size,
        steps=FLAGS.steps,
        sample_steps=FLAGS.sample_steps,
        config_name=name,
    )
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    _define_flags()
    flags.mark_flags_as_required(["config"])
    app.run(main)
