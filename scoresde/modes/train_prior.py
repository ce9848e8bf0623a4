"""``--mode=train_prior``: trains unCLIP's diffusion prior over CLIP image embeddings given the text embedding.

DALL·E 2's prior (Ramesh et al. 2022, Sec. 2.2) on this project's SDEs: the pairs ``(E_T(caption), E_I(image))`` of
the training digits are embedded once by the CLIP that ``--mode=train_clip`` trained in ``config.prior.clip_workdir``
(:func:`scoresde.build.embedding_pairs`); the prior (an MLP score network with
``cond_dim = E``, :func:`scoresde.build.get_prior`) learns the image embedding scaled by ``√E`` with the config's
SDE, objective and output convention, the text embedding dropped to zeros w.p. ``config.prior.p_uncond`` for
classifier-free guidance. Everything is written under ``workdir/prior/`` (checkpoints, ``metrics.jsonl``,
``eval_results.json``), next to the decoder (the score model of ``workdir``); a run resumes from its newest
checkpoint with the harness of every trainer (:mod:`scoresde.training`), reading the batches and keys of the
uninterrupted run.

At the end, ``eval_results.json`` holds on the test pairs: the mean cosine between a prior sample and the true image
embedding of its caption's image, the same for a random other test image (the baseline of a prior that ignores the
text), and the fraction of prior samples whose nearest CLIP digit prompt is the caption's digit.

Example:
    python -m scoresde.main --config=configs/digits_unclip.py --workdir=runs/digits_unclip --mode=train_prior
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scoresde import build, guidance, runlog, train_state, training, unclip

__all__ = ["train_prior", "prior_loss"]


def prior_loss(loss_fn, graphdef, rest, p_uncond: float):
    """The trainer's ``loss(params, batch, key, step) -> (loss, {})``: the config's score-matching ``loss_fn`` of the
    prior on ``batch["image"]`` (scaled image embeddings) given ``batch["text"]``, dropped to zeros w.p. ``p_uncond``."""

    def loss(params, batch, key, step):
        del step
        k_loss, k_drop = jax.random.split(key)
        y = guidance.drop_conditioning(build.purpose_key(k_drop, "label_dropout"), batch["text"], p_uncond)
        model = nnx.merge(graphdef, params, rest)
        value, _ = loss_fn(lambda x, labels: model(x, labels, y, train=True), batch["image"], k_loss)
        return value, {}

    return loss


def train_prior(config, workdir: str) -> dict:
    """Trains ``config.prior`` on the CLIP pairs of the training split; see the module docstring.

    Returns:
        A summary dict (``step``, ``loss``, and the test figures of ``eval_results.json``).

    Raises:
        ValueError: a config without a ``prior`` section, or without captioned data.
        FileNotFoundError: no trained CLIP (``--mode=train_clip``).
    """
    config = build.with_defaults(config)
    if not build.has_prior(config):
        raise ValueError("--mode=train_prior needs a config.prior section (configs/digits_unclip.py has one)")
    p = config.prior
    out_dir = build.prior_dir(workdir)
    run = training.prepare(config, out_dir, "prior")
    clip, clip_config = build.configured_clip(config)
    pairs = build.embedding_pairs(clip, clip_config, "train")
    dim = pairs["image"].shape[1]
    score_model = build.make_score_model(config)
    loss_fn = build.make_loss_fn(config, score_model.sde)
    model = build.get_prior(config, dim, rngs=nnx.Rngs(int(config.seed)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = build.make_optimizer(**build.optimizer_settings(p))
    batch_size = run.settings.batch_size

    out = training.fit(
        run,
        training.Trainer(
            title=f"scoresde train_prior: unCLIP prior over {dim}-d CLIP image embeddings, sde {config.training.sde}",
            facts={
                "devices": training.devices_fact(),
                "params": f"{sum(x.size for x in jax.tree.leaves(params)):,}",
                "data": f"{len(pairs['image'])} (caption, image) embedding pairs of {config.data.dataset} (train)",
                "clip": build.clip_workdir(config),
            },
            desc="prior",
            init_state=lambda: train_state.init_state(params, tx),
            tx=tx,
            batches=lambda start: build.pair_batches(pairs, batch_size, start_step=start, seed=int(config.seed)),
            loss=prior_loss(loss_fn, graphdef, rest, float(p.p_uncond)),
        ),
    )
    test = _test_figures(
        clip,
        clip_config,
        score_model,
        nnx.merge(graphdef, out["state"]["ema"], rest),
        float(p.guidance_scale),
        run.key("prior_eval"),
    )
    result = {"step": out["step"], "loss": out["loss"], **test}
    if jax.process_index() == 0:
        with open(os.path.join(out_dir, "eval_results.json"), "w") as f:
            json.dump(result, f, indent=1)
    training.conclude_training(
        out,
        "prior trained",
        out_dir,
        results={
            "test cosine to the true image embedding": f"{test['cosine_to_true']:.3f} "
            f"(a random image's: {test['cosine_to_random']:.3f})",
            "digit of the nearest prompt": f"{test['digit_accuracy']:.3f}",
            "checkpoints": os.path.join(out_dir, "checkpoints"),
        },
        next_command=runlog.command("sample", workdir),
    )
    return result


def _test_figures(clip, clip_config, score_model, prior, w: float, key) -> dict:
    """Prior samples for every test caption, compared with the true image embeddings and the CLIP digit prompts."""
    pairs = build.embedding_pairs(clip, clip_config, "test")
    text = jnp.asarray(pairs["text"])
    score_fn = score_model.net_score_fn
    cond = lambda x, t, y: score_fn(lambda xx, labels: prior(xx, labels, y))(x, t)  # noqa: E731
    z, _ = unclip.sample_prior(
        cond, score_model.sde, text, key, dim=text.shape[1], w=w, method="dpm_solver++", steps=50
    )
    z = np.asarray(build.to_clip_space(z))
    true = pairs["image"]
    perm = np.random.default_rng(0).permutation(len(true))
    prompts = build.digit_prompt_embeddings(
        clip, int(clip_config.data.caption_len)
    )  # (10, E): the mean unit text embedding of each digit's prompts
    guess = np.argmax(z @ prompts.T, axis=1)
    return {
        "cosine_to_true": float(np.mean(np.sum(z * true, axis=1))),
        "cosine_to_random": float(np.mean(np.sum(z * true[perm], axis=1))),
        "digit_accuracy": float(np.mean(guess == pairs["label"])),
        "test_pairs": len(true),
        "sampler": f"dpm_solver++, 50 steps, prior guidance w={w:g}",
    }
