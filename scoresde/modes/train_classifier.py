"""``--mode=train_classifier``: trains the noise-conditional classifier of ``config.classifier``.

The classifier learns ``p_t(y | x_t)`` by cross-entropy on perturbed data ``x_t = alpha(t) x_0 +
sigma(t) z`` (for a latent model, ``x_0`` is the encoded image: the classifier guides the latent sampler) with ``t ~ U[eps, T]`` (the score model's SDE and sampling eps), fed in VE coordinates
(:func:`scoresde.models.classifiers.classifier_inputs`). The reference released only a pre-trained classifier,
not its training code. Everything is written under ``workdir/classifier/`` (checkpoints with params and
EMA params, ``metrics.jsonl``, ``eval_results.json``), next to the score model in ``workdir``; a run
resumes from its newest checkpoint, with the same loop as ``train`` (:mod:`scoresde.training`).

``config.classifier`` fields (beyond the architecture ones of :func:`scoresde.build.get_classifier`):
``n_iters``, ``batch_size`` [config.training.batch_size], ``lr`` [2e-4], ``warmup`` [0], ``grad_clip`` [1.0],
``weight_decay`` [0], ``ema_rate`` [0.999], ``log_freq`` [50], ``snapshot_freq`` [n_iters],
``eval_times`` [(eps, 0.25, 0.5)] (test accuracy at these ``t`` is written at the end).

Example:
    python -m scoresde.main --config=configs/digits_vp_cond.py --workdir=runs/digits_cond --mode=train_classifier
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from scoresde import build, parallel, runlog, train_state
from scoresde.models import classifiers
from scoresde import data as data_lib
from scoresde.checkpointing import Checkpointer, check_workdir
from scoresde.sde import batch_mul
from scoresde.training import open_metrics, resume, run_loop

__all__ = ["classifier_loss", "train_classifier"]


def classifier_loss(model, sde, x0, y, key, *, eps: float):
    """Cross-entropy of ``model`` on ``x_t`` with ``t ~ U[eps, T]``; returns ``(loss, accuracy)``."""
    kt, kz = jax.random.split(key)
    b = x0.shape[0]
    t = jax.random.uniform(kt, (b,), minval=eps, maxval=sde.T)
    z = jax.random.normal(kz, x0.shape, x0.dtype)
    level = sde.sigma(t) / sde.alpha(t)
    logits = model(x0 + batch_mul(level, z), level)  # = classifier_inputs(sde, x_t, t), without dividing by alpha
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
    return loss, jnp.mean(jnp.argmax(logits, -1) == y)


def train_classifier(config, workdir: str) -> dict:
    """Trains ``config.classifier`` on ``config.data`` perturbed by the config's SDE; see the module docstring.

    Returns:
        A summary dict (``step``, ``loss``, ``accuracy``, ``test_accuracy`` per eval time).
    """
    c = config.classifier
    out_dir = build.classifier_dir(workdir)
    check_workdir(out_dir)
    mesh = parallel.make_mesh()
    batch_size = int(c.get("batch_size", 0) or config.training.batch_size)
    parallel.check_batch_size(batch_size, mesh, "config.classifier.batch_size")
    sde = build.make_sde(config)
    eps = build.sampling_eps(sde)
    seed = int(config.get("seed", 0))
    root = build.root_key(config)
    key = build.purpose_key(root, "classifier")
    model = build.get_classifier(config, rngs=nnx.Rngs(seed))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = build.make_optimizer(**build.optimizer_settings(c, grad_clip=1.0, lr=2e-4))
    ema_rate = float(c.get("ema_rate", 0.999))
    state = train_state.init_state(params, tx)
    n_iters = int(c.n_iters)
    snapshot_freq = int(c.get("snapshot_freq", 0) or n_iters)
    ckpt = Checkpointer(out_dir, max_to_keep=2, keep_period=snapshot_freq)
    try:
        state, meta, _ = resume(ckpt, state, tx, config, out_dir, kind="classifier")
        start = int(state["step"])
        runlog.announce(f"scoresde train_classifier: {c.name} on {config.data.dataset}, sde {config.training.sde}", {
            "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
            "params": f"{sum(x.size for x in jax.tree.leaves(params)):,}",
            "data": data_lib.describe(config),
            "steps": f"{n_iters:,} at batch {batch_size}",
            "workdir": os.path.abspath(out_dir),
            "resuming": f"from step {start}" if meta is not None else None,
        })
        state = parallel.replicate(mesh, state)

        to_model_space = build.batch_transform(config, mesh)  # a latent model's classifier reads latents

        def step_fn(state, batch):
            step_key = jax.random.fold_in(key, state["step"])
            batch = to_model_space(batch, build.purpose_key(step_key, "latent_encode"))

            def objective(p):
                return classifier_loss(nnx.merge(graphdef, p, rest), sde, batch["image"], batch["label"], step_key,
                                       eps=eps)

            (loss, acc), grads = jax.value_and_grad(objective, has_aux=True)(state["params"])
            new_state, stats = train_state.guarded_update(state, grads, loss, tx, ema_rate=ema_rate,
                                                          max_nonfinite=int(c.get("max_nonfinite", 10)))
            return new_state, {"loss": loss, "accuracy": acc, **stats}

        repl, data = parallel.replicated_sharding(mesh), parallel.data_sharding(mesh)
        step_jit = jax.jit(step_fn, in_shardings=(repl, data), out_shardings=(repl, repl), donate_argnums=0)
        logger = open_metrics(out_dir, start, tensorboard=bool(c.get("tensorboard", False)))
        try:
            out = run_loop(state=state, step_fn=step_jit, start=start, n_iters=n_iters, batch_size=batch_size,
                           batches=data_lib.get_dataset(config, split="train", batch_size=batch_size, start_step=start),
                           mesh=mesh, logger=logger, log_freq=int(c.get("log_freq", 50)), ckpt_freq=snapshot_freq,
                           snapshot_freq=snapshot_freq, max_nonfinite=int(c.get("max_nonfinite", 10)),
                           save=lambda s, step: train_state.save_state(ckpt, s, step, config=config),
                           progress=bool(config.training.get("progress", True)), desc="classifier",
                           config_hint="config.classifier", check=ckpt.check)
            ckpt.wait()
        finally:
            logger.close()
    finally:
        ckpt.close()
    last = {k: out["last"][k] for k in ("loss", "accuracy") if k in out["last"]}
    result = {"step": out["step"], **last,
              "test_accuracy": _test_accuracy(config, c, sde, eps, (graphdef, rest), out["state"]["ema"], mesh,
                                              batch_size, build.purpose_key(root, "classifier_eval"))}
    if jax.process_index() == 0:
        with open(os.path.join(out_dir, "eval_results.json"), "w") as f:
            json.dump(result, f, indent=1)
    runlog.conclude(f"classifier trained to step {out['step']}", results={
        "test accuracy": result["test_accuracy"], "checkpoints": os.path.join(out_dir, "checkpoints")},
        next_command=runlog.command("sample", workdir, "--config.sampling.guidance=classifier"))
    return result


def _test_accuracy(config, c, sde, eps, split_model, params, mesh, batch_size, key) -> dict:
    """Accuracy of the EMA classifier on the test split at a few times ``t`` (one fixed noise draw each)."""
    times = [float(t) for t in c.get("eval_times", (eps, 0.25, 0.5))]
    graphdef, rest = split_model

    to_model_space = build.batch_transform(config, mesh)

    @jax.jit
    def correct(params, x, y, t, key):
        model = nnx.merge(graphdef, params, rest)
        x = to_model_space({"image": x}, build.purpose_key(key, "latent_encode"))["image"]
        tv = jnp.full((x.shape[0],), t, x.dtype)
        xt = batch_mul(sde.alpha(tv), x) + batch_mul(sde.sigma(tv), jax.random.normal(key, x.shape, x.dtype))
        xv, level = classifiers.classifier_inputs(sde, xt, tv)
        return jnp.sum(jnp.argmax(model(xv, level), -1) == y)

    out = {}
    for t in times:
        hits, n = 0, 0
        for i, batch in enumerate(data_lib.get_dataset(config, split="test", batch_size=batch_size, shuffle=False,
                                                       repeat=False)):
            if i >= int(c.get("num_eval_batches", 8)):
                break
            batch = parallel.shard_batch(mesh, batch)
            hits += int(correct(params, batch["image"], batch["label"], t, jax.random.fold_in(key, i)))
            n += batch["label"].shape[0]
        out[f"t={t:g}"] = hits / max(n, 1)
    return out
