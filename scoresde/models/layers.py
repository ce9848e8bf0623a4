"""Basic NHWC layers shared by the score U-Nets (NCSN++, DDPM++, DDPM), in Flax NNX.

Parameter names and shapes follow the reference checkpoints, and each class names its Linen counterpart in
``linen_name``; every layer takes a compute ``dtype`` while parameters, norms and softmax stay float32.
Details: ``docs/networks.md``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from scoresde.models.text import TextEncoder

_ACTIVATIONS = {
    "swish": jax.nn.silu,
    "silu": jax.nn.silu,
    "elu": jax.nn.elu,
    "relu": jax.nn.relu,
    "lrelu": lambda x: jax.nn.leaky_relu(x, negative_slope=0.2),
}


class KeySeq:
    """A stream of parameter-init keys ``fold_in(key, 0), fold_in(key, 1), ...`` with ``nnx.Rngs``'s API.

    The U-Nets draw one key from their ``nnx.Rngs`` and hand this to their hundreds of layers:
    advancing an ``nnx.Rngs`` counter under ``jax.eval_shape`` / ``jit`` costs time quadratic in the
    trace length, a plain ``fold_in`` does not.
    """

    def __init__(self, key):
        self.key, self.count = key, 0

    def params(self):
        self.count += 1
        return jax.random.fold_in(self.key, self.count - 1)


def get_act(name: str):
    """The activation named by the reference's ``config.model.nonlinearity``."""
    key = name.lower()
    if key not in _ACTIVATIONS:
        raise ValueError(f"unknown nonlinearity {name!r}; expected one of: {', '.join(_ACTIVATIONS)}")
    return _ACTIVATIONS[key]


def default_init(scale: float = 1.0):
    """DDPM initialisation: variance scaling, fan-avg, uniform; ``scale=0`` means 1e-10 (reference)."""
    scale = 1e-10 if scale == 0 else scale
    return jax.nn.initializers.variance_scaling(scale, "fan_avg", "uniform")


def compute_dtype(dtype, x):
    """The compute dtype of a layer with ``dtype`` for the input ``x``: ``dtype``, except that a float64 input
    keeps float64 (with ``jax_enable_x64``, to check derivatives against finite differences); float32 and bf16
    runs are unaffected."""
    return jnp.float64 if x.dtype == jnp.float64 else dtype


def accumulation_dtype(dtype):
    """The dtype of norms, softmax, residual sums and bias additions: float32, or float64 for float64 inputs."""
    return jnp.promote_types(dtype, jnp.float32)


def channel_vector(v, ndim: int):
    """``v`` of shape ``(C,)`` reshaped to broadcast over the last axis of a rank-``ndim`` array."""
    return v.reshape((1,) * (ndim - 1) + (v.shape[0],))


def add_bias(y, bias):
    """``y + bias`` over the last axis, added in float32 and returned in ``y``'s dtype.

    In bf16 the sum is rounded once; more to the point, the bias gradient, a sum over batch and
    pixels, is then accumulated in float32 (a bf16 bias would be summed over ``B*H*W`` terms in bf16).
    """
    return (y.astype(accumulation_dtype(y.dtype)) + channel_vector(bias, y.ndim)).astype(y.dtype)


