"""``eval`` and ``sample`` modes, and the sample snapshots taken during training.

* ``evaluate(config, workdir)``: the loss on the test split with the EMA parameters
  (``workdir/eval_results.json``).
* ``sample(config, workdir)``: ``config.eval.num_samples`` samples with the EMA parameters into
  ``workdir/samples/samples_<i>.npz`` (array key ``samples``: uint8 NHWC for images, float32 for vector
  data) plus a PNG grid (a scatter plot for 2-D data).

Sampling uses :func:`scoresde.sampling.get_sampling_fn` when that module exists; until then a minimal
Euler–Maruyama reverse-diffusion loop in ``lax.scan`` stands behind the same call.
"""

from __future__ import annotations

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scoresde import data as data_lib
from scoresde import parallel
from scoresde.metrics_log import image_grid, save_image_grid, save_scatter, to_uint8

__all__ = ["euler_maruyama_sampler", "get_sampling_fn", "make_sample_fn", "snapshot", "evaluate", "sample"]

log = logging.getLogger(__name__)


def euler_maruyama_sampler(sde, shape, inverse_scaler, eps: float, num_steps: int | None = None,
                           noise_removal: bool = True):
    """Reverse-SDE Euler–Maruyama from ``T`` to ``eps`` (Song et al. 2021, the reference's EM predictor).

    Returns:
        ``sample_fn(key, score_fn) -> (samples, nfe)`` with samples mapped by ``inverse_scaler``.
    """
    n = int(num_steps or sde.N)

    def sample_fn(key, score_fn):
        rsde = sde.reverse(score_fn)
        k0, k1 = jax.random.split(key)
        x = sde.prior_sampling(k0, shape)
        ts = jnp.linspace(sde.T, eps, n)
        dt = -(sde.T - eps) / n

        def body(carry, i):
            x, _ = carry
            t = jnp.full((shape[0],), ts[i])
            drift, diffusion = rsde.sde(x, t)
            mean = x + drift * dt
            z = jax.random.normal(jax.random.fold_in(k1, i), shape)
            x = mean + jnp.sqrt(-dt) * diffusion.reshape((-1,) + (1,) * (len(shape) - 1)) * z
            return (x, mean), None

        (x, mean), _ = jax.lax.scan(body, (x, x), jnp.arange(n))
        return inverse_scaler(mean if noise_removal else x), n

    return sample_fn


def get_sampling_fn(config, sde, shape, inverse_scaler, eps):
    """``sample_fn(key, score_fn) -> (samples, nfe)`` for ``config.sampling``.

    Delegates to :mod:`scoresde.sampling` when it is available, else the Euler–Maruyama fallback.
    """
    try:
        from scoresde import sampling  # noqa: PLC0415
    except ImportError:
        sampling = None
    if sampling is not None and hasattr(sampling, "get_sampling_fn"):
        return sampling.get_sampling_fn(config, sde, shape, inverse_scaler, eps)
    return euler_maruyama_sampler(sde, shape, inverse_scaler, eps, config.sampling.get("num_steps", None) or None,
                                  bool(config.sampling.get("noise_removal", True)))


def make_sample_fn(config, sde, graphdef, rest, num_samples: int, mesh=None, classifier=None):
    """A jitted ``fn(params, key, guidance_scale=None) -> (samples in data space [0, 1], nfe)``, sharded over the mesh.

    ``config.sampling.guidance`` (none | cfg | classifier, :func:`scoresde.guidance_train.guided_score_fn`)
    guides the samples; ``guidance_scale`` overrides ``config.sampling.guidance_scale`` as a traced value.
    Classifier guidance needs ``classifier``; without one (snapshots during training) sampling is unguided.
    """
    from scoresde.guidance_train import guided_score_fn  # noqa: PLC0415
    from scoresde.train import make_score_fn, sampling_eps  # noqa: PLC0415

    shape = (num_samples,) + data_lib.data_shape(config)
    sampler = get_sampling_fn(config, sde, shape, data_lib.get_data_inverse_scaler(config), sampling_eps(sde))
    unguided = classifier is None and str(config.sampling.get("guidance", "none")).lower() == "classifier"

    def fn(params, key, guidance_scale=None):
        model = nnx.merge(graphdef, params, rest)
        if unguided:
            return sampler(key, make_score_fn(model, sde, config))
        return sampler(key, guided_score_fn(config, model, sde, num_samples, classifier=classifier,
                                            scale=guidance_scale))

    mesh = mesh or parallel.make_mesh()
    out = parallel.data_sharding(mesh) if num_samples % mesh.size == 0 else parallel.replicated_sharding(mesh)
    return jax.jit(fn, out_shardings=(out, parallel.replicated_sharding(mesh)))


