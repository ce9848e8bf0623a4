"""Samplers from ``config.sampling``: method and options, guidance, ParaDiGMS, the jitted sample function."""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scoresde import data as data_lib
from scoresde import guidance, parallel, sampling
from scoresde.build.continuous import CONTINUOUS_SAMPLERS, continuous_sampler
from scoresde.build.fewstep import is_consistency_model, student_consistency_fn
from scoresde.build.fewstep_condition import call_network
from scoresde.build.latent import is_latent, load_latent_space, model_data_shape
from scoresde.build.objectives import cfg_with_denoiser
from scoresde.build.run import purpose_key
from scoresde.build.score import (
    ScoreModel,
    conditioning_kind,
    guidance_kind,
    make_score_fn,
    num_classes,
    sampling_eps,
    score_convention,
)
from scoresde.build.unclip import clip_guided_score, prior_image_embeddings
from scoresde.config_defaults import with_defaults
from scoresde.data import captions as captions_lib
from scoresde.data import class_captions

GUIDANCE = ("none", "cfg", "classifier", "clip")

# config.sampling names of the options of scoresde.sampling.sample that the configs carry
_PC_NAMES = {
    "predictor": "predictor",
    "corrector": "corrector",
    "snr": "snr",
    "n_steps_each": "n_steps",
    "probability_flow": "probability_flow",
}


def sampling_options(config) -> tuple[str, dict]:
    """``(method, options)`` of :func:`scoresde.sampling.sample` from ``config.sampling``.

    Reads the reference's names (``method``, ``predictor``, ``corrector``, ``snr``, ``n_steps_each``,
    ``noise_removal``, ``probability_flow``) and, where set, every option of the method (``steps``,
    ``order``, ``eta``, ``solver``, ``rtol``, ``atol``, ``grid``, ``S_*``, ``rho``, ...). ``noise_removal``
    is the ``denoise`` option. Typed placeholders ``""`` / ``0`` mean "this method's default".

    Raises:
        ValueError: an unknown method, a guidance scale that is not a finite number, or ``max_steps < 1``.
    """
    config = with_defaults(config)
    cfg = config.sampling
    method = str(cfg.method).lower()
    scale = cfg.get("guidance_scale", 1.0)
    if not isinstance(scale, (int, float)) or not math.isfinite(float(scale)):
        raise ValueError(f"config.sampling.guidance_scale={scale!r} must be a finite number")
    if cfg.max_steps not in (0, "") and int(cfg.max_steps) < 1:
        raise ValueError(f"config.sampling.max_steps={cfg.max_steps!r} must be >= 1 (0: the method's default)")
    defaults = sampling.method_options(method)
    if int(cfg.get("step_capacity", 0) or 0) and "step_capacity" not in defaults:
        grid = ", ".join(sampling.GRID_METHODS)
        raise ValueError(
            f"config.sampling.step_capacity={cfg.step_capacity} pads a time grid; config.sampling.method={method!r} "
            f"runs its own loop (the grid methods: {grid}); set step_capacity=0"
        )
    options = {}
    if "denoise" in defaults and not sampling.method_traits(method).consistency_fn:  # f(x, t) returns x_eps itself
        options["denoise"] = bool(cfg.noise_removal)
    if method == "pc":
        options.update(
            predictor=cfg.predictor.lower(),
            corrector=cfg.corrector.lower(),
            snr=cfg.snr,
            n_steps=cfg.n_steps_each,
            probability_flow=cfg.probability_flow,
        )
    if cfg.clip_denoised:
        options["clip_denoised"] = _clip_range(config, method, defaults)
    for name in defaults:
        if name in options or name in _PC_NAMES.values() or name in ("project_fn", "clip_denoised"):
            continue
        value = cfg.get(name, None)
        if (
            value is None
            or (isinstance(value, (str, tuple, list)) and not value)
            or (name in ("steps", "order", "step_capacity") and value == 0)
            or (name == "eta" and value < 0)
        ):
            continue
        if name == "times":
            value = tuple(float(v) for v in value)
        options[name] = value.lower() if isinstance(value, str) else value
    sampling.check_options(method, options)
    return method, options


