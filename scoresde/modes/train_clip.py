"""``--mode=train_clip``: trains CLIP (or a noised CLIP) from scratch on captioned images (``config.clip``).

CLIP (Radford et al. 2021) learns an image encoder and a text encoder whose unit embeddings of matching
(image, caption) pairs are close: the symmetric cross-entropy over each batch's similarity matrix with a learned
temperature (:func:`scoresde.models.clip.clip_loss`). Captions come from the batches (``config.data.captions``:
the captioned digits of :mod:`scoresde.data.captions`). With ``config.clip.noised`` the image encoder reads
perturbed images ``x_t = alpha(t) x_0 + sigma(t) z``, ``t ~ U[eps, T]`` of the config's SDE, in VE coordinates
(GLIDE's noised CLIP, for CLIP guidance).

At the end the EMA model is evaluated on the test split, and the figures are printed and written to
``eval_results.json``:

* zero-shot accuracy: each test image is assigned the digit whose prompts alone ("a seven", "the digit 7", ...,
  :func:`scoresde.data.captions.digit_prompts`) it is most similar to, the prompt embeddings of a digit averaged
  (CLIP's prompt ensembling);
* text->image retrieval recall@1 / @5: for each test caption, whether its own image is among the 1 / 5 test images
  most similar to it (ties count against it).

A noised CLIP is evaluated at each of ``config.clip.eval_times`` (one fixed noise draw each). Everything is written
under ``workdir/clip/`` (``workdir/clip_noised/`` for the noised one): checkpoints with params and EMA params,
``metrics.jsonl``, ``eval_results.json``; a run resumes from its newest checkpoint (:mod:`scoresde.training`).

Example:
    python -m scoresde.main --config=configs/digits_clip.py --workdir=runs/digits_clip --mode=train_clip
    python -m scoresde.main --config=configs/digits_clip.py:noised --workdir=runs/digits_clip --mode=train_clip
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
from flax import nnx

from scoresde import build, runlog, train_state, training
from scoresde import data as data_lib
from scoresde.data import captions
from scoresde.models.clip import clip_loss, recall_at_k, zero_shot_weights
from scoresde.sde import batch_mul

__all__ = ["train_clip", "evaluate_clip"]


def _check(config) -> None:
    if "clip" not in config:
        raise ValueError("--mode=train_clip needs a config.clip section (e.g. configs/digits_clip.py)")
    if not bool(config.data.captions):
        raise ValueError("--mode=train_clip needs caption batches: set config.data.captions=True (dataset digits)")
    if build.is_latent(config):
        raise ValueError(
            "--mode=train_clip trains on pixels; this config is a latent one "
            f"(config.latent.autoencoder_workdir={config.latent.autoencoder_workdir!r}): set it to ''"
        )


def train_clip(config, workdir: str) -> dict:
    """Trains ``config.clip`` on the caption batches of ``config.data``; see the module docstring.

    Returns:
        The summary written to ``eval_results.json``: ``step``, the last logged ``loss`` / ``accuracy`` and the
        test figures (:func:`evaluate_clip`; per eval time for a noised CLIP).
    """
    config = build.with_defaults(config)
    _check(config)
    c = config.clip
    noised = bool(c.noised)
    out_dir = build.clip_dir(workdir, noised)
    run = training.prepare(config, out_dir, "clip")
    batch_size = run.settings.batch_size
    sde = build.make_sde(config) if noised else None
    eps = build.sampling_eps(sde) if noised else 0.0
    model = build.get_clip(config, rngs=nnx.Rngs(int(config.seed)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = build.make_optimizer(**build.optimizer_settings(c))

    def loss(params, batch, key, step):
        del step
        x, level = batch["image"], None
        if noised:
            x, level = _perturb(sde, x, key, eps)
        image_emb, text_emb, scale = nnx.merge(graphdef, params, rest)(x, batch["caption"], level)
        value, accuracy = clip_loss(image_emb, text_emb, scale)
        return value, {"accuracy": accuracy, "temperature": 1.0 / scale}

    kind = "noised CLIP" if noised else "CLIP"
    out = training.fit(
        run,
        training.Trainer(
            title=f"scoresde train_clip: {kind} on {config.data.dataset} captions"
            + (f", sde {config.training.sde}" if noised else ""),
            facts={
                "devices": training.devices_fact(),
                "params": f"{sum(x.size for x in jax.tree.leaves(params)):,}",
                "data": data_lib.describe(config),
                "vocabulary": f"{len(captions.VOCAB)} words, captions of {config.data.caption_len} tokens",
            },
            desc="clip",
            init_state=lambda: train_state.init_state(params, tx),
            tx=tx,
            batches=lambda start: data_lib.get_dataset(config, split="train", batch_size=batch_size, start_step=start),
            loss=loss,
        ),
    )
    test = data_lib.split_arrays(config, "test")
    model = nnx.merge(graphdef, jax.device_get(out["state"]["ema"]), rest)
    if noised:
        key = run.key("eval")
        figures = {
            f"t={float(t):g}": evaluate_clip(model, test, sde=sde, t=max(float(t), eps), key=jax.random.fold_in(key, i))
            for i, t in enumerate(c.eval_times)
        }
    else:
        figures = evaluate_clip(model, test)
    last = {k: out["last"][k] for k in ("loss", "accuracy", "temperature") if k in out["last"]}
    result = {"step": out["step"], **last, "test": figures}
    if jax.process_index() == 0:
        with open(os.path.join(out_dir, "eval_results.json"), "w") as f:
            json.dump(result, f, indent=1)
    shown = figures if not noised else next(iter(figures.values()))
    training.conclude_training(
        out,
        f"{kind} trained",
        out_dir,
        results={
            "zero-shot test accuracy": f"{shown['zero_shot_accuracy']:.3f}"
            + (f" (at {next(iter(figures))})" if noised else ""),
            "text->image recall@1 / @5": f"{shown['recall@1']:.3f} / {shown['recall@5']:.3f}",
            "results": os.path.join(out_dir, "eval_results.json"),
            "checkpoints": os.path.join(out_dir, "checkpoints"),
        },
        next_command=runlog.command("train_clip", workdir, "--config.clip.noised=True")
        if not noised
        else "use it for CLIP guidance: scoresde.build.load_clip(workdir, noised=True)",
    )
    return result


def _perturb(sde, x0, key, eps):
    """``(x_t / alpha(t), sigma(t) / alpha(t))`` for ``t ~ U[eps, T]``: the noised image encoder's inputs."""
    kt, kz = jax.random.split(key)
    return _perturb_at(sde, x0, jax.random.uniform(kt, (x0.shape[0],), minval=eps, maxval=sde.T), kz)


