"""``--mode=posthoc_ema``: the EMA of any relative length, synthesised after training from the stored profiles
(Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models", Sec. 3, Algorithm 3).

A run trained with ``config.ema.track_sigma_rels`` (e.g. ``"0.05,0.10"``) keeps those power-function EMAs in its
optimizer state, so every kept checkpoint (the last few and every ``training.snapshot_freq`` steps) is a snapshot
of them. For each ``σ_rel`` of ``config.ema.sigma_rel`` this mode solves the least-squares combination of all
snapshots whose weight profile is nearest to the target's at the newest snapshot
(:func:`scoresde.posthoc_ema.solve_coefficients`), and writes it as a normal model checkpoint (parameters and EMA
both the synthesised ones) in ``workdir/posthoc_ema/sigma_rel_<σ>/``: ``--mode=sample``, ``fid``, ``likelihood``
read it with the same config. Each output directory is written beside and then swapped in, so it is never half
written. ``workdir/posthoc_ema/posthoc_ema.json`` records the snapshots, coefficients and the profile residuals.

Example:
    python -m scoresde.main --config=configs/digits_vp.py --workdir=runs/digits --mode=posthoc_ema \\
        --config.ema.sigma_rel=0.08
"""

from __future__ import annotations

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scoresde import build, images, posthoc_ema, runlog
from scoresde.checkpointing import Checkpointer, save_model_checkpoint

__all__ = ["posthoc_ema_mode", "output_dir"]


def output_dir(workdir: str, sigma_rel: float) -> str:
    """Where the synthesised checkpoint of ``sigma_rel`` goes: ``workdir/posthoc_ema/sigma_rel_<σ:.3f>``."""
    return os.path.join(workdir, "posthoc_ema", f"sigma_rel_{sigma_rel:.3f}")


def _targets(config):
    """Zero-filled parameter and optimizer-state trees of ``config``'s network, as training builds them."""
    model = build.abstract_model(config)
    params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), nnx.state(model, nnx.Param))
    tx = build.optimizer_from_config(config)
    opt_state = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(tx.init, params))
    return params, opt_state


def _profiles(restored) -> posthoc_ema.PowerEMAState | None:
    return None if restored["opt_state"] is None else posthoc_ema.find_power_ema_state(restored["opt_state"])


