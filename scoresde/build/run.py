"""Config loading (with the defaults applied once), resume checks against a checkpoint's stored config, and the
run's RNG purposes.
"""

from __future__ import annotations

import hashlib
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from scoresde import config_defaults
from scoresde.config_defaults import missing_fields, with_defaults  # noqa: F401  (re-exported by scoresde.build)


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Reads a config: ``path/to/config.py`` (its ``get_config()``), ``path.py:variant`` or a ``.json`` dump,
    with every field it lacks taken from the defaults (:func:`scoresde.config_defaults.with_defaults`).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is neither a ``.py`` with ``get_config()`` nor a ``.json``.
    """
    path, _, variant = spec.partition(":") if not os.path.exists(spec) else (spec, "", "")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no config file {path!r}")
    if path.endswith(".json"):
        with open(path) as f:
            return with_defaults(ml_collections.ConfigDict(json.load(f)))
    if not path.endswith(".py"):
        raise ValueError(f"unknown config file {path!r}; expected a .py file with get_config() or a .json file")
    module = config_defaults.load_module(path)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path!r} defines no get_config()")
    return with_defaults(module.get_config(variant or None) if variant else module.get_config())


def as_config(config) -> ml_collections.ConfigDict:
    """A complete ConfigDict (:func:`with_defaults`) from one of our configs, a reference ConfigDict or a plain
    (JSON) dict.

    Raises:
        TypeError: anything else.
    """
    if not isinstance(config, ml_collections.ConfigDict | dict):
        raise TypeError(f"config must be a ConfigDict or a dict; got {type(config).__name__}")
    return with_defaults(config)


class ConfigMismatchError(ValueError):
    """Resuming a run whose stored config differs in fields that change the run's meaning."""


# Fields a resumed run may change freely: how long it runs, how it logs and checkpoints, how it is evaluated
# and sampled. Every other field (SDE, model, data, objective, optimiser, batch, seed) changes what the
# checkpoint means. A prefix ending in "." covers a whole section.
RESUME_SAFE_FIELDS = {
    "train": (
        "training.n_iters",
        "training.log_freq",
        "training.eval_freq",
        "training.snapshot_freq",
        "training.snapshot_freq_for_preemption",
        "training.snapshot_sampling",
        "training.snapshot_num_samples",
        "training.keep_checkpoints",
        "training.tensorboard",
        "training.progress",
        "training.max_nonfinite",
        "training.allow_config_change",
        "ema.sigma_rel",  # what --mode=posthoc_ema synthesises, not how the run trains
        "model.remat",  # how the network is compiled, not what it computes
        "model.scan_blocks",
        "eval.",
        "sampling.",
        "classifier.",
        "clip.",
        "inverse.",
    ),
}
# For trainers of one section, only the fields that section depends on are compared.
RESUME_COMPARED_FIELDS = {
    "classifier": (
        "classifier.",
        "data.",
        "training.sde",
        "training.continuous",
        "model.beta_min",
        "model.beta_max",
        "model.sigma_min",
        "model.sigma_max",
        "model.num_scales",
        "seed",
    ),
}
RESUME_SAFE_FIELDS["classifier"] = (
    "classifier.n_iters",
    "classifier.log_freq",
    "classifier.snapshot_freq",
    "classifier.num_eval_batches",
    "classifier.tensorboard",
    "classifier.eval_times",
)
# unCLIP's prior depends on its own section, the CLIP that embeds its pairs, and the process and loss it shares with
# the decoder
RESUME_COMPARED_FIELDS["prior"] = (
    "prior.",
    "data.",
    "training.sde",
    "training.continuous",
    "training.objective",
    "training.reduce_mean",
    "training.likelihood_weighting",
    "training.importance_sampling",
    "model.beta_min",
    "model.beta_max",
    "model.sigma_min",
    "model.sigma_max",
    "model.num_scales",
    "model.output",
    "model.time_label",
    "seed",
)
RESUME_SAFE_FIELDS["prior"] = (
    "prior.n_iters",
    "prior.log_freq",
    "prior.snapshot_freq",
    "prior.tensorboard",
    "prior.guidance_scale",
)
RESUME_SAFE_FIELDS["train"] += ("prior.",)  # the decoder does not depend on its prior
RESUME_COMPARED_FIELDS["autoencoder"] = ("autoencoder.", "data.", "seed")
RESUME_SAFE_FIELDS["autoencoder"] = (
    "autoencoder.n_iters",
    "autoencoder.log_freq",
    "autoencoder.eval_freq",
    "autoencoder.snapshot_freq",
    "autoencoder.scale_num_examples",
    "autoencoder.max_nonfinite",
    "autoencoder.tensorboard",
)
# a CLIP reads the caption data, and a noised one the SDE its images are perturbed by
RESUME_COMPARED_FIELDS["clip"] = RESUME_COMPARED_FIELDS["classifier"][1:] + ("clip.",)
RESUME_SAFE_FIELDS["clip"] = (
    "clip.n_iters",
    "clip.log_freq",
    "clip.snapshot_freq",
    "clip.tensorboard",
    "clip.eval_times",
)
# distill and reflow train a score network as train does: the same fields may change ("train"); their own
# sections (distill., reflow.: teacher, method, schedule, couplings) change the run's meaning and are compared.
# The read-only modes (sample, likelihood, fid, eval) compare as resume does; how the parameters were optimised
# (optimiser, batch size) and which teacher they were distilled from do not change what they mean once trained:
# a student is self-contained.
RESUME_SAFE_FIELDS["read"] = RESUME_SAFE_FIELDS["train"] + (
    "optim.",
    "training.batch_size",
    "distill.teacher_workdir",
    "distill.teacher_step",
    "distill.teacher_hash",
)