def evaluate_clip(model, test: dict, *, sde=None, t: float | None = None, key=None) -> dict:
    """Zero-shot digit accuracy from prompts alone and text->image recall@1 / @5 on ``test`` (module docstring).

    Args:
        model: a :class:`~scoresde.models.clip.CLIP`.
        test: ``{"image", "label", "caption"}`` arrays of the whole test split (:func:`scoresde.data.split_arrays`).
        sde, t, key: a noised CLIP's images are perturbed to time ``t`` of ``sde`` with noise from ``key``.

    Returns:
        ``{"zero_shot_accuracy", "recall@1", "recall@5", "num_images", "prompts_per_digit"}``.
    """
    prompts = [p for k in range(10) for p in captions.digit_prompts(k)]
    prompt_tokens = jnp.asarray(captions.tokenize(prompts, test["caption"].shape[1]))
    x, level = jnp.asarray(test["image"]), None
    if model.noised:
        tv = jnp.full((x.shape[0],), t, x.dtype)
        x, level = _perturb_at(sde, x, tv, key)

    @nnx.jit
    def figures(model, x, level, tokens, prompt_tokens, labels):
        image_emb = model.encode_image(x, level)
        weights = zero_shot_weights(model.encode_text(prompt_tokens), 10)
        accuracy = jnp.mean(jnp.argmax(image_emb @ weights.T, axis=-1) == labels)
        return accuracy, recall_at_k(model.encode_text(tokens), image_emb, (1, 5))

    accuracy, recall = figures(model, x, level, jnp.asarray(test["caption"]), prompt_tokens, jnp.asarray(test["label"]))
    return {
        "zero_shot_accuracy": float(accuracy),
        "recall@1": float(recall[1]),
        "recall@5": float(recall[5]),
        "num_images": int(len(test["label"])),
        "prompts_per_digit": len(prompts) // 10,
    }


def _perturb_at(sde, x0, t, key):
    """``(x_t / alpha(t), sigma(t) / alpha(t)) = (x_0 + level z, level)`` at times ``t`` ``(B,)``."""
    level = sde.sigma(t) / sde.alpha(t)
    return x0 + batch_mul(level, jax.random.normal(key, x0.shape, x0.dtype)), level