def _swap_in(out_dir: str, write) -> None:
    """``write(tmp_dir)`` then ``tmp_dir`` renamed to ``out_dir`` (an older ``out_dir`` removed after)."""
    tmp, old = f"{out_dir}.partial-{os.getpid()}", f"{out_dir}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    if os.path.exists(out_dir):
        os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def posthoc_ema_mode(config, workdir: str) -> dict:
    """Synthesises the EMA of each ``config.ema.sigma_rel`` from ``workdir``'s checkpoints and writes it.

    Returns:
        ``{"outputs": {sigma_rel: directory}, "step", "snapshots", "residuals": {sigma_rel: relative L² error of
        the profile fit}, "record"}``.

    Raises:
        ValueError: no ``config.ema.sigma_rel``, a config that tracks no profile or other ones than the run's, or
            fewer snapshots than the solve needs.
        FileNotFoundError: no checkpoint with the profiles in ``workdir``.
    """
    targets = build.posthoc_sigma_rels(config)
    tracked = build.tracked_sigma_rels(config)
    if not tracked:
        raise ValueError(
            "config.ema.track_sigma_rels is empty: this config tracks no EMA profile to synthesise from; train with "
            "e.g. --config.ema.track_sigma_rels=0.05,0.10 (kept at every training.snapshot_freq steps)"
        )
    params, opt_state = _targets(config)
    ckpt = Checkpointer(workdir, read_only=True)
    try:
        steps = [s for s in ckpt.all_steps() if s > 0]
        runlog.announce(
            "scoresde posthoc_ema: post-hoc EMA (Karras et al. 2024)",
            {
                "tracked": ", ".join(f"{s:g}" for s in tracked),
                "targets": ", ".join(f"{s:g}" for s in targets),
                "checkpoints": f"{len(steps)} in {os.path.abspath(os.path.join(workdir, 'checkpoints'))}",
            },
        )
        snapshots, skipped = [], []
        for step in steps:  # pass 1: which checkpoints hold the profiles, and their times (applied updates)
            restored = ckpt.restore(step, opt_state=opt_state)
            stored = build.tracked_sigma_rels(build.with_defaults(restored["meta"].get("config") or {}))
            ph = _profiles(restored)
            if ph is None or stored != tracked:
                skipped.append(step)
                continue
            if int(ph.count) > 0:
                snapshots.append((step, int(ph.count)))
        if not snapshots:
            raise FileNotFoundError(
                f"no checkpoint in {os.path.join(workdir, 'checkpoints')} holds EMA profiles of sigma_rel "
                f"{', '.join(map(str, tracked))} (checkpoints without them: {skipped or 'none'}); train with this "
                f"config.ema.track_sigma_rels first"
            )
        t_in = np.repeat([t for _, t in snapshots], len(tracked))
        s_in = np.tile(tracked, len(snapshots))
        t_out = np.full(len(targets), snapshots[-1][1])
        x = posthoc_ema.solve_coefficients(t_in, s_in, t_out, targets)
        residuals = posthoc_ema.profile_residual(t_in, s_in, t_out, targets, x)

        acc = None  # pass 2: sum_i x_ij snapshot_i for every target j, one checkpoint in memory at a time
        bar = None
        if jax.process_index() == 0:
            from tqdm import tqdm  # noqa: PLC0415  (only the main process draws a bar)

            bar = tqdm(total=len(snapshots), desc="posthoc_ema", unit="ckpt", dynamic_ncols=True)
        for k, (step, _) in enumerate(snapshots):
            emas = _profiles(ckpt.restore(step, opt_state=opt_state)).emas
            for m, tree in enumerate(emas):
                host = jax.tree.map(lambda a: np.asarray(a, np.float64), nnx.to_pure_dict(tree))
                row = x[k * len(tracked) + m]
                part = [jax.tree.map(lambda a, c=c: c * a, host) for c in row]
                acc = part if acc is None else [jax.tree.map(np.add, a, b) for a, b in zip(acc, part, strict=True)]
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
    finally:
        ckpt.close()

    step = snapshots[-1][0]
    dtypes = jax.tree.map(lambda a: a.dtype, nnx.to_pure_dict(params))
    outputs = {}
    for j, sigma in enumerate(targets):
        tree = jax.tree.map(lambda a, d: np.asarray(a, d), acc[j], dtypes)
        out = output_dir(workdir, sigma)
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(out), exist_ok=True)
            _swap_in(
                out,
                lambda d, tree=tree: save_model_checkpoint(d, params=tree, ema_params=tree, step=step, config=config),
            )
        outputs[f"{sigma:g}"] = out
    record = {
        "paper": "Karras et al. 2024, Analyzing and Improving the Training Dynamics of Diffusion Models, Algorithm 3",
        "tracked_sigma_rels": list(tracked),
        "snapshots": [{"step": s, "updates": t} for s, t in snapshots],
        "skipped_checkpoints": skipped,
        "targets": [
            {
                "sigma_rel": sigma,
                "workdir": outputs[f"{sigma:g}"],
                "step": step,
                "profile_residual": float(residuals[j]),
                "coefficients": [
                    {"step": s, "sigma_rel": float(s_in[i]), "x": float(x[i, j])}
                    for i, s in enumerate(np.repeat([s for s, _ in snapshots], len(tracked)))
                ],
            }
            for j, sigma in enumerate(targets)
        ],
    }
    path = os.path.join(workdir, "posthoc_ema", "posthoc_ema.json")
    if jax.process_index() == 0:
        images.save_json_atomic(path, record)
    first = outputs[f"{targets[0]:g}"]
    runlog.conclude(
        f"synthesised EMA sigma_rel {', '.join(f'{s:g}' for s in targets)} at step {step} from {len(snapshots)} "
        f"snapshots (profile residual {', '.join(f'{r:.2%}' for r in residuals)})",
        results={"checkpoints": os.path.dirname(first), "record": path},
        next_command=runlog.command("sample", first),
    )
    return {
        "outputs": outputs,
        "step": step,
        "snapshots": snapshots,
        "residuals": {f"{s:g}": float(r) for s, r in zip(targets, residuals, strict=True)},
        "record": path,
    }
