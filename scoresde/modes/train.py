"""``--mode=train``: trains the score model of a config, read top to bottom.

One jitted step over a ``('data',)`` mesh (parameters replicated, batch split; no ``pmap``) computes
the loss and gradients, skips the update if either is non-finite, applies Adam with linear warm-up and
global-norm clipping, and updates the EMA (:mod:`scoresde.train_state`). Randomness is
``fold_in(key, step)`` and data batches are a function of the step, so a run resumed from a checkpoint
reproduces the uninterrupted run exactly (:mod:`scoresde.training`).
"""

from __future__ import annotations

import os

import jax
from flax import nnx

from scoresde import build, parallel, runlog, train_state
from scoresde import data as data_lib
from scoresde.checkpointing import Checkpointer, check_workdir
from scoresde.training import NonFiniteError, Snapshots, conclude_training, open_metrics, resume, run_loop

__all__ = ["train", "make_train_step", "make_eval_step", "NonFiniteError"]


def make_train_step(config, sde, graphdef, rest, tx, mesh, key):
    """The jitted ``step(state, batch) -> (state, metrics)`` over the mesh (``key``: the training key)."""
    loss_fn = build.make_loss_fn(config, sde)
    ema_rate = float(config.model.get("ema_rate", 0.999))
    max_nonfinite = int(config.training.get("max_nonfinite", 10))
    schedule = build.lr_schedule(float(config.optim.lr), int(config.optim.get("warmup", 0)))

    to_model_space = build.batch_transform(config, mesh)  # a latent model encodes its batch here

    def step_fn(state, batch):
        step_key = jax.random.fold_in(key, state["step"])
        batch = to_model_space(batch, build.purpose_key(step_key, "latent_encode"))
        k_loss, k_drop = jax.random.split(step_key)
        y = build.class_labels(config, batch, build.purpose_key(step_key, "label_dropout"))

        def objective(params):
            model = nnx.merge(graphdef, params, rest)
            return loss_fn(lambda x, labels: model(x, labels, y, train=True, key=k_drop), batch["image"], k_loss)

        (loss, _), grads = jax.value_and_grad(objective, has_aux=True)(state["params"])
        new_state, stats = train_state.guarded_update(state, grads, loss, tx, ema_rate=ema_rate,
                                                      max_nonfinite=max_nonfinite)
        return new_state, {"loss": loss, "lr": schedule(state["updates"]), **stats}

    repl, data = parallel.replicated_sharding(mesh), parallel.data_sharding(mesh)
    return jax.jit(step_fn, in_shardings=(repl, data), out_shardings=(repl, repl), donate_argnums=0)


def make_eval_step(config, sde, graphdef, rest, mesh, key):
    """The jitted ``eval_step(ema_params, batch, step) -> loss`` (EMA parameters, as the reference)."""
    loss_fn = build.make_loss_fn(config, sde)

    to_model_space = build.batch_transform(config, mesh)

    def eval_fn(params, batch, step):
        batch = to_model_space(batch, build.purpose_key(jax.random.fold_in(key, step), "latent_encode"))
        model = nnx.merge(graphdef, params, rest)
        return loss_fn(lambda x, labels: model(x, labels), batch["image"], jax.random.fold_in(key, step))[0]

    repl, data = parallel.replicated_sharding(mesh), parallel.data_sharding(mesh)
    return jax.jit(eval_fn, in_shardings=(repl, data, None), out_shardings=repl)


def train(config, workdir: str) -> dict:
    """Trains ``config`` in ``workdir``, resuming from its newest valid checkpoint.

    Returns:
        A summary dict (``step``, ``loss``, ``preempted``).

    Raises:
        ValueError: bad config values (batch size, names, shapes).
        NonFiniteError: after ``config.training.max_nonfinite`` consecutive non-finite steps.
    """
    check_workdir(workdir)
    tc = config.training
    data_lib.check_dataset_name(config)
    mesh = parallel.make_mesh()
    batch_size = int(tc.batch_size)
    parallel.check_batch_size(batch_size, mesh, "config.training.batch_size")
    sde = build.make_sde(config)
    build.make_loss_fn(config, sde)  # validates the objective before anything slow
    seed = int(config.get("seed", 0))
    root = build.root_key(config)

    model = build.build_model(config, seed=seed)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = build.optimizer_from_config(config)
    state = train_state.init_state(params, tx)
    snapshot_freq = int(tc.snapshot_freq)
    ckpt = Checkpointer(workdir, max_to_keep=int(tc.get("keep_checkpoints", 3)), keep_period=snapshot_freq)
    try:
        state, meta, changes = resume(ckpt, state, tx, config, workdir)
        start = int(state["step"])
        runlog.announce(f"scoresde train: {config.model.name} on {config.data.dataset}, sde {tc.sde}", {
            "devices": f"{jax.device_count()} x {jax.devices()[0].platform} ({jax.process_count()} process(es))",
            "params": f"{sum(x.size for x in jax.tree.leaves(params)):,}",
            "data": data_lib.describe(config),
            "steps": f"{int(tc.n_iters):,} at batch {batch_size}",
            "workdir": os.path.abspath(workdir),
            "resuming": f"from step {start}" if meta is not None else None,
        })
        state = parallel.replicate(mesh, state)
        logger = open_metrics(workdir, start, tensorboard=bool(tc.get("tensorboard", True)), config_changes=changes)
        step_fn = make_train_step(config, sde, graphdef, rest, tx, mesh, build.purpose_key(root, "train"))
        eval_fn = make_eval_step(config, sde, graphdef, rest, mesh, build.purpose_key(root, "eval"))
        eval_iter = None

        def evaluate(s, step):
            nonlocal eval_iter
            if eval_iter is None:
                eval_iter = data_lib.get_dataset(config, split="test", batch_size=batch_size, shuffle=True, repeat=True)
            return {"eval_loss": float(eval_fn(s["ema"], parallel.shard_batch(mesh, next(eval_iter)), step))}

        snapshot = Snapshots(config, sde, graphdef, rest, mesh, build.purpose_key(root, "snapshot"), workdir,
                             logger=logger)

        def save(s, step):
            train_state.save_state(ckpt, s, step, config=config)

        try:
            out = run_loop(state=state, step_fn=step_fn, start=start, n_iters=int(tc.n_iters), batch_size=batch_size,
                           batches=data_lib.get_dataset(config, split="train", batch_size=batch_size, start_step=start),
                           mesh=mesh, save=save, logger=logger, log_freq=int(tc.log_freq),
                           ckpt_freq=int(tc.get("snapshot_freq_for_preemption", snapshot_freq)),
                           snapshot_freq=snapshot_freq, max_nonfinite=int(tc.get("max_nonfinite", 10)),
                           eval_freq=int(tc.get("eval_freq", 0)), evaluate=evaluate,
                           snapshot=snapshot if bool(tc.get("snapshot_sampling", True)) else None,
                           progress=bool(tc.get("progress", True)), check=ckpt.check)
            ckpt.wait()  # a failed last save is an error, not a silent loss
        finally:
            logger.close()
    finally:
        ckpt.close()
    conclude_training(out, "trained", workdir, latest_samples=snapshot.latest,
                      next_command=runlog.command("sample", workdir))
    return {"step": out["step"], "loss": out["loss"], "preempted": out["preempted"]}
