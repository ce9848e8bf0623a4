"""The GPU speed figures of BENCHMARKS.md in one run: one JSON line per figure, synthetic CIFAR-shaped data.

    python benchmarks/gpu_suite.py                 # one GPU, the DDPM++ cont. CIFAR-10 network, < 8 min
    python benchmarks/gpu_suite.py --smoke         # tiny sizes, CPU, < 60 s (tests/test_gpu_suite.py)
    python benchmarks/gpu_suite.py --only=train,eval

Figures (``"figure"`` key of each line; every line also carries ``device``, ``backend``, ``smoke``):

* ``train``: img/s, compile seconds and peak memory of one training step, f32 and bf16 compute
  (parameters and Adam state f32), batch 128 and 512. The step is the reference's continuous VP
  objective (``losses.continuous_dsm_loss``, σ² weighting, reduce-mean), Adam 2e-4 with gradient
  clipping at 1 and EMA 0.9999, dropout 0.1, the train state donated; written here rather than
  imported from the training loop so the suite depends only on the math layer.
* ``eval``: network evaluation img·NFE/s (one forward pass of the score function), f32 and bf16, batch 256.
* ``sampler``: ms per NFE of the PC sampler (Euler–Maruyama) and DPM-Solver++(2M) through
  :func:`scoresde.sampling.sample`, against a bare ``fori_loop`` of the same number of score calls,
  and the overhead in percent.
* ``likelihood``: img/s of :func:`scoresde.likelihood.log_likelihood` (Hutchinson, Rademacher): a
  solve cut at 8 Tsit5 steps (= 51 NFE, the fixed-NFE cost figure: its log-densities are not used)
  and an adaptive solve at rtol = atol = 1e-5 (its mean NFE reported).
* ``jvp``: what a forward-mode tangent costs in training: one line per step kind, a plain DSM step (``dsm``), an
  sCT step (``sct``, a ``jax.jvp`` through the network) and a MeanFlow step (``meanflow``, the two-time network
  under one ``jax.jvp``), f32, batch 128, Adam, with its median step time, the ratio to the DSM step and the
  step program's memory (``benchmarks/jvp_overhead.py``'s steps: dropout off, no EMA).
* ``consistency``: img/s of ``sample(method="consistency")`` when that method exists (skipped otherwise).
* ``vs_reference``: ``benchmarks/vs_reference.py --device=gpu --size=cifar10`` (forward, training step, 20-step
  DPM-Solver and likelihood against the PyTorch reference with identical weights), one line per figure
  (its ``"what"``), when ``--reference`` and ``--dpm-solver`` name the two checkouts (skipped otherwise;
  ``--smoke`` runs it on the CPU with its small network).

Memory: ``peak_memory_gib`` is the device's ``peak_bytes_in_use`` since process start (so, within one
run, the running maximum over the figures so far: the first train line, f32 batch 128, is the one to
hold against the reference's 11.6 GiB), or the host's maximum RSS on CPU, labelled by
``peak_memory_source``. Train lines also carry ``program_memory_gib``, XLA's memory analysis of that
one step program (arguments + outputs + temporaries - donated buffers), comparable across lines.

The network: DDPM++ cont. (VP) for CIFAR-10, 61.8M parameters; hyper-parameters copied from the
reference config ``score_sde/configs/vp/cifar10_ddpmpp_continuous.py`` (``configs/default_configs.py``
``ddpmpp_model`` here): nf 128, ch_mult (1, 2, 2, 2), 4 res-blocks per level, attention at 16x16,
BigGAN res-blocks without FIR, skip rescaling, positional time embedding, dropout 0.1, centred data.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from scoresde import bench, compilation, likelihood, losses, sampling
from scoresde import sde as sde_lib
from scoresde.models.ncsnpp import NCSNpp
from scoresde.parameterization import model_score_fn, reference_convention

# score_sde/configs/vp/cifar10_ddpmpp_continuous.py (+ default_cifar10_configs): the 61.8M network.
DDPMPP_CIFAR10 = dict(
    image_size=32,
    num_channels=3,
    centered=True,
    nf=128,
    ch_mult=(1, 2, 2, 2),
    num_res_blocks=4,
    attn_resolutions=(16,),
    dropout=0.1,
    resamp_with_conv=True,
    conditional=True,
    fir=False,
    fir_kernel=(1, 3, 3, 1),
    skip_rescale=True,
    resblock_type="biggan",
    progressive="none",
    progressive_input="none",
    progressive_combine="sum",
    embedding_type="positional",
    init_scale=0.0,
    nonlinearity="swish",
)
# One level with attention: every layer kind of the network, the fewest ops to compile.
SMOKE = dict(DDPMPP_CIFAR10, image_size=4, nf=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(4,))

FULL_SIZES = dict(
    train_batches=(128, 512),
    eval_batch=256,
    sampler_batch=128,
    sampler_steps=50,
    likelihood_batch=128,
    likelihood_max_steps=1000,
    timed=20,
    jvp_batch=128,
)
SMOKE_SIZES = dict(
    train_batches=(4,),
    eval_batch=4,
    sampler_batch=4,
    sampler_steps=4,
    likelihood_batch=2,
    likelihood_max_steps=64,
    timed=2,
    jvp_batch=4,
)
FIGURES = ("train", "eval", "sampler", "likelihood", "jvp", "consistency", "vs_reference")


def _program_memory_gib(compiled):
    """XLA's own account of one program's memory: arguments + outputs + temporaries - donated aliases."""
    try:
        m = compiled.memory_analysis()
        total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
    except Exception:  # noqa: BLE001  (not every backend reports it)
        return None
    return float(f"{total / 2**30:.4g}")


def _median_s(fn, n):
    """Median wall time of ``n`` calls of ``fn`` (each blocks until its result is ready)."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


