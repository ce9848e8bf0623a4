"""Text to image on the captioned digits, scored by the shared digit scorer (not by any CLIP of ours).

    python benchmarks/t2i_digits.py --config=configs/digits_t2i.py --workdir=runs/digits_t2i --scales=0,1,2,4
    python benchmarks/t2i_digits.py --student=runs/t2i_cd --student_steps=1,2   # a distilled few-step student

For each digit, ``--num`` samples from its plain caption ("a seven") at each classifier-free guidance scale ``w``:
the fraction the shared SVC (``benchmarks/digits_scorer.py``) recognises as the requested digit, and the samples'
diversity (mean pairwise pixel distance over the same for real digits of that class: 1 = as varied as the data,
0 = one image). Then, at the best scale, for each digit and each attribute word pair of
:data:`scoresde.data.captions.ATTRIBUTE_WORDS` ("a thin seven" / "a bold seven", "a seven, slanted to the left" /
"... right", "a narrow seven" / "a wide seven"), ``--num_attr`` samples of each caption, and the attribute measured
on them (:func:`scoresde.data.captions.measure_attributes`): the caption moves it the right way for a digit when
the high word's mean exceeds the low word's. Wall time is the sampling time (compiled), on this machine.

Other text-to-image samplers (CLIP guidance, unCLIP) get the same table through :func:`evaluate`, which takes any
``sample_fn(prompts, key) -> images01 (N, 8, 8[, 1])``; :func:`cfg_sample_fn` is the classifier-free one.
Prints one JSON line per row and a Markdown table.
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from digits_scorer import score_samples  # benchmarks/ is on sys.path: scripts run as python benchmarks/x.py

from scoresde import build, guidance, parallel
from scoresde import data as data_lib
from scoresde.data import captions

PLAIN = "a {word}"
ATTRIBUTE_PROMPTS = {  # attribute -> (low caption, high caption), in the caption generator's own templates
    "weight": ("a thin {word}", "a bold {word}"),
    "slant": ("a {word}, slanted to the left", "a {word}, slanted to the right"),
    "width": ("a narrow {word}", "a wide {word}"),
}


def _prompt(template: str, k: int) -> str:
    return template.format(word=captions.DIGIT_WORDS[k]).replace("a eight", "an eight")


def cfg_sample_fn(config, workdir: str, *, batch: int = 500, method: str = "dpm_solver++", steps: int = 20):
    """``(fn(prompts, key, w) -> images01 (N, H, W, C) numpy, step)``: classifier-free guided samples of
    ``workdir``'s EMA model, one per prompt, ``batch`` at a time (one compilation; ``w`` is traced)."""
    config = config.copy_and_resolve_references()
    config.sampling.method, config.sampling.steps = method, steps
    mesh = parallel.make_mesh()
    graphdef, params, rest, step = build.load_ema(config, workdir, mesh)
    sde = build.make_sde(config)
    score_model = build.make_score_model(config)
    shape = (batch,) + build.model_data_shape(config)
    to_unit = data_lib.get_data_inverse_scaler(config)
    if build.is_latent(config):
        space = build.load_latent_space(config, mesh)
        inverse = lambda z: to_unit(space.decode(z))  # noqa: E731
    else:
        inverse = to_unit
    sampler = build.sampler_from_config(config, sde, shape, inverse)

    @jax.jit
    def run(params, tokens, key, w):
        from flax import nnx

        model = nnx.merge(graphdef, params, rest)
        cond = lambda x, t, y: score_model.score_fn(model, y=y)(x, t)  # noqa: E731
        guided = guidance.classifier_free_guidance(cond, tokens, w, None)
        # a flow sampled from T = 1 (alpha = 0) also needs the guided denoiser
        return sampler(key, build.cfg_with_denoiser(guided, score_model, model, tokens, w, None))

    def fn(prompts, key, w):
        tokens = captions.tokenize(list(prompts), int(config.data.caption_len))
        out = []
        for i in range(0, len(tokens), batch):
            chunk = tokens[i : i + batch]
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), 0)])
            x, _ = run(params, jnp.asarray(padded), jax.random.fold_in(key, i), jnp.float32(w))
            out.append(np.asarray(parallel.to_host(x))[: len(chunk)])
        return np.clip(np.concatenate(out), 0.0, 1.0)

    return fn, step


def stored_config(workdir: str):
    """The config stored in ``workdir``'s newest checkpoint (a student's: method, sampler, teacher)."""
    from scoresde.checkpointing import Checkpointer  # noqa: PLC0415

    ckpt = Checkpointer(workdir, read_only=True)
    try:
        restored = ckpt.restore_latest()
    finally:
        ckpt.close()
    return build.with_defaults(build.as_config(restored["meta"]["config"]))


