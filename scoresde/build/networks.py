"""Networks and classifiers from their config sections, and from a workdir's checkpoints."""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
from flax import nnx

from scoresde import parallel
from scoresde.build.augment import augment_dim
from scoresde.build.latent import is_latent, model_data_shape
from scoresde.build.run import as_config, check_checkpoint_config, with_defaults
from scoresde.build.score import guidance_kind, num_classes
from scoresde.checkpointing import Checkpointer, restore_params
from scoresde.data import captions, class_captions
from scoresde.models import classifiers


def _mlp(config, rngs):
    from scoresde.models.mlp import MLPScore  # noqa: PLC0415  (only the configured architecture is imported)

    m = config.model
    return MLPScore(
        math.prod(model_data_shape(config)),
        hidden=m.hidden,
        num_layers=m.num_layers,
        embed_dim=m.embed_dim,
        num_classes=num_classes(config),
        augment_dim=augment_dim(config),
        **_second_time(config),
        rngs=rngs,
    )


def _second_time(config) -> dict:
    """``{"second_time": True}`` for a two-time network (``config.model.second_time``), else nothing."""
    return {"second_time": True} if bool(config.model.second_time) else {}


def _birnn(config, rngs):
    from scoresde.models.birnn import BiRNNScore  # noqa: PLC0415  (only the configured architecture is imported)

    m = config.model
    return BiRNNScore(
        model_data_shape(config)[-1],
        hidden=m.hidden,
        num_layers=m.num_layers,
        embed_dim=m.embed_dim,
        num_classes=num_classes(config),
        rngs=rngs,
    )


def _unet_common(config) -> dict:
    """Keyword arguments shared by the image U-Nets, read from the reference's config fields."""
    m = config.model
    size, _, channels = model_data_shape(config)  # a latent model works on the autoencoder's latent grid
    sigma_range = (m.sigma_min, m.sigma_max, m.num_scales) if m.scale_by_sigma else None
    return dict(
        image_size=size,
        num_channels=channels,
        centered=config.data.centered or is_latent(config),
        nf=m.nf,
        ch_mult=tuple(m.ch_mult),
        num_res_blocks=m.num_res_blocks,
        attn_resolutions=tuple(m.attn_resolutions),
        dropout=m.dropout,
        resamp_with_conv=m.resamp_with_conv,
        conditional=m.conditional,
        scale_by_sigma=m.scale_by_sigma,
        sigma_range=sigma_range,
        nonlinearity=m.nonlinearity,
        num_classes=num_classes(config),
        augment_dim=augment_dim(config),
        dtype=m.dtype,
        remat=bool(m.remat),
        scan_blocks=bool(m.scan_blocks),
        **_second_time(config),
        **_text_or_vector(config),
    )


def _text_or_vector(config) -> dict:
    """The U-Nets' caption / vector conditioning arguments (``config.model.text_vocab``, ``cond_dim``); none when off."""
    m = config.model
    if int(m.text_vocab) <= 0 and int(m.cond_dim) <= 0:
        return {}
    if int(m.text_vocab) > 0:
        caption_set = str(config.data.caption_set)
        vocab = class_captions.vocabulary(caption_set) if caption_set else captions.VOCAB
        if int(m.text_vocab) != len(vocab):
            raise ValueError(
                f"config.model.text_vocab={m.text_vocab} but the {caption_set or 'digits'} captions have a vocabulary "
                f"of {len(vocab)} words (with <pad>); set config.model.text_vocab={len(vocab)}"
            )
    return dict(
        text_vocab=int(m.text_vocab),
        text_len=int(config.data.caption_len),
        text_width=int(m.text_width),
        text_depth=int(m.text_depth),
        text_heads=int(m.text_heads),
        cross_heads=int(m.cross_heads),
        cond_dim=int(m.cond_dim),
        cond_tokens=int(m.cond_tokens),
    )


