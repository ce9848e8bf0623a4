"""CPU benchmark: bits/dim of the toy 2-D model through the probability-flow ODE.

Times :func:`scoresde.likelihood.bits_per_dim_batch` (one jitted call: per-example adaptive Tsit5 solves,
rtol = atol = 1e-5, eps = 1e-5, VP SDE) on ``gmm_grid`` data with two score functions:

* ``mlp``: the toy config's MLP score network (``configs/toy2d_vp.py``: 3×256, SiLU), the EMA weights of a
  trained run given by ``--workdir`` (e.g. ``python -m scoresde.main --config=configs/toy2d_vp.py
  --workdir=/tmp/ll_toy --config.training.n_iters=2000``); without it, random perturbed weights (then the
  time per evaluation is representative but the NFE is not: an untrained network makes a stiff flow);
* ``exact``: the exact score of the 3×3 Gaussian-mixture grid, what a well-trained model approaches;
  its NFE is representative, and its bits/dim is checked against the closed form ``-log₂ p_ε(x) / D``.

Prints one line per case: compile seconds, steady-state seconds per batch, examples/s, mean / max NFE.

    .venv/bin/python benchmarks/likelihood_toy2d.py [--batch 512] [--repeats 3] [--workdir RUN]
"""

import argparse
import math
import os
import platform
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scoresde import build, likelihood
from scoresde.build import make_score_fn, make_sde
from scoresde.data import toy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mlp_score_fn(config, sde, workdir=None):
    if workdir:
        model, step = build.load_model(workdir, config, ema=True)
        print(f"# mlp: EMA weights of {workdir} at step {step}")
        return make_score_fn(model, sde, config)
    model = build.get_model(config, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree.unflatten(tree, [p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
    return make_score_fn(nnx.merge(graphdef, params, rest), sde, config)


def time_case(name, score_fn, sde, x, key, repeats, hutchinson):
    fn = jax.jit(
        lambda x, k: likelihood.bits_per_dim_batch(
            score_fn, sde, x, k, scaler=None, num_bits=None, dequantization="none", hutchinson=hutchinson
        )
    )
    t0 = time.perf_counter()
    bpd, nfe = jax.block_until_ready(fn(x, key))
    compile_s = time.perf_counter() - t0
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        bpd, nfe = jax.block_until_ready(fn(x, jax.random.fold_in(key, r + 1)))
        times.append(time.perf_counter() - t0)
    s = float(np.median(times))
    b = x.shape[0]
    print(
        f"{name:>6s} {hutchinson:>10s}  B={b}  first call (compile+run) {compile_s:6.1f} s  "
        f"run {s:6.2f} s/batch  {b / s:8.1f} examples/s  NFE mean {float(np.mean(nfe)):.1f} "
        f"max {int(np.max(nfe))}  bits/dim {float(np.mean(bpd)):.4f}"
    )
    return bpd


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", default=None, help="a trained configs/toy2d_vp.py run (default: untrained MLP)")
    args = ap.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  commit {commit}  {platform.processor() or platform.machine()}"
        f"  {os.cpu_count()} CPUs  jax {jax.__version__} {jax.devices()[0].platform}  load {os.getloadavg()[0]:.1f}"
    )
    config = build.load_config(os.path.join(REPO, "configs", "toy2d_vp.py"))
    sde = make_sde(config)
    x = toy.sample("gmm_grid", jax.random.key(0), args.batch)
    key = jax.random.key(2)
    time_case("mlp", mlp_score_fn(config, sde, args.workdir), sde, x, key, args.repeats, "rademacher")
    gm = toy.gmm_grid()
    for hut in ("rademacher", "exact"):
        bpd = time_case("exact", gm.score_fn(sde), sde, x, key, args.repeats, hut)
    eps = jnp.full((args.batch,), 1e-5)
    closed = -gm.log_prob_t(sde, x, eps) / (2 * math.log(2.0))
    print(
        f"closed form -log2 p_eps(x)/D = {float(jnp.mean(closed)):.4f}; exact-divergence ODE - closed form: "
        f"max |diff| {float(jnp.max(jnp.abs(bpd - closed))):.2e} bits/dim"
    )


if __name__ == "__main__":
    main()
