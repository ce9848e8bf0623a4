"""``--mode=train``: trains the score model of a config, read top to bottom.

The trainer is the score-matching loss of the config (:func:`scoresde.build.make_loss_fn`) on the training
split; :func:`scoresde.training.fit` runs it: one jitted step over a ``('data',)`` mesh (parameters
replicated, batch split; no ``pmap``) that skips the update if the loss or gradients are non-finite,
applies Adam with linear warm-up and global-norm clipping and updates the EMA (:mod:`scoresde.train_state`).
Randomness is ``fold_in(key, step)`` and data batches are a function of the step, so a run resumed from a
checkpoint reproduces the uninterrupted run exactly.
"""

from __future__ import annotations

import jax
from flax import nnx

from scoresde import build, parallel, runlog, train_state, training
from scoresde import data as data_lib
from scoresde.training import NonFiniteError

__all__ = ["train", "score_loss", "make_train_step", "make_eval_step", "NonFiniteError"]


def score_loss(config, loss_fn, to_model_space, graphdef, rest):
    """The trainer's ``loss(params, batch, key, step) -> (loss, {})``: ``loss_fn`` (from
    :func:`scoresde.build.make_loss_fn`) of the network in training mode, on the batch in model space
    (``to_model_space``: :func:`scoresde.build.batch_transform`) with its class labels."""

    def loss(params, batch, key, step):
        del step
        batch = to_model_space(batch, build.purpose_key(key, "latent_encode"))
        k_loss, k_drop = jax.random.split(key)
        y = build.class_labels(config, batch, build.purpose_key(key, "label_dropout"))
        model = nnx.merge(graphdef, params, rest)
        # EDM's augmentation labels (to_model_space with augment=True); a network without the option (augmentation
        # off: every network, the sequence ones included) is called without them
        aug = batch.get("augment_labels")
        extra = {} if aug is None else {"augment_labels": aug}

        def net(x, labels):
            return model(x, labels, y, train=True, key=k_drop, **extra)

        value, _ = loss_fn(net, batch["image"], k_loss)
        return value, {}

    return loss


def make_train_step(config, sde, graphdef, rest, tx, mesh, key):
    """The jitted ``step(state, batch) -> (state, metrics)`` of ``--mode=train`` over the mesh (``key``: the
    training key), as :func:`scoresde.training.fit` runs it; for benchmarks."""
    to_model_space = build.with_decoder_conditioning(config, build.batch_transform(config, mesh, augment=True))
    loss = score_loss(config, build.make_loss_fn(config, sde), to_model_space, graphdef, rest)
    return training.jit_step(
        tx, build.read_settings(config), mesh, key, loss=loss, lr_schedule=build.lr_schedule_from_config(config)
    )


def make_eval_step(config, loss_fn, to_model_space, graphdef, rest, mesh, key):
    """The jitted ``eval_step(ema_params, batch, step) -> loss`` (EMA parameters, as the reference)."""

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
    config = build.with_defaults(config)
    run = training.prepare(config, workdir)
    data_lib.check_dataset_name(config)
    mesh, batch_size = run.mesh, run.settings.batch_size
    sde = build.make_sde(config)
    loss_fn = build.make_loss_fn(config, sde)  # validates the objective before anything slow
    model = build.build_model(config, seed=int(config.seed))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = build.optimizer_from_config(config)
    # a latent model encodes its batch here; an unCLIP decoder's batch gains its CLIP image embedding
    to_model_space = build.with_decoder_conditioning(config, build.batch_transform(config, mesh))

    eval_step = make_eval_step(config, loss_fn, to_model_space, graphdef, rest, mesh, run.key("eval"))
    eval_batches = None

    def evaluate(state, step):
        nonlocal eval_batches
        if eval_batches is None:
            eval_batches = data_lib.get_dataset(config, split="test", batch_size=batch_size, shuffle=True, repeat=True)
        return {"eval_loss": float(eval_step(state["ema"], parallel.shard_batch(mesh, next(eval_batches)), step))}

    tc = config.training
    out = training.fit(
        run,
        training.Trainer(
            title=f"scoresde train: {config.model.name} on {config.data.dataset}, sde {tc.sde}",
            facts={
                "devices": training.devices_fact(),
                "params": f"{sum(x.size for x in jax.tree.leaves(params)):,}",
                "data": data_lib.describe(config),
            },
            desc="train",
            init_state=lambda: train_state.init_state(params, tx),
            tx=tx,
            batches=lambda start: data_lib.get_dataset(config, split="train", batch_size=batch_size, start_step=start),
            loss=score_loss(
                config,
                loss_fn,
                build.with_decoder_conditioning(config, build.batch_transform(config, mesh, augment=True)),
                graphdef,
                rest,
            ),
            lr_schedule=build.lr_schedule_from_config(config),
            evaluate=evaluate,
            snapshot=build.Snapshots(config, sde, graphdef, rest, mesh, run.key("snapshot"), workdir),
        ),
    )
    training.conclude_training(out, "trained", workdir, next_command=runlog.command("sample", workdir))
    return {"step": out["step"], "loss": out["loss"], "preempted": out["preempted"]}
