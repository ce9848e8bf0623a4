"""``--mode=reflow``: the next rectified flow (Liu et al., "Flow Straight and Fast", ICLR 2023, Sec. 2.3).

Read top to bottom:

1. **Couplings.** The trained flow in ``config.reflow.source_workdir`` (its EMA weights, the same config's
   network) maps prior draws ``z`` to samples ``x`` with a deterministic sampler (``config.reflow.method``,
   ``steps``, ``order``; :func:`scoresde.fewstep.reflow.make_couplings`). ``config.reflow.num_pairs`` pairs are written
   in chunks to ``workdir/reflow/couplings_<i>.npz``, each atomically and from its own key, so an interrupted
   run regenerates only the missing chunks and gets the same pairs. Pairs are in the network's data space
   (scaled, not mapped back to [0, 1]). A conditioned flow (class labels, captions or vectors) makes chunk ``i``'s
   pairs under the conditions of the ``i``-th training batch (the entries ``--mode=train`` reads), stores them in
   the chunk beside the pairs (``label`` / ``caption`` / ``cond``), and reads the source with classifier-free
   guidance of weight ``config.reflow.source_guidance`` (0: the conditional flow itself).
2. **Training.** The next flow is trained by flow matching on the fixed pairs
   (:func:`scoresde.build.reflow_loss_fn`), initialised from the source's EMA weights
   (``config.reflow.init_from_source``), by the harness of every trainer (:mod:`scoresde.training`):
   checkpoints, exact resume (batch ``k`` is a function of ``k``), ``metrics.jsonl``, snapshots, SIGTERM. A
   conditioned flow learns each pair under its own condition, dropped to the null condition with
   ``training.p_uncond`` as ``--mode=train`` drops it, so the next flow is guided by the same CFG.

Then ``--mode=sample`` on ``workdir`` samples the new flow (one or two Euler steps, ``method=ddim``, already
give what the source needed many steps for).
"""

from __future__ import annotations

import json
import math
import os

import jax
import numpy as np
from flax import nnx

from scoresde import build, images, parallel, runlog, train_state, training
from scoresde import data as data_lib
from scoresde.fewstep import reflow

__all__ = ["condition_key", "couplings_dir", "generate_couplings", "reflow_mode"]


def couplings_dir(workdir: str) -> str:
    """Where the couplings of a reflow run live: ``workdir/reflow``."""
    return os.path.join(workdir, "reflow")


def _source_workdir(config, workdir: str) -> str:
    source = str(config.reflow.source_workdir)
    if not source:
        raise ValueError(
            "--mode=reflow needs config.reflow.source_workdir: the workdir of a trained flow "
            "(e.g. --config.reflow.source_workdir=runs/toy2d_fm)"
        )
    if os.path.abspath(source) == os.path.abspath(workdir):
        raise ValueError(
            f"config.reflow.source_workdir={source!r} is the reflow workdir itself; the next flow needs "
            f"its own workdir (its checkpoints would mix with the source's)"
        )
    return source


def generate_couplings(config, workdir: str, source: str) -> dict:
    """Writes the missing chunks of ``config.reflow.num_pairs`` couplings; returns ``{noise, samples, nfe, ...}``.

    Raises:
        ValueError: a bad ``config.reflow`` value, or chunks on disk made by another source / sampler.
    """
    r = config.reflow
    num_pairs = int(r.num_pairs)
    if num_pairs <= 0:
        raise ValueError(f"config.reflow.num_pairs must be positive; got {num_pairs}")
    mesh = parallel.make_mesh()
    batch = min(int(r.batch_size or config.eval.sample_batch_size or config.eval.batch_size), num_pairs)
    parallel.check_batch_size(batch, mesh, "config.reflow.batch_size")
    method, options = build.reflow_sampler_options(config)
    w = build.reflow_source_guidance(config)
    score_model = build.make_score_model(config)
    sde = score_model.sde
    graphdef, params, rest, src_step = build.load_ema(config, source, mesh)
    shape = (batch,) + data_lib.data_shape(config)
    identity = {
        "source": os.path.abspath(source),
        "source_step": src_step,
        "method": method,
        "options": options,
        "batch": batch,
    }
    name = condition_key(config)
    conditions = None
    if name is not None:
        # chunk i's conditions: those of the i-th global training batch (the entries --mode=train reads)
        conditions = data_lib.get_dataset(config, split="train", batch_size=batch, start_step=0)
        identity.update(condition=build.conditioning_kind(config), data_seed=int(config.seed), source_guidance=w)

    def fn(params, key, batch):
        model = nnx.merge(graphdef, params, rest)
        y = None if batch is None else build.class_labels(config, batch, jax.random.fold_in(key, 2), drop=False)
        z, x, n = reflow.make_couplings(
            build.reflow_source_score(config, score_model, model, y, w),
            sde,
            shape,
            key,
            method=method,
            eps=build.sampling_eps(sde),
            **options,
        )
        return z, x, n, y

    gen = jax.jit(fn)
    out_dir = couplings_dir(workdir)
    key = build.purpose_key(build.root_key(config), "reflow")
    noises, samples, conds, nfe, made = [], [], [], 0, 0
    for i in range(math.ceil(num_pairs / batch)):
        path = os.path.join(out_dir, f"couplings_{i:05d}.npz")
        batch_i = None
        if conditions is not None:
            batch_i = {k: v for k, v in next(conditions).items() if k in ("label", "caption", "cond")}
        if os.path.exists(path):
            with np.load(path) as f:
                found = json.loads(str(f["identity"]))
                if found != json.loads(json.dumps(identity)):
                    raise ValueError(
                        f"{path} was made by {found}, not by this run's {identity}; remove "
                        f"{out_dir} to regenerate the couplings"
                    )
                z, x, n = f["noise"], f["samples"], int(f["nfe"])
                y = f[name] if name is not None else None
        else:
            sharded = None if batch_i is None else parallel.shard_batch(mesh, batch_i)
            z, x, n, y = gen(params, jax.random.fold_in(key, i), sharded)
            z, x, n = parallel.to_host(z), parallel.to_host(x), int(n)
            y = None if y is None else parallel.to_host(y)
            if not (np.all(np.isfinite(z)) and np.all(np.isfinite(x))):
                raise FloatingPointError(
                    f"non-finite couplings from {source} (step {src_step}) with {method} "
                    f"{options}; check the source run"
                )
            if jax.process_index() == 0:
                extra = {} if y is None else {name: y}
                images.save_npz_atomic(
                    path, noise=z, samples=x, nfe=np.int64(n), identity=np.array(json.dumps(identity)), **extra
                )
            made += 1
        noises.append(z)
        samples.append(x)
        conds.append(y)
        nfe = n
    return {
        "noise": np.concatenate(noises)[:num_pairs],
        "samples": np.concatenate(samples)[:num_pairs],
        "conditions": None if name is None else np.concatenate(conds)[:num_pairs],
        "condition_key": name,
        "nfe": nfe,
        "generated_chunks": made,
        "source_step": src_step,
        "method": method,
        "options": options,
    }


