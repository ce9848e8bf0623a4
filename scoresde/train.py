"""The training loop: ``train(config, workdir)``, read top to bottom.

Only this edge reads the config; it builds the SDE, the network, the loss and the optimiser and hands
typed objects to the pure library code (:mod:`scoresde.losses`, :mod:`scoresde.parameterization`).

One jitted step over a ``('data',)`` mesh (parameters replicated, batch split; no ``pmap``) computes
the loss and gradients, skips the update if either is non-finite, applies Adam with linear warm-up and
global-norm clipping, and updates the EMA. Randomness is ``fold_in(key, step)``, data batches are a
function of the step, so a run resumed from a checkpoint reproduces the uninterrupted run exactly.
"""

from __future__ import annotations

import logging
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from scoresde import data as data_lib
from scoresde import losses, parallel, parameterization
from scoresde import sde as sde_lib
from scoresde.checkpointing import Checkpointer
from scoresde.metrics_log import MetricsLogger

__all__ = ["make_sde", "sampling_eps", "score_convention", "make_score_fn", "make_loss_fn", "make_optimizer",
           "build_model", "check_workdir", "train", "NonFiniteError"]

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """Too many consecutive non-finite losses or gradients."""


# ----------------------------------------------------------------------------------------------- builders

def make_sde(config):
    """The forward SDE named by ``config.training.sde`` with the reference's ``config.model`` fields."""
    name = str(config.training.sde).lower()
    m = config.model
    if name in ("vpsde", "vp", "subvpsde", "subvp"):
        kw = dict(beta_min=float(m.get("beta_min", 0.1)), beta_max=float(m.get("beta_max", 20.0)),
                  N=int(m.get("num_scales", 1000)))
    elif name in ("vesde", "ve"):
        kw = dict(sigma_min=float(m.get("sigma_min", 0.01)), sigma_max=float(m.get("sigma_max", 50.0)),
                  N=int(m.get("num_scales", 1000)))
    else:
        raise ValueError(f"unknown sde {config.training.sde!r}; expected one of: vpsde, subvpsde, vesde")
    return sde_lib.get_sde(name, **kw)


def sampling_eps(sde) -> float:
    """The reference's smallest sampling time: 1e-3 for VP / sub-VP, 1e-5 for VE."""
    return 1e-5 if isinstance(sde, sde_lib.VESDE) else 1e-3


def score_convention(config, sde) -> dict:
    """``(output, time_label)`` of the network: ``config.model.output`` / ``time_label`` or the reference's."""
    conv = parameterization.reference_convention(sde, bool(config.training.continuous))
    if config.model.get("output", ""):
        conv["output"] = config.model.output
    if config.model.get("time_label", ""):
        conv["time_label"] = config.model.time_label
    return conv


def make_score_fn(model, sde, config, *, train: bool = False, key=None, y=None):
    """``score_fn(x, t)`` of an NNX network, through the parameterisation layer (eval mode by default)."""

    def net_fn(x, labels):
        return model(x, labels, y, train=train, key=key)

    return parameterization.model_score_fn(net_fn, sde, **score_convention(config, sde))


def make_loss_fn(config, sde):
    """``loss_fn(net_fn, x, key) -> (loss, aux)`` for the config's objective."""
    t = config.training
    reduce_mean = bool(t.get("reduce_mean", True))
    if t.continuous:
        conv = score_convention(config, sde)
        importance = bool(t.get("importance_sampling", False))
        sampler = losses.likelihood_importance_sampler(sde) if importance else None

        def loss_fn(net_fn, x, key):
            score_fn = parameterization.model_score_fn(net_fn, sde, **conv)
            return losses.continuous_dsm_loss(score_fn, sde, x, key, reduce_mean=reduce_mean,
                                              likelihood_weighting=bool(t.get("likelihood_weighting", False)),
                                              importance_sampling=importance, t_sampler=sampler)
        return loss_fn
    if isinstance(sde, sde_lib.VESDE):
        return lambda net_fn, x, key: losses.smld_loss(net_fn, sde, x, key, reduce_mean=reduce_mean)
    if type(sde) is sde_lib.VPSDE:
        return lambda net_fn, x, key: losses.ddpm_loss(net_fn, sde, x, key, reduce_mean=reduce_mean)
    raise ValueError(f"discrete training (continuous=False) supports vpsde and vesde; got {config.training.sde!r}")


def lr_schedule(config):
    o = config.optim
    lr, warmup = float(o.lr), int(o.get("warmup", 0))
    if warmup > 0:
        return lambda count: lr * jnp.minimum(count / warmup, 1.0)
    return lambda count: lr * jnp.ones_like(count, dtype=jnp.float32)


