"""Latent diffusion from ``config.autoencoder`` / ``config.latent``: the autoencoder, its record, the latent space."""

from __future__ import annotations

import os
from collections.abc import Callable

from flax import nnx

from scoresde import data as data_lib
from scoresde import parallel
from scoresde.build.augment import augment_batch, augment_settings
from scoresde.build.run import params_digest, purpose_key
from scoresde.checkpointing import restore_params
from scoresde.config_defaults import section_with_defaults
from scoresde.latent.space import LatentSpace, autoencoder_record_path, read_autoencoder_record
from scoresde.models.autoencoder import AutoencoderTrainee

# Latent diffusion. ``config.autoencoder`` builds the KL autoencoder that --mode=train_autoencoder
# trains in its own workdir; that run ends by writing AUTOENCODER_RECORD (scale factor, decoder std, the
# checkpoint step they belong to, shapes, the autoencoder section). ``config.latent.autoencoder_workdir``
# then turns any training config into a latent one: the score model's data shape is the latent shape
# (:func:`model_data_shape`), every training batch is encoded on the device inside the jitted step
# (:func:`batch_transform`), and :func:`make_sample_fn` decodes samples to images in [0, 1].


def get_autoencoder(section, image_shape, *, rngs: nnx.Rngs):
    """The :class:`~scoresde.models.autoencoder.AutoencoderKL` of a ``config.autoencoder`` section for ``(H, W, C)`` images."""
    from scoresde.models.autoencoder import AutoencoderKL  # noqa: PLC0415

    ch_mult = tuple(section.ch_mult or ()) or None
    return AutoencoderKL(
        in_channels=int(image_shape[-1]),
        latent_channels=int(section.latent_channels),
        downsample_factor=int(section.f),
        base_width=int(section.base_width),
        num_res_blocks=int(section.num_res_blocks),
        ch_mult=ch_mult,
        rngs=rngs,
    )


def make_autoencoder_trainee(section, image_shape, *, rngs: nnx.Rngs) -> AutoencoderTrainee:
    """What ``--mode=train_autoencoder`` trains: the autoencoder and, if ``section.discriminator``, its critic."""
    from scoresde.models.autoencoder import PatchDiscriminator  # noqa: PLC0415

    disc = (
        PatchDiscriminator(
            int(image_shape[-1]), base_width=int(section.disc_width), num_layers=int(section.disc_layers), rngs=rngs
        )
        if bool(section.discriminator)
        else None
    )
    return AutoencoderTrainee(get_autoencoder(section, image_shape, rngs=rngs), disc)


def is_latent(config) -> bool:
    """Whether ``config`` is a latent model (``config.latent.autoencoder_workdir`` is set)."""
    return bool(config.latent.autoencoder_workdir)


def _pinned_mismatch(config, step: int, digest: str | None) -> str | None:
    """What differs between the autoencoder ``config.latent`` pins (step, hash; 0 / "" = not pinned) and this one."""
    lat = config.latent
    pinned_step, pinned_hash = int(lat.autoencoder_step), str(lat.autoencoder_hash)
    if pinned_step and pinned_step != int(step):
        return f"step {pinned_step}, now step {step}"
    if digest is not None and pinned_hash and pinned_hash != digest:
        return f"parameter hash {pinned_hash}, now {digest}"
    return None


def _refuse_other_autoencoder(config, what: str) -> None:
    raise ValueError(
        f"the latent model was trained on the autoencoder in {config.latent.autoencoder_workdir!r} at {what} "
        "(config.latent.autoencoder_step / autoencoder_hash): that autoencoder was retrained or replaced. Restore "
        "it, or train the latent model again on the new one (another --workdir)"
    )


def _checked_record(config) -> dict:
    record = read_autoencoder_record(str(config.latent.autoencoder_workdir))
    mismatch = _pinned_mismatch(config, int(record["step"]), None)
    if mismatch:
        _refuse_other_autoencoder(config, mismatch)
    shape, centered = list(data_lib.data_shape(config)), bool(config.data.centered)
    if list(record["image_shape"]) != shape or bool(record["centered"]) != centered:
        raise ValueError(
            f"the autoencoder in {config.latent.autoencoder_workdir!r} was trained on images of shape "
            f"{record['image_shape']} (centered={record['centered']}); this config's data are "
            f"{shape} (centered={centered}): set config.data to match"
        )
    return record


