"""What a forward-mode tangent costs in training: a plain DSM step vs an sCT step vs a MeanFlow step, on CPU.

The same digits-size network (8×8×1, batch 128) in three training steps, each ``value_and_grad`` + Adam under
``jax.jit``:

* ``dsm``: continuous denoising score matching on VP (:func:`scoresde.losses.continuous_dsm_loss`, ε-output,
  ``999t`` labels): one forward and one backward pass;
* ``sct``: continuous-time consistency training on TrigFlow (:func:`scoresde.fewstep.scm.sct_loss`, tangent
  normalisation on, no adaptive weight, the TrigFlow time itself as the label, as the configs feed it): one
  ``jax.jvp`` of the network (the target side, stop-gradient) plus the forward and backward pass of the prediction;
* ``meanflow``: MeanFlow on rectified flow (:func:`scoresde.fewstep.meanflow.meanflow_loss`) with the two-time
  network (``second_time=True``, labels ``t`` and ``r``): one ``jax.jvp`` whose primal output is the
  prediction, then its backward pass.

``benchmarks/gpu_suite.py``'s ``jvp`` figure times the same three steps (:func:`step_losses`, :func:`train_step`)
on its CIFAR-10 network.

Networks: DDPM++ as ``configs/digits_vp.py`` builds it (nf 16, ch_mult (1, 2), one block, no attention), and
NCSN++ of the same size (Fourier embedding, FIR, residual input pyramid) with attention at 4×4.

Printed per network and step: the median wall time of a step over ``--runs`` calls after compilation and one
warm-up call (the three steps timed in turn, so a loaded machine slows them alike), its ratio to the DSM step,
and the compiled program's memory (XLA's ``memory_analysis``: temporaries, and temporaries + arguments + outputs).

Run: ``nice -n 10 python benchmarks/jvp_overhead.py [--runs 7] [--batch 128]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import optax
from flax import nnx

from scoresde import parameterization, sde
from scoresde.fewstep import meanflow, scm
from scoresde.losses import continuous_dsm_loss
from scoresde.models.ncsnpp import NCSNpp

DIGITS = dict(image_size=8, num_channels=1, centered=True, nf=16, ch_mult=(1, 2), num_res_blocks=1, dropout=0.0)
KINDS = ("dsm", "sct", "meanflow")
NETWORKS = {
    "ddpm++ (digits_vp)": dict(**DIGITS, attn_resolutions=()),
    "ncsn++ digits-size, attention at 4x4": dict(
        **DIGITS, attn_resolutions=(4,), fir=True, progressive_input="residual", embedding_type="fourier"
    ),
}


def step_losses(graphdef):
    """``{kind: loss(params, batch, key)}`` for :data:`KINDS` on the network ``graphdef`` (its ``nnx.split``)."""
    vp = sde.VPSDE()

    def net(params, x, labels, **kw):
        return nnx.merge(graphdef, params)(x, labels, **kw)

    def dsm(params, batch, key):
        score_fn = parameterization.model_score_fn(
            lambda x, labels: net(params, x, labels), vp, output="eps", time_label="999t"
        )
        return continuous_dsm_loss(score_fn, vp, batch, key)[0]

    def sct(params, batch, key):
        return scm.sct_loss(lambda p, x, t: net(p, x, t), params, batch, key, sigma_data=0.5)[0]

    def mf(params, batch, key):
        u_fn = lambda p, z, r, t: net(p, z, t, r=r)
        return meanflow.meanflow_loss(u_fn, params, batch, key)[0]

    return {"dsm": dsm, "sct": sct, "meanflow": mf}


def train_step(loss_fn, tx):
    """``jit(step)(params, opt_state, batch, key) -> (params, opt_state, loss)``: ``value_and_grad`` + ``tx``."""

    def step(params, opt_state, batch, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, batch {args.batch}, median of {args.runs} steps")
    batch = jax.random.uniform(jax.random.key(0), (args.batch, 8, 8, 1), minval=-1.0, maxval=1.0)
    tx = optax.adam(1e-3)
    for name, kwargs in NETWORKS.items():
        runs = {}
        for kind in KINDS:
            model = NCSNpp(**kwargs, second_time=kind == "meanflow", rngs=nnx.Rngs(0))
            graphdef, params = nnx.split(model)
            step = train_step(step_losses(graphdef)[kind], tx)
            opt_state = tx.init(params)
            t0 = time.perf_counter()
            compiled = step.lower(params, opt_state, batch, jax.random.key(1)).compile()
            compile_s = time.perf_counter() - t0
            params, opt_state, loss = compiled(params, opt_state, batch, jax.random.key(1))  # warm-up
            runs[kind] = dict(compiled=compiled, state=(params, opt_state), mem=compiled.memory_analysis(), times=[])
            runs[kind]["compile_s"] = compile_s
        # the three steps in turn, so that they share the machine's load alike (the ratios are what matters)
        for i in range(args.runs):
            for kind in KINDS:
                r = runs[kind]
                t0 = time.perf_counter()
                params, opt_state, loss = r["compiled"](*r["state"], batch, jax.random.key(2 + i))
                loss.block_until_ready()
                r["times"].append(time.perf_counter() - t0)
                r["state"], r["loss"] = (params, opt_state), float(loss)
        base = statistics.median(runs["dsm"]["times"])
        for kind in KINDS:
            r = runs[kind]
            mem = r["mem"]
            temp = mem.temp_size_in_bytes / 2**20
            total = (mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes) / 2**20
            ms = 1e3 * statistics.median(r["times"])
            print(
                f"{name:38s} {kind:9s} step {ms:8.1f} ms ({ms / 1e3 / base:4.2f}x dsm)   temp {temp:6.1f} MiB"
                f"   temp+args+out {total:6.1f} MiB   compile {r['compile_s']:5.1f} s   loss {r['loss']:.4g}",
                flush=True,
            )


if __name__ == "__main__":
    main()
