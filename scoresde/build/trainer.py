"""The trainer settings and snapshots a config asks for: what :mod:`scoresde.training`'s harness reads.

* :class:`Settings` / :func:`read_settings`: the loop settings of one config section (``training``, or a second
  network's ``classifier`` / ``autoencoder``), read once, every default from :mod:`scoresde.config_defaults`.
* :class:`Snapshots` / :func:`write_snapshot`: the EMA samples a trainer writes at each snapshot, by the
  config's sampler (:func:`scoresde.build.make_sample_fn`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import jax

from scoresde import data as data_lib
from scoresde import images, parallel
from scoresde.build.optim import ema_decay
from scoresde.build.run import with_defaults
from scoresde.build.sampling import make_sample_fn

__all__ = ["Settings", "read_settings", "Snapshots", "write_snapshot"]


@dataclasses.dataclass(frozen=True)
class Settings:
    """The loop settings of one config section (``training``, ``classifier`` or ``autoencoder``), read once.

    ``kind`` is the resume check's (:func:`scoresde.build.check_resume_config`), ``purpose`` the RNG purpose
    of the per-step key. ``training`` is the score network's section (train, distill, reflow); ``classifier``
    and ``autoencoder`` train a second network with a small section of their own, whose frequencies default
    to its ``n_iters``.
    """

    section: str
    kind: str
    purpose: str
    n_iters: int
    batch_size: int
    log_freq: int
    snapshot_freq: int
    ckpt_freq: int  # also checkpointed at every snapshot and at the end
    keep_checkpoints: int
    max_nonfinite: int
    eval_freq: int
    ema_rate: float | Callable  # or ``updates -> rate`` (:func:`scoresde.build.ema_decay`)
    tensorboard: bool
    progress: bool
    snapshot_sampling: bool

    @property
    def hint(self) -> str:
        """The config section named in errors."""
        return f"config.{self.section}"


# A second network's own section: (resume kind, RNG purpose, kept checkpoints: None = config.training's). Its
# other settings are the section's fields, completed by ``config_defaults`` (CLASSIFIER_DEFAULTS,
# AUTOENCODER_DEFAULTS). A section not listed here is a new trainer's: resume kind its name, purpose "train".
_OWN_SECTIONS = {
    "classifier": ("classifier", "classifier", 2),
    "autoencoder": ("autoencoder", "train", None),
}


def read_settings(config, section: str = "training", *, n_iters: int | None = None) -> Settings:
    """The :class:`Settings` of ``config.<section>``; ``n_iters`` overrides the section's (PD: whole rounds).

    Every field is read as the config holds it after :func:`scoresde.build.with_defaults`: the defaults live in
    :mod:`scoresde.config_defaults` only. A section's ``batch_size`` / ``snapshot_freq`` of 0 mean
    ``config.training.batch_size`` / its own ``n_iters``.
    """
    config = with_defaults(config)
    tc = config.training
    if section == "training":
        return Settings(
            section,
            "train",
            "train",
            n_iters=int(tc.n_iters if n_iters is None else n_iters),
            batch_size=int(tc.batch_size),
            log_freq=int(tc.log_freq),
            snapshot_freq=int(tc.snapshot_freq),
            ckpt_freq=int(tc.snapshot_freq_for_preemption),
            keep_checkpoints=int(tc.keep_checkpoints),
            max_nonfinite=int(tc.max_nonfinite),
            eval_freq=int(tc.eval_freq),
            ema_rate=ema_decay(config),
            tensorboard=bool(tc.tensorboard),
            progress=bool(tc.progress),
            snapshot_sampling=bool(tc.snapshot_sampling),
        )
    if section not in config:
        raise ValueError(f"config has no section {section!r} to train from; expected one of {sorted(config)}")
    kind, purpose, keep = _OWN_SECTIONS.get(section, (section, "train", None))
    s = config[section]
    missing = [f for f in _SECTION_FIELDS if f not in s]
    if missing:
        raise ValueError(f"config.{section} lacks {', '.join(missing)}: a trainer's section sets every one of them")
    n = int(s.n_iters if n_iters is None else n_iters)
    snapshot_freq = int(s.snapshot_freq or n)
    return Settings(
        section,
        kind,
        purpose,
        n_iters=n,
        batch_size=int(s.batch_size or tc.batch_size),
        log_freq=int(s.log_freq),
        snapshot_freq=snapshot_freq,
        ckpt_freq=snapshot_freq,
        keep_checkpoints=int(keep or tc.keep_checkpoints),
        max_nonfinite=int(s.max_nonfinite),
        eval_freq=int(s.get("eval_freq", 0)),  # a classifier has no periodic evaluation
        ema_rate=float(s.ema_rate),
        tensorboard=bool(s.tensorboard),
        progress=bool(tc.progress),
        snapshot_sampling=True,
    )


# The fields every trainer section has (CLASSIFIER_DEFAULTS, AUTOENCODER_DEFAULTS).
_SECTION_FIELDS = ("n_iters", "batch_size", "log_freq", "snapshot_freq", "max_nonfinite", "ema_rate", "tensorboard")


def write_snapshot(config, samples01, workdir: str, step: int, logger=None, title: str | None = None) -> str | None:
    """``workdir/samples/snapshot_<step>.png`` of samples in [0, 1] (process 0; also to TensorBoard with
    ``logger``): an image grid, or a scatter plot of 2-D data. Returns the path (``None`` elsewhere)."""
    if jax.process_index() != 0:
        return None
    path = os.path.join(workdir, "samples", f"snapshot_{step:08d}.png")
    if data_lib.is_image_data(config):
        size = data_lib.data_shape(config)[0]
        images.save_image_grid(path, images.to_uint8(samples01), upscale=max(1, 64 // size))
        if logger is not None:
            logger.image("samples", step, images.image_grid(images.to_uint8(samples01)))
    elif samples01.shape[-1] == 2:
        images.save_scatter(path, samples01, title=title or f"step {step}")
    else:
        return None
    return path


class Snapshots:
    """A :class:`Trainer`'s ``snapshot`` hook: EMA samples written by :func:`write_snapshot`.

    ``config.training.snapshot_num_samples`` samples (rounded to the mesh), randomness ``fold_in(key, step)``.
    The sample function is built on first use, once per distinct ``config.sampling`` that ``config_at(step)``
    returns (a distilled student's step count changes between rounds).
    """

    def __init__(self, config, sde, graphdef, rest, mesh, key, workdir: str, *, title: str = "step", config_at=None):
        n = int(config.training.snapshot_num_samples)
        self.num = max(mesh.size, n // mesh.size * mesh.size)
        self._args = (sde, graphdef, rest, mesh)
        self._config, self._config_at, self._key = config, config_at, key
        self._workdir, self._title = workdir, title
        self._fns = {}

    def __call__(self, state, step: int, logger=None) -> str | None:
        config = self._config_at(step) if self._config_at is not None else self._config
        which = config.sampling.to_json_best_effort()
        if which not in self._fns:
            sde, graphdef, rest, mesh = self._args
            self._fns[which] = make_sample_fn(config, sde, graphdef, rest, self.num, mesh)
        samples, _ = self._fns[which](state["ema"], jax.random.fold_in(self._key, step))
        return write_snapshot(
            self._config, parallel.to_host(samples), self._workdir, step, logger, title=f"{self._title} {step}"
        )
