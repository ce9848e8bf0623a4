"""Post-hoc EMA on the digits: a sweep of sigma_rel synthesised from one run, against its raw and tracked-EMA weights;
optionally the same run trained with EDM's augmentation.

    python -m scoresde.main --config=configs/digits_vp.py --workdir=runs/digits_phema \\
        --config.training.snapshot_freq=250 --config.training.snapshot_sampling=False \\
        --config.ema.track_sigma_rels=0.05,0.10
    python benchmarks/digits_posthoc_ema.py --workdir=runs/digits_phema [--aug_workdir=runs/digits_aug] [--n=256]

``--mode=posthoc_ema`` writes ``workdir/posthoc_ema/sigma_rel_<σ>/`` for every σ of ``--sigma_rels``; every row then
draws ``--n`` samples from the same prior draws with the same sampler (DPM-Solver++(2M), 20 steps) and scores them
with the shared scorer (benchmarks/digits_scorer.py). ``--aug_workdir``: a run of the same config with
``--config.data.augment_p=0.12`` (sampled with all augmentation labels zero). Prints one JSON line per row and a
Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np
from digits_scorer import score_samples  # benchmarks/ is on sys.path: scripts run as python benchmarks/x.py
from flax import nnx

from scoresde import build, sampling
from scoresde import data as data_lib
from scoresde.checkpointing import Checkpointer
from scoresde.modes.posthoc_ema import output_dir, posthoc_ema_mode

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**fields):
    config = build.load_config(os.path.join(REPO, "configs/digits_vp.py"))
    with config.unlocked():
        for dotted, value in fields.items():
            section, name = dotted.split(".")
            config[section][name] = value
    return config


_SAMPLERS: dict = {}


def _load(config, workdir, *, ema, step=None):
    """The network of ``workdir`` at its newest checkpoint, or at ``step``."""
    if step is None:
        return build.load_model(workdir, config, ema=ema)
    model = build.get_model(config, rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    target = nnx.to_pure_dict(state)
    ckpt = Checkpointer(workdir, read_only=True)
    try:
        restored = ckpt.restore(step, **{("ema_params" if ema else "params"): target})
    finally:
        ckpt.close()
    nnx.replace_by_pure_dict(state, restored["ema_params" if ema else "params"])
    nnx.update(model, state)
    return model, step


def _samples(config, workdir, z, *, ema=True, step=None):
    """DPM-Solver++(2M), 20 steps, from ``z``: one compiled function per architecture, the parameters an argument."""
    model, step = _load(config, workdir, ema=ema, step=step)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    key = (graphdef, float(config.data.augment_p))
    if key not in _SAMPLERS:
        score_model = build.make_score_model(config)
        sde = score_model.sde

        @jax.jit
        def run(params, z):
            net = nnx.merge(graphdef, params, rest)
            return sampling.sample(
                score_model.score_fn(net),
                sde,
                z.shape,
                jax.random.key(0),
                method="dpm_solver++",
                x_init=z,
                eps=build.sampling_eps(sde),
                steps=20,
                order=2,
            )

        _SAMPLERS[key] = run
    x, nfe = _SAMPLERS[key](params, z)
    inverse = data_lib.get_data_inverse_scaler(config)
    return np.clip(np.asarray(inverse(x)), 0.0, 1.0), int(nfe), step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", required=True, help="a digits_vp run with --config.ema.track_sigma_rels=0.05,0.10")
    ap.add_argument("--aug_workdir", default="", help="the same config trained with --config.data.augment_p=0.12")
    ap.add_argument("--sigma_rels", default="0.02,0.04,0.05,0.07,0.10,0.13,0.16,0.20")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--compare_step", type=int, default=0, help="the step both runs are compared at (0: newest)")
    a = ap.parse_args()
    config = _config(**{"ema.track_sigma_rels": "0.05,0.10", "ema.sigma_rel": a.sigma_rels})
    t0 = time.perf_counter()
    out = posthoc_ema_mode(config, a.workdir)
    print(json.dumps({"posthoc_ema_wall_s": round(time.perf_counter() - t0, 1), "residuals": out["residuals"]}))
    shape = (a.n,) + data_lib.data_shape(config)
    z = build.make_sde(config).prior_sampling(jax.random.key(2026), shape)
    rows = [
        ("raw parameters", config, a.workdir, False, None),
        (f"tracked EMA, rate {config.model.ema_rate}", config, a.workdir, True, None),
    ]
    for s in build.posthoc_sigma_rels(config):
        tag = "tracked profile" if s in (0.05, 0.10) else "synthesised"
        rows.append(
            (f"post-hoc sigma_rel {s:g} ({tag})", config, output_dir(a.workdir, s), True, out["residuals"][f"{s:g}"])
        )
    rows = [(*r, None) for r in rows]
    if a.aug_workdir:
        aug = _config(**{"data.augment_p": 0.12})
        at = a.compare_step or None
        rows.append(("augment_p 0: raw parameters", config, a.workdir, False, None, at))
        rows.append((f"augment_p 0: tracked EMA, rate {config.model.ema_rate}", config, a.workdir, True, None, at))
        rows.append(("augment_p 0.12: raw parameters", aug, a.aug_workdir, False, None, at))
        rows.append((f"augment_p 0.12: tracked EMA, rate {aug.model.ema_rate}", aug, a.aug_workdir, True, None, at))
    table = []
    for name, cfg, workdir, ema, residual, at in rows:
        x, nfe, step = _samples(cfg, workdir, z, ema=ema, step=at)
        rec = {"weights": name, "step": step, "nfe": nfe, "profile_residual": residual, **score_samples(x)}
        rec.pop("counts", None)
        print(json.dumps(rec), flush=True)
        table.append(rec)
    print("| weights | step | profile residual | mean p_max | p_max > 0.9 | classes | class entropy (bits) |")
    print("|---|---|---|---|---|---|---|")
    for r in table:
        res = "" if r["profile_residual"] is None else f"{r['profile_residual']:.2%}"
        print(
            f"| {r['weights']} | {r['step']} | {res} | {r['mean_max_prob']:.3f} | {r['frac_confident']:.2f} | "
            f"{r['classes_present']} | {r['class_entropy_bits']:.2f} |"
        )


if __name__ == "__main__":
    main()