def _ncsnpp(config, rngs):
    from scoresde.models.ncsnpp import NCSNpp  # noqa: PLC0415  (only the configured architecture is imported)

    m = config.model
    embedding_type = m.embedding_type.lower()
    if embedding_type == "fourier" and not config.training.continuous:
        raise ValueError(
            "embedding_type='fourier' is only used with continuous training "
            "(config.training.continuous=True), as in the reference"
        )
    return NCSNpp(
        **_unet_common(config),
        fir=m.fir,
        fir_kernel=tuple(m.fir_kernel),
        skip_rescale=m.skip_rescale,
        resblock_type=m.resblock_type,
        progressive=m.progressive,
        progressive_input=m.progressive_input,
        progressive_combine=m.progressive_combine,
        embedding_type=embedding_type,
        fourier_scale=m.fourier_scale,
        init_scale=m.init_scale,
        rngs=rngs,
    )


def _ddpm(config, rngs):
    from scoresde.models.ddpm import DDPM  # noqa: PLC0415  (only the configured architecture is imported)

    return DDPM(**_unet_common(config), rngs=rngs)


def get_model(config, *, rngs: nnx.Rngs) -> nnx.Module:
    """The network named by ``config.model.name`` (``mlp``, ``birnn``, ``ncsnpp``/``ddpmpp``, ``ddpm``).

    A hand-made or reference config may lack fields: they take the defaults (:func:`with_defaults`).

    Raises:
        ValueError: for an unknown model name.
    """
    config = with_defaults(config)
    builders = {"mlp": _mlp, "birnn": _birnn, "ncsnpp": _ncsnpp, "ddpmpp": _ncsnpp, "ddpm": _ddpm}
    name = config.model.name
    if name not in builders:
        raise ValueError(f"unknown model {name!r}; expected one of: {', '.join(sorted(builders))}")
    return builders[name](config, rngs)


def build_model(config, *, seed: int):
    """The network of ``config.model``, checked on one example of the data's shape.

    Raises:
        ValueError: if the network cannot take the configured data shape.
    """
    model = get_model(config, rngs=nnx.Rngs(seed))
    shape = (1,) + model_data_shape(config)
    try:
        out = jax.eval_shape(
            lambda x, t: model(x, t, **({"r": t} if _second_time(config) else {})),
            jax.ShapeDtypeStruct(shape, jnp.float32),
            jax.ShapeDtypeStruct((1,), jnp.float32),
        )
    except Exception as e:  # noqa: BLE001
        raise ValueError(
            f"model {config.model.name!r} cannot take data of shape {shape[1:]} "
            f"(config.data.image_size={config.data.image_size}): {type(e).__name__}: {e}"
        ) from e
    if out.shape != shape:
        raise ValueError(
            f"model {config.model.name!r} maps data of shape {shape[1:]} to {out.shape[1:]}; "
            f"check config.data.image_size / num_channels"
        )
    return model


def abstract_model(config) -> nnx.Module:
    """The network of ``config`` with shape-only parameters (nothing is initialised or allocated)."""
    return nnx.eval_shape(lambda: get_model(as_config(config), rngs=nnx.Rngs(0)))


def load_model(workdir: str, config, *, ema: bool = True):
    """The network of ``config`` with the newest valid checkpoint of ``workdir`` (EMA weights by default).

    Returns:
        ``(model, step)``.

    Raises:
        FileNotFoundError: no checkpoint in ``workdir``.
        CorruptCheckpointError: checkpoints exist but none loads.
    """
    seed = int(config.seed)
    # Shapes only: initialising a U-Net eagerly costs tens of seconds on a CPU, and every parameter is
    # overwritten by the checkpoint anyway.
    model = nnx.eval_shape(lambda: get_model(config, rngs=nnx.Rngs(seed)))
    if jax.tree_util.tree_leaves(nnx.state(model, nnx.Not(nnx.Param))):
        model = get_model(config, rngs=nnx.Rngs(seed))  # non-parameter state a checkpoint does not hold
    return restore_params(workdir, model, ema=ema, what="model")