def make_optimizer(config) -> optax.GradientTransformation:
    """Adam (reference ``optim.*``) with linear warm-up and global-norm clipping (skipped if ``grad_clip < 0``)."""
    o = config.optim
    if str(o.get("optimizer", "Adam")).lower() != "adam":
        raise ValueError(f"unknown optimizer {o.optimizer!r}; expected 'Adam'")
    parts = []
    if float(o.get("grad_clip", -1.0)) >= 0:
        parts.append(optax.clip_by_global_norm(float(o.grad_clip)))
    parts.append(optax.scale_by_adam(b1=float(o.get("beta1", 0.9)), b2=float(o.get("beta2", 0.999)),
                                     eps=float(o.get("eps", 1e-8))))
    if float(o.get("weight_decay", 0.0)) > 0:
        parts.append(optax.add_decayed_weights(float(o.weight_decay)))
    parts.append(optax.scale_by_learning_rate(lr_schedule(config)))
    return optax.chain(*parts)


def build_model(config, *, seed: int):
    """The network of ``config.model``, checked on one example of the data's shape.

    Raises:
        ValueError: if the network cannot take the configured data shape.
    """
    from scoresde import models  # noqa: PLC0415

    model = models.get_model(config, rngs=nnx.Rngs(seed))
    shape = (1,) + data_lib.data_shape(config)
    try:
        out = jax.eval_shape(lambda x, t: model(x, t), jax.ShapeDtypeStruct(shape, jnp.float32),
                             jax.ShapeDtypeStruct((1,), jnp.float32))
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"model {config.model.name!r} cannot take data of shape {shape[1:]} "
                         f"(config.data.image_size={config.data.get('image_size')}): {type(e).__name__}: {e}") from e
    if out.shape != shape:
        raise ValueError(f"model {config.model.name!r} maps data of shape {shape[1:]} to {out.shape[1:]}; "
                         f"check config.data.image_size / num_channels")
    return model


def check_workdir(workdir: str) -> None:
    """Creates ``workdir`` and checks that it is writable (a clear error instead of a late crash)."""
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test_{jax.process_index()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise PermissionError(f"workdir {workdir!r} is not writable: {e}") from e


# ----------------------------------------------------------------------------------------------- the step

def class_labels(config, batch, key):
    """Class labels for a class-conditional model (``config.model.num_classes > 0``), else ``None``.

    With ``config.training.p_uncond > 0`` each label is replaced by the null label ``num_classes``
    with that probability (classifier-free guidance training, :func:`scoresde.guidance.drop_labels`).
    """
    num_classes = int(config.model.get("num_classes", 0) or 0)
    if num_classes <= 0:
        return None
    from scoresde.guidance import drop_labels  # noqa: PLC0415

    y = batch["label"].astype(jnp.int32)
    p_uncond = float(config.training.get("p_uncond", 0.0))
    return drop_labels(key, y, p_uncond, num_classes) if p_uncond > 0 else y


def make_train_step(config, sde, graphdef, rest, tx, mesh, root_key):
    """The jitted ``step(state, batch) -> (state, metrics)`` over the mesh."""
    loss_fn = make_loss_fn(config, sde)
    ema_rate = float(config.model.get("ema_rate", 0.999))
    max_nonfinite = int(config.training.get("max_nonfinite", 10))
    schedule = lr_schedule(config)

    def step_fn(state, batch):
        key = jax.random.fold_in(root_key, state["step"])
        k_loss, k_drop = jax.random.split(key)
        y = class_labels(config, batch, jax.random.fold_in(key, 7))

        def objective(params):
            model = nnx.merge(graphdef, params, rest)
            return loss_fn(lambda x, labels: model(x, labels, y, train=True, key=k_drop), batch["image"], k_loss)

        (loss, _), grads = jax.value_and_grad(objective, has_aux=True)(state["params"])
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(optax.tree.norm(updates))
        active = state["nonfinite_run"] < max_nonfinite  # after max_nonfinite bad steps: no-ops until the host stops
        ok = finite & active
        params = optax.apply_updates(state["params"], updates)
        ema = jax.tree.map(lambda e, p: e * ema_rate + p * (1.0 - ema_rate), state["ema"], params)

        def keep(new, old):
            return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)

        bad = (~finite & active).astype(jnp.int32)
        new_state = {
            "params": keep(params, state["params"]),
            "ema": keep(ema, state["ema"]),
            "opt_state": keep(opt_state, state["opt_state"]),
            "step": state["step"] + 1,
            "updates": state["updates"] + ok.astype(jnp.int32),
            "nonfinite_total": state["nonfinite_total"] + bad,
            "nonfinite_run": jnp.where(ok, 0, state["nonfinite_run"] + bad),
        }
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state["updates"]), "finite": ok,
                   "nonfinite_run": new_state["nonfinite_run"]}
        return new_state, metrics

    repl, data = parallel.replicated_sharding(mesh), parallel.data_sharding(mesh)
    return jax.jit(step_fn, in_shardings=(repl, data), out_shardings=(repl, repl), donate_argnums=0)