def _clip_range(config, method: str, defaults: dict) -> tuple[float, float]:
    """The data range that ``config.sampling.clip_denoised`` clips data predictions to."""
    if "clip_denoised" not in defaults:
        raise ValueError(
            f"config.sampling.clip_denoised=True is an option of method 'ddim'; config.sampling.method={method!r} "
            "does not clip (set clip_denoised=False, or method='ddim')"
        )
    if is_latent(config):
        raise ValueError(
            "config.sampling.clip_denoised=True clips to the data range, but this config samples latents, which "
            "have no range; set clip_denoised=False"
        )
    return (-1.0, 1.0) if config.data.centered else (0.0, 1.0)


def _student_sampler(config) -> bool:
    """Whether ``config`` is an ``scm`` / ``meanflow`` student (:func:`scoresde.build.continuous_sampler` samples it)."""
    return str(with_defaults(config).distill.method).lower() in CONTINUOUS_SAMPLERS


def nonfinite_hint(config) -> str:
    """The settings of ``config`` that can make samples non-finite, for the error that reports them."""
    s = config.sampling
    hints = []
    if guidance_kind(config) != "none":
        hints.append(f"config.sampling.guidance_scale={s.get('guidance_scale', 1.0)!r}")
    method = str(s.method).lower()
    if method == "ode" or "max_steps" in s:
        hints.append(
            f"config.sampling.max_steps={s.get('max_steps', '(default)')!r} (an adaptive solve that ran out of steps)"
        )
    if "steps" in s and s.get("steps"):
        hints.append(f"config.sampling.steps={s.steps!r}")
    hints.append(f"config.sampling.method={method!r}")
    hints.append("the checkpoint itself (a diverged training run)")
    return ", ".join(hints)


def parallel_settings(config) -> tuple[int, float] | None:
    """``(window, tol)`` of ParaDiGMS from ``config.sampling.parallel_window`` / ``parallel_tol``; ``None`` when off.

    ``parallel_window = 0`` (the default) is the sequential sampler. ParaDiGMS runs the ``ddim`` sampler
    (``eta`` as configured; ``eta = 1`` is DDPM ancestral) with :func:`scoresde.sampling.parallel_sample`.

    Raises:
        ValueError: a negative window or tolerance, or a window with a method other than ``ddim``.
    """
    config = with_defaults(config)
    cfg = config.sampling
    window = int(cfg.parallel_window or 0)
    tol = float(cfg.parallel_tol)
    if window < 0 or tol < 0:
        raise ValueError(
            f"config.sampling.parallel_window={window} / parallel_tol={tol} must be >= 0 "
            "(window 0 = the sequential sampler)"
        )
    if window == 0:
        return None
    if str(cfg.method).lower() != "ddim":
        raise ValueError(
            f"config.sampling.parallel_window={window} (ParaDiGMS) needs config.sampling.method='ddim'; "
            f"got {cfg.method!r}"
        )
    if cfg.clip_denoised:
        raise ValueError(
            f"config.sampling.parallel_window={window} (ParaDiGMS) does not clip data predictions; set "
            "config.sampling.clip_denoised=False or parallel_window=0"
        )
    if int(cfg.get("step_capacity", 0) or 0):
        raise ValueError(
            f"config.sampling.step_capacity={cfg.step_capacity} pads the sequential sampler's grid; ParaDiGMS "
            f"(parallel_window={window}) runs its own windows over a fixed grid: set one of them to 0"
        )
    return window, tol