def model_data_shape(config) -> tuple[int, ...]:
    """The shape the score model sees: the latent shape of a latent config, else :func:`scoresde.data.data_shape`."""
    if is_latent(config):
        return tuple(int(s) for s in _checked_record(config)["latent_shape"])
    return data_lib.data_shape(config)


_LATENT_CACHE: dict = {}


def load_latent_space(config, mesh=None) -> LatentSpace:
    """The frozen autoencoder of ``config.latent.autoencoder_workdir`` (EMA weights of its recorded step).

    The latent model is tied to it: ``config.latent.autoencoder_step`` / ``autoencoder_hash`` (the step and
    :func:`scoresde.build.params_digest` of its parameters) are filled in here when unset, so the latent model's
    checkpoints record them, and an autoencoder that differs from pinned ones is refused.

    Raises:
        FileNotFoundError: no record or no checkpoint in the autoencoder's workdir.
        ValueError: the record belongs to another checkpoint than the newest, the data do not match, or the
            autoencoder is not the one ``config.latent`` pins (naming both).
    """
    workdir = os.path.abspath(str(config.latent.autoencoder_workdir))
    record = _checked_record(config)
    mesh = mesh or parallel.make_mesh()
    record_path = autoencoder_record_path(workdir)
    cache_key = (
        workdir,
        record["step"],
        record["scale_factor"],
        os.stat(record_path).st_mtime_ns,
        tuple(d.id for d in mesh.devices.flat),
    )
    if cache_key not in _LATENT_CACHE:
        # a record of an older autoencoder run may lack newer fields: they take the defaults
        section = section_with_defaults(record["autoencoder"], "autoencoder")
        shape = tuple(record["image_shape"])
        model = nnx.eval_shape(lambda: make_autoencoder_trainee(section, shape, rngs=nnx.Rngs(0)))
        model, step = restore_params(workdir, model, ema=True, what="autoencoder")
        if step != int(record["step"]):
            raise ValueError(
                f"{autoencoder_record_path(workdir)} belongs to step {record['step']} but the newest "
                f"checkpoint is step {step}; rerun --mode=train_autoencoder there to finish the run"
            )
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        _LATENT_CACHE.clear()  # one autoencoder at a time
        _LATENT_CACHE[cache_key] = (graphdef, parallel.replicate(mesh, params), rest, params_digest(params))
    graphdef, params, rest, digest = _LATENT_CACHE[cache_key]
    mismatch = _pinned_mismatch(config, int(record["step"]), digest)
    if mismatch:
        _refuse_other_autoencoder(config, mismatch)
    if "autoencoder_step" in config.latent and not config.latent.autoencoder_step:
        with config.unlocked():
            config.latent.autoencoder_step = int(record["step"])
    if "autoencoder_hash" in config.latent and not config.latent.autoencoder_hash:
        with config.unlocked():
            config.latent.autoencoder_hash = digest
    return LatentSpace(
        graphdef,
        params,
        rest,
        float(record["scale_factor"]),
        float(record["decoder_std"]),
        int(record["step"]),
        tuple(record["image_shape"]),
        tuple(record["latent_shape"]),
        bool(config.latent.use_posterior_mean),
    )


def batch_transform(config, mesh=None, *, augment: bool = False) -> Callable:
    """``fn(batch, key) -> batch`` applied inside the jitted train / eval step.

    With ``augment`` (a score network's training step) and ``config.data.augment_p > 0`` the images are first
    augmented and ``batch["augment_labels"]`` added (:func:`scoresde.build.augment_batch`, with
    ``fold_in(key, PURPOSE["augment"])``). For a latent config it then replaces ``batch["image"]`` by its scaled
    latents (posterior mean, or a draw with ``key`` when ``config.latent.use_posterior_mean`` is off); otherwise
    that step is the identity.
    """
    augmented = augment and augment_settings(config) is not None
    pixels = augment_batch(config) if augmented else None
    space = load_latent_space(config, mesh) if is_latent(config) else None
    if pixels is None and space is None:
        return lambda batch, key: batch

    def fn(batch, key):
        if pixels is not None:
            batch = pixels(batch, purpose_key(key, "augment"))
        if space is not None:
            batch = {**batch, "image": space.encode(batch["image"], key)}
        return batch

    return fn