def _gather(x):
    if jax.process_count() == 1:
        return np.asarray(x)
    from jax.experimental import multihost_utils  # noqa: PLC0415

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _write_visual(config, path_png, samples01, title=""):
    if data_lib.is_image_data(config):
        size = data_lib.data_shape(config)[0]
        save_image_grid(path_png, to_uint8(samples01), upscale=max(1, 64 // size))
    elif samples01.shape[-1] == 2:
        save_scatter(path_png, np.asarray(samples01), title=title)


def snapshot(config, sample_fn, params, key, workdir, step, logger=None):
    """Samples with ``params`` (EMA) and writes ``workdir/samples/snapshot_<step>.png`` (process 0)."""
    samples, _ = sample_fn(params, key)
    samples = _gather(samples)
    if jax.process_index() != 0:
        return
    path = os.path.join(workdir, "samples", f"snapshot_{step:08d}.png")
    _write_visual(config, path, samples, title=f"step {step}")
    if logger is not None and data_lib.is_image_data(config):
        logger.image("samples", step, image_grid(to_uint8(samples)))


def _sampler_description(config) -> str:
    from scoresde.metrics.run import sampler_description  # noqa: PLC0415

    return json.dumps(sampler_description(config), sort_keys=True, default=str)


def _load_ema(config, workdir):
    from scoresde.checkpointing import load_model  # noqa: PLC0415

    model, step = load_model(workdir, config, ema=True)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, params, rest, step


def evaluate(config, workdir: str) -> dict:
    """The eval mode: what ``config.eval`` enables, with the EMA parameters.

    * ``enable_loss``: the test-split loss, written to ``workdir/eval_results.json``;
    * ``enable_bpd``: bits/dim over ``bpd_dataset`` (:func:`scoresde.likelihood_run.run`);
    * ``enable_sampling``: FID / IS / KID of ``num_samples`` samples (:func:`scoresde.metrics.run.evaluate_samples`).
    """
    result = {}
    if config.eval.get("enable_loss", True):
        result.update(evaluate_loss(config, workdir))
    if config.eval.get("enable_bpd", False):
        from scoresde import likelihood_run  # noqa: PLC0415

        result["bpd"] = likelihood_run.run(config, workdir)
    if config.eval.get("enable_sampling", False):
        from scoresde.metrics import run as metrics_run  # noqa: PLC0415

        result["sample_quality"] = metrics_run.evaluate_samples(config, workdir)
    if not result:
        raise ValueError("config.eval enables nothing: set enable_loss, enable_bpd or enable_sampling")
    return result


def evaluate_loss(config, workdir: str) -> dict:
    """Test-split loss with the EMA parameters; writes ``workdir/eval_results.json``."""
    from scoresde.train import make_eval_step, make_sde  # noqa: PLC0415

    mesh = parallel.make_mesh()
    batch_size = int(config.eval.batch_size)
    parallel.check_batch_size(batch_size, mesh, "config.eval.batch_size")
    sde = make_sde(config)
    graphdef, params, rest, step = _load_ema(config, workdir)
    params = parallel.replicate(mesh, params)
    eval_fn = make_eval_step(config, sde, graphdef, rest, mesh, jax.random.fold_in(jax.random.key(config.seed), 4))
    total, n = 0.0, 0
    max_batches = int(config.eval.get("num_eval_batches", 0)) or None
    for i, batch in enumerate(data_lib.get_dataset(config, split="test", batch_size=batch_size, shuffle=False,
                                                   repeat=False)):
        if max_batches is not None and i >= max_batches:
            break
        total += float(eval_fn(params, parallel.shard_batch(mesh, batch), i))
        n += 1
    if n == 0:
        raise ValueError(f"the test split has fewer than one batch of config.eval.batch_size={batch_size}")
    result = {"step": step, "eval_loss": total / n, "num_batches": n, "batch_size": batch_size}
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "eval_results.json"), "w") as f:
            json.dump(result, f, indent=1)
    log.info("eval at step %d: loss %.6g over %d batches", step, result["eval_loss"], n)
    print(json.dumps(result))
    return result


def sample(config, workdir: str) -> dict:
    """Writes ``config.eval.num_samples`` EMA samples to ``workdir/samples/samples_<i>.npz`` and PNG grids."""
    from scoresde.train import make_sde  # noqa: PLC0415

    mesh = parallel.make_mesh()
    sde = make_sde(config)
    graphdef, params, rest, step = _load_ema(config, workdir)
    params = parallel.replicate(mesh, params)
    total = int(config.eval.num_samples)
    batch = min(int(config.eval.get("sample_batch_size", 0) or config.eval.batch_size), total)
    parallel.check_batch_size(batch, mesh, "config.eval.sample_batch_size")
    classifier = None
    if str(config.sampling.get("guidance", "none")).lower() == "classifier":
        from scoresde.guidance_train import load_classifier  # noqa: PLC0415

        classifier, _ = load_classifier(workdir, config)
    sample_fn = make_sample_fn(config, sde, graphdef, rest, batch, mesh, classifier=classifier)
    out_dir = os.path.join(workdir, "samples")
    os.makedirs(out_dir, exist_ok=True)
    key = jax.random.fold_in(jax.random.key(int(config.seed)), 5)
    written, i, nfe = 0, 0, 0
    while written < total:
        samples, nfe = sample_fn(params, jax.random.fold_in(key, i))
        samples = _gather(samples)[: total - written]
        if jax.process_index() == 0:
            arr = to_uint8(samples) if data_lib.is_image_data(config) else np.asarray(samples, np.float32)
            # nfe and sampler travel with the samples so metrics reports can name them
            np.savez(os.path.join(out_dir, f"samples_{i}.npz"), samples=arr, nfe=np.int64(nfe),
                     sampler=np.array(_sampler_description(config)))
            _write_visual(config, os.path.join(out_dir, f"samples_{i}.png"), samples, title=f"step {step}")
        written += len(samples)
        i += 1
    result = {"step": step, "num_samples": written, "files": i, "nfe": int(nfe), "dir": out_dir}
    print(json.dumps(result))
    return result
