"""``--mode=train_classifier``: trains the noise-conditional classifier of ``config.classifier``.

The classifier learns ``p_t(y | x_t)`` by cross-entropy on perturbed data ``x_t = alpha(t) x_0 +
sigma(t) z`` (for a latent model, ``x_0`` is the encoded image: the classifier guides the latent sampler)
with ``t ~ U[eps, T]`` (the score model's SDE and sampling eps), fed in VE coordinates
(:func:`scoresde.guidance.classifier_inputs`). The reference released only a pre-trained
classifier, not its training code. Everything is written under ``workdir/classifier/`` (checkpoints with params and
EMA params, ``metrics.jsonl``, ``eval_results.json``), next to the score model in ``workdir``; a run
resumes from its newest checkpoint, with the harness of every trainer (:mod:`scoresde.training`).

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

from scoresde import build, guidance, parallel, runlog, train_state, training
from scoresde import data as data_lib
from scoresde.sde import batch_mul

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
    config = build.with_defaults(config)
    build.refuse_augmentation(config, "train_classifier")
    run = training.prepare(config, out_dir, "classifier")
    mesh, batch_size = run.mesh, run.settings.batch_size
    sde = build.make_sde(config)
    eps = build.sampling_eps(sde)
    model = build.get_classifier(config, rngs=nnx.Rngs(int(config.seed)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = build.make_optimizer(**build.optimizer_settings(c, grad_clip=1.0, lr=2e-4))
    to_model_space = build.batch_transform(config, mesh)  # a latent model's classifier reads latents

    def loss(params, batch, key, step):
        del step
        batch = to_model_space(batch, build.purpose_key(key, "latent_encode"))
        value, accuracy = classifier_loss(
            nnx.merge(graphdef, params, rest), sde, batch["image"], batch["label"], key, eps=eps
        )
        return value, {"accuracy": accuracy}

    out = training.fit(
        run,
        training.Trainer(
            title=f"scoresde train_classifier: {c.name} on {config.data.dataset}, sde {config.training.sde}",
            facts={
                "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
                "params": f"{sum(x.size for x in jax.tree.leaves(params)):,}",
                "data": data_lib.describe(config),
            },
            desc="classifier",
            init_state=lambda: train_state.init_state(params, tx),
            tx=tx,
            batches=lambda start: data_lib.get_dataset(config, split="train", batch_size=batch_size, start_step=start),
            loss=loss,
        ),
    )
    last = {k: out["last"][k] for k in ("loss", "accuracy") if k in out["last"]}
    result = {
        "step": out["step"],
        **last,
        "test_accuracy": _test_accuracy(
            config,
            c,
            sde,
            eps,
            (graphdef, rest),
            out["state"]["ema"],
            mesh,
            batch_size,
            run.key("classifier_eval"),
            to_model_space,
        ),
    }
    if jax.process_index() == 0:
        with open(os.path.join(out_dir, "eval_results.json"), "w") as f:
            json.dump(result, f, indent=1)
    training.conclude_training(
        out,
        "classifier trained",
        out_dir,
        results={"test accuracy": result["test_accuracy"], "checkpoints": os.path.join(out_dir, "checkpoints")},
        next_command=runlog.command("sample", workdir, "--config.sampling.guidance=classifier"),
    )
    return result


def _test_accuracy(config, c, sde, eps, split_model, params, mesh, batch_size, key, to_model_space) -> dict:
    """Accuracy of the EMA classifier on the test split at a few times ``t`` (one fixed noise draw each)."""
    times = [float(t) for t in c.get("eval_times", (eps, 0.25, 0.5))]
    graphdef, rest = split_model

    @jax.jit
    def correct(params, x, y, t, key):
        model = nnx.merge(graphdef, params, rest)
        x = to_model_space({"image": x}, build.purpose_key(key, "latent_encode"))["image"]
        tv = jnp.full((x.shape[0],), t, x.dtype)
        xt = batch_mul(sde.alpha(tv), x) + batch_mul(sde.sigma(tv), jax.random.normal(key, x.shape, x.dtype))
        xv, level = guidance.classifier_inputs(sde, xt, tv)
        return jnp.sum(jnp.argmax(model(xv, level), -1) == y)

    out = {}
    for t in times:
        hits, n = 0, 0
        for i, batch in enumerate(
            data_lib.get_dataset(config, split="test", batch_size=batch_size, shuffle=False, repeat=False)
        ):
            if i >= int(c.num_eval_batches):
                break
            batch = parallel.shard_batch(mesh, batch)
            hits += int(correct(params, batch["image"], batch["label"], t, jax.random.fold_in(key, i)))
            n += batch["label"].shape[0]
        out[f"t={t:g}"] = hits / max(n, 1)
    return out