def checkpoint_meta(workdir: str, step: int) -> dict:
    """The ``meta`` record (step, stored config, ...) of checkpoint ``step`` of ``workdir``, read without locking."""
    import orbax.checkpoint as ocp  # noqa: PLC0415

    ckpt = Checkpointer(workdir, read_only=True)
    try:
        return ckpt.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    finally:
        ckpt.close()


def load_ema(config, workdir: str, mesh, *, mode: str | None = None):
    """``(graphdef, ema params replicated over mesh, rest, step)`` of ``workdir``'s newest checkpoint.

    With ``mode`` (a read-only mode's name) the config the checkpoint was trained with is compared with
    ``config`` first (:func:`scoresde.build.check_checkpoint_config`; a model-only import is not compared, as on
    resume).

    Raises:
        ConfigMismatchError: with ``mode``, ``config`` gives the checkpoint another meaning.
    """
    model, step = load_model(workdir, config, ema=True)
    if mode is not None:
        meta = checkpoint_meta(workdir, step)
        if not meta.get("model_only", False):
            check_checkpoint_config(meta.get("config"), config, mode=mode, workdir=workdir)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, parallel.replicate(mesh, params), rest, step


def get_classifier(config, *, rngs: nnx.Rngs) -> nnx.Module:
    """The classifier of ``config.classifier`` (``name`` ∈ wrn | mlp) for the score model's state (pixels or latents).

    Reads ``config.classifier``: ``name``, ``num_classes`` (0: ``config.model.num_classes``) and, for ``wrn``,
    ``depth``, ``width``, ``embed_size``, ``fourier_scale``; for ``mlp``, ``hidden``, ``num_layers``,
    ``embed_size``, ``fourier_scale`` (defaults: :data:`scoresde.config_defaults.CLASSIFIER_ARCHITECTURES`).

    Raises:
        ValueError: for an unknown name or a missing class count.
    """
    c = config.classifier
    k = int(c.num_classes or num_classes(config))
    if k < 2:
        raise ValueError(f"a classifier needs config.classifier.num_classes >= 2; got {k}")
    shape = model_data_shape(config)  # a latent model's classifier reads latents, as its sampler's state is

    def wrn():
        if len(shape) != 3:
            raise ValueError(f"classifier 'wrn' needs image data (H, W, C); got data shape {shape}")
        return classifiers.WideResNet(
            k,
            in_channels=shape[-1],
            depth=int(c.depth),
            width=int(c.width),
            embed_size=int(c.embed_size),
            fourier_scale=float(c.fourier_scale),
            rngs=rngs,
        )

    def mlp():
        return classifiers.MLPClassifier(
            math.prod(shape),
            k,
            hidden=int(c.hidden),
            num_layers=int(c.num_layers),
            embed_size=int(c.embed_size),
            fourier_scale=float(c.fourier_scale),
            rngs=rngs,
        )

    factories = {"wrn": wrn, "mlp": mlp}
    name = str(c.name).lower()
    if name not in factories:
        raise ValueError(f"unknown classifier {c.name!r}; expected one of: {', '.join(factories)}")
    return factories[name]()


def classifier_dir(workdir: str) -> str:
    """Where the classifier of a run lives: ``workdir/classifier``."""
    return os.path.join(workdir, "classifier")


def load_classifier(workdir: str, config, *, ema: bool = True):
    """The classifier of ``config`` with the newest checkpoint of ``workdir/classifier``.

    Returns:
        ``(classifier, step)``.

    Raises:
        FileNotFoundError: no classifier checkpoint (train one with ``--mode=train_classifier``).
    """
    model = get_classifier(config, rngs=nnx.Rngs(int(config.seed)))
    return restore_params(classifier_dir(workdir), model, ema=ema, what="classifier")


def load_guidance_classifier(workdir: str, config):
    """The EMA classifier of ``workdir`` when ``config.sampling.guidance`` is ``classifier``, else ``None``.

    Raises:
        FileNotFoundError: classifier guidance without a trained classifier (``--mode=train_classifier``).
    """
    if guidance_kind(config) != "classifier":
        return None
    return load_classifier(workdir, config)[0]
