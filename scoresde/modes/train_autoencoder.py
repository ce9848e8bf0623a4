"""``--mode=train_autoencoder``: trains the KL autoencoder of ``config.autoencoder``, latent diffusion's first stage.

Trained by the harness every trainer shares (:mod:`scoresde.training`, :mod:`scoresde.train_state`): one
jitted step over a ``('data',)`` mesh, randomness ``fold_in(key, step)``, exact resume from the newest
checkpoint, a checkpoint on SIGTERM, ``workdir/metrics.jsonl`` (``loss``, ``reconstruction``, ``kl``, ``psnr``,
and with a discriminator ``generator``, ``adversarial_weight``, ``disc_loss``; every ``eval_freq`` steps the
held-out ``eval_reconstruction`` / ``eval_psnr``), and reconstruction grids ``workdir/samples/recon_<step>.png``
(odd rows: held-out digits, even rows: their reconstructions).

The loss is :func:`scoresde.latent.autoencoder_loss` (reconstruction + β·KL, optional adversarial term); the
optional patch discriminator (``config.autoencoder.discriminator``) has its own Adam (``disc_lr``) and is
trained with the hinge loss from ``disc_start`` on. Both live in one parameter state (``ae/…``, ``disc/…``)
and one optimizer state (``optax.multi_transform``), so checkpoints and resume are those of ``train``.

After the last step the run computes, with the EMA weights, LDM's latent scale factor
``c = 1 / std`` of the posterior means of ``scale_num_examples`` training images
(:func:`scoresde.latent.scale_by_std`) and the Gaussian decoder's std (:func:`scoresde.latent.fit_decoder_std`,
for the likelihood bound), and writes them atomically with the checkpoint step to ``workdir/autoencoder.json``.
A latent config points at this workdir with ``config.latent.autoencoder_workdir``.

Example:
    python -m scoresde.main --config=configs/digits_ae.py --workdir=runs/digits_ae --mode=train_autoencoder
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from scoresde import build, images, latent, parallel, runlog, train_state, training
from scoresde import data as data_lib
from scoresde.latent import space as latent_space

__all__ = ["train_autoencoder", "autoencoder_objective", "make_optimizer"]


def _part(path) -> str:
    return str(path[0].key)


def _stop_gradient_except(params, part: str):
    """``params`` with the gradient stopped everywhere but under the top-level key ``part`` (``ae`` / ``disc``)."""
    return jax.tree_util.tree_map_with_path(lambda p, v: v if _part(p) == part else jax.lax.stop_gradient(v), params)


def make_optimizer(a) -> optax.GradientTransformation:
    """Adam for ``ae/…`` (``a.lr``, ``beta1`` [0.5], ``beta2`` [0.9], warm-up, clipping) and Adam(β₁ = 0.5) for
    ``disc/…`` (``a.disc_lr``), LDM's pair."""
    ae_tx = build.make_optimizer(
        lr=float(a.lr),
        warmup=int(a.warmup),
        grad_clip=float(a.grad_clip),
        beta1=float(a.beta1),
        beta2=float(a.beta2),
    )
    disc_tx = build.make_optimizer(lr=float(a.disc_lr or a.lr), beta1=0.5, beta2=0.9)
    labels = lambda params: jax.tree_util.tree_map_with_path(lambda p, _: _part(p), params)  # noqa: E731
    return optax.multi_transform({"ae": ae_tx, "disc": disc_tx}, labels)


def autoencoder_objective(config, graphdef, rest):
    """The trainer's ``loss(params, batch, key, step) -> (total, logs)``: the autoencoder's loss plus, with a
    discriminator, its hinge loss (disjoint gradients: each part sees only its own loss); ``logs["loss"]`` is
    the autoencoder's part."""
    a = config.autoencoder
    has_disc = bool(a.discriminator)
    disc_start = int(a.disc_start)
    inverse = data_lib.get_data_inverse_scaler(config)

    def loss_fn(params, batch, key, step):
        x = batch["image"]
        model = nnx.merge(graphdef, _stop_gradient_except(params, "ae"), rest)
        ae = model.ae
        posterior = latent.DiagonalGaussian(*ae.encode(x))
        h = ae.decoder.features(posterior.sample(key))
        loss, terms = latent.autoencoder_loss(
            x,
            posterior,
            lambda w: ae.decoder.head(h, w),
            ae.decoder.conv_out.kernel[...],
            step=step,
            kl_weight=float(a.kl_weight),
            reconstruction=str(a.reconstruction),
            discriminator_fn=model.disc if has_disc else None,
            disc_weight=float(a.disc_weight),
            disc_start=disc_start,
            max_adaptive_weight=float(a.max_adaptive_weight),
        )
        x_rec = ae.decoder.head(h)
        logs = {
            "loss": loss,
            "reconstruction": terms.reconstruction,
            "kl": terms.kl,
            "psnr": jnp.mean(images.psnr(jnp.clip(inverse(x_rec), 0, 1), inverse(x))),
        }
        if not has_disc:
            return loss, logs
        disc = nnx.merge(graphdef, _stop_gradient_except(params, "disc"), rest).disc
        d_loss = latent.discriminator_loss(
            disc(x), disc(jax.lax.stop_gradient(x_rec)), step=step, disc_start=disc_start
        )
        logs.update(generator=terms.generator, adversarial_weight=terms.adversarial_weight, disc_loss=d_loss)
        return loss + d_loss, logs

    return loss_fn


