"""``--mode=train_classifier``: trains the noise-conditional classifier of ``config.classifier``.

The classifier learns ``p_t(y | x_t)`` by cross-entropy on perturbed data ``x_t = alpha(t) x_0 +
sigma(t) z`` with ``t ~ U[eps, T]`` (the score model's SDE and sampling eps), fed in VE coordinates
(:func:`scoresde.classifiers.classifier_inputs`). The reference released only a pre-trained classifier,
not its training code; this loop reuses the score model's machinery: the ``('data',)`` mesh of
:mod:`scoresde.parallel`, the data pipeline of :mod:`scoresde.data` (labels included), Adam with warm-up
and clipping (:func:`scoresde.train.make_optimizer`), the Orbax :class:`~scoresde.checkpointing.Checkpointer`
and the metrics logger. Everything is written under ``workdir/classifier/`` (checkpoints with params and
EMA params, ``metrics.jsonl``, ``eval_results.json``), next to the score model in ``workdir``; a run
resumes from its newest checkpoint.

``config.classifier`` fields (beyond the architecture ones of :func:`scoresde.classifiers.get_classifier`):
``n_iters``, ``batch_size`` [config.training.batch_size], ``lr`` [2e-4], ``warmup`` [0], ``grad_clip`` [1.0],
``weight_decay`` [0], ``ema_rate`` [0.999], ``log_freq`` [50], ``snapshot_freq`` [n_iters],
``eval_times`` [(eps, 0.25, 0.5)] (test accuracy at these ``t`` is written at the end).

Example:
    python -m scoresde.main --config=configs/digits_vp_cond.py --workdir=runs/digits_cond --mode=train_classifier
"""

from __future__ import annotations

import json
import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from scoresde import classifiers, parallel
from scoresde import data as data_lib
from scoresde.checkpointing import Checkpointer
from scoresde.metrics_log import MetricsLogger
from scoresde.sde import batch_mul

__all__ = ["GUIDANCE", "classifier_dir", "classifier_loss", "train_classifier", "load_classifier",
           "sample_class_labels", "guided_score_fn"]

GUIDANCE = ("none", "cfg", "classifier")

log = logging.getLogger(__name__)


def classifier_dir(workdir: str) -> str:
    """Where the classifier of a run lives: ``workdir/classifier``."""
    return os.path.join(workdir, "classifier")


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


