"""scoresde: score-based generative modelling with SDEs in JAX / Flax NNX.

Importing the package is cheap and imports neither TensorFlow nor torch.
"""

__version__ = "0.1.0"