def _make_reconstruct(config, graphdef, rest, mesh):
    """Jitted ``(params, x) -> (x_rec in [0, 1], per-example reconstruction error, PSNR)`` by the posterior mean."""
    a, inverse = config.autoencoder, data_lib.get_data_inverse_scaler(config)

    def fn(params, x):
        ae = nnx.merge(graphdef, params, rest).ae
        x_rec = ae(x)[0]
        rec01 = jnp.clip(inverse(x_rec), 0, 1)
        return rec01, latent.reconstruction_error(x, x_rec, str(a.reconstruction)), images.psnr(rec01, inverse(x))

    repl, data = parallel.replicated_sharding(mesh), parallel.data_sharding(mesh)
    return jax.jit(fn, in_shardings=(repl, data), out_shardings=(data, data, data))


def _latent_statistics(config, graphdef, rest, params, mesh, batch_size: int) -> dict:
    """Scale factor and decoder std over the first ``scale_num_examples`` training images (fixed order)."""
    n = int(config.autoencoder.scale_num_examples)
    repl, data = parallel.replicated_sharding(mesh), parallel.data_sharding(mesh)

    def encode(params, x):
        ae = nnx.merge(graphdef, params, rest).ae
        mean, _ = ae.encode(x)
        return mean, ae.decode(mean)

    encode = jax.jit(encode, in_shardings=(repl, data), out_shardings=(data, data))
    means, xs, recs = [], [], []
    for batch in data_lib.get_dataset(
        config, split="train", batch_size=batch_size, shuffle=False, repeat=False, uniform_dequantization=False
    ):
        x = parallel.shard_batch(mesh, batch)["image"]
        mean, x_rec = encode(params, x)
        means.append(parallel.to_host(mean))
        xs.append(parallel.to_host(x))
        recs.append(parallel.to_host(x_rec))
        if sum(len(m) for m in means) >= n:
            break
    means, xs, recs = (np.concatenate(v)[:n] for v in (means, xs, recs))
    return {
        "scale_factor": float(latent.scale_by_std(jnp.asarray(means))),
        "decoder_std": float(latent.fit_decoder_std(jnp.asarray(xs), jnp.asarray(recs))),
        "latent_std": float(np.std(means)),
        "latent_mean": float(np.mean(means)),
        "num_examples": int(len(means)),
    }


