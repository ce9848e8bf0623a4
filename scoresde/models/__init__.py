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


def _unet_common(config) -> dict:
    """Keyword arguments shared by the image U-Nets, read from the reference's config fields."""
    m, d = config.model, config.data
    sigma_range = None
    if m.get("scale_by_sigma", False):
        sigma_range = (m.get("sigma_min", 0.01), m.get("sigma_max", 50.0), m.get("num_scales", 1000))
    return dict(
        image_size=d.image_size, num_channels=d.get("num_channels", 3), centered=d.get("centered", False),
        nf=m.nf, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
        attn_resolutions=tuple(m.attn_resolutions), dropout=m.get("dropout", 0.1),
        resamp_with_conv=m.get("resamp_with_conv", True), conditional=m.get("conditional", True),
        scale_by_sigma=m.get("scale_by_sigma", False), sigma_range=sigma_range,
        nonlinearity=m.get("nonlinearity", "swish"), num_classes=m.get("num_classes", 0),
        dtype=m.get("dtype", "float32"), remat=m.get("remat", False))


def _ncsnpp(config, rngs):
    from scoresde.models.ncsnpp import NCSNpp

    m = config.model
    embedding_type = m.get("embedding_type", "fourier").lower()
    training = config.get("training", None)
    if embedding_type == "fourier" and training is not None and not training.get("continuous", True):
        raise ValueError("embedding_type='fourier' is only used with continuous training "
                         "(config.training.continuous=True), as in the reference")
    return NCSNpp(
        **_unet_common(config), fir=m.get("fir", False), fir_kernel=tuple(m.get("fir_kernel", (1, 3, 3, 1))),
        skip_rescale=m.get("skip_rescale", True), resblock_type=m.get("resblock_type", "biggan"),
        progressive=m.get("progressive", "none"), progressive_input=m.get("progressive_input", "none"),
        progressive_combine=m.get("progressive_combine", "sum"), embedding_type=embedding_type,
        fourier_scale=m.get("fourier_scale", 16.0), init_scale=m.get("init_scale", 0.0), rngs=rngs)


def _ddpm(config, rngs):
    from scoresde.models.ddpm import DDPM

    return DDPM(**_unet_common(config), rngs=rngs)


def _data_shape(config):
    d = config.data
    if "shape" in d and d.shape:
        return tuple(d.shape)
    return (d.image_size, d.image_size, d.num_channels)


# name -> builder(config, rngs). Builders import lazily so that importing the package stays cheap.
_BUILDERS = {
    "mlp": _mlp,
    "ncsnpp": _ncsnpp,  # NCSN++ and DDPM++ (the reference names both "ncsnpp")
    "ddpmpp": _ncsnpp,
    "ddpm": _ddpm,
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