def student_sample_fn(config, workdir: str, *, steps: int, batch: int = 500):
    """``(fn(prompts, key) -> images01, step)``: a caption-conditioned few-step student of ``--mode=distill``
    (consistency / sCM / MeanFlow) sampled with its own sampler at ``steps`` steps, each sample from its prompt (the
    path of ``--mode=sample``: :func:`scoresde.build.student_consistency_fn`, :func:`scoresde.build.continuous_sampler`)."""
    from flax import nnx  # noqa: PLC0415

    config = config.copy_and_resolve_references()
    config.sampling.steps = steps
    mesh = parallel.make_mesh()
    graphdef, params, rest, step = build.load_ema(config, workdir, mesh)
    sde = build.make_sde(config)
    shape = (batch,) + build.model_data_shape(config)
    to_unit = data_lib.get_data_inverse_scaler(config)
    if build.is_consistency_model(config):
        sampler = build.sampler_from_config(config, sde, shape, to_unit)

        def sample(model, tokens, key):
            net = lambda x, labels: build.call_network(model, x, labels, tokens)  # noqa: E731
            return sampler(key, build.student_consistency_fn(net, sde, config))
    else:
        student = build.continuous_sampler(config, sde, shape, to_unit, build.sampling_options(config)[1])

        def sample(model, tokens, key):
            return student(key, model, tokens)

    run = jax.jit(lambda params, tokens, key: sample(nnx.merge(graphdef, params, rest), tokens, key))

    def fn(prompts, key):
        tokens = captions.tokenize(list(prompts), int(config.data.caption_len))
        out = []
        for i in range(0, len(tokens), batch):
            chunk = tokens[i : i + batch]
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), 0)])
            x, _ = run(params, jnp.asarray(padded), jax.random.fold_in(key, i))
            out.append(np.asarray(parallel.to_host(x))[: len(chunk)])
        return np.clip(np.concatenate(out), 0.0, 1.0)

    return fn, step