def make_eval_step(config, sde, graphdef, rest, mesh, root_key):
    """The jitted ``eval_step(ema_params, batch, step) -> loss`` (EMA parameters, as the reference)."""
    loss_fn = make_loss_fn(config, sde)

    def eval_fn(params, batch, step):
        model = nnx.merge(graphdef, params, rest)
        key = jax.random.fold_in(root_key, step)
        return loss_fn(lambda x, labels: model(x, labels), batch["image"], key)[0]

    repl, data = parallel.replicated_sharding(mesh), parallel.data_sharding(mesh)
    return jax.jit(eval_fn, in_shardings=(repl, data, None), out_shardings=repl)


# ----------------------------------------------------------------------------------------------- the loop

class _Preemption:
    """Turns SIGTERM into a flag the loop polls (then saves and exits)."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGTERM, self._handler)
        except ValueError:  # not the main thread
            self._old = None
        return self

    def _handler(self, signum, frame):
        del signum, frame
        self.requested = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)

    def any_process(self) -> bool:
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils  # noqa: PLC0415

        return bool(np.any(multihost_utils.process_allgather(np.array([self.requested]))))


def train(config, workdir: str) -> dict:
    """Trains ``config`` in ``workdir``, resuming from its newest valid checkpoint.

    Returns:
        A summary dict (``step``, ``loss``, ``preempted``).

    Raises:
        ValueError: bad config values (batch size, names, shapes).
        NonFiniteError: after ``config.training.max_nonfinite`` consecutive non-finite steps.
    """
    from scoresde import evaluate  # noqa: PLC0415  (snapshot sampling)

    check_workdir(workdir)
    is_main = jax.process_index() == 0
    tc = config.training
    data_lib.check_dataset_name(config)
    mesh = parallel.make_mesh()
    batch_size = int(tc.batch_size)
    parallel.check_batch_size(batch_size, mesh, "config.training.batch_size")
    sde = make_sde(config)
    make_loss_fn(config, sde)  # validates the objective before anything slow
    seed = int(config.get("seed", 0))
    root = jax.random.key(seed)
    train_key, eval_key, sample_key = (jax.random.fold_in(root, i) for i in (1, 2, 3))

    model = build_model(config, seed=seed)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = make_optimizer(config)
    state = {
        "params": params, "ema": jax.tree.map(jnp.copy, params), "opt_state": tx.init(params),
        "step": jnp.zeros((), jnp.int32), "updates": jnp.zeros((), jnp.int32),
        "nonfinite_total": jnp.zeros((), jnp.int32), "nonfinite_run": jnp.zeros((), jnp.int32),
    }

    snapshot_freq = int(tc.snapshot_freq)
    ckpt = Checkpointer(workdir, max_to_keep=int(tc.get("keep_checkpoints", 3)), keep_period=snapshot_freq)
    restored = ckpt.restore_latest(params=nnx.to_pure_dict(params), ema_params=nnx.to_pure_dict(params),
                                   opt_state=state["opt_state"])
    if restored is not None:
        meta = restored["meta"]
        p, e = jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, params)
        nnx.replace_by_pure_dict(p, restored["params"])
        nnx.replace_by_pure_dict(e, restored["ema_params"])
        state.update(params=p, ema=e, step=jnp.asarray(meta["step"], jnp.int32),
                     updates=jnp.asarray(meta.get("updates", meta["step"]), jnp.int32),
                     nonfinite_total=jnp.asarray(meta.get("nonfinite_total", 0), jnp.int32),
                     nonfinite_run=jnp.asarray(meta.get("nonfinite_run", 0), jnp.int32))
        if restored["opt_state"] is not None:
            state["opt_state"] = restored["opt_state"]
        else:
            log.warning("checkpoint at step %d has no optimizer state; starting a fresh optimizer", meta["step"])
            state["opt_state"] = tx.init(p)
        log.info("resumed from %s at step %d", ckpt.directory, meta["step"])
    state = parallel.replicate(mesh, state)
    start = int(state["step"])

    logger = MetricsLogger(workdir, enabled=is_main, tensorboard=bool(tc.get("tensorboard", True)))
    logger.truncate_after(start)
    train_iter = data_lib.get_dataset(config, split="train", batch_size=batch_size, start_step=start)
    eval_iter = None
    step_fn = make_train_step(config, sde, graphdef, rest, tx, mesh, train_key)
    eval_fn = make_eval_step(config, sde, graphdef, rest, mesh, eval_key)
    n_iters, log_freq, eval_freq = int(tc.n_iters), int(tc.log_freq), int(tc.get("eval_freq", 0))
    ckpt_freq = int(tc.get("snapshot_freq_for_preemption", snapshot_freq))
    snapshot_sampling = bool(tc.get("snapshot_sampling", True))
    num_snap = int(tc.get("snapshot_num_samples", 64))
    num_snap = max(mesh.size, num_snap // mesh.size * mesh.size)
    snap_fn = None

    def meta_of(s):
        return {k: int(s[k]) for k in ("updates", "nonfinite_total", "nonfinite_run")}

    def save(s, step):
        ckpt.save(step, params=s["params"], ema_params=s["ema"], opt_state=s["opt_state"],
                  meta=meta_of(s), config=config)

    bar = None
    if is_main and bool(tc.get("progress", True)):
        from tqdm import tqdm  # noqa: PLC0415

        bar = tqdm(total=n_iters, initial=start, desc="train", dynamic_ncols=True, mininterval=1.0)

    last = {"loss": float("nan")}
    t_log, steps_since = time.perf_counter(), 0
    prev_run = None
    preempted = False
    step = start
    try:
        with _Preemption() as preempt:
            while step < n_iters:
                batch = parallel.shard_batch(mesh, next(train_iter))
                state, metrics = step_fn(state, batch)
                step += 1
                steps_since += 1
                if bar is not None:
                    bar.update(1)
                # Check the previous step's counter: reading it does not wait for the step just dispatched.
                if prev_run is not None and int(prev_run) >= int(tc.get("max_nonfinite", 10)):
                    raise NonFiniteError(
                        f"stopping at step {step - 1}: {int(prev_run)} consecutive steps had a non-finite loss or "
                        f"gradient (config.training.max_nonfinite={tc.get('max_nonfinite', 10)}); lower optim.lr, "
                        f"check the data scaling, or resume from an earlier checkpoint")
                prev_run = metrics["nonfinite_run"]
                is_eval = bool(eval_freq) and step % eval_freq == 0
                if step % log_freq == 0 or step == n_iters or is_eval:
                    m = jax.device_get(metrics)
                    dt = time.perf_counter() - t_log
                    rec = {"loss": float(m["loss"]), "grad_norm": float(m["grad_norm"]), "lr": float(m["lr"]),
                           "steps_per_sec": steps_since / dt, "img_per_sec": steps_since * batch_size / dt,
                           "nonfinite_total": int(state["nonfinite_total"])}
                    if is_eval:
                        if eval_iter is None:
                            eval_iter = data_lib.get_dataset(config, split="test", batch_size=batch_size,
                                                             shuffle=True, repeat=True)
                        rec["eval_loss"] = float(eval_fn(state["ema"], parallel.shard_batch(mesh, next(eval_iter)), step))
                    logger.write(step, rec)
                    last = rec
                    if bar is not None:
                        bar.set_postfix(loss=f"{rec['loss']:.4g}")
                    t_log, steps_since = time.perf_counter(), 0
                if step % ckpt_freq == 0 or step % snapshot_freq == 0 or step == n_iters:
                    save(state, step)
                if snapshot_sampling and (step % snapshot_freq == 0 or step == n_iters):
                    if snap_fn is None:
                        snap_fn = evaluate.make_sample_fn(config, sde, graphdef, rest, num_snap, mesh)
                    evaluate.snapshot(config, snap_fn, state["ema"], jax.random.fold_in(sample_key, step), workdir, step,
                                      logger=logger)
                # Several processes must agree on when to stop (the save is collective): poll together.
                if preempt.any_process() if jax.process_count() > 1 and step % log_freq == 0 else \
                        (jax.process_count() == 1 and preempt.requested):
                    if not (step % ckpt_freq == 0 or step % snapshot_freq == 0 or step == n_iters):
                        save(state, step)
                    preempted = True
                    log.warning("SIGTERM: saved a checkpoint at step %d; rerun the same command to resume", step)
                    break
    finally:
        if bar is not None:
            bar.close()
        ckpt.close()
        logger.close()
    return {"step": step, "loss": last["loss"], "preempted": preempted}