# Fields that pin what a model was built from: the autoencoder of a latent model, the teacher of a distilled one
# (checkpoint step and parameter hash). The loaders (build.latent, build.fewstep) fill them in from what they
# load, so a checkpoint's stored config records them. One left unset (0 / "") in the current config is not a
# difference: it takes the stored value (:func:`adopt_pinned_fields`), which the loader then checks against what
# it loads.
PINNED_FIELDS = ("latent.autoencoder_step", "latent.autoencoder_hash", "distill.teacher_step", "distill.teacher_hash")


def _flatten_config(tree, prefix="") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _matches(field: str, patterns) -> bool:
    return any(field == p or (p.endswith(".") and field.startswith(p)) for p in patterns)


def config_differences(stored: dict, config, *, kind: str = "train") -> list[dict]:
    """The fields that change a run's meaning and differ between ``stored`` (a checkpoint's config) and ``config``.

    Fields the stored config does not have (added to the code after it was written) are not compared.

    Returns:
        ``[{"field", "stored", "now"}, ...]``, sorted by field.
    """
    old = _flatten_config(stored or {})
    new = _flatten_config(json.loads(config.to_json_best_effort()))
    compared = RESUME_COMPARED_FIELDS.get(kind)
    safe = RESUME_SAFE_FIELDS.get(kind, ())
    out = []
    for field in sorted(set(old) & set(new)):
        if field in PINNED_FIELDS and new[field] in (0, "", None):
            continue
        if (compared is not None and not _matches(field, compared)) or _matches(field, safe):
            continue
        if old[field] != new[field]:
            out.append({"field": field, "stored": old[field], "now": new[field]})
    return out


def check_resume_config(stored: dict, config, *, kind: str = "train", workdir: str = "") -> list[dict]:
    """Refuses to resume under a config that changes the run's meaning, unless explicitly allowed.

    Returns:
        The differences (empty when none) when they are allowed by ``config.training.allow_config_change``.

    Raises:
        ConfigMismatchError: naming every differing field with its stored and current value.
    """
    adopt_pinned_fields(stored, config)
    diffs = config_differences(stored, config, kind=kind)
    if diffs and not bool(config.training.allow_config_change):
        raise ConfigMismatchError(
            f"cannot resume {workdir or 'this run'}: the config differs from the checkpoint's in fields that change "
            f"the run's meaning ({_describe(diffs)}). Use the original config, another --workdir, or "
            f"--config.training.allow_config_change=True to continue deliberately (fine-tuning; recorded in "
            f"metrics.jsonl)"
        )
    return diffs