@functools.cache
def _data_spread() -> np.ndarray:
    """Mean pairwise pixel distance of the real digits of each class (8x8, [0, 1])."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.array([_spread(d.images[d.target == k] / 16.0) for k in range(10)])


def _spread(images01) -> float:
    x = np.asarray(images01, np.float64).reshape(len(images01), -1)
    d = np.sqrt(np.maximum(((x[:, None] - x[None]) ** 2).sum(-1), 0.0))
    return float(d.sum() / (len(x) * (len(x) - 1)))


def _to_8x8(images01) -> np.ndarray:
    x = np.asarray(images01, np.float64)
    x = x.mean(-1) if x.ndim == 4 else x
    n, h, w = x.shape
    return x.reshape(n, 8, h // 8, 8, w // 8).mean(axis=(2, 4))


def digit_rows(sample_fn, *, num: int, key) -> dict:
    """Per digit, ``num`` samples of its plain caption: recognised fraction and diversity; and the wall time."""
    prompts = [_prompt(PLAIN, k) for k in range(10) for _ in range(num)]
    labels = np.repeat(np.arange(10), num)
    t0 = time.perf_counter()
    x = _to_8x8(sample_fn(prompts, key))
    wall = time.perf_counter() - t0
    per = [score_samples(x[labels == k], np.full(num, k))["accuracy"] for k in range(10)]
    diversity = [_spread(x[labels == k]) / _data_spread()[k] for k in range(10)]
    return {
        "recognised": float(np.mean(per)),
        "recognised_per_digit": [round(a, 3) for a in per],
        "worst_digit": int(np.argmin(per)),
        "diversity": float(np.mean(diversity)),
        "min_diversity": float(np.min(diversity)),
        "samples": len(prompts),
        "wall_s": round(wall, 1),
    }


def attribute_rows(sample_fn, *, num: int, key) -> dict:
    """Per attribute and digit, ``num`` samples of the low and the high caption: does the measurement move?"""
    prompts, owners = [], []
    for name, (low, high) in ATTRIBUTE_PROMPTS.items():
        for k in range(10):
            for side, template in (("low", low), ("high", high)):
                prompts += [_prompt(template, k)] * num
                owners += [(name, k, side)] * num
    t0 = time.perf_counter()
    x = _to_8x8(sample_fn(prompts, key))
    wall = time.perf_counter() - t0
    owners = np.array(owners, dtype=object)
    labels = np.array([o[1] for o in owners])
    inked = x.sum((1, 2)) > 0  # a blank sample has no attributes
    measured = captions.measure_attributes(np.where(inked[:, None, None], x, 1.0 / 64), labels)
    out = {"samples": len(prompts), "wall_s": round(wall, 1)}
    for name in ATTRIBUTE_PROMPTS:
        moved, gaps = [], []
        for k in range(10):
            lo = [i for i, o in enumerate(owners) if o[0] == name and o[1] == k and o[2] == "low" and inked[i]]
            hi = [i for i, o in enumerate(owners) if o[0] == name and o[1] == k and o[2] == "high" and inked[i]]
            gap = float(np.mean(measured[name][hi]) - np.mean(measured[name][lo]))
            gaps.append(gap)
            moved.append(gap > 0)
        out[name] = {
            "digits_moved_right_way": int(np.sum(moved)),
            "wrong_way_digits": [k for k in range(10) if not moved[k]],
            "mean_gap": float(np.mean(gaps)),
            "gaps": [round(g, 3) for g in gaps],
        }
    return out


def evaluate(name: str, sample_fns: dict, *, num: int = 100, num_attr: int = 100, seed: int = 0) -> list[dict]:
    """The benchmark's rows for one method: ``sample_fns`` maps a setting (e.g. ``"w=2"``) to ``sample_fn(prompts,
    key) -> images01``. Digits at every setting, attributes at the one with the best recognised fraction
    (``num_attr = 0``: no attribute rows)."""
    if num < 1 or num_attr < 0:
        raise ValueError(f"num={num} must be >= 1 and num_attr={num_attr} >= 0 (0: no attribute rows)")
    key = jax.random.key(seed)
    rows = []
    for setting, fn in sample_fns.items():
        row = {"method": name, "setting": setting, **digit_rows(fn, num=num, key=jax.random.fold_in(key, 0))}
        print(json.dumps(row), flush=True)
        rows.append(row)
    if num_attr == 0:
        return rows
    best = max(rows, key=lambda r: r["recognised"])
    attrs = attribute_rows(sample_fns[best["setting"]], num=num_attr, key=jax.random.fold_in(key, 1))
    best["attributes"] = attrs
    print(json.dumps({"method": name, "setting": best["setting"], "attributes": attrs}), flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    """The BENCHMARKS.md table of :func:`evaluate`'s rows."""
    lines = [
        "| method | setting | recognised (mean of 10 digits) | worst digit | diversity (1 = data) | "
        "bold>thin | right>left | wide>narrow | wall s (digits + attributes) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a = r.get("attributes")
        moves = (
            [f"{a[n]['digits_moved_right_way']}/10 ({a[n]['mean_gap']:+.3f})" for n in ATTRIBUTE_PROMPTS]
            if a
            else ["", "", ""]
        )
        wall = f"{r['wall_s']}" + (f" + {a['wall_s']}" if a else "")
        lines.append(
            f"| {r['method']} | {r['setting']} | {r['recognised']:.3f} | {r['worst_digit']} "
            f"({min(r['recognised_per_digit']):.2f}) | {r['diversity']:.2f} | {' | '.join(moves)} | {wall} |"
        )
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", help="the CFG model's config (not needed with --student)")
    ap.add_argument("--workdir", help="the CFG model's workdir")
    ap.add_argument("--student", default="", help="a caption-conditioned --mode=distill workdir (its stored config)")
    ap.add_argument("--student_steps", default="1,2", help="comma list of the student's step counts")
    ap.add_argument("--scales", default="0,1,2,4", help="comma list of CFG weights w")
    ap.add_argument("--num", type=int, default=100, help="samples per digit caption")
    ap.add_argument("--num_attr", type=int, default=100, help="samples per attribute caption")
    ap.add_argument("--method", default="dpm_solver++")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=500)
    args = ap.parse_args()
    if args.student:
        config = stored_config(args.student)
        fns, step = {}, None
        for k in (int(s) for s in args.student_steps.split(",")):
            fn, step = student_sample_fn(config, args.student, steps=k, batch=args.batch)
            fn([_prompt(PLAIN, 0)], jax.random.key(0))  # compile once, outside the timings
            fns[f"{k} step{'s' if k > 1 else ''}"] = fn
        name = f"{config.distill.method} student ({config.sampling.method}, step {step})"
        print(markdown(evaluate(name, fns, num=args.num, num_attr=args.num_attr)))
        return
    if not (args.config and args.workdir):
        ap.error("--config and --workdir are needed (or --student)")
    config = build.load_config(args.config)
    fn, step = cfg_sample_fn(config, args.workdir, batch=args.batch, method=args.method, steps=args.steps)
    fn([_prompt(PLAIN, 0)], jax.random.key(0), 0.0)  # compile once, outside the timings
    scales = [float(s) for s in args.scales.split(",")]
    fns = {f"w={w:g}": functools.partial(lambda p, k, w: fn(p, k, w), w=w) for w in scales}
    rows = evaluate(f"CFG ({args.method}, {args.steps} steps, step {step})", fns, num=args.num, num_attr=args.num_attr)
    print(markdown(rows))


if __name__ == "__main__":
    main()
