"""Config loading (with the defaults applied once), resume checks against a checkpoint's stored config, and the
run's RNG purposes.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections

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
    "train": ("training.n_iters", "training.log_freq", "training.eval_freq", "training.snapshot_freq",
              "training.snapshot_freq_for_preemption", "training.snapshot_sampling", "training.snapshot_num_samples",
              "training.keep_checkpoints", "training.tensorboard", "training.progress", "training.max_nonfinite",
              "training.allow_config_change", "eval.", "sampling.", "classifier.", "inverse."),
}
# For trainers of one section, only the fields that section depends on are compared.
RESUME_COMPARED_FIELDS = {
    "classifier": ("classifier.", "data.", "training.sde", "training.continuous", "model.beta_min", "model.beta_max",
                   "model.sigma_min", "model.sigma_max", "model.num_scales", "seed"),
}
RESUME_SAFE_FIELDS["classifier"] = ("classifier.n_iters", "classifier.log_freq", "classifier.snapshot_freq",
                                    "classifier.num_eval_batches", "classifier.tensorboard", "classifier.eval_times")
RESUME_COMPARED_FIELDS["autoencoder"] = ("autoencoder.", "data.", "seed")
RESUME_SAFE_FIELDS["autoencoder"] = ("autoencoder.n_iters", "autoencoder.log_freq", "autoencoder.eval_freq",
                                     "autoencoder.snapshot_freq", "autoencoder.scale_num_examples",
                                     "autoencoder.max_nonfinite", "autoencoder.tensorboard")
# distill and reflow train a score network as train does: the same fields may change ("train"); their own
# sections (distill., reflow.: teacher, method, schedule, couplings) change the run's meaning and are compared.


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
    diffs = config_differences(stored, config, kind=kind)
    if diffs and not bool(config.training.allow_config_change):
        lines = "; ".join(f"{d['field']}: checkpoint {d['stored']!r}, now {d['now']!r}" for d in diffs)
        raise ConfigMismatchError(
            f"cannot resume {workdir or 'this run'}: the config differs from the checkpoint's in fields that change "
            f"the run's meaning ({lines}). Use the original config, another --workdir, or "
            f"--config.training.allow_config_change=True to continue deliberately (fine-tuning; recorded in "
            f"metrics.jsonl)")
    return diffs



# One table of what each stream of randomness is for: fold_in(key, PURPOSE[name]). The numbers are the
# ones earlier runs used, so checkpoints and reports stay reproducible.
PURPOSE = {
    "train": 1,          # root -> per-step training key (fold_in(key, step) below it)
    "eval": 2,           # root -> eval-loss key during training
    "snapshot": 3,       # root -> snapshot sampling during training
    "eval_loss": 4,      # root -> the eval mode's loss
    "sample": 5,         # root -> the sample mode
    "likelihood": 6,     # root -> bits/dim dequantisation and probes
    "label_dropout": 7,  # step key -> classifier-free-guidance label dropout
    "fid": 8,            # root -> the FID mode's sample rounds
    "classifier": 11,    # root -> classifier training
    "classifier_eval": 12,  # root -> classifier test accuracy noise
    "latent_encode": 15,  # step key -> posterior draw of a latent model's training batch
    "measurement": 16,   # root -> inverse problems: measurement noise (restoration keys use "sample")
    "reflow": 17,        # root -> reflow couplings (fold_in(key, chunk) below it)
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
