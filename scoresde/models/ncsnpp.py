"""NCSN++ / DDPM++ (Song et al. 2021, Sec. 4 and App. H): one configurable NHWC U-Net in Flax NNX.

Submodules sit in one flat list, ``all_modules``, in the reference's creation order, so its checkpoints
import exactly; class labels and bf16 compute are additions, off by default (``docs/networks.md``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax.numpy as jnp
from flax import nnx

from scoresde.models import layers, layerspp

_PROGRESSIVE = ("none", "output_skip", "residual")
_PROGRESSIVE_INPUT = ("none", "input_skip", "residual")
_EMBEDDINGS = ("fourier", "positional")
_RESBLOCKS = ("ddpm", "biggan")


def discrete_sigmas(sigma_min: float, sigma_max: float, num_scales: int):
    """The reference's SMLD noise levels, largest first (``models.utils.get_sigmas``)."""
    return jnp.exp(jnp.linspace(math.log(sigma_max), math.log(sigma_min), num_scales))


def _check(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; expected one of: {', '.join(allowed)}")


class NCSNpp(nnx.Module):
    """NCSN++ (VE) / DDPM++ (VP) score network.

    Called as ``net(x, labels, y=None, *, train=False, key=None)`` with ``x`` of shape ``(B, H, W, C)``,
    ``labels`` the ``(B,)`` noise conditioning (σ for the Fourier embedding, a timestep for the
    positional one), ``y`` optional ``(B,)`` int class labels, ``key`` the dropout key for training.

    Args mirror the reference's ``config.model`` fields; in addition ``image_size``, ``num_channels``
    and ``centered`` come from ``config.data``, ``sigmas`` is the discrete σ table used by
    ``scale_by_sigma`` with positional embeddings (the output is divided by ``sigmas[int(label)]``).
    ``remat=True`` rematerialises each resolution level in the backward pass (``jax.checkpoint``):
    less activation memory for about one more forward pass of compute; outputs and gradients are
    unchanged. ``augment_dim > 0`` adds EDM's augmentation conditioning (Karras et al. 2022, App. F.2): the
    call's ``augment_labels`` ``(B, augment_dim)`` (:mod:`scoresde.augment`) pass through a bias-free linear map
    added to the time embedding; ``None`` or zeros (sampling) leave the output as without them.
    ``scan_blocks=True`` (the default) runs each run of equal residual blocks as one ``jax.lax.scan``
    (:func:`~scoresde.models.layers.repeat_blocks`): the same parameters, arithmetic and checkpoints, compiled
    once per run instead of once per block. ``second_time=True`` makes a two-time network ``u(x, r, t)`` (MeanFlow): it is called with
    ``r=`` of the labels' shape and units, and adds an embedding of ``labels - r``
    (:class:`~scoresde.models.layers.SecondTimeEmbedding`) to the time embedding; off, parameters and outputs
    are the one-time network's. ``text_vocab > 0`` conditions on captions (GLIDE / Stable Diffusion): ``y`` is int
    tokens ``(B, text_len)``, encoded by a jointly trained :class:`~scoresde.models.text.TextEncoder` (``text_width``,
    ``text_depth``, ``text_heads``) whose pooled vector joins the time embedding and whose token features are
    attended to by a :class:`~scoresde.models.layers.CrossAttention` (``cross_heads``) after every self-attention
    (the middle one included); ``cond_dim > 0`` conditions on a float vector ``(B, cond_dim)`` the same way, through
    ``cond_tokens`` context tokens (:class:`~scoresde.models.layers.Conditioning`). The null of both is
    ``zeros_like(y)`` (also what ``y=None`` means); off, parameters and outputs are the unconditioned network's.
    """

    def __init__(
        self,
        *,
        image_size: int,
        num_channels: int = 3,
        centered: bool = False,
        nf: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 4,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        resamp_with_conv: bool = True,
        conditional: bool = True,
        fir: bool = False,
        fir_kernel: Sequence[int] = (1, 3, 3, 1),
        skip_rescale: bool = True,
        resblock_type: str = "biggan",
        progressive: str = "none",
        progressive_input: str = "none",
        progressive_combine: str = "sum",
        embedding_type: str = "positional",
        fourier_scale: float = 16.0,
        init_scale: float = 0.0,
        scale_by_sigma: bool = False,
        sigma_range=None,
        nonlinearity: str = "swish",
        num_classes: int = 0,
        augment_dim: int = 0,
        dtype=jnp.float32,
        remat: bool = False,
        scan_blocks: bool = False,
        second_time: bool = False,
        text_vocab: int = 0,
        text_len: int = 16,
        text_width: int = 64,
        text_depth: int = 2,
        text_heads: int = 4,
        cross_heads: int = 1,
        cond_dim: int = 0,
        cond_tokens: int = 4,
        rngs: nnx.Rngs,
    ):
        if second_time and not conditional:
            raise ValueError("second_time=True needs conditional=True (the second time joins the time embedding)")
        resblock_type, progressive = resblock_type.lower(), progressive.lower()
        progressive_input, progressive_combine = progressive_input.lower(), progressive_combine.lower()
        embedding_type = embedding_type.lower()
        _check("resblock_type", resblock_type, _RESBLOCKS)
        _check("progressive", progressive, _PROGRESSIVE)
        _check("progressive_input", progressive_input, _PROGRESSIVE_INPUT)
        _check("progressive_combine", progressive_combine, ("sum", "cat"))
        _check("embedding_type", embedding_type, _EMBEDDINGS)
        if scale_by_sigma and embedding_type == "positional" and sigma_range is None:
            raise ValueError("scale_by_sigma with a positional embedding needs sigma_range=(min, max, N)")
        dtype = jnp.dtype(dtype)
        self.act = act = layers.get_act(nonlinearity)
        self.nf, self.num_res_blocks, self.num_resolutions = nf, num_res_blocks, len(ch_mult)
        self.all_resolutions = tuple(image_size // 2**i for i in range(len(ch_mult)))
        self.attn_resolutions = tuple(attn_resolutions)
        self.conditional, self.centered, self.scale_by_sigma = conditional, centered, scale_by_sigma
        self.resblock_type, self.embedding_type = resblock_type, embedding_type
        self.progressive, self.progressive_input = progressive, progressive_input
        self.skip_rescale, self.num_classes, self.dtype, self.remat = skip_rescale, num_classes, dtype, bool(remat)
        self.scan_blocks = bool(scan_blocks)
        self.sigma_range = (
            None if sigma_range is None else (float(sigma_range[0]), float(sigma_range[1]), int(sigma_range[2]))
        )
        temb_dim = nf * 4
        label_rngs, rngs = rngs, layers.KeySeq(rngs.params())
        kw = dict(dtype=dtype, rngs=rngs)

        m = []
        # Parameter-free pyramid resamplers: the Flax reference creates one per use (they count in its
        # module names), the PyTorch one shares a single instance outside its module list.
        torch_absent = []
        if embedding_type == "fourier":
            m.append(layers.GaussianFourierProjection(nf, fourier_scale, rngs=rngs))
            embed_dim = 2 * nf
        else:
            embed_dim = nf
        if conditional:
            m.append(layers.Dense(embed_dim, temb_dim, rngs=rngs))  # time MLP in float32 (cheap)
            m.append(layers.Dense(temb_dim, temb_dim, rngs=rngs))

        attn_channels = []  # every self-attention's width, in creation order (a cross-attention follows each)

        def attn(ch):
            attn_channels.append(ch)
            return layers.AttnBlockpp(ch, skip_rescale=skip_rescale, init_scale=init_scale, **kw)

        def resblock(in_ch, out_ch=None, up=False, down=False):
            common = dict(
                temb_dim=temb_dim if conditional else None,
                dropout=dropout,
                init_scale=init_scale,
                skip_rescale=skip_rescale,
                **kw,
            )
            if resblock_type == "ddpm":
                return layerspp.ResnetBlockDDPMpp(act, in_ch, out_ch, **common)
            return layerspp.ResnetBlockBigGANpp(
                act, in_ch, out_ch, up=up, down=down, fir=fir, fir_kernel=fir_kernel, **common
            )

        resample = dict(fir=fir, fir_kernel=fir_kernel, **kw)
        channels = num_channels
        input_pyramid_ch = channels
        m.append(layers.Conv(channels, nf, 3, **kw))
        hs_c = [nf]
        in_ch = nf
        for i_level in range(self.num_resolutions):
            for _ in range(num_res_blocks):
                out_ch = nf * ch_mult[i_level]
                m.append(resblock(in_ch, out_ch))
                in_ch = out_ch
                if self.all_resolutions[i_level] in self.attn_resolutions:
                    m.append(attn(in_ch))
                hs_c.append(in_ch)
            if i_level != self.num_resolutions - 1:
                if resblock_type == "ddpm":
                    m.append(layerspp.Downsample(in_ch, with_conv=resamp_with_conv, **resample))
                else:
                    m.append(resblock(in_ch, down=True))
                if progressive_input == "input_skip":
                    torch_absent.append(len(m))
                    m.append(layerspp.Downsample(input_pyramid_ch, with_conv=False, **resample))
                    m.append(layerspp.Combine(input_pyramid_ch, in_ch, method=progressive_combine, **kw))
                    if progressive_combine == "cat":
                        in_ch *= 2
                elif progressive_input == "residual":
                    m.append(layerspp.Downsample(input_pyramid_ch, in_ch, with_conv=True, **resample))
                    input_pyramid_ch = in_ch
                hs_c.append(in_ch)

        in_ch = hs_c[-1]
        m.append(resblock(in_ch))
        m.append(attn(in_ch))
        m.append(resblock(in_ch))

        pyramid_ch = 0
        for i_level in reversed(range(self.num_resolutions)):
            for _ in range(num_res_blocks + 1):
                out_ch = nf * ch_mult[i_level]
                m.append(resblock(in_ch + hs_c.pop(), out_ch))
                in_ch = out_ch
            if self.all_resolutions[i_level] in self.attn_resolutions:
                m.append(attn(in_ch))
            if progressive != "none":
                if i_level == self.num_resolutions - 1:
                    m.append(layers.GroupNorm(in_ch, dtype=dtype))
                    if progressive == "output_skip":
                        m.append(layers.Conv(in_ch, channels, 3, init_scale=init_scale, **kw))
                        pyramid_ch = channels
                    else:
                        m.append(layers.Conv(in_ch, in_ch, 3, **kw))
                        pyramid_ch = in_ch
                elif progressive == "output_skip":
                    torch_absent.append(len(m))
                    m.append(layerspp.Upsample(pyramid_ch, with_conv=False, **resample))
                    m.append(layers.GroupNorm(in_ch, dtype=dtype))
                    m.append(layers.Conv(in_ch, channels, 3, init_scale=init_scale, **kw))
                    pyramid_ch = channels
                else:
                    m.append(layerspp.Upsample(pyramid_ch, in_ch, with_conv=True, **resample))
                    pyramid_ch = in_ch
            if i_level != 0:
                if resblock_type == "ddpm":
                    m.append(layerspp.Upsample(in_ch, with_conv=resamp_with_conv, **resample))
                else:
                    m.append(resblock(in_ch, up=True))
        assert not hs_c

        if progressive != "output_skip":
            m.append(layers.GroupNorm(in_ch, dtype=dtype))
            m.append(layers.Conv(in_ch, channels, 3, init_scale=init_scale, **kw))
        self.all_modules = nnx.List(m)
        self.torch_absent = tuple(torch_absent)
        self.label_embed = nnx.Embed(num_classes + 1, temb_dim, rngs=label_rngs) if num_classes > 0 else None
        # EDM's augmentation labels (scoresde.augment): a bias-free linear map added to the embedding, so
        # all-zero labels (sampling) change nothing
        self.augment_embed = (
            nnx.Linear(augment_dim, temb_dim, use_bias=False, rngs=label_rngs) if augment_dim > 0 else None
        )
        # created last, from its own key: the one-time network's parameters do not depend on this flag
        self.second_time = bool(second_time)
        self.gap_embed = (
            layers.SecondTimeEmbedding(
                embedding_type, nf, temb_dim, act, fourier_scale=fourier_scale, rngs=layers.KeySeq(label_rngs.params())
            )
            if second_time
            else None
        )
        # caption / vector conditioning, created after everything else from its own key (docs/networks.md)
        cond = layers.conditioning_kwargs(
            text_vocab, text_len, text_width, text_depth, text_heads, cond_dim, cond_tokens
        )
        self.conditioning, self.cross_attn = layers.conditioning_modules(
            cond, num_classes, temb_dim, attn_channels, cross_heads, skip_rescale, dtype, label_rngs
        )

    @property
    def null_label(self) -> int:
        return self.num_classes

    def __call__(self, x, labels, y=None, *, r=None, train: bool = False, key=None, augment_labels=None):
        layers.check_second_time(self.second_time, r, labels)
        walk = layers.ModuleWalk(self.all_modules, train=train, key=key)
        nxt, block = walk.next, walk.block
        context = None  # (tokens, mask) of the caption / vector conditioning

        if self.embedding_type == "fourier":
            used_sigmas = labels
            temb = nxt()(jnp.log(labels))
        else:
            temb = layers.timestep_embedding(labels, self.nf)
            if self.scale_by_sigma:
                used_sigmas = discrete_sigmas(*self.sigma_range)[labels.astype(jnp.int32)]
        if self.conditional:
            temb = nxt()(temb)
            temb = nxt()(self.act(temb))
            if self.gap_embed is not None:
                temb = temb + self.gap_embed(labels - r)
        else:
            temb = None
        if self.label_embed is not None:
            if y is None:
                y = jnp.full((x.shape[0],), self.null_label, dtype=jnp.int32)
            yemb = self.label_embed(y).astype(jnp.float32)
            temb = yemb if temb is None else temb + yemb
        elif self.conditioning is not None:
            cemb, tokens, mask = self.conditioning(y, x.shape[0])
            temb = cemb if temb is None else temb + cemb
            context = (tokens, mask)
        elif y is not None:
            raise ValueError("class labels `y` given to a network built with num_classes=0")
        if self.augment_embed is not None and augment_labels is not None:
            aemb = self.augment_embed(augment_labels.astype(jnp.float32))
            temb = aemb if temb is None else temb + aemb
        elif augment_labels is not None:
            raise ValueError("augment_labels given to a network built with augment_dim=0")
        _, cross = layers.cross_attention_walk(self.cross_attn, context)

        if not self.centered:
            x = 2 * x - 1.0
        input_pyramid = x if self.progressive_input != "none" else None

        # Each resolution level (and the middle) is one segment; with ``remat`` its activations are
        # recomputed in the backward pass instead of stored (only the skip connections are kept).
        seg = layers.remat_segment if self.remat else layers.plain_segment

        def down_level(i_level, h, input_pyramid, temb, context):
            attends = self.all_resolutions[i_level] in self.attn_resolutions
            units, keys = [], []
            for _ in range(self.num_res_blocks):
                mod, k = walk.take_block()
                units.append(
                    (mod, nxt() if attends else None, next(cross) if attends and context is not None else None)
                )
                keys.append(k)

            def step(unit, h, k):
                mod, attn, xattn = unit
                h = layers.call_cached(mod, h, temb, key=k)
                h = h if attn is None else layers.call_cached(attn, h)
                h = h if xattn is None else xattn(h, *context)
                return h, h

            h, new_hs = layers.repeat_blocks(step, units, h, keys, scan=self.scan_blocks)
            if i_level != self.num_resolutions - 1:
                h = nxt()(h) if self.resblock_type == "ddpm" else block(h, temb)
                if self.progressive_input == "input_skip":
                    input_pyramid = nxt()(input_pyramid)
                    h = nxt()(input_pyramid, h)
                elif self.progressive_input == "residual":
                    input_pyramid = self._skip(nxt()(input_pyramid), h)
                    h = input_pyramid
                new_hs.append(h)
            return new_hs, input_pyramid

        def middle(h, temb, context):
            attend, _ = layers.cross_attention_walk(cross, context)
            h = block(h, temb)
            h = attend(h, nxt())
            return block(h, temb)

        def up_level(i_level, h, skips, pyramid, temb, context):
            attend, _ = layers.cross_attention_walk(cross, context)
            units, xs = [], []
            for skip in skips:
                mod, k = walk.take_block()
                units.append((mod,))
                xs.append((skip, k))

            def step(unit, h, x):
                skip, k = x
                return layers.call_cached(
                    unit[0], jnp.concatenate([h, skip.astype(h.dtype)], axis=-1), temb, key=k
                ), None

            h, _ = layers.repeat_blocks(step, units, h, xs, scan=self.scan_blocks)
            if self.all_resolutions[i_level] in self.attn_resolutions:
                h = attend(h, nxt())
            if self.progressive != "none":
                if i_level == self.num_resolutions - 1:
                    pyramid = self.act(nxt()(h))
                    pyramid = nxt()(pyramid)
                elif self.progressive == "output_skip":
                    pyramid = nxt()(pyramid)
                    pyramid_h = self.act(nxt()(h))
                    pyramid = pyramid + nxt()(pyramid_h)
                else:
                    pyramid = self._skip(nxt()(pyramid), h)
                    h = pyramid
            if i_level != 0:
                h = nxt()(h) if self.resblock_type == "ddpm" else block(h, temb)
            return h, pyramid

        hs = [nxt()(x)]
        for i_level in range(self.num_resolutions):
            new_hs, input_pyramid = seg(functools.partial(down_level, i_level), hs[-1], input_pyramid, temb, context)
            hs.extend(new_hs)

        h = seg(middle, hs[-1], temb, context)

        pyramid = None
        for i_level in reversed(range(self.num_resolutions)):
            skips = [hs.pop() for _ in range(self.num_res_blocks + 1)]
            h, pyramid = seg(functools.partial(up_level, i_level), h, skips, pyramid, temb, context)
        assert not hs

        if self.progressive == "output_skip":
            h = pyramid
        else:
            h = self.act(nxt()(h))
            h = nxt()(h)
        assert walk.done(), "module walk out of sync with construction"
        assert next(cross, None) is None, "cross-attention walk out of sync with construction"

        h = h.astype(layers.accumulation_dtype(h.dtype))
        if self.scale_by_sigma:
            h = h / used_sigmas.astype(h.dtype)[:, None, None, None]
        return h

    def _skip(self, a, b):
        acc = layers.accumulation_dtype(a.dtype)
        s = a.astype(acc) + b.astype(acc)
        return s / math.sqrt(2.0) if self.skip_rescale else s