def sampler_from_config(config, sde, shape, inverse_scaler=None, eps=None, *, with_rounds: bool = False, sharding=None):
    """``sampler(key, score_fn, x_init=None) -> (samples, nfe)`` for ``config.sampling`` (see :func:`sampling_options`).

    With ``config.sampling.parallel_window > 0`` (:func:`parallel_settings`) the ``ddim`` sampler runs as
    ParaDiGMS (:func:`scoresde.sampling.parallel_sample`) from the same prior draw and noise as
    :func:`scoresde.sampling.sample`; ``noise_removal`` adds the same final Tweedie step (1 NFE, 1 round).

    Args:
        config: a config with a ``sampling`` section.
        sde: the SDE.
        shape: the batch shape ``(B, ...)``.
        inverse_scaler: applied to the samples (e.g. ``[-1, 1] -> [0, 1]``); identity if ``None``.
        eps: the final time; :func:`scoresde.sampling.default_eps` if ``None``.
        with_rounds: return ``(samples, nfe, rounds)``: the sequential rounds of network evaluation
            (ParaDiGMS's Picard rounds; ``= nfe`` for the sequential samplers, whose every call waits on the last).
        sharding: a sharding for the prior draw (e.g. the batch over a ``('data',)`` mesh), so the
            ParaDiGMS window's ``W · B`` rows spread over the devices.
    """
    method, options = sampling_options(config)
    inverse_scaler = inverse_scaler if inverse_scaler is not None else (lambda x: x)
    paradigms = parallel_settings(config)
    if sharding is not None:
        options = {**options, "sharding": sharding}

    def sequential(key, score_fn, x_init):
        samples, nfe = sampling.sample(score_fn, sde, shape, key, method=method, x_init=x_init, eps=eps, **options)
        return samples, nfe, nfe

    def picard(key, score_fn, x_init):
        window, tol = paradigms
        t_end = sampling_eps(sde) if eps is None else eps
        if x_init is None:  # the draw sample() makes from this key
            x_init = sde.prior_sampling(jax.random.split(key)[0], shape)
            if sharding is not None:
                x_init = jax.lax.with_sharding_constraint(x_init, sharding)
        opts = {k: v for k, v in options.items() if k in ("steps", "eta", "grid")}
        samples, nfe, stats = sampling.parallel_sample(
            score_fn,
            sde,
            shape,
            key,
            method="ddim",
            window=window,
            tol=tol,
            x_init=x_init,
            eps=t_end,
            stats=True,
            **opts,
        )
        rounds = stats["rounds"]
        if options.get("denoise", False):
            samples, nfe = sampling.grids.denoiser_call(score_fn, sde, samples, t_end, nfe)
            rounds = rounds + 1
        return samples, nfe, rounds

    def sampler(key, score_fn, x_init=None):
        samples, nfe, rounds = (picard if paradigms else sequential)(key, score_fn, x_init)
        return (inverse_scaler(samples), nfe, rounds) if with_rounds else (inverse_scaler(samples), nfe)

    return sampler


