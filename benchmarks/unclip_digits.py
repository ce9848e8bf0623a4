"""CLIP guidance and unCLIP on the captioned digits, in the table of ``benchmarks/t2i_digits.py`` (the shared digit
scorer, not our CLIP, decides what a sample shows).

    python benchmarks/unclip_digits.py --uncond_config=configs/digits_vp.py --uncond_workdir=runs/digits \\
        --clip_workdir=runs/digits_clip --clip_scales=0,1,2,4 \\
        --unclip_config=configs/digits_unclip.py --unclip_workdir=runs/digits_unclip --unclip_scales=0,1,3

* **CLIP guidance**: the unconditional model of ``--uncond_workdir`` guided by ``scale · ∇ E_I(x_t, t) · E_T(c) / τ``
  of the noised CLIP in ``--clip_workdir`` (``clip_noised/``; ``--clean`` guides by the clean CLIP through the
  denoiser instead), for each scale.
* **unCLIP**: the prior of ``--unclip_workdir/prior`` samples a CLIP image embedding for each caption (prior
  guidance ``--prior_w``), the decoder of ``--unclip_workdir`` decodes it with classifier-free guidance ``w``.

Same rows as :func:`t2i_digits.evaluate`: per digit the fraction recognised, diversity, wall time; at the best
setting, whether the attribute words move the measured attribute. Prints JSON lines and a Markdown table.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from t2i_digits import PLAIN, _prompt, evaluate, markdown  # benchmarks/ is on sys.path

from scoresde import build, parallel, unclip
from scoresde import data as data_lib
from scoresde.build.clip import load_clip
from scoresde.data import captions


def _batched(run, caption_len: int, batch: int):
    """``fn(prompts, key, *scales) -> images01``: ``run(tokens, key, *scales)`` over fixed-size batches (one compile)."""

    def fn(prompts, key, *scales):
        tokens = captions.tokenize(list(prompts), caption_len)
        out = []
        for i in range(0, len(tokens), batch):
            chunk = tokens[i : i + batch]
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), 0)])
            x, _ = run(jnp.asarray(padded), jax.random.fold_in(key, i), *[jnp.float32(s) for s in scales])
            out.append(np.asarray(parallel.to_host(x))[: len(chunk)])
        return np.clip(np.concatenate(out), 0.0, 1.0)

    return fn


def clip_sample_fn(config, workdir: str, clip_workdir: str, *, noised: bool, batch: int, method: str, steps: int):
    """``fn(prompts, key, scale)``: the unconditional model of ``workdir`` guided by the CLIP of ``clip_workdir``."""
    config = config.copy_and_resolve_references()
    config.sampling.method, config.sampling.steps = method, steps
    mesh = parallel.make_mesh()
    graphdef, params, rest, _ = build.load_ema(config, workdir, mesh)
    clip, _, clip_config = load_clip(clip_workdir, noised=noised)
    guide = build.GuidanceCLIP(clip, int(clip_config.data.caption_len), noised)
    score_model = build.make_score_model(config)
    shape = (batch,) + build.model_data_shape(config)
    sampler = build.sampler_from_config(config, score_model.sde, shape, data_lib.get_data_inverse_scaler(config))

    @jax.jit
    def run(tokens, key, scale):
        model = nnx.merge(graphdef, params, rest)
        return sampler(key, build.clip_guided_score(score_model.score_fn(model), score_model.sde, guide, tokens, scale))

    return _batched(run, guide.caption_len, batch)


def unclip_sample_fn(config, workdir: str, *, batch: int, method: str, steps: int, prior_steps: int = 50):
    """``fn(prompts, key, w, prior_w)``: text -> CLIP text embedding -> prior -> decoder (``w``: the decoder's CFG)."""
    config = config.copy_and_resolve_references()
    config.sampling.method, config.sampling.steps = method, steps
    mesh = parallel.make_mesh()
    graphdef, params, rest, _ = build.load_ema(config, workdir, mesh)
    bundle = build.load_unclip_prior(config, workdir)
    score_model = build.make_score_model(config)
    shape = (batch,) + build.model_data_shape(config)
    sampler = build.sampler_from_config(config, score_model.sde, shape, data_lib.get_data_inverse_scaler(config))

    @jax.jit
    def run(tokens, key, w, prior_w):
        model = nnx.merge(graphdef, params, rest)
        z = build.prior_image_embeddings(
            score_model, bundle, tokens, jax.random.fold_in(key, 1), w=prior_w, steps=prior_steps
        )
        cond = lambda x, t, y: score_model.score_fn(model, y=y)(x, t)  # noqa: E731
        return sampler(key, unclip.conditioned_score(cond, z, batch, w=w))

    return _batched(run, bundle.caption_len, batch)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--uncond_config", default="configs/digits_vp.py")
    ap.add_argument("--uncond_workdir", default="")
    ap.add_argument("--clip_workdir", default="")
    ap.add_argument("--clean", action="store_true", help="guide by the clean CLIP through the denoiser")
    ap.add_argument("--clip_scales", default="0,1,2,4")
    ap.add_argument("--unclip_config", default="configs/digits_unclip.py")
    ap.add_argument("--unclip_workdir", default="")
    ap.add_argument("--unclip_scales", default="0,1,3", help="decoder CFG weights w")
    ap.add_argument("--prior_w", type=float, default=1.0)
    ap.add_argument("--prior_clip_workdir", default="", help="overrides the unCLIP config's prior.clip_workdir")
    ap.add_argument("--num", type=int, default=100)
    ap.add_argument("--num_attr", type=int, default=100)
    ap.add_argument("--method", default="dpm_solver++")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=500)
    args = ap.parse_args()
    rows = []
    if args.uncond_workdir and args.clip_workdir:
        config = build.load_config(args.uncond_config)
        fn = clip_sample_fn(
            config,
            args.uncond_workdir,
            args.clip_workdir,
            noised=not args.clean,
            batch=args.batch,
            method=args.method,
            steps=args.steps,
        )
        fn([_prompt(PLAIN, 0)], jax.random.key(0), 0.0)  # compile once, outside the timings
        fns = {f"scale={s:g}": (lambda p, key, s=s: fn(p, key, s)) for s in map(float, args.clip_scales.split(","))}
        kind = "clean CLIP through the denoiser" if args.clean else "noised CLIP"
        rows += evaluate(
            f"CLIP guidance ({kind}, {args.method}, {args.steps} steps)", fns, num=args.num, num_attr=args.num_attr
        )
    if args.unclip_workdir:
        config = build.load_config(args.unclip_config)
        if args.prior_clip_workdir:
            config.prior.clip_workdir = args.prior_clip_workdir
        fn = unclip_sample_fn(config, args.unclip_workdir, batch=args.batch, method=args.method, steps=args.steps)
        fn([_prompt(PLAIN, 0)], jax.random.key(0), 0.0, args.prior_w)
        fns = {
            f"w={w:g}, prior w={args.prior_w:g}": (lambda p, key, w=w: fn(p, key, w, args.prior_w))
            for w in map(float, args.unclip_scales.split(","))
        }
        rows += evaluate(f"unCLIP ({args.method}, {args.steps} steps)", fns, num=args.num, num_attr=args.num_attr)
    print(markdown(rows))


if __name__ == "__main__":
    main()
