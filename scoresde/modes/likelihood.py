"""``--mode=likelihood`` (and eval's ``enable_bpd``): bits/dim of a trained model over a dataset split.

It loads the EMA network, builds the score function through the
parameterisation layer and evaluates :func:`scoresde.likelihood.bits_per_dim_batch` on every batch of
``config.eval.bpd_dataset`` (``train`` / ``test``), ``K`` times with fresh dequantisation noise and
probes. The batch is split over a ``('data',)`` mesh of all devices of all processes; each device solves
its own examples (no collective inside the adaptive solve).

Resumable: after every batch the per-example values are written atomically to
``workdir/likelihood/bpd_<split>_partial.npz`` with the settings, the checkpoint step and parameter hash, and
the config fields that give them their meaning (data set, SDE, model: a config hash) they belong to.
The data order is fixed (no shuffling) and the randomness of repeat ``r``, batch ``i`` is
``fold_in(fold_in(key, r), i)``, so a preempted run that starts again skips what it has done and ends with
exactly the numbers of an uninterrupted run. Partial results of another checkpoint step or parameters are
discarded (the run starts afresh); a partial file written with other settings, data or SDE is an error naming
what differs, never silently mixed in.

Config: the ``bpd_*`` fields of ``config.eval`` (the reference's names where it has them), turned into
:class:`scoresde.build.LikelihoodSettings` by :func:`scoresde.build.likelihood_settings`.

Writes ``workdir/likelihood/bpd_<split>.json``: mean bits/dim, standard error, N, split, eps, solver,
tolerances, probe type and count, repeats, dequantisation, offset, NFE, checkpoint step, time.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zipfile

import jax
import numpy as np
from flax import nnx

from scoresde import build, images, parallel, runlog
from scoresde import data as data_lib
from scoresde import latent as latent_lib
from scoresde import likelihood as likelihood_lib

__all__ = ["likelihood", "latent_likelihood"]

log = logging.getLogger(__name__)


def _count_batches(config, s) -> int:
    n = 0
    for _ in data_lib.get_dataset(
        config, split=s.split, batch_size=s.batch_size, shuffle=False, repeat=False, uniform_dequantization=False
    ):
        n += 1
        if s.num_eval_batches and n >= s.num_eval_batches:
            break
    if n == 0:
        raise ValueError(f"the {s.split} split has fewer than one batch of {s.batch_size} examples")
    return n


def _announce(config, s, workdir: str, step: int, num_batches: int, what: str) -> None:
    """The run header: the model, the solver, and how many examples of the split it uses and why."""
    used = num_batches * s.batch_size
    total = data_lib.num_examples(config, s.split)
    if s.num_eval_batches and num_batches == s.num_eval_batches:
        why = f"config.eval.num_eval_batches={s.num_eval_batches} of {s.batch_size}"
    else:  # the pipeline yields whole batches only
        why = f"whole batches of config.eval.bpd_batch_size={s.batch_size}"
    examples = (
        f"all {used:,} {s.split} examples"
        if used == total
        else f"{used:,} of {total:,} {s.split} examples: {why}"
        if total
        else f"{used:,} {s.split} examples: {why}"
    )
    runlog.announce(
        f"scoresde likelihood: {what} at step {step}",
        {
            "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
            "examples": examples,
            "repeats": f"{s.num_repeats} ({s.dequantization} dequantisation)",
            "solver": f"{s.solver}, rtol {s.rtol}, atol {s.atol}, {s.n_probes} probe(s)",
            "workdir": os.path.abspath(workdir),
        },
    )


# a different model (another checkpoint or parameters, another autoencoder): its partial results are discarded
_STALE = ("checkpoint_step", "params_hash", "autoencoder_step", "autoencoder_hash")


def _load_partial(path, expected: dict, fields):
    """The partial results at ``path`` if they were computed with ``expected`` settings and checkpoint step.

    Results of another checkpoint step (or, for a latent model, autoencoder step) are stale (the model
    changed): they are discarded and the run starts afresh. Other settings differing is an error (the partial
    results may be wanted).
    """
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            json.loads(str(f["settings"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(
            f"{path} is not a partial likelihood file ({type(e).__name__}); move it away to start afresh"
        ) from None
    with np.load(path) as f:
        saved = json.loads(str(f["settings"]))
        for key in _STALE:
            if saved.get(key) != expected.get(key):
                log.warning(
                    "%s holds results for %s %s, not %s: starting afresh",
                    path,
                    key.replace("_", " "),
                    saved.get(key),
                    expected.get(key),
                )
                return None
        if saved != expected:
            diffs = "; ".join(
                f"{k}: file {saved.get(k)!r}, now {expected.get(k)!r}"
                for k in sorted(set(saved) | set(expected))
                if saved.get(k) != expected.get(k)
            )
            raise ValueError(
                f"{path} was written with settings that differ from this run's ({diffs}); move it away to start afresh"
            )
        return {k: f[k].copy() for k in (*fields, "done")}


def _provenance(config, params) -> dict:
    """What made the numbers besides the settings: the parameters (their hash) and the config fields that change
    their meaning (data, SDE, model; :func:`scoresde.build.config_digest`)."""
    return {
        "params_hash": build.params_digest(params),
        "config_hash": build.config_digest(config),
        "dataset": str(config.data.dataset),
        "data_path": str(config.data.path),
        "sde": str(config.training.sde),
    }


def _evaluate(config, s, mesh, batch_fn, params, partial_path, expected, fields: dict, headline: str, stop_after):
    """Runs ``batch_fn(params, x01, key) -> {field: (B,)}`` over every (repeat, batch) unit not done yet.

    The per-example values of ``fields`` (name -> dtype) are saved to ``partial_path`` after every unit, with
    ``expected`` (the settings and model steps) as the record of what produced them. Returns ``(state, new,
    seconds)``, or ``None`` when ``stop_after`` new units were evaluated (a simulated preemption).
    """
    num_batches, b, k = expected["num_batches"], s.batch_size, s.num_repeats

    def empty(dtype):  # not yet computed: NaN for values, 0 for counts
        fill = np.nan if np.dtype(dtype).kind == "f" else 0
        return np.full((k, num_batches * b), fill, dtype)

    state = _load_partial(partial_path, expected, fields) or {
        **{f: empty(dt) for f, dt in fields.items()},
        "done": np.zeros((k, num_batches), bool),
    }
    settings_json = json.dumps(expected)
    scaler_inverse = data_lib.get_data_inverse_scaler(config)
    root = build.purpose_key(jax.random.key(s.seed), "likelihood")
    is_main = jax.process_index() == 0
    bar = None
    if is_main:
        from tqdm import tqdm  # noqa: PLC0415  (only the main process draws a bar)

        bar = tqdm(
            total=k * num_batches,
            initial=int(state["done"].sum()),
            desc=f"bpd {s.split}",
            unit="batch",
            dynamic_ncols=True,
        )
    t0, new = time.time(), 0
    try:
        for r in range(k):
            todo = np.flatnonzero(~state["done"][r])
            if todo.size == 0:
                continue
            start = int(todo[0])
            batches = data_lib.get_dataset(
                config,
                split=s.split,
                batch_size=b,
                shuffle=False,
                repeat=False,
                start_step=start,
                uniform_dequantization=False,
            )
            for i, batch in zip(range(start, num_batches), batches):
                if state["done"][r, i]:
                    continue
                x01 = np.asarray(scaler_inverse(batch["image"]), np.float32)
                key = jax.random.fold_in(jax.random.fold_in(root, r), i)
                if s.conditional:  # log p(x | c): each example's own label or caption
                    cond = np.asarray(build.class_labels(config, batch, key, drop=False))
                    sharded = parallel.shard_batch(mesh, {"image": x01, "cond": cond})
                    out = batch_fn(params, sharded["image"], key, sharded["cond"])
                else:
                    out = batch_fn(params, parallel.shard_batch(mesh, {"image": x01})["image"], key)
                for f in fields:
                    state[f][r, i * b : (i + 1) * b] = parallel.to_host(out[f])
                state["done"][r, i] = True
                new += 1
                if is_main:
                    images.save_npz_atomic(partial_path, settings=settings_json, **state)
                    done = state[headline][np.isfinite(state[headline])]
                    bar.set_postfix(
                        bpd=f"{done.mean():.4f}" if done.size else "nan",
                        nfe=int(state["nfe"][r, i * b : (i + 1) * b].mean()),
                    )
                    bar.update(1)
                if stop_after is not None and new >= stop_after:
                    return None
    finally:
        if bar is not None:
            bar.close()
    return state, new, time.time() - t0


def _make_batch_fn(score_model, graphdef, rest, mesh, s, scaler):
    """``batch_fn(params, x01, key, cond=None)``: per-example bits/dim, of ``log p(x | cond)`` when ``cond`` is
    given (``s.conditional``: each example's own label or caption)."""
    sde = score_model.sde

    @jax.jit
    def batch_fn(params, x01, key, cond=None):
        model = nnx.merge(graphdef, params, rest)
        if cond is None:
            score_fn = score_model.score_fn(model)
        else:
            score_fn = lambda x, t, c: score_model.score_fn(model, y=c)(x, t)  # noqa: E731
        bpd, nfe = likelihood_lib.bits_per_dim_batch(
            score_fn,
            sde,
            x01,
            key,
            scaler=scaler,
            mesh=mesh,
            cond=cond,
            **s.solve_kwargs(),
        )
        return {"bpd": bpd, "nfe": nfe}

    return batch_fn


def likelihood(config, workdir: str, *, stop_after: int | None = None) -> dict | None:
    """Bits/dim of the EMA model of ``workdir`` over a dataset split; writes and returns the JSON report.

    Args:
        config: the run config.
        workdir: run directory with ``checkpoints/``; results go to ``workdir/likelihood/``.
        stop_after: stop after this many newly evaluated batches (simulates preemption in tests); the
            partial results are kept and ``None`` is returned.

    Raises:
        ValueError: bad settings, a batch size the devices do not divide, or a mismatched partial file.
        RuntimeError: some ODE solves failed (non-finite values), with how to fix it.
    """
    config = build.with_defaults(config)
    s = build.likelihood_settings(config)
    if build.is_latent(config):
        return latent_likelihood(config, workdir, stop_after=stop_after)
    mesh = parallel.make_mesh()
    parallel.check_batch_size(s.batch_size, mesh, "config.eval.bpd_batch_size")
    score_model = build.make_score_model(config)
    sde = score_model.sde
    graphdef, params, rest, step = build.load_ema(config, workdir, mesh, mode="likelihood")
    # The pipeline yields scaled data; the run works from [0, 1] and applies the scaler itself, so the
    # Jacobian of the scaler enters the bits/dim (the +7 / +8 offset is derived, not assumed).
    scaler = data_lib.get_data_scaler(config)
    batch_fn = _make_batch_fn(score_model, graphdef, rest, mesh, s, scaler)

    out_dir = os.path.join(workdir, "likelihood")
    os.makedirs(out_dir, exist_ok=True)
    # log p(x | c) and log p(x) are different figures: their own files, so neither blocks nor replaces the other
    name = f"bpd_{s.split}_conditional" if s.conditional else f"bpd_{s.split}"
    partial_path = os.path.join(out_dir, f"{name}_partial.npz")
    k = s.num_repeats
    expected = {
        **s.as_dict(),
        "num_batches": _count_batches(config, s),
        "checkpoint_step": int(step),
        **_provenance(config, params),
    }
    what = "log p(x | its label or caption)" if s.conditional else "bits/dim"
    _announce(config, s, workdir, step, expected["num_batches"], f"{what} of the {type(sde).__name__} model")
    done = _evaluate(
        config,
        s,
        mesh,
        batch_fn,
        params,
        partial_path,
        expected,
        {"bpd": np.float32, "nfe": np.int32},
        "bpd",
        stop_after,
    )
    if done is None:
        return None
    state, new, elapsed = done

    if not np.all(np.isfinite(state["bpd"])):
        bad = int(np.sum(~np.isfinite(state["bpd"])))
        raise RuntimeError(
            f"{bad} of {state['bpd'].size} likelihood solves failed (non-finite); raise "
            f"config.eval.bpd_max_steps (now {s.max_steps}) or loosen bpd_rtol/bpd_atol"
        )
    per_example = state["bpd"].astype(np.float64).mean(axis=0)
    n = per_example.size
    report = {
        "mean_bpd": float(per_example.mean()),
        "stderr": float(per_example.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
        "N": int(n),
        "split": s.split,
        "num_repeats": k,
        **s.report_fields(),
        "offset_bits_per_dim": likelihood_lib.bpd_offset(scaler, s.num_bits),
        "mean_nfe": float(state["nfe"].mean()),
        "max_nfe": int(state["nfe"].max()),
        "checkpoint_step": int(step),
        "params_hash": expected["params_hash"],
        "config_hash": expected["config_hash"],
        "sde": type(sde).__name__,
        "devices": jax.device_count(),
        "seconds_this_session": elapsed,
        "batches_this_session": new,
    }
    report_path = os.path.join(out_dir, f"{name}.json")
    if jax.process_index() == 0:
        images.save_json_atomic(report_path, report)
    log.info("bits/dim on %s: %.4f ± %.4f (N=%d, K=%d)", s.split, report["mean_bpd"], report["stderr"], n, k)
    print(json.dumps(report))
    runlog.conclude(
        f"{'conditional ' if s.conditional else ''}bits/dim on {s.split} at step {step}: "
        f"{report['mean_bpd']:.4f} ± {report['stderr']:.4f} (N={n}, K={k})",
        results={"report": report_path},
    )
    return report


# ----------------------------------------------------------------------------------------------- latent models

LATENT_TERMS = ("reconstruction_bpd", "log_q_bpd", "prior_bpd", "offset_bpd", "bits_per_dim")


def latent_likelihood(config, workdir: str, *, stop_after: int | None = None) -> dict | None:
    """A latent model's likelihood report (``config.latent.autoencoder_workdir`` set): ``bpd_<split>_latent.json``.

    For every example ``x`` of the split (the same batches, dequantisation and scaler rules as pixel models)
    it reports LSGM's bound (:func:`scoresde.latent.variational_bound`, one posterior draw per repeat) term by
    term in bits per *data* dimension: ``reconstruction_bpd`` (Gaussian decoder with the autoencoder's recorded
    std), ``log_q_bpd``, ``prior_bpd`` (the latent model's probability-flow density of the unscaled latent),
    ``offset_bpd`` (bins and scaler), and their sum ``bits_per_dim`` ≥ the data's bits/dim. It also reports the
    latent NLL ``latent_nll_bpd``: ``-log p_θ(ẑ)`` of the scaled latents ``ẑ = c z`` the model was trained on,
    in bits per *latent* dimension, from the same probability-flow solves. Each example's values are averaged
    over the repeats (``N`` is the number of examples, as for pixel models).

    Resumable as pixel models are (``bpd_<split>_latent_partial.npz``); partial results of another checkpoint
    step or another autoencoder step are discarded. ``stop_after`` as in :func:`likelihood`.
    """
    config = build.with_defaults(config)
    s = build.likelihood_settings(config)
    if s.conditional:
        raise ValueError(
            "config.eval.bpd_conditional=True is not available for latent models (the LSGM bound is unconditional "
            "here); set bpd_conditional=False"
        )
    mesh = parallel.make_mesh()
    parallel.check_batch_size(s.batch_size, mesh, "config.eval.bpd_batch_size")
    score_model = build.make_score_model(config)
    sde = score_model.sde
    graphdef, params, rest, step = build.load_ema(config, workdir, mesh, mode="likelihood")
    space = build.load_latent_space(config, mesh)
    scaler = data_lib.get_data_scaler(config)
    d_z = int(np.prod(space.latent_shape))

    @jax.jit
    def batch_fn(params, x01, key):
        score_fn = score_model.score_fn(nnx.merge(graphdef, params, rest))
        bound = latent_lib.variational_bound(
            space.encoder_fn,
            space.decoder_fn,
            score_fn,
            sde,
            x01,
            key,
            scale_factor=space.scale_factor,
            decoder_std=space.decoder_std,
            scaler=scaler,
            mesh=mesh,
            **s.solve_kwargs(),
        )
        # prior = -log p_θ(c z) - d_z log c, so -log p_θ(ẑ) = prior + d_z log c (nats), per latent dimension in bits
        latent_nll = (bound.prior + d_z * np.log(space.scale_factor)) / (d_z * np.log(2.0))
        nfe = jax.numpy.broadcast_to(bound.nfe.reshape(-1), latent_nll.shape)
        return {**{k: getattr(bound, k) for k in LATENT_TERMS}, "latent_nll_bpd": latent_nll, "nfe": nfe}

    out_dir = os.path.join(workdir, "likelihood")
    os.makedirs(out_dir, exist_ok=True)
    partial_path = os.path.join(out_dir, f"bpd_{s.split}_latent_partial.npz")
    expected = {
        **s.as_dict(),
        "num_batches": _count_batches(config, s),
        "checkpoint_step": int(step),
        **_provenance(config, params),
        "autoencoder_step": space.step,
        "autoencoder_hash": str(config.latent.autoencoder_hash),
        "scale_factor": float(space.scale_factor),
    }
    _announce(config, s, workdir, step, expected["num_batches"], "LSGM bound of the latent model")
    fields = {**{k: np.float32 for k in (*LATENT_TERMS, "latent_nll_bpd")}, "nfe": np.int32}
    done = _evaluate(config, s, mesh, batch_fn, params, partial_path, expected, fields, "bits_per_dim", stop_after)
    if done is None:
        return None
    state, new, elapsed = done
    if not all(np.all(np.isfinite(state[k])) for k in LATENT_TERMS):
        raise RuntimeError(
            f"some latent likelihood solves failed (non-finite); raise config.eval.bpd_max_steps "
            f"(now {s.max_steps}) or loosen bpd_rtol/bpd_atol"
        )
    values = {k: state[k].astype(np.float64).mean(axis=0) for k in (*LATENT_TERMS, "latent_nll_bpd")}
    n = values["bits_per_dim"].size
    stderr = lambda v: float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else float("nan")  # noqa: E731
    report = {
        "mean_bpd": float(values["bits_per_dim"].mean()),  # the bound on the data's bits/dim
        "stderr": stderr(values["bits_per_dim"]),
        "terms_bpd": {k: float(values[k].mean()) for k in LATENT_TERMS[:-1]},
        "latent_nll_bpd": float(values["latent_nll_bpd"].mean()),
        "latent_nll_stderr": stderr(values["latent_nll_bpd"]),
        "N": int(n),
        "split": s.split,
        "num_repeats": s.num_repeats,
        **s.report_fields(),
        "mean_nfe": float(state["nfe"].mean()),
        "checkpoint_step": int(step),
        "params_hash": expected["params_hash"],
        "config_hash": expected["config_hash"],
        "autoencoder_step": space.step,
        "autoencoder_hash": expected["autoencoder_hash"],
        "scale_factor": space.scale_factor,
        "decoder_std": space.decoder_std,
        "latent_shape": list(space.latent_shape),
        "sde": type(sde).__name__,
        "devices": jax.device_count(),
        "seconds_this_session": elapsed,
        "batches_this_session": new,
    }
    report_path = os.path.join(out_dir, f"bpd_{s.split}_latent.json")
    if jax.process_index() == 0:
        images.save_json_atomic(report_path, report)
    print(json.dumps(report))
    runlog.conclude(
        f"latent model at step {step}: bound {report['mean_bpd']:.4f} ± {report['stderr']:.4f} bits/dim "
        f"on {s.split} (N={n}), latent NLL {report['latent_nll_bpd']:.4f} bits/latent dim",
        results={"report": report_path},
    )
    return report