def sampler_description(config) -> dict:
    """The sampler settings reported with every number (``config.sampling`` as a plain dict)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.sampling.items()}


def sample_class_labels(config, batch: int) -> jax.Array:
    """The ``(batch,)`` classes to sample: ``config.sampling.class_label``, or, if it is negative, every
    class in turn in contiguous blocks (``y_i = i K // batch``), so a square grid shows one class per row."""
    k = num_classes(config) or int(config.get("classifier", {}).get("num_classes", 0) or 0)
    label = int(config.sampling.get("class_label", -1))
    if k <= 0:
        raise ValueError("class-guided sampling needs config.model.num_classes > 0 (or config.classifier.num_classes)")
    if label >= k:
        raise ValueError(
            f"config.sampling.class_label={label} is not a class of this model (0..{k - 1}, or -1 for all)"
        )
    if label >= 0:
        return jnp.full((batch,), label, jnp.int32)
    return (jnp.arange(batch) * k // batch).astype(jnp.int32)


def _prompt_list(config) -> list[str]:
    """The captions asked for: ``config.sampling.prompts_file`` (one a line), ``config.sampling.prompt``, or, with
    neither, one digit each (``"a zero"`` ... ``"a nine"``, the digits' default).

    Raises:
        ValueError: both set, an empty prompt (a line of the file, or a prompt of spaces / punctuation only: the
            empty caption is the null of guidance, not a request), a missing file, or no prompt for other data.
    """
    s = config.sampling
    prompt, path = str(s.get("prompt", "")), str(s.get("prompts_file", ""))
    if prompt and path:
        raise ValueError(
            f"config.sampling.prompt={prompt!r} and config.sampling.prompts_file={path!r} are both set; give one"
        )
    if path:
        if not os.path.isfile(path):
            raise ValueError(f"config.sampling.prompts_file={path!r} is not a file (one caption a line)")
        with open(path, encoding="utf-8") as f:
            lines = [line.rstrip("\n") for line in f]
        while lines and not lines[-1].strip():
            lines.pop()  # trailing blank lines
        for i, line in enumerate(lines):
            if not captions_lib.normalize(line):
                raise ValueError(
                    f"line {i + 1} of config.sampling.prompts_file={path!r} is an empty prompt; write one caption a "
                    "line, e.g. 'a bold seven'"
                )
        if not lines:
            raise ValueError(f"config.sampling.prompts_file={path!r} holds no caption (one caption a line)")
        return lines
    if "prompt" in s and prompt and not captions_lib.normalize(prompt):
        raise ValueError(f"config.sampling.prompt={prompt!r} is an empty prompt; give a caption, e.g. 'a bold seven'")
    if prompt:
        return [prompt]
    caption_set = str(config.data.get("caption_set", ""))
    if caption_set:
        return [
            class_captions.class_prompt(caption_set, k) for k in range(len(class_captions.CAPTION_SETS[caption_set]))
        ]
    if str(config.data.dataset).lower() == "digits":
        return [f"a {w}".replace("a eight", "an eight") for w in captions_lib.DIGIT_WORDS]
    raise ValueError(
        f"a caption-conditioned model of {config.data.dataset!r} samples from config.sampling.prompt='...' or "
        "config.sampling.prompts_file=PATH; neither is set"
    )


def caption_vocabulary(config) -> tuple[str, ...]:
    """The vocabulary of a caption-conditioned config: its class-caption set's, else the captioned digits'."""
    caption_set = str(config.data.get("caption_set", ""))
    return class_captions.vocabulary(caption_set) if caption_set else captions_lib.VOCAB


def tokenize_prompts(config, prompts) -> np.ndarray:
    """``prompts`` as tokens ``(len(prompts), data.caption_len)`` in the config's vocabulary.

    Raises:
        ValueError: an unknown word (naming it and listing the vocabulary) or a caption too long.
    """
    caption_set, length = str(config.data.get("caption_set", "")), int(config.data.caption_len)
    if caption_set:
        return class_captions.tokenize(prompts, class_captions.vocabulary(caption_set), length)
    return captions_lib.tokenize(prompts, length)


def sample_prompts(config, batch: int) -> tuple[jax.Array, list[str]]:
    """``(tokens (batch, data.caption_len), captions)``: the prompts of a caption-conditioned model, one per sample.

    The captions of :func:`_prompt_list` (``config.sampling.prompt`` for all, or the lines of
    ``config.sampling.prompts_file``, or every digit in turn) fill the batch in contiguous blocks (caption ``i`` for
    samples ``i K // batch``), so a square grid of ``K`` captions shows one caption per row.

    Raises:
        ValueError: an empty prompt, an unknown word (naming it and listing the vocabulary), a caption longer than
            ``config.data.caption_len`` words, or more captions than samples.
    """
    prompts = _prompt_list(config)
    if len(prompts) > batch:
        raise ValueError(
            f"{len(prompts)} prompts but {batch} samples a batch; raise config.eval.sample_batch_size "
            f"(and config.eval.num_samples) to at least {len(prompts)}"
        )
    tokens = tokenize_prompts(config, prompts)
    rows = np.arange(batch) * len(prompts) // batch
    return jnp.asarray(tokens[rows]), [prompts[i] for i in rows]


def sample_conditioning(config, batch: int) -> jax.Array:
    """The ``y`` a sample batch is conditioned on: class labels (:func:`sample_class_labels`) or caption tokens
    (:func:`sample_prompts`).

    Raises:
        ValueError: a vector-conditioned model (its vectors come from elsewhere, e.g. an unCLIP prior).
    """
    kind = conditioning_kind(config)
    if kind == "text":
        return sample_prompts(config, batch)[0]
    if kind == "vector":
        raise ValueError(
            "a vector-conditioned network (config.model.cond_dim > 0) samples from given vectors (e.g. an unCLIP "
            "prior's image embeddings), not from config.sampling"
        )
    return sample_class_labels(config, batch)


def _unclip_decoder_score(config, score_model, model, batch: int, kind: str, scale, prior, key):
    """unCLIP's decoder given the prior's CLIP image embeddings of the prompts (:mod:`scoresde.build.unclip`), with
    classifier-free guidance (``cfg``, null = the zero embedding) or without (``none``). Without a prior (a training
    snapshot) the decoder samples its null conditioning."""
    if prior is None:
        return score_model.score_fn(model)
    tokens = sample_prompts(config, batch)[0]
    y = prior_image_embeddings(
        score_model, prior, tokens, purpose_key(key, "unclip_prior"), w=float(config.prior.guidance_scale)
    )
    if kind == "none":
        return score_model.score_fn(model, y=y)
    if kind != "cfg":
        raise ValueError(f"an unCLIP decoder is sampled with config.sampling.guidance 'cfg' or 'none'; got {kind!r}")

    def cond_score_fn(x, t, labels):
        return score_model.score_fn(model, y=labels)(x, t)

    scale = config.sampling.get("guidance_scale", 1.0) if scale is None else scale
    guided = guidance.classifier_free_guidance(cond_score_fn, y, scale, None)
    return cfg_with_denoiser(guided, score_model, model, y, scale, None)


def guided_score_fn(config, model, sde, batch: int, *, classifier=None, scale=None, clip=None, prior=None, key=None):
    """The sample mode's score: ``config.sampling.guidance`` ∈ none | cfg | classifier applied to ``model``.

    Args:
        config: the run config (``sampling.guidance``, ``sampling.class_label``, ``sampling.guidance_scale``).
        model: the score network (class-conditional for ``cfg``, null label ``num_classes``).
        sde: the SDE.
        batch: the batch size (for the labels).
        classifier: the noise-conditional classifier for ``classifier`` guidance (see :func:`load_classifier`).
        scale: the guidance scale, possibly a traced array (``w`` for cfg, ``scale`` for the classifier);
            ``config.sampling.guidance_scale`` if ``None``.

    Raises:
        ValueError: unknown guidance, or classifier guidance without a classifier.
    """
    config = with_defaults(config)
    kind = guidance_kind(config)
    if kind not in GUIDANCE:
        raise ValueError(f"unknown config.sampling.guidance {kind!r}; expected one of: {', '.join(GUIDANCE)}")
    score_model = ScoreModel(sde, **score_convention(config, sde), sigma_data=float(config.model.sigma_data))
    text = conditioning_kind(config) == "text"
    if conditioning_kind(config) == "vector":  # unCLIP's decoder: y from the prior (build.unclip)
        return _unclip_decoder_score(config, score_model, model, batch, kind, scale, prior, key)
    if kind == "clip":  # CLIP guidance of an unconditional model towards the prompts (build.unclip)
        if clip is None:
            raise ValueError("config.sampling.guidance='clip' needs a CLIP (config.sampling.clip_workdir)")
        scale = config.sampling.get("guidance_scale", 1.0) if scale is None else scale
        return clip_guided_score(score_model.score_fn(model), sde, clip, sample_prompts(config, batch)[0], scale)
    if kind == "none":
        # a caption-conditioned model samples its prompts unguided (w = 0)
        return score_model.score_fn(model, y=sample_prompts(config, batch)[0] if text else None)
    scale = config.sampling.get("guidance_scale", 1.0) if scale is None else scale
    y = sample_conditioning(config, batch)
    if kind == "cfg":
        null = None if text else int(config.model.num_classes)  # captions: the null is the empty caption

        def cond_score_fn(x, t, labels):
            return score_model.score_fn(model, y=labels)(x, t)

        guided = guidance.classifier_free_guidance(cond_score_fn, y, scale, null)
        return cfg_with_denoiser(guided, score_model, model, y, scale, null)
    if text:
        raise ValueError(
            "config.sampling.guidance='classifier' needs class labels; a caption-conditioned model is guided "
            "with 'cfg' (or 'none')"
        )
    if classifier is None:
        raise ValueError(
            "config.sampling.guidance='classifier' needs a trained classifier in workdir/classifier "
            "(--mode=train_classifier)"
        )
    if sampling.alpha_vanishes_at_T(sde):
        raise ValueError(
            f"classifier guidance needs the score at T, undefined where alpha(T) = 0 "
            f"({type(sde).__name__}(T={sde.T})); set config.model.rf_T < 1 (e.g. 0.999) or use cfg"
        )
    return guidance.classifier_guidance(
        score_model.score_fn(model), guidance.classifier_log_prob_fn(classifier, sde), y, scale
    )


def student_condition(config, sde, batch: int, *, prior=None, key=None):
    """The condition a few-step student (consistency, sCM, MeanFlow) samples ``batch`` samples with, ``None`` for an
    unconditional one: class labels (``config.sampling.class_label``) or caption tokens (``config.sampling.prompt`` /
    ``prompts_file``) as :func:`sample_conditioning` gives them; a vector-conditioned student (a distilled unCLIP
    decoder) reads the prior's image embeddings of the prompts, or without a prior (a training snapshot) the zero
    vector, as the decoder does. A student is sampled unguided: guidance is distilled into it
    (``config.distill.teacher_guidance``), so ``config.sampling.guidance`` is not applied.
    """
    kind = conditioning_kind(config)
    if kind == "none":
        return None
    if kind != "vector":
        return sample_conditioning(config, batch)
    if prior is None:
        return jnp.zeros((batch, int(config.model.cond_dim)), jnp.float32)
    score_model = ScoreModel(sde, **score_convention(config, sde), sigma_data=float(config.model.sigma_data))
    tokens = sample_prompts(config, batch)[0]
    return prior_image_embeddings(
        score_model, prior, tokens, purpose_key(key, "unclip_prior"), w=float(config.prior.guidance_scale)
    )


def make_sample_fn(
    config,
    sde,
    graphdef,
    rest,
    num_samples: int,
    mesh=None,
    classifier=None,
    *,
    with_rounds: bool = False,
    clip=None,
    prior=None,
):
    """A jitted ``fn(params, key, guidance_scale=None) -> (samples in data space [0, 1], nfe)``, sharded over the mesh.

    ``config.sampling.guidance`` (none | cfg | classifier, :func:`guided_score_fn`) guides the samples;
    ``guidance_scale`` overrides ``config.sampling.guidance_scale`` as a traced value. Classifier
    guidance needs ``classifier``; without one (snapshots during training) sampling is unguided.
    ``with_rounds``: ``fn`` returns ``(samples, nfe, rounds)`` (see :func:`sampler_from_config`). CLIP guidance
    (``clip``) and an unCLIP decoder's prior (``prior``) are the sample mode's (:func:`scoresde.build.load_guidance_clip`,
    :func:`scoresde.build.load_unclip_prior`); without them snapshots sample unguided / the decoder's null conditioning.
    """
    config = with_defaults(config)
    shape = (num_samples,) + model_data_shape(config)
    mesh = mesh or parallel.make_mesh()
    inverse_scaler = data_lib.get_data_inverse_scaler(config)
    out = parallel.data_sharding(mesh) if num_samples % mesh.size == 0 else parallel.replicated_sharding(mesh)
    counts = (parallel.replicated_sharding(mesh),) * (2 if with_rounds else 1)
    if _student_sampler(config):
        options = sampling_options(config)[1]
        student = continuous_sampler(config, sde, shape, inverse_scaler, options, with_rounds=with_rounds)

        def continuous(params, key, guidance_scale=None):
            y = student_condition(config, sde, num_samples, prior=prior, key=key)
            return student(key, nnx.merge(graphdef, params, rest), y)

        return jax.jit(continuous, out_shardings=(out, *counts))
    if is_latent(config):  # latent samples are decoded to images in [0, 1]
        space, to_unit = load_latent_space(config, mesh), inverse_scaler
        inverse_scaler = lambda z: to_unit(space.decode(z))  # noqa: E731
    # ParaDiGMS batches W steps into one call: shard its prior draw so those rows spread over the mesh.
    draw = parallel.data_sharding(mesh) if parallel_settings(config) and num_samples % mesh.size == 0 else None
    sampler = sampler_from_config(
        config, sde, shape, inverse_scaler, sampling_eps(sde), with_rounds=with_rounds, sharding=draw
    )
    unguided = (classifier is None and guidance_kind(config) == "classifier") or (
        clip is None and guidance_kind(config) == "clip"
    )
    consistency_model = is_consistency_model(config)
    if consistency_model and str(config.sampling.method).lower() != "consistency":
        raise ValueError(
            f"this network is a consistency model (config.distill.method={config.distill.method!r}); "
            f"sample it with --config.sampling.method=consistency, not {config.sampling.method!r}"
        )

    def fn(params, key, guidance_scale=None):
        model = nnx.merge(graphdef, params, rest)
        if consistency_model:
            y = student_condition(config, sde, num_samples, prior=prior, key=key)
            net = lambda x, labels: call_network(model, x, labels, y)  # noqa: E731
            return sampler(key, student_consistency_fn(net, sde, config))
        if unguided:
            return sampler(key, make_score_fn(model, sde, config))
        return sampler(
            key,
            guided_score_fn(
                config,
                model,
                sde,
                num_samples,
                classifier=classifier,
                scale=guidance_scale,
                clip=clip,
                prior=prior,
                key=key,
            ),
        )

    return jax.jit(fn, out_shardings=(out, *counts))