class Suite:
    """Builds the network once per dtype and prints each figure as one JSON line."""

    def __init__(self, smoke: bool, reference: str | None = None, dpm_solver: str | None = None):
        self.smoke = smoke
        self.reference, self.dpm_solver = reference, dpm_solver
        self.arch = SMOKE if smoke else DDPMPP_CIFAR10
        self.sizes = SMOKE_SIZES if smoke else FULL_SIZES
        self.sde = sde_lib.VPSDE()
        self.conv = reference_convention(self.sde, continuous=True)
        dev = jax.devices()[0]
        self.device = getattr(dev, "device_kind", dev.platform)
        self.backend = dev.platform
        self.shape = (self.arch["image_size"], self.arch["image_size"], self.arch["num_channels"])

    def net(self, dtype):
        model = NCSNpp(**self.arch, dtype=dtype, rngs=nnx.Rngs(0))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        return graphdef, params, rest

    def score_fn(self, graphdef, rest):
        """``score(params, x, t)``: the network through the parameterisation layer (eval mode)."""

        def score(params, x, t):
            return model_score_fn(lambda xx, lab: nnx.merge(graphdef, params, rest)(xx, lab), self.sde, **self.conv)(
                x, t
            )

        return score

    def emit(self, figure, **fields):
        mem, source = bench.peak_memory()
        rec = {
            "figure": figure,
            "device": self.device,
            "backend": self.backend,
            "smoke": self.smoke,
            **fields,
            "peak_memory_gib": mem,
            "peak_memory_source": source,
        }
        print(json.dumps(rec), flush=True)
        return rec

    def data(self, batch, seed=0):
        return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, (batch,) + self.shape).astype(np.float32))

    # -- figures ------------------------------------------------------------------------------------------

    def train(self):
        for dtype in ("float32", "bfloat16"):
            graphdef, params, rest = self.net(dtype)
            n_params = int(sum(p.size for p in jax.tree.leaves(params)))
            tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(2e-4))

            def step(state, x, key):
                def loss_fn(p):
                    def net_fn(xx, lab):
                        return nnx.merge(graphdef, p, rest)(xx, lab, train=True, key=jax.random.fold_in(key, 1))

                    score = model_score_fn(net_fn, self.sde, **self.conv)
                    return losses.continuous_dsm_loss(score, self.sde, x, key, reduce_mean=True)[0]

                loss, grads = jax.value_and_grad(loss_fn)(state["params"])
                updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
                new = optax.apply_updates(state["params"], updates)
                ema = jax.tree.map(lambda e, q: 0.9999 * e + 0.0001 * q, state["ema"], new)
                return {"params": new, "ema": ema, "opt_state": opt_state}, loss

            for batch in self.sizes["train_batches"]:
                state = {"params": params, "ema": jax.tree.map(jnp.copy, params), "opt_state": tx.init(params)}
                state = jax.tree.map(jnp.copy, state)  # its own buffers: the step donates them
                x = self.data(batch)
                fn = jax.jit(step, donate_argnums=0)
                t0 = time.perf_counter()
                compiled = fn.lower(state, x, jax.random.key(0)).compile()
                compile_s = time.perf_counter() - t0
                flops = bench.cost_flops(compiled)
                holder = {"state": state, "i": 0}

                def one():
                    holder["i"] += 1
                    holder["state"], loss = compiled(holder["state"], x, jax.random.key(holder["i"]))
                    jax.block_until_ready(loss)

                one()
                med = _median_s(one, self.sizes["timed"])
                peak = bench.peak_flops(self.device, dtype) if self.backend != "cpu" else None
                self.emit(
                    "train",
                    dtype=dtype,
                    batch=batch,
                    params=n_params,
                    compile_s=round(compile_s, 3),
                    median_step_s=float(f"{med:.6g}"),
                    img_per_s=round(batch / med, 2),
                    gflop_per_img=None if flops is None else float(f"{flops / batch / 1e9:.6g}"),
                    mfu=None if peak is None or flops is None else round(flops / med / peak, 4),
                    program_memory_gib=_program_memory_gib(compiled),
                )
                del holder, state

    def eval(self):
        batch = self.sizes["eval_batch"]
        for dtype in ("float32", "bfloat16"):
            graphdef, params, rest = self.net(dtype)
            score = jax.jit(self.score_fn(graphdef, rest))
            x, t = self.data(batch), jnp.full((batch,), 0.5)
            t0 = time.perf_counter()
            compiled = score.lower(params, x, t).compile()
            compile_s = time.perf_counter() - t0
            jax.block_until_ready(compiled(params, x, t))
            med = _median_s(lambda: jax.block_until_ready(compiled(params, x, t)), self.sizes["timed"])
            flops = bench.cost_flops(compiled)
            self.emit(
                "eval",
                dtype=dtype,
                batch=batch,
                compile_s=round(compile_s, 3),
                ms_per_nfe=round(1e3 * med, 4),
                img_nfe_per_s=round(batch / med, 2),
                gflop_per_img=None if flops is None else float(f"{flops / batch / 1e9:.6g}"),
            )

    def sampler(self):
        batch, steps = self.sizes["sampler_batch"], self.sizes["sampler_steps"]
        graphdef, params, rest = self.net("float32")
        score_fn = jax.tree_util.Partial(self.score_fn(graphdef, rest), params)
        shape = (batch,) + self.shape

        @functools.partial(jax.jit, static_argnums=1)
        def bare(params, n, x):
            score = self.score_fn(graphdef, rest)

            def body(i, x):
                t = jnp.full((batch,), 1.0 - i / (n + 1.0))
                return x + 1e-3 * score(params, x, t)

            return jax.lax.fori_loop(0, n, body, x)

        def run_sampler(method, **opts):
            def go():
                out, nfe = sampling.sample(score_fn, self.sde, shape, jax.random.key(0), method=method, **opts)
                jax.block_until_ready(out)
                return int(nfe)

            return go

        for method, opts in (("pc", dict(steps=steps)), ("dpm_solver++", dict(steps=steps, order=2))):
            go = run_sampler(method, **opts)
            t0 = time.perf_counter()
            nfe = go()  # compiles
            compile_s = time.perf_counter() - t0
            med = _median_s(go, max(2, self.sizes["timed"] // 5))
            x0 = self.data(batch)
            jax.block_until_ready(bare(params, nfe, x0))
            med_bare = _median_s(lambda: jax.block_until_ready(bare(params, nfe, x0)), max(2, self.sizes["timed"] // 5))
            self.emit(
                "sampler",
                method=method,
                batch=batch,
                nfe=nfe,
                compile_s=round(compile_s, 3),
                ms_per_nfe=round(1e3 * med / nfe, 4),
                bare_loop_ms_per_nfe=round(1e3 * med_bare / nfe, 4),
                overhead_pct=round(100 * (med / med_bare - 1), 2),
                img_per_s=round(batch / med, 2),
            )

    def likelihood(self):
        batch = self.sizes["likelihood_batch"]
        graphdef, params, rest = self.net("float32")
        score = self.score_fn(graphdef, rest)
        x = self.data(batch, seed=1)
        for mode, kw in (
            ("fixed_51_nfe", dict(max_steps=8)),
            ("adaptive", dict(max_steps=self.sizes["likelihood_max_steps"])),
        ):
            fn = jax.jit(
                lambda p, x, key, kw=kw: likelihood.log_likelihood(
                    jax.tree_util.Partial(score, p), self.sde, x, key, hutchinson="rademacher", **kw
                )
            )
            t0 = time.perf_counter()
            logp, _, nfe = jax.block_until_ready(fn(params, x, jax.random.key(0)))
            compile_s = time.perf_counter() - t0
            med = _median_s(lambda: jax.block_until_ready(fn(params, x, jax.random.key(0))), 2)
            nfe = np.asarray(nfe)
            self.emit(
                "likelihood",
                mode=mode,
                batch=batch,
                nfe_mean=float(nfe.mean()),
                nfe_max=int(nfe.max()),
                compile_s=round(compile_s, 3),
                img_per_s=round(batch / med, 3),
                ms_per_nfe=round(1e3 * med / float(nfe.max()), 4),
                solved_fraction=float(np.mean(np.isfinite(np.asarray(logp)))),
            )

    def jvp(self):
        from jvp_overhead import KINDS, step_losses, train_step  # noqa: PLC0415  (benchmarks/ is on sys.path)

        batch = self.sizes["jvp_batch"]
        x, tx = self.data(batch), optax.adam(1e-4)
        runs = {}
        for kind in KINDS:
            model = NCSNpp(**dict(self.arch, dropout=0.0), second_time=kind == "meanflow", rngs=nnx.Rngs(0))
            graphdef, params = nnx.split(model)
            t0 = time.perf_counter()
            compiled = train_step(step_losses(graphdef)[kind], tx).lower(params, tx.init(params), x, jax.random.key(0))
            compiled = compiled.compile()
            compile_s = time.perf_counter() - t0
            holder = {"state": (params, tx.init(params)), "i": 0}

            def one(compiled=compiled, holder=holder):
                holder["i"] += 1
                p, o, loss = compiled(*holder["state"], x, jax.random.key(holder["i"]))
                holder["state"] = (p, o)
                jax.block_until_ready(loss)

            one()
            runs[kind] = (compiled, compile_s, _median_s(one, self.sizes["timed"]))
            del holder
        base = runs["dsm"][2]
        for kind, (compiled, compile_s, med) in runs.items():
            self.emit(
                "jvp",
                kind=kind,
                dtype="float32",
                batch=batch,
                compile_s=round(compile_s, 3),
                median_step_s=float(f"{med:.6g}"),
                vs_dsm=round(med / base, 3),
                program_memory_gib=_program_memory_gib(compiled),
            )

    def consistency(self):
        if "consistency" not in sampling.METHODS:
            self.emit("consistency", skipped="sampling.sample has no method='consistency' yet")
            return
        batch = self.sizes["sampler_batch"]
        graphdef, params, rest = self.net("float32")
        score_fn = jax.tree_util.Partial(self.score_fn(graphdef, rest), params)

        def go():
            out, nfe = sampling.sample(
                score_fn, self.sde, (batch,) + self.shape, jax.random.key(0), method="consistency"
            )
            jax.block_until_ready(out)
            return int(nfe)

        nfe = go()
        med = _median_s(go, max(2, self.sizes["timed"] // 5))
        self.emit("consistency", batch=batch, nfe=nfe, img_per_s=round(batch / med, 2))

    def vs_reference(self):
        if not (self.reference and self.dpm_solver):
            self.emit("vs_reference", skipped="needs --reference and --dpm-solver (checkouts of the PyTorch code)")
            return
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vs_reference.py")
        cmd = [sys.executable, script, f"--reference={self.reference}", f"--dpm-solver={self.dpm_solver}"]
        if self.smoke:
            cmd += ["--device=cpu", "--rounds=1", "--only=forward,dpm_solver"]
        else:
            cmd += ["--device=gpu", "--size=cifar10", "--batch=128", "--sample-batch=128", "--likelihood-batch=16"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                rec = json.loads(line)
                rec["what"] = rec.pop("figure")
                rec.pop("device", None)
                self.emit("vs_reference", **rec)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny network and sizes (CPU, < 60 s)")
    parser.add_argument("--only", default=",".join(FIGURES), help=f"comma list of figures among {FIGURES}")
    parser.add_argument("--reference", default=None, help="score_sde_pytorch checkout (the vs_reference figure)")
    parser.add_argument("--dpm-solver", default=None, dest="dpm_solver", help="LuChengTHU/dpm-solver checkout")
    args = parser.parse_args(argv)
    only = [f.strip() for f in args.only.split(",") if f.strip()]
    unknown = sorted(set(only) - set(FIGURES))
    if unknown:
        raise SystemExit(f"unknown figure(s) {unknown}; expected some of: {', '.join(FIGURES)}")
    if not args.smoke:
        compilation.enable_compilation_cache()  # a rerun of the suite does not recompile
    suite = Suite(args.smoke, args.reference, args.dpm_solver)
    t0 = time.perf_counter()
    for figure in FIGURES:
        if figure in only:
            getattr(suite, figure)()
    print(
        json.dumps(
            {
                "figure": "total",
                "device": suite.device,
                "backend": suite.backend,
                "smoke": args.smoke,
                "wall_s": round(time.perf_counter() - t0, 1),
                "jax": jax.__version__,
                "python": sys.version.split()[0],
                "pid": os.getpid(),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
