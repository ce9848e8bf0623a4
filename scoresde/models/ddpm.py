"""The DDPM U-Net of Ho et al. (2020), NHWC, Flax NNX, laid out like the score_sde reference's ``DDPM``.

Submodules sit in one flat list, ``all_modules``, in the reference's creation order (``docs/networks.md``).
With ``conditional=False`` there is no time embedding, as in the Flax reference (the PyTorch reference
builds and uses it regardless; its released configs all set ``conditional=True``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax.numpy as jnp
from flax import nnx

from scoresde.models import layers, layerspp
from scoresde.models.ncsnpp import discrete_sigmas


class DDPM(nnx.Module):
    """DDPM score network, called as ``net(x, labels, y=None, *, train=False, key=None)``.

    Args mirror the reference's ``config.model`` / ``config.data`` fields; ``sigma_range`` =
    ``(sigma_min, sigma_max, num_scales)`` is needed only with ``scale_by_sigma``. ``num_classes > 0``
    adds a class-label embedding (null label ``num_classes``) to the time embedding. ``remat=True``
    rematerialises each resolution level in the backward pass (less memory, same outputs/gradients);
    ``scan_blocks=True`` (the default) compiles each run of equal residual blocks once, as one ``jax.lax.scan``
    (:func:`~scoresde.models.layers.repeat_blocks`), with the same parameters and checkpoints.
    ``augment_dim > 0`` adds EDM's augmentation conditioning: ``augment_labels`` ``(B, augment_dim)``
    (:mod:`scoresde.augment`) through a bias-free linear map added to the time embedding (zeros: no effect).
    ``second_time=True`` makes a two-time network ``u(x, r, t)`` (MeanFlow), called with ``r=`` of the labels'
    shape and units (:class:`~scoresde.models.layers.SecondTimeEmbedding` of ``labels - r`` joins the time
    embedding); off, parameters and outputs are the one-time network's. ``text_vocab > 0`` / ``cond_dim > 0``:
    caption / vector conditioning with cross-attention after every self-attention, as in
    :class:`~scoresde.models.ncsnpp.NCSNpp`.
    """

    def __init__(
        self,
        *,
        image_size: int,
        num_channels: int = 3,
        centered: bool = False,
        nf: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        resamp_with_conv: bool = True,
        conditional: bool = True,
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
        if scale_by_sigma and sigma_range is None:
            raise ValueError("scale_by_sigma needs sigma_range=(sigma_min, sigma_max, num_scales)")
        dtype = jnp.dtype(dtype)
        self.act = act = layers.get_act(nonlinearity)
        self.nf, self.num_res_blocks, self.num_resolutions = nf, num_res_blocks, len(ch_mult)
        self.all_resolutions = tuple(image_size // 2**i for i in range(len(ch_mult)))
        self.attn_resolutions = tuple(attn_resolutions)
        self.conditional, self.centered, self.scale_by_sigma = conditional, centered, scale_by_sigma
        self.sigma_range = (
            None if sigma_range is None else (float(sigma_range[0]), float(sigma_range[1]), int(sigma_range[2]))
        )
        self.num_classes, self.dtype, self.remat = num_classes, dtype, bool(remat)
        self.scan_blocks = bool(scan_blocks)
        temb_dim = 4 * nf
        label_rngs, rngs = rngs, layers.KeySeq(rngs.params())
        kw = dict(dtype=dtype, rngs=rngs)

        def resblock(in_ch, out_ch=None):
            return layerspp.ResnetBlockDDPM(
                act, in_ch, out_ch, temb_dim=temb_dim if conditional else None, dropout=dropout, **kw
            )

        attn_channels = []  # every self-attention's width, in creation order (a cross-attention follows each)

        def attn(ch):
            attn_channels.append(ch)
            return layers.AttnBlock(ch, **kw)

        m = []
        if conditional:
            # time MLP in float32 (cheap)
            m += [layers.Dense(nf, temb_dim, rngs=rngs), layers.Dense(temb_dim, temb_dim, rngs=rngs)]
        m.append(layers.Conv(num_channels, nf, 3, **kw))
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
                m.append(layerspp.Downsample(in_ch, with_conv=resamp_with_conv, **kw))
                hs_c.append(in_ch)
        in_ch = hs_c[-1]
        m += [resblock(in_ch), attn(in_ch), resblock(in_ch)]
        for i_level in reversed(range(self.num_resolutions)):
            for _ in range(num_res_blocks + 1):
                out_ch = nf * ch_mult[i_level]
                m.append(resblock(in_ch + hs_c.pop(), out_ch))
                in_ch = out_ch
            if self.all_resolutions[i_level] in self.attn_resolutions:
                m.append(attn(in_ch))
            if i_level != 0:
                m.append(layerspp.Upsample(in_ch, with_conv=resamp_with_conv, **kw))
        assert not hs_c
        m.append(layers.GroupNorm(in_ch, 32, dtype=dtype))
        m.append(layers.Conv(in_ch, num_channels, 3, init_scale=0.0, **kw))
        self.all_modules = nnx.List(m)
        self.label_embed = nnx.Embed(num_classes + 1, temb_dim, rngs=label_rngs) if num_classes > 0 else None
        # EDM's augmentation labels (scoresde.augment): a bias-free linear map added to the embedding, so
        # all-zero labels (sampling) change nothing
        self.augment_embed = (
            nnx.Linear(augment_dim, temb_dim, use_bias=False, rngs=label_rngs) if augment_dim > 0 else None
        )
        # created last, from its own key: the one-time network's parameters do not depend on this flag
        self.second_time = bool(second_time)
        self.gap_embed = (
            layers.SecondTimeEmbedding("positional", nf, temb_dim, act, rngs=layers.KeySeq(label_rngs.params()))
            if second_time
            else None
        )
        # caption / vector conditioning, created after everything else from its own key
        cond = layers.conditioning_kwargs(
            text_vocab, text_len, text_width, text_depth, text_heads, cond_dim, cond_tokens
        )
        self.conditioning, self.cross_attn = layers.conditioning_modules(
            cond, num_classes, temb_dim, attn_channels, cross_heads, False, dtype, label_rngs
        )

    @property
    def null_label(self) -> int:
        return self.num_classes

    def __call__(self, x, labels, y=None, *, r=None, train: bool = False, key=None, augment_labels=None):
        layers.check_second_time(self.second_time, r, labels)
        walk = layers.ModuleWalk(self.all_modules, train=train, key=key)
        nxt, block = walk.next, walk.block
        context = None  # (tokens, mask) of the caption / vector conditioning

        temb = None
        if self.conditional:
            temb = nxt()(layers.timestep_embedding(labels, self.nf))
            temb = nxt()(self.act(temb))
            if self.gap_embed is not None:
                temb = temb + self.gap_embed(labels - r)
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

        h = x if self.centered else 2 * x - 1.0
        # One segment per resolution level (and the middle), rematerialised in the backward pass
        # with ``remat`` (see :func:`scoresde.models.layers.remat_segment`).
        seg = layers.remat_segment if self.remat else layers.plain_segment

        def down_level(i_level, h, temb, context):
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
                new_hs.append(nxt()(h))
            return new_hs

        def middle(h, temb, context):
            attend, _ = layers.cross_attention_walk(cross, context)
            h = block(h, temb)
            h = attend(h, nxt())
            return block(h, temb)

        def up_level(i_level, h, skips, temb, context):
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
            if i_level != 0:
                h = nxt()(h)
            return h

        hs = [nxt()(h)]
        for i_level in range(self.num_resolutions):
            hs.extend(seg(functools.partial(down_level, i_level), hs[-1], temb, context))
        h = seg(middle, hs[-1], temb, context)
        for i_level in reversed(range(self.num_resolutions)):
            skips = [hs.pop() for _ in range(self.num_res_blocks + 1)]
            h = seg(functools.partial(up_level, i_level), h, skips, temb, context)
        assert not hs
        h = self.act(nxt()(h))
        h = nxt()(h)
        assert walk.done(), "module walk out of sync with construction"
        assert next(cross, None) is None, "cross-attention walk out of sync with construction"
        h = h.astype(layers.accumulation_dtype(h.dtype))
        if self.scale_by_sigma:
            h = h / discrete_sigmas(*self.sigma_range)[labels.astype(jnp.int32)][:, None, None, None]
        return h