def condition_key(config) -> str | None:
    """The batch entry that holds a coupling's condition (``label``, ``caption`` or ``cond``: the entries
    ``--mode=train`` reads), ``None`` for an unconditional flow."""
    kind = build.conditioning_kind(config)
    if kind == "none":
        return None
    return build.CONDITIONING_KEYS.get(kind, "label")


def _pair_batches(pairs: dict, batch_size: int, seed: int, start_step: int):
    """This process's slice of batch ``k`` for ``k >= start_step``: ``batch_size`` pairs (with their conditions)
    drawn without replacement by a generator seeded with ``(seed, k)``, so a resumed run reads the same batches."""
    noise, samples, name = pairs["noise"], pairs["samples"], pairs.get("condition_key")
    n, procs, me = len(noise), jax.process_count(), jax.process_index()
    step = start_step
    while True:
        idx = np.random.default_rng([seed, step]).choice(n, batch_size, replace=batch_size > n)
        idx = idx.reshape(procs, -1)[me]
        batch = {"image": samples[idx], "noise": noise[idx]}
        if name is not None:
            batch[name] = pairs["conditions"][idx]
        yield batch
        step += 1


def reflow_mode(config, workdir: str) -> dict:
    """Makes the couplings of ``config.reflow.source_workdir``'s flow and trains the next flow in ``workdir``.

    Returns:
        A summary dict (``step``, ``loss``, ``preempted``, ``num_pairs``, ``coupling_nfe``).

    Raises:
        ValueError: bad ``config.reflow`` / ``config.training`` values (objective, source, sizes).
    """
    config = build.with_defaults(config)
    build.refuse_augmentation(config, "reflow")
    run = training.prepare(config, workdir)
    sde = build.make_sde(config)
    loss_fn = build.reflow_loss_fn(config, sde)  # validates the objective before anything slow
    build.reflow_source_guidance(config)
    source = _source_workdir(config, workdir)
    batch_size = run.settings.batch_size

    pairs = generate_couplings(config, workdir, source)
    model = build.build_model(config, seed=int(config.seed))
    if bool(config.reflow.init_from_source):
        model, _ = build.load_model(source, config, ema=True)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = build.optimizer_from_config(config)

    def loss(params, batch, key, step):
        del step
        k_loss, k_drop = jax.random.split(key)
        net = nnx.merge(graphdef, params, rest)
        # a conditioned flow: each pair's own condition, dropped to the null one with training.p_uncond (CFG)
        y = build.class_labels(config, batch, jax.random.fold_in(key, 2))
        value, _ = loss_fn(
            lambda x, labels: net(x, labels, y, train=True, key=k_drop), batch["image"], batch["noise"], k_loss
        )
        return value, {}

    out = training.fit(
        run,
        training.Trainer(
            title=f"scoresde reflow: {config.model.name} on couplings of {source}",
            facts={
                "couplings": f"{len(pairs['noise']):,} from step {pairs['source_step']} by {pairs['method']} "
                f"{pairs['options']} ({pairs['nfe']} NFE each; {pairs['generated_chunks']} chunk(s) "
                f"generated now) in {couplings_dir(workdir)}",
                "init": "source EMA weights" if config.reflow.init_from_source else "fresh",
            },
            desc="reflow",
            init_state=lambda: train_state.init_state(params, tx),
            tx=tx,
            batches=lambda start: _pair_batches(pairs, batch_size, int(config.seed), start),
            loss=loss,
            lr_schedule=build.lr_schedule_from_config(config),
            snapshot=build.Snapshots(
                config, sde, graphdef, rest, run.mesh, run.key("snapshot"), workdir, title="reflow step"
            ),
        ),
    )
    training.conclude_training(
        out,
        "trained the next flow",
        workdir,
        next_command=runlog.command("sample", workdir, "--config.sampling.method=ddim --config.sampling.steps=1"),
    )
    return {
        "step": out["step"],
        "loss": out["loss"],
        "preempted": out["preempted"],
        "num_pairs": len(pairs["noise"]),
        "coupling_nfe": pairs["nfe"],
    }