def check_checkpoint_config(stored: dict, config, *, mode: str, workdir: str = "") -> list[dict]:
    """Refuses to read a checkpoint (``--mode=sample``, ``likelihood``, ``fid``, ``eval``) under a config that
    gives it another meaning (another SDE, network output, data, distillation method), unless explicitly allowed.

    The rules are resume's (:func:`config_differences`, kind ``"read"``): ``eval.*`` and ``sampling.*`` choose
    how the checkpoint is used and may differ, as may the optimiser and batch size it was trained with.

    Returns:
        The differences (empty when none) when ``config.training.allow_config_change`` allows them.

    Raises:
        ConfigMismatchError: naming every differing field with its stored and current value.
    """
    adopt_pinned_fields(stored, config)
    diffs = config_differences(stored, config, kind="read")
    if diffs and not bool(config.training.allow_config_change):
        raise ConfigMismatchError(
            f"cannot run --mode={mode} on {workdir or 'this checkpoint'}: the config differs from the one the "
            f"checkpoint was trained with in fields that change what it means ({_describe(diffs)}). Use the "
            f"training config, or --config.training.allow_config_change=True to read it under this one deliberately"
        )
    return diffs


def meaning_fields(config) -> dict:
    """The flattened fields of ``config`` that change what a checkpoint means (data, SDE, model, objective,
    distillation, the pinned autoencoder and teacher): all but the ones a read-only mode may change."""
    flat = _flatten_config(json.loads(config.to_json_best_effort()))
    return {k: v for k, v in sorted(flat.items()) if not _matches(k, RESUME_SAFE_FIELDS["read"])}


def config_digest(config) -> str:
    """A short content hash of :func:`meaning_fields`: results made under another digest mean something else."""
    text = json.dumps(meaning_fields(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def params_digest(params) -> str:
    """A short content hash of a parameter tree (every leaf's path, dtype, shape and bytes): two results made
    with different digests were made by different parameters, whatever step they carry."""
    h = hashlib.sha256()
    leaves = jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(params) if isinstance(params, nnx.State) else params)
    for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
        a = jax.device_get(leaf)
        a = a if hasattr(a, "tobytes") else jnp.asarray(a)
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _describe(diffs) -> str:
    return "; ".join(f"{d['field']}: checkpoint {d['stored']!r}, now {d['now']!r}" for d in diffs)


def adopt_pinned_fields(stored: dict, config) -> None:
    """Copies the :data:`PINNED_FIELDS` that ``config`` leaves unset (0 / "") from ``stored`` into ``config``."""
    old = _flatten_config(stored or {})
    for field in PINNED_FIELDS:
        section, name = field.split(".")
        if field not in old or section not in config or name not in config[section]:
            continue
        if config[section][name] in (0, "", None) and old[field] not in (0, "", None):
            with config.unlocked():
                config[section][name] = old[field]


# One table of what each stream of randomness is for: fold_in(key, PURPOSE[name]). The numbers are
# fixed: changing one would change the random draws of every checkpoint and report.
PURPOSE = {
    "train": 1,  # root -> per-step training key (fold_in(key, step) below it)
    "eval": 2,  # root -> eval-loss key during training
    "snapshot": 3,  # root -> snapshot sampling during training
    "eval_loss": 4,  # root -> the eval mode's loss
    "sample": 5,  # root -> the sample mode
    "likelihood": 6,  # root -> bits/dim dequantisation and probes
    "label_dropout": 7,  # step key -> classifier-free-guidance label dropout
    "fid": 8,  # root -> the FID mode's sample rounds
    "classifier": 11,  # root -> classifier training
    "classifier_eval": 12,  # root -> classifier test accuracy noise
    "latent_encode": 15,  # step key -> posterior draw of a latent model's training batch
    "measurement": 16,  # root -> inverse problems: measurement noise (restoration keys use "sample")
    "reflow": 17,  # root -> reflow couplings (fold_in(key, chunk) below it)
    "augment": 24,  # batch-transform key -> EDM's augmentation of a training batch
    "prior_eval": 41,  # root -> unCLIP prior samples of the test captions at the end of train_prior
    "unclip_prior": 42,  # sample key -> the prior's image embeddings of an unCLIP sample batch
}


def purpose_key(key, purpose: str):
    """``fold_in(key, PURPOSE[purpose])``.

    Raises:
        KeyError: an unknown purpose (the table above lists them).
    """
    if purpose not in PURPOSE:
        raise KeyError(f"unknown RNG purpose {purpose!r}; expected one of: {', '.join(PURPOSE)}")
    return jax.random.fold_in(key, PURPOSE[purpose])


def root_key(config):
    """The run's one root key, ``jax.random.key(config.seed)``."""
    return jax.random.key(int(config.seed))