def group_norm_groups(channels: int) -> int:
    """NCSN++/DDPM++ group count ``min(C // 4, 32)``."""
    return min(channels // 4, 32)


class Conv(nnx.Module):
    """``k x k`` convolution, 'SAME' padding, DDPM initialisation (Linen ``nn.Conv``)."""

    linen_name = "Conv"

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        init_scale: float = 1.0,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.kernel = nnx.Param(default_init(init_scale)(rngs.params(), (kernel_size, kernel_size, in_ch, out_ch)))
        self.bias = nnx.Param(jnp.zeros((out_ch,)))
        self.stride = stride
        self.dtype = dtype

    def __call__(self, x):
        dtype = compute_dtype(self.dtype, x)
        y = jax.lax.conv_general_dilated(
            x.astype(dtype),
            self.kernel[...].astype(dtype),
            (self.stride, self.stride),
            "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return add_bias(y, self.bias[...])


class Dense(nnx.Module):
    """Fully connected layer with DDPM initialisation (Linen ``nn.Dense``)."""

    linen_name = "Dense"

    def __init__(self, in_features: int, out_features: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.kernel = nnx.Param(default_init()(rngs.params(), (in_features, out_features)))
        self.bias = nnx.Param(jnp.zeros((out_features,)))
        self.dtype = dtype

    def __call__(self, x):
        dtype = compute_dtype(self.dtype, x)
        y = x.astype(dtype) @ self.kernel[...].astype(dtype)
        return add_bias(y, self.bias[...])


class NIN(nnx.Module):
    """Per-pixel linear map over channels ("network in network"), reference ``NIN``."""

    linen_name = "NIN"

    def __init__(self, in_dim: int, num_units: int, *, init_scale: float = 0.1, dtype=jnp.float32, rngs: nnx.Rngs):
        self.W = nnx.Param(default_init(init_scale)(rngs.params(), (in_dim, num_units)))
        self.b = nnx.Param(jnp.zeros((num_units,)))
        self.dtype = dtype

    def __call__(self, x):
        dtype = compute_dtype(self.dtype, x)
        y = x.astype(dtype) @ self.W[...].astype(dtype)
        return add_bias(y, self.b[...])


class GroupNorm(nnx.Module):
    """Group normalisation over NHWC inputs, eps 1e-6, statistics in float32 (Linen ``nn.GroupNorm``)."""

    linen_name = "GroupNorm"

    def __init__(self, channels: int, num_groups: int | None = None, *, epsilon: float = 1e-6, dtype=jnp.float32):
        self.num_groups = group_norm_groups(channels) if num_groups is None else num_groups
        if self.num_groups < 1 or channels % self.num_groups:
            raise ValueError(f"GroupNorm: {channels} channels cannot be split into {self.num_groups} groups")
        self.scale = nnx.Param(jnp.ones((channels,)))
        self.bias = nnx.Param(jnp.zeros((channels,)))
        self.epsilon = epsilon
        self.dtype = dtype

    def __call__(self, x):
        b, h, w, c = x.shape
        g = self.num_groups
        xg = x.astype(accumulation_dtype(x.dtype)).reshape(b, h, w, g, c // g)
        mean = jnp.mean(xg, axis=(1, 2, 4), keepdims=True)
        var = jnp.mean(jnp.square(xg - mean), axis=(1, 2, 4), keepdims=True)
        y = ((xg - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(b, h, w, c)
        # Returned in float32: the activation that follows runs in float32 too, and the cast to the
        # compute dtype happens in the next convolution (XLA fuses it into this op's output).
        return y * channel_vector(self.scale[...], 4) + channel_vector(self.bias[...], 4)


class GaussianFourierProjection(nnx.Module):
    """Random Fourier features ``[sin(2π W s), cos(2π W s)]`` of a scalar ``s`` (W is frozen)."""

    linen_name = "GaussianFourierProjection"

    def __init__(self, embedding_size: int = 256, scale: float = 1.0, *, rngs: nnx.Rngs):
        self.W = nnx.Param(scale * jax.random.normal(rngs.params(), (embedding_size,)))

    def __call__(self, s):
        w = jax.lax.stop_gradient(self.W[...])
        proj = s.astype(accumulation_dtype(s.dtype))[:, None] * w[None, :] * (2 * math.pi)
        return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


def timestep_embedding(timesteps, embedding_dim: int, max_positions: int = 10000):
    """Sinusoidal embedding of ``(B,)`` (possibly fractional) timesteps, as in DDPM and the reference."""
    half = embedding_dim // 2
    freqs = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -(math.log(max_positions) / (half - 1)))
    args = timesteps.astype(accumulation_dtype(timesteps.dtype))[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=1)
    if embedding_dim % 2 == 1:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def check_second_time(second_time: bool, r, labels) -> None:
    """Checks the second time ``r`` against the network's ``second_time`` flag (every score network calls it).

    Raises:
        ValueError: ``r`` missing for a two-time network, given to a one-time one, or not of ``labels``' shape.
    """
    if second_time and r is None:
        raise ValueError("this network was built with second_time=True: call it with r= (the second time, (B,))")
    if not second_time and r is not None:
        raise ValueError("r= given to a network built with second_time=False; build it with second_time=True")
    if r is not None and jnp.shape(r) != jnp.shape(labels):
        raise ValueError(f"r has shape {jnp.shape(r)}; expected the labels' shape {jnp.shape(labels)}")


class SecondTimeEmbedding(nnx.Module):
    """The embedding of a two-time network's interval ``labels - r`` (MeanFlow, Geng et al. 2025, Sec. 4.3).

    Made like the U-Nets' time embedding, with its own parameters: the sinusoidal (``positional``) or Gaussian
    Fourier (``fourier``) features of the interval, then ``Dense -> act -> Dense`` to ``temb_dim``; the network
    adds the result to its time embedding (the paper conditions on ``(t, t - r)`` and sums the two embeddings).
    The Fourier features take the interval itself, not its log as the time's do: the interval is 0 where
    ``r = t``.
    """

    def __init__(self, embedding_type: str, nf: int, temb_dim: int, act, *, fourier_scale: float = 16.0, rngs):
        self.embedding_type, self.nf, self.act = embedding_type, nf, act
        if embedding_type == "fourier":
            self.proj = GaussianFourierProjection(nf, fourier_scale, rngs=rngs)
            embed_dim = 2 * nf
        else:
            self.proj = None
            embed_dim = nf
        self.Dense_0 = Dense(embed_dim, temb_dim, rngs=rngs)
        self.Dense_1 = Dense(temb_dim, temb_dim, rngs=rngs)

    def __call__(self, gap):
        feats = self.proj(gap) if self.proj is not None else timestep_embedding(gap, self.nf)
        return self.Dense_1(self.act(self.Dense_0(feats)))


def dropout(x, rate: float, key):
    """Inverted dropout; identity when ``key`` is None (evaluation) or ``rate == 0``."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


class AttnBlockpp(nnx.Module):
    """Single-head self-attention over all pixels (NCSN++/DDPM++ ``AttnBlockpp``)."""

    linen_name = "AttnBlockpp"

    def __init__(
        self,
        channels: int,
        *,
        skip_rescale: bool = False,
        init_scale: float = 0.0,
        num_groups: int | None = None,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.GroupNorm_0 = GroupNorm(channels, num_groups, dtype=dtype)
        self.NIN_0 = NIN(channels, channels, dtype=dtype, rngs=rngs)
        self.NIN_1 = NIN(channels, channels, dtype=dtype, rngs=rngs)
        self.NIN_2 = NIN(channels, channels, dtype=dtype, rngs=rngs)
        self.NIN_3 = NIN(channels, channels, init_scale=init_scale, dtype=dtype, rngs=rngs)
        self.skip_rescale = skip_rescale
        self.dtype = dtype

    def __call__(self, x):
        b, h, w, c = x.shape
        hn = self.GroupNorm_0(x)
        # One head over all h*w pixels: (B, T, N=1, C). jax.nn.dot_product_attention scales the logits by
        # C^-1/2 (the reference's), forms them and the softmax in float32 and, on GPU, dispatches to
        # cuDNN's fused attention where the shape and dtype allow (XLA otherwise).
        q = self.NIN_0(hn).reshape(b, h * w, 1, c)
        k = self.NIN_1(hn).reshape(b, h * w, 1, c)
        v = self.NIN_2(hn).reshape(b, h * w, 1, c)
        if q.dtype == jnp.float64:  # dot_product_attention forms its softmax in float32; keep float64 throughout
            logits = jnp.einsum("bqnc,bknc->bnqk", q, k) / math.sqrt(c)
            out = jnp.einsum("bnqk,bknc->bqnc", jax.nn.softmax(logits, axis=-1), v).reshape(b, h, w, c)
        else:
            out = jax.nn.dot_product_attention(q, k, v).reshape(b, h, w, c)
        out = self.NIN_3(out)
        acc = accumulation_dtype(x.dtype)
        y = x.astype(acc) + out.astype(acc)
        return y / math.sqrt(2.0) if self.skip_rescale else y


class AttnBlock(AttnBlockpp):
    """The DDPM attention block (32 groups, zero-init output, no rescaling), reference ``AttnBlock``."""

    linen_name = "AttnBlock"

    def __init__(self, channels: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        super().__init__(channels, skip_rescale=False, init_scale=0.0, num_groups=32, dtype=dtype, rngs=rngs)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _merged_call(state, args, kwargs, *, graphdef):
    return nnx.merge(graphdef, state)(*args, **kwargs)


def call_cached(module, *args, **kwargs):
    """``module(*args, **kwargs)``, traced once per module structure and argument shapes.

    The call goes through one ``jax.jit`` keyed by the module's graph definition: inside a traced program,
    the second and later blocks of equal structure and equal input shapes reuse the first one's trace (and its
    derivative's), instead of being traced again. XLA inlines the call, so the compiled program and its
    arithmetic are those of the plain call; what shrinks is the tracing and lowering time, which is also what
    a persistent-cache hit still pays. Outside a trace (no argument is a tracer) it is the plain call: compiling
    each block on its own would cost more than running its operations one by one.
    """
    graphdef, state = nnx.split(module)
    if not any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves((state, args, kwargs))):
        return module(*args, **kwargs)  # eager: op by op, as jax's own per-operation cache serves best
    return _merged_call(state, args, kwargs, graphdef=graphdef)


class ModuleWalk:
    """Steps through a network's flat ``all_modules`` list in creation order (the reference's order).

    ``next()`` gives the next module; ``take_block()`` gives the next residual block with its own dropout
    key ``fold_in(key, index)`` (``None`` outside training); ``block(h, temb)`` applies it; ``done()`` is
    true once the forward pass has used every module.

    Raises:
        ValueError: ``train=True`` with dropout but no ``key``.
    """

    def __init__(self, all_modules, *, train: bool, key):
        if train and key is None and any(getattr(m, "rate", 0.0) > 0 for m in all_modules):
            raise ValueError("train=True with dropout needs a PRNG `key`")
        self._key = key if train else None
        self._mods = iter(enumerate(all_modules))

    def next(self):
        return next(self._mods)[1]

    def take_block(self):
        i, mod = next(self._mods)
        return mod, None if self._key is None else jax.random.fold_in(self._key, i)

    def block(self, h, temb):
        mod, key = self.take_block()
        return call_cached(mod, h, temb, key=key)

    def done(self) -> bool:
        return next(self._mods, None) is None


def _leaf_signature(tree):
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((jnp.shape(a), jnp.result_type(a)) for a in leaves)


def _stack(trees):
    return jax.tree.map(lambda *a: jnp.stack(a), *trees)


def repeat_blocks(step, units, carry, xs, *, scan: bool):
    """``carry, y = step(unit, carry, x)`` for each ``(unit, x)`` of ``zip(units, xs)`` in order.

    Returns ``(carry, ys)``. ``units`` are tuples of modules (``None`` for an absent one), ``xs`` pytrees of
    arrays. With ``scan=True``, each maximal run of consecutive iterations whose modules have one structure
    (equal graph definitions, parameter shapes and dtypes) and whose ``x`` have equal shapes, and through
    which ``step`` keeps the carry's shape, is one ``jax.lax.scan`` over the run's parameters stacked on a
    leading axis: XLA compiles the block once per run instead of once per block, which is what makes deep
    U-Nets compile fast. Parameters stay where they are (one module per block, the checkpoint formats
    untouched); the stacking is inside the traced program, and the gradients flow back through it. The
    arithmetic of every block is the same as unrolled.
    """
    splits = [nnx.split(u) for u in units]
    sigs = [(g, _leaf_signature(st), _leaf_signature(x)) for (g, st), x in zip(splits, xs)]
    ys, i = [], 0
    while i < len(units):
        j = i + 1
        while scan and j < len(units) and sigs[j] == sigs[i]:
            j += 1
        if j - i >= 2:
            out = jax.eval_shape(lambda c, u=units[i], x=xs[i]: step(u, c, x)[0], carry)
            if _leaf_signature(out) != _leaf_signature(carry):  # the run's first block changes the width
                carry, y = step(units[i], carry, xs[i])
                ys.append(y)
                i += 1
        if j - i >= 2:
            graphdef = splits[i][0]

            def body(c, inp, graphdef=graphdef):
                state, x = inp
                return step(nnx.merge(graphdef, state), c, x)

            carry, stacked = jax.lax.scan(body, carry, (_stack([s for _, s in splits[i:j]]), _stack(xs[i:j])))
            ys.extend(jax.tree.map(lambda a, k=k: a[k], stacked) for k in range(j - i))
        else:
            for k in range(i, j):
                carry, y = step(units[k], carry, xs[k])
                ys.append(y)
        i = j
    return carry, ys


def plain_segment(fn, *args):
    """``fn(*args)``: a U-Net segment run as is (see :func:`remat_segment`)."""
    return fn(*args)


def remat_segment(fn, *args):
    """``fn(*args)`` under ``jax.checkpoint``: its activations are recomputed in the backward pass.

    A U-Net wraps one resolution level in each call. ``fn`` draws its modules from the network's
    module walk while it is traced, which ``jax.checkpoint`` does exactly once (the walk's final
    "out of sync" check would catch a second trace).
    """
    return jax.checkpoint(fn)(*args)


def conditioning_kwargs(text_vocab, text_len, text_width, text_depth, text_heads, cond_dim, cond_tokens) -> dict | None:
    """The :class:`Conditioning` arguments of a U-Net's text / vector conditioning options; ``None`` when both are off."""
    if text_vocab <= 0 and cond_dim <= 0:
        return None
    return dict(
        text_vocab=text_vocab,
        text_len=text_len,
        width=text_width,
        text_depth=text_depth,
        text_heads=text_heads,
        cond_dim=cond_dim,
        cond_tokens=cond_tokens,
    )


def cross_attention_walk(cross_attn, context):
    """``attend(h, attn)``: the self-attention module ``attn``, then the next cross-attention of ``cross_attn``
    (creation order) to ``context = (tokens, mask)``; without context just ``attn(h)``. Also returns the iterator,
    empty once the forward pass has used every cross-attention."""
    mods = iter(cross_attn if context is not None and cross_attn is not None else ())

    def attend(h, attn):
        h = attn(h)
        return h if context is None else next(mods)(h, *context)

    return attend, mods


class CrossAttention(nnx.Module):
    """Multi-head cross-attention from image pixels to a set of context tokens, with a key padding mask.

    Queries come from the group-normalised image ``x`` ``(B, H, W, C)``, keys and values from ``context``
    ``(B, L, D)`` (text token features, or a conditioning vector's tokens); ``mask`` ``(B, L)`` marks the real
    tokens (``True``) and padding (``False``). The output projection is zero-initialised and added to ``x``, so a
    new block starts as the identity (the Stable Diffusion ``SpatialTransformer``'s cross-attention, Rombach et
    al. 2022, Sec. 3.3; GLIDE, Nichol et al. 2022, Sec. 2.3, attends to the caption's tokens the same way).

    Padding tokens get a logit of ``-inf`` in effect (a softmax weight of exactly 0): appending padding leaves
    the output unchanged. A row with no real token at all (the empty caption, classifier-free guidance's null)
    attends to nothing: its update is zero and the block returns ``x``.
    """

    def __init__(
        self,
        channels: int,
        context_dim: int,
        *,
        num_heads: int = 1,
        skip_rescale: bool = False,
        num_groups: int | None = None,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if num_heads < 1 or channels % num_heads:
            raise ValueError(f"CrossAttention: {channels} channels cannot be split into {num_heads} heads")
        self.GroupNorm_0 = GroupNorm(channels, num_groups, dtype=dtype)
        self.query = NIN(channels, channels, dtype=dtype, rngs=rngs)
        self.key = Dense(context_dim, channels, dtype=dtype, rngs=rngs)
        self.value = Dense(context_dim, channels, dtype=dtype, rngs=rngs)
        self.out = NIN(channels, channels, init_scale=0.0, dtype=dtype, rngs=rngs)
        self.num_heads, self.skip_rescale, self.dtype = num_heads, skip_rescale, dtype

    def __call__(self, x, context, mask):
        b, h, w, c = x.shape
        n = self.num_heads
        if context.ndim != 3 or context.shape[0] != b or mask.shape != context.shape[:2]:
            raise ValueError(
                f"CrossAttention: context {context.shape} and mask {mask.shape} must be (B, L, D) and (B, L) "
                f"with B = {b}"
            )
        q = self.query(self.GroupNorm_0(x)).reshape(b, h * w, n, c // n)
        k = self.key(context).reshape(b, context.shape[1], n, c // n)
        v = self.value(context).reshape(b, context.shape[1], n, c // n)
        acc = accumulation_dtype(q.dtype)
        logits = jnp.einsum("bqnc,bknc->bnqk", q.astype(acc), k.astype(acc)) / math.sqrt(c // n)
        logits = jnp.where(mask[:, None, None, :], logits, -jnp.inf)
        # A row with no real token: softmax over -inf everywhere is NaN; give it finite logits, then zero weights.
        any_token = jnp.any(mask, axis=-1)
        logits = jnp.where(any_token[:, None, None, None], logits, 0.0)
        weights = jax.nn.softmax(logits, axis=-1) * any_token[:, None, None, None].astype(acc)
        out = jnp.einsum("bnqk,bknc->bqnc", weights, v.astype(acc)).reshape(b, h, w, c)
        out = self.out(out.astype(compute_dtype(self.dtype, x)))
        y = x.astype(acc) + out.astype(acc)
        return y / math.sqrt(2.0) if self.skip_rescale else y


class Conditioning(nnx.Module):
    """A caption's or a vector's conditioning of a U-Net: one vector for the time embedding, tokens for cross-attention.

    ``text_vocab > 0`` (GLIDE, Nichol et al. 2022, Sec. 2.3; Stable Diffusion, Rombach et al. 2022, Sec. 3.3): ``y``
    is int caption tokens ``(B, L)`` (0 = padding), encoded by a :class:`~scoresde.models.text.TextEncoder` trained
    with the network; its pooled vector, projected to ``temb_dim``, joins the time embedding and its token features
    (padding masked) are the cross-attention context. ``cond_dim > 0`` (the unCLIP decoder, Ramesh et al. 2022,
    Sec. 2.1): ``y`` is a float vector ``(B, cond_dim)``, projected to ``temb_dim`` and to ``cond_tokens`` context
    tokens of width ``width``. The null condition of both is ``zeros_like(y)``: the empty caption (whose tokens are
    all padding: no context, the encoder's learned null vector) or the zero vector.

    ``net(x, t, y=None)`` uses the null for ``y=None``, as the class-label networks use their null label.
    """

    def __init__(
        self,
        temb_dim: int,
        *,
        text_vocab: int = 0,
        text_len: int = 16,
        width: int = 64,
        text_depth: int = 2,
        text_heads: int = 4,
        cond_dim: int = 0,
        cond_tokens: int = 4,
        rngs: nnx.Rngs,
    ):
        if (text_vocab > 0) == (cond_dim > 0):
            raise ValueError(
                f"a conditioning is by captions (text_vocab > 0) or by a vector (cond_dim > 0), exactly one; got "
                f"text_vocab={text_vocab}, cond_dim={cond_dim}"
            )
        self.text_vocab, self.cond_dim, self.cond_tokens, self.width = text_vocab, cond_dim, cond_tokens, width
        if text_vocab > 0:
            self.text_encoder = TextEncoder(text_vocab, text_len, width, text_depth, text_heads, rngs=rngs)
            self.to_temb = Dense(width, temb_dim, rngs=rngs)
            self.to_tokens = None
        else:
            self.text_encoder = None
            self.to_temb = Dense(cond_dim, temb_dim, rngs=rngs)
            self.to_tokens = Dense(cond_dim, cond_tokens * width, rngs=rngs)

    def null(self, batch: int):
        """The null condition of a batch: the empty caption's tokens, or the zero vector."""
        if self.text_encoder is not None:
            return jnp.zeros((batch, self.text_encoder.max_len), jnp.int32)
        return jnp.zeros((batch, self.cond_dim), jnp.float32)

    def __call__(self, y, batch: int):
        """``(temb (B, temb_dim), context (B, L, width), mask (B, L))`` of ``y`` (``None``: the null condition).

        Raises:
            ValueError: ``y`` of the wrong shape or kind (float captions, int vectors).
        """
        y = self.null(batch) if y is None else jnp.asarray(y)
        if self.text_encoder is not None:
            if y.ndim != 2 or y.shape[0] != batch or not jnp.issubdtype(y.dtype, jnp.integer):
                raise ValueError(
                    f"this network is conditioned on captions: y must be int tokens ({batch}, L) (scoresde.data."
                    f"captions.tokenize); got {y.dtype} {y.shape}"
                )
            features, pooled = self.text_encoder(y)
            return self.to_temb(pooled), features, y != 0
        if y.shape != (batch, self.cond_dim):
            raise ValueError(
                f"this network is conditioned on a vector: y must be float ({batch}, {self.cond_dim}); got {y.shape}"
            )
        y = y.astype(jnp.float32)
        context = self.to_tokens(y).reshape(batch, self.cond_tokens, self.width)
        return self.to_temb(y), context, jnp.ones((batch, self.cond_tokens), bool)


def conditioning_modules(cond, num_classes, temb_dim, attn_channels, cross_heads, skip_rescale, dtype, rngs):
    """``(Conditioning, cross-attentions)`` of a U-Net with text / vector conditioning ``cond`` (``None``: none).

    One :class:`CrossAttention` follows each self-attention (widths ``attn_channels``, creation order); both are
    drawn from one key of ``rngs``, after the rest of the network, so its other parameters do not depend on them.

    Raises:
        ValueError: conditioning on class labels (``num_classes > 0``) and on captions / vectors at once.
    """
    if cond is None:
        return None, None
    if num_classes > 0:
        raise ValueError(
            f"a network is conditioned on class labels (num_classes={num_classes}) or on captions / vectors "
            "(text_vocab, cond_dim), not both"
        )
    key = KeySeq(rngs.params())
    conditioning = Conditioning(temb_dim, **cond, rngs=nnx.Rngs(key.params()))
    cross = [
        CrossAttention(ch, cond["width"], num_heads=cross_heads, skip_rescale=skip_rescale, dtype=dtype, rngs=key)
        for ch in attn_channels
    ]
    return conditioning, nnx.List(cross)
