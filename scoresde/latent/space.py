"""A trained autoencoder as a latent space: its record on disk and the frozen encoder / decoder pair.

``--mode=train_autoencoder`` ends by writing :data:`AUTOENCODER_RECORD` in its workdir (scale factor, decoder
std, the checkpoint step they belong to, shapes, the autoencoder section); a latent model reads it back.
"""

from __future__ import annotations

import dataclasses
import json
import os

from flax import nnx

from scoresde.latent import autoencoder

AUTOENCODER_RECORD = "autoencoder.json"


def autoencoder_record_path(workdir: str) -> str:
    """``workdir/autoencoder.json``: the scale factor and decoder std of a trained autoencoder."""
    return os.path.join(workdir, AUTOENCODER_RECORD)


def write_autoencoder_record(workdir: str, record: dict) -> str:
    """Writes the record atomically (a reader sees the old file or the whole new one); returns its path."""
    path = autoencoder_record_path(workdir)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1)
    os.replace(tmp, path)
    return path


def read_autoencoder_record(workdir: str) -> dict:
    """The record of a trained autoencoder.

    Raises:
        FileNotFoundError: the autoencoder run has not finished (no record), with the command that makes one.
    """
    path = autoencoder_record_path(workdir)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"no {AUTOENCODER_RECORD} in config.latent.autoencoder_workdir={workdir!r}; train the autoencoder "
            f"first (python -m scoresde.main --config=<its config> --workdir={workdir} --mode=train_autoencoder)"
        )
    with open(path) as f:
        return json.load(f)


@dataclasses.dataclass(frozen=True)
class LatentSpace:
    """A frozen, trained autoencoder and its scale factor ``c`` (``ẑ = c z``), loaded by :func:`load_latent_space`.

    Parameters are replicated over the mesh and closed over by the jitted functions that use them.
    """

    graphdef: object
    params: object
    rest: object
    scale_factor: float
    decoder_std: float
    step: int
    image_shape: tuple
    latent_shape: tuple
    use_posterior_mean: bool = True

    def autoencoder(self):
        return nnx.merge(self.graphdef, self.params, self.rest).ae

    def encoder_fn(self, x):
        """``(mean, logvar)`` of ``q(z | x)`` (unscaled) for data ``x`` in the model's space."""
        return self.autoencoder().encode(x)

    def decoder_fn(self, z):
        """Data (model space) of unscaled latents ``z``."""
        return self.autoencoder().decode(z)

    def encode(self, x, key=None):
        """Scaled latents of ``x``: the posterior mean, or a posterior sample if ``use_posterior_mean`` is off."""
        return autoencoder.encode(self.encoder_fn, x, self.scale_factor, key=None if self.use_posterior_mean else key)

    def decode(self, z_scaled):
        """Data (model space) of scaled latents (e.g. a latent model's samples)."""
        return autoencoder.decode(self.decoder_fn, z_scaled, self.scale_factor)