def _optim_config(c):
    return ml_collections.ConfigDict({"optim": {
        "optimizer": "Adam", "lr": float(c.get("lr", 2e-4)), "warmup": int(c.get("warmup", 0)),
        "grad_clip": float(c.get("grad_clip", 1.0)), "weight_decay": float(c.get("weight_decay", 0.0)),
        "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}})


def load_classifier(workdir: str, config, *, ema: bool = True):
    """Builds :func:`~scoresde.classifiers.get_classifier` and loads the newest checkpoint of ``workdir/classifier``.

    Returns:
        ``(classifier, step)``.

    Raises:
        FileNotFoundError: no classifier checkpoint (train one with ``--mode=train_classifier``).
    """
    model = classifiers.get_classifier(config, rngs=nnx.Rngs(int(config.get("seed", 0))))
    state = nnx.state(model, nnx.Param)
    target = state.to_pure_dict()
    ckpt = Checkpointer(classifier_dir(workdir), max_to_keep=None, async_save=False)
    try:
        restored = ckpt.restore_latest(params=None if ema else target, ema_params=target if ema else None)
    finally:
        ckpt.close()
    if restored is None:
        raise FileNotFoundError(f"no classifier checkpoint in {classifier_dir(workdir)}; train one with "
                                f"--mode=train_classifier")
    nnx.replace_by_pure_dict(state, restored["ema_params" if ema else "params"])
    nnx.update(model, state)
    return model, int(restored["meta"]["step"])


def sample_class_labels(config, batch: int) -> jax.Array:
    """The ``(batch,)`` classes to sample: ``config.sampling.class_label``, or, if it is negative, every
    class in turn in contiguous blocks (``y_i = i K // batch``), so a square grid shows one class per row."""
    k = int(config.model.get("num_classes", 0) or config.get("classifier", {}).get("num_classes", 0) or 0)
    label = int(config.sampling.get("class_label", -1))
    if k <= 0:
        raise ValueError("class-guided sampling needs config.model.num_classes > 0 (or config.classifier.num_classes)")
    if label >= k:
        raise ValueError(f"config.sampling.class_label={label} is not a class of this model (0..{k - 1}, or -1 for all)")
    if label >= 0:
        return jnp.full((batch,), label, jnp.int32)
    return (jnp.arange(batch) * k // batch).astype(jnp.int32)


def guided_score_fn(config, model, sde, batch: int, *, classifier=None, scale=None):
    """The sample mode's score: ``config.sampling.guidance`` ∈ none | cfg | classifier applied to ``model``.

    Args:
        config: the run config (``sampling.guidance``, ``sampling.class_label``, ``sampling.guidance_scale``).
        model: the score network (class-conditional for ``cfg``, null label ``num_classes``).
        sde: the SDE.
        batch: the batch size (for the labels).
        classifier: the noise-conditional classifier for ``classifier`` guidance (see :func:`load_classifier`).
        scale: the guidance scale, possibly a traced array (``w`` for cfg, ``scale`` for the classifier);
            ``config.sampling.guidance_scale`` if ``None``.

    Raises:
        ValueError: unknown guidance, or classifier guidance without a classifier.
    """
    from scoresde import guidance  # noqa: PLC0415
    from scoresde.train import make_score_fn  # noqa: PLC0415

    kind = str(config.sampling.get("guidance", "none")).lower()
    if kind not in GUIDANCE:
        raise ValueError(f"unknown config.sampling.guidance {kind!r}; expected one of: {', '.join(GUIDANCE)}")
    if kind == "none":
        return make_score_fn(model, sde, config)
    scale = config.sampling.get("guidance_scale", 1.0) if scale is None else scale
    y = sample_class_labels(config, batch)
    if kind == "cfg":
        def cond_score_fn(x, t, labels):
            return make_score_fn(model, sde, config, y=labels)(x, t)

        return guidance.classifier_free_guidance(cond_score_fn, y, scale, int(config.model.num_classes))
    if classifier is None:
        raise ValueError("config.sampling.guidance='classifier' needs a trained classifier in workdir/classifier "
                         "(--mode=train_classifier)")
    return guidance.classifier_guidance(make_score_fn(model, sde, config),
                                        classifiers.classifier_log_prob_fn(classifier, sde), y, scale)


def train_classifier(config, workdir: str) -> dict:
    """Trains ``config.classifier`` on ``config.data`` perturbed by the config's SDE; see the module docstring.

    Returns:
        A summary dict (``step``, ``loss``, ``accuracy``, ``test_accuracy`` per eval time).
    """
    from scoresde.train import check_workdir, make_optimizer, make_sde, sampling_eps  # noqa: PLC0415

    c = config.classifier
    out_dir = classifier_dir(workdir)
    check_workdir(out_dir)
    mesh = parallel.make_mesh()
    batch_size = int(c.get("batch_size", 0) or config.training.batch_size)
    parallel.check_batch_size(batch_size, mesh, "config.classifier.batch_size")
    sde = make_sde(config)
    eps = sampling_eps(sde)
    seed = int(config.get("seed", 0))
    root = jax.random.fold_in(jax.random.key(seed), 11)
    model = classifiers.get_classifier(config, rngs=nnx.Rngs(seed))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = make_optimizer(_optim_config(c))
    ema_rate = float(c.get("ema_rate", 0.999))
    state = {"params": params, "ema": jax.tree.map(jnp.copy, params), "opt_state": tx.init(params),
             "step": jnp.zeros((), jnp.int32)}
    n_iters = int(c.n_iters)
    snapshot_freq = int(c.get("snapshot_freq", 0) or n_iters)
    ckpt = Checkpointer(out_dir, max_to_keep=2, keep_period=snapshot_freq)
    restored = ckpt.restore_latest(params=params.to_pure_dict(), ema_params=params.to_pure_dict(),
                                   opt_state=state["opt_state"])
    if restored is not None:
        p, e = jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, params)
        nnx.replace_by_pure_dict(p, restored["params"])
        nnx.replace_by_pure_dict(e, restored["ema_params"])
        state.update(params=p, ema=e, step=jnp.asarray(restored["meta"]["step"], jnp.int32),
                     opt_state=restored["opt_state"] if restored["opt_state"] is not None else tx.init(p))
    state = parallel.replicate(mesh, state)
    start = int(state["step"])

    def step_fn(state, batch):
        key = jax.random.fold_in(root, state["step"])

        def objective(p):
            return classifier_loss(nnx.merge(graphdef, p, rest), sde, batch["image"], batch["label"], key, eps=eps)

        (loss, acc), grads = jax.value_and_grad(objective, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        ema = jax.tree.map(lambda e, q: e * ema_rate + q * (1.0 - ema_rate), state["ema"], params)
        new = {"params": params, "ema": ema, "opt_state": opt_state, "step": state["step"] + 1}
        return new, {"loss": loss, "accuracy": acc}

    repl, data = parallel.replicated_sharding(mesh), parallel.data_sharding(mesh)
    step_jit = jax.jit(step_fn, in_shardings=(repl, data), out_shardings=(repl, repl), donate_argnums=0)
    logger = MetricsLogger(out_dir, enabled=jax.process_index() == 0, tensorboard=bool(c.get("tensorboard", False)))
    logger.truncate_after(start)
    it = data_lib.get_dataset(config, split="train", batch_size=batch_size, start_step=start)
    log_freq = int(c.get("log_freq", 50))
    last = {"loss": float("nan"), "accuracy": float("nan")}
    for step in range(start + 1, n_iters + 1):
        state, metrics = step_jit(state, parallel.shard_batch(mesh, next(it)))
        if step % log_freq == 0 or step == n_iters:
            last = {k: float(v) for k, v in jax.device_get(metrics).items()}
            logger.write(step, last)
        if step % snapshot_freq == 0 or step == n_iters:
            ckpt.save(step, params=state["params"], ema_params=state["ema"], opt_state=state["opt_state"],
                      config=config)
    ckpt.close()
    result = {"step": n_iters, **last, "test_accuracy": _test_accuracy(config, c, sde, eps, (graphdef, rest), state["ema"],
                                                                      mesh, batch_size)}
    if jax.process_index() == 0:
        with open(os.path.join(out_dir, "eval_results.json"), "w") as f:
            json.dump(result, f, indent=1)
    logger.close()
    log.info("classifier: %s", result)
    return result


def _test_accuracy(config, c, sde, eps, split_model, params, mesh, batch_size) -> dict:
    """Accuracy of the EMA classifier on the test split at a few times ``t`` (one fixed noise draw each)."""
    times = [float(t) for t in c.get("eval_times", (eps, 0.25, 0.5))]
    graphdef, rest = split_model

    @jax.jit
    def correct(params, x, y, t, key):
        model = nnx.merge(graphdef, params, rest)
        tv = jnp.full((x.shape[0],), t, x.dtype)
        xt = batch_mul(sde.alpha(tv), x) + batch_mul(sde.sigma(tv), jax.random.normal(key, x.shape, x.dtype))
        xv, level = classifiers.classifier_inputs(sde, xt, tv)
        return jnp.sum(jnp.argmax(model(xv, level), -1) == y)

    out = {}
    key = jax.random.key(int(config.get("seed", 0)) + 17)
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
