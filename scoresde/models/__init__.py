"""Score networks (Flax NNX) and the factory that builds them from a config.

Every network is called as ``net(x, labels, y=None, *, train=False, key=None)``: ``x`` is ``(B, ...)``
(NHWC for images), ``labels`` is the ``(B,)`` time/noise conditioning given by the parameterisation
layer (:mod:`scoresde.parameterization`), ``y`` optional ``(B,)`` class labels (the null label is
``num_classes``), ``key`` the dropout PRNG key used when ``train=True``.
"""

from __future__ import annotations

from flax import nnx


def _mlp(config, rngs):
    from scoresde.models.mlp import MLPScore

    m = config.model
    dim = 1
    for s in _data_shape(config):
        dim *= s
    return MLPScore(dim, hidden=m.get("hidden", 128), num_layers=m.get("num_layers", 3),
                    embed_dim=m.get("embed_dim", 64), num_classes=m.get("num_classes", 0), rngs=rngs)


def _data_shape(config):
    d = config.data
    if "shape" in d and d.shape:
        return tuple(d.shape)
    return (d.image_size, d.image_size, d.num_channels)


# name -> builder(config, rngs). Builders import lazily so that importing the package stays cheap.
_BUILDERS = {
    "mlp": _mlp,
}


def get_model(config, *, rngs: nnx.Rngs) -> nnx.Module:
    """Builds the network named by ``config.model.name``.

    Raises:
        ValueError: for an unknown model name.
    """
    name = config.model.name
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; expected one of: {', '.join(sorted(_BUILDERS))}")
    return _BUILDERS[name](config, rngs)