def train_autoencoder(config, workdir: str) -> dict:
    """Trains ``config.autoencoder`` in ``workdir`` (resuming), then records the latent scale; see the module docstring.

    Returns:
        A summary dict (``step``, ``loss``, ``preempted`` and, when finished, ``scale_factor``, ``decoder_std``,
        ``eval_psnr``).

    Raises:
        ValueError: a config without ``autoencoder`` section, bad batch sizes or shapes.
        NonFiniteError: after ``max_nonfinite`` consecutive non-finite steps.
    """
    if "autoencoder" not in config:
        raise ValueError(
            "--mode=train_autoencoder needs a config.autoencoder section "
            "(config_defaults.add_autoencoder; e.g. configs/digits_ae.py)"
        )
    config = build.with_defaults(config)
    build.refuse_augmentation(config, "train_autoencoder")
    run = training.prepare(config, workdir, "autoencoder")
    a = config.autoencoder
    data_lib.check_dataset_name(config)
    if not data_lib.is_image_data(config):
        raise ValueError(f"the autoencoder needs image data (H, W, C); dataset {config.data.dataset!r} is not")
    mesh, batch_size, n_iters = run.mesh, run.settings.batch_size, run.settings.n_iters
    image_shape = data_lib.data_shape(config)
    model = build.make_autoencoder_trainee(a, image_shape, rngs=nnx.Rngs(int(config.seed)))
    latent_shape = model.ae.latent_shape(image_shape)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = make_optimizer(a)
    count = lambda part: sum(x.size for x in jax.tree.leaves(params[part])) if part in params else 0  # noqa: E731
    disc_params = f" + {count('disc'):,} discriminator" if count("disc") else ""
    reconstruct = _make_reconstruct(config, graphdef, rest, mesh)
    eval_batches = None

    def evaluate(state, step):
        nonlocal eval_batches
        if eval_batches is None:
            eval_batches = data_lib.get_dataset(config, split="test", batch_size=batch_size, shuffle=True, repeat=True)
        _, rec, psnr = reconstruct(state["ema"], parallel.shard_batch(mesh, next(eval_batches))["image"])
        return {"eval_reconstruction": float(jnp.mean(rec)), "eval_psnr": float(jnp.mean(psnr))}

    num_show = max(mesh.size, min(32, batch_size) // mesh.size * mesh.size)
    test_batch = next(data_lib.get_dataset(config, split="test", batch_size=num_show, shuffle=False, repeat=False))

    def snapshot(state, step, logger):
        """``workdir/samples/recon_<step>.png``: odd rows held-out digits, even rows their reconstructions."""
        rec01, _, _ = reconstruct(state["ema"], parallel.shard_batch(mesh, test_batch)["image"])
        if jax.process_index() != 0:
            return None
        inverse = data_lib.get_data_inverse_scaler(config)
        orig, rec = np.asarray(inverse(test_batch["image"])), parallel.to_host(rec01)
        ncol = 8
        rows = [blk for i in range(0, len(orig) - ncol + 1, ncol) for blk in (orig[i : i + ncol], rec[i : i + ncol])]
        pairs = images.to_uint8(np.concatenate(rows))
        path = os.path.join(workdir, "samples", f"recon_{step:08d}.png")
        images.save_image_grid(path, pairs, upscale=max(1, 64 // image_shape[0]))
        logger.image("reconstructions", step, images.image_grid(pairs, ncol=ncol))
        return path

    out = training.fit(
        run,
        training.Trainer(
            title=f"scoresde train_autoencoder: f={a.f}, {a.latent_channels} latent channels on {config.data.dataset}",
            facts={
                "devices": training.devices_fact(),
                "params": f"{count('ae'):,} autoencoder{disc_params}",
                "data": data_lib.describe(config),
                "latent": "x".join(map(str, latent_shape)) + f" per {'x'.join(map(str, image_shape))} image",
                "steps": f"{n_iters:,} at batch {batch_size}"
                + (f", discriminator from step {a.disc_start}" if a.discriminator else ""),
            },
            desc="autoencoder",
            init_state=lambda: train_state.init_state(params, tx),
            tx=tx,
            batches=lambda start: data_lib.get_dataset(config, split="train", batch_size=batch_size, start_step=start),
            loss=autoencoder_objective(config, graphdef, rest),
            evaluate=evaluate,
            snapshot=snapshot,
        ),
    )
    summary, results = {"step": out["step"], "loss": out["loss"], "preempted": out["preempted"]}, None
    if not out["preempted"]:
        stats = _latent_statistics(config, graphdef, rest, out["state"]["ema"], mesh, batch_size)
        held_out = evaluate_held_out(config, reconstruct, out["state"]["ema"], mesh, batch_size)
        record = {
            "step": int(out["step"]),
            **stats,
            **held_out,
            "image_shape": list(image_shape),
            "latent_shape": list(latent_shape),
            "centered": bool(config.data.centered),
            "dataset": str(config.data.dataset),
            "autoencoder": a.to_dict(),
        }
        path = latent_space.write_autoencoder_record(workdir, record) if jax.process_index() == 0 else None
        results = {
            "held-out PSNR": f"{held_out['eval_psnr']:.2f} dB",
            "scale factor": f"{stats['scale_factor']:.4g}",
            "record": path,
            "reconstructions": out["snapshot"],
        }
        summary.update(**stats, **held_out)
    training.conclude_training(
        out,
        "autoencoder trained",
        workdir,
        results=results,
        next_command=runlog.latent_command(workdir)
        or f"train a latent model on it: --config.latent.autoencoder_workdir={workdir}",
    )
    return summary


def evaluate_held_out(config, reconstruct, params, mesh, batch_size: int) -> dict:
    """Mean reconstruction error and PSNR (posterior mean, [0, 1] images) over the test split (at most 8 batches)."""
    recs, psnrs = [], []
    for i, batch in enumerate(
        data_lib.get_dataset(
            config, split="test", batch_size=batch_size, shuffle=False, repeat=False, uniform_dequantization=False
        )
    ):
        if i >= 8:
            break
        _, rec, psnr = reconstruct(params, parallel.shard_batch(mesh, batch)["image"])
        recs.append(parallel.to_host(rec))
        psnrs.append(parallel.to_host(psnr))
    if not recs:
        return {"eval_reconstruction": float("nan"), "eval_psnr": float("nan"), "eval_examples": 0}
    return {
        "eval_reconstruction": float(np.mean(np.concatenate(recs))),
        "eval_psnr": float(np.mean(np.concatenate(psnrs))),
        "eval_examples": int(sum(len(r) for r in recs)),
    }
