"""Latent diffusion: a score model on an autoencoder's latents (Rombach et al., CVPR 2022; LSGM's bound).

* :mod:`~scoresde.latent.autoencoder`: the Gaussian posterior, the autoencoder loss, the latent scale.
* :mod:`~scoresde.latent.bound`: LSGM's variational bound on the data's negative log-likelihood.
* :mod:`~scoresde.latent.space`: a trained autoencoder as a latent space, and its record on disk.

The names of the first two are re-exported here.
"""

from scoresde.latent.autoencoder import *  # noqa: F401,F403
from scoresde.latent.autoencoder import __all__ as _autoencoder_all
from scoresde.latent.bound import *  # noqa: F401,F403
from scoresde.latent.bound import __all__ as _bound_all

__all__ = [*_autoencoder_all, *_bound_all]
