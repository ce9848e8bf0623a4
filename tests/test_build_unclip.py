"""The unCLIP / CLIP-guidance edge: CLIP guidance in the sampler's coordinates, the prior's data and batches, errors."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scoresde import build, guidance
from scoresde.data import captions

from conftest import load_config


@pytest.fixture(scope="module")
def smoke_clip():
    config = build.with_defaults(load_config("digits_clip", "noised,smoke"))
    return build.get_clip(config, rngs=nnx.Rngs(0)), config


@pytest.mark.slow
def test_clip_guided_score_is_the_similarity_gradient_in_ve_coordinates(smoke_clip):
    clip, config = smoke_clip
    sde = build.make_sde(config)
    guide = build.GuidanceCLIP(clip, int(config.data.caption_len), True)
    tokens = jnp.asarray(captions.tokenize(["a bold seven", "the digit 3"], int(config.data.caption_len)))
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    t = jnp.array([0.3, 0.8])
    zero = lambda x, t: jnp.zeros_like(x)  # noqa: E731
    got = build.clip_guided_score(zero, sde, guide, tokens, 2.0)(x, t)
    text = clip.encode_text(tokens)

    def sim(xx):
        xv, level = guidance.classifier_inputs(sde, xx, t)
        return jnp.sum(clip.encode_image(xv, level) * text) * clip.logit_scale

    np.testing.assert_allclose(np.asarray(got), 2.0 * np.asarray(jax.grad(sim)(x)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="set config.data.caption_len"):
        build.clip_guided_score(zero, sde, guide, tokens[:, :4], 1.0)


def test_prior_data_scale_and_batches_resume_at_any_step():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(10, 4)).astype(np.float32)
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    pairs = {"image": image, "text": rng.normal(size=(10, 4)).astype(np.float32)}
    z = build.to_prior_space(image)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 2.0, rtol=1e-6)  # √E
    np.testing.assert_allclose(np.asarray(build.to_clip_space(jnp.asarray(z))), image, rtol=1e-6)
    straight = list(itertools.islice(build.pair_batches(pairs, 4, seed=3), 6))
    resumed = list(itertools.islice(build.pair_batches(pairs, 4, start_step=4, seed=3), 2))
    for a, b in zip(straight[4:], resumed):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["text"], b["text"])
    # every pair once per epoch (10 pairs, batch 4: the first 8 positions of epoch 0 are distinct)
    firsts = np.concatenate([b["text"] for b in straight[:2]])
    assert len({tuple(r) for r in firsts}) == 8


@pytest.mark.slow
def test_decoder_without_a_prior_samples_its_null_conditioning_and_configs_are_checked():
    config = build.with_defaults(load_config("digits_unclip", "smoke"))
    assert build.is_unclip_decoder(config) and build.has_prior(config)
    model = build.get_model(config, rngs=nnx.Rngs(0))
    sde = build.make_sde(config)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    t = jnp.array([0.2, 0.7])
    snap = build.guided_score_fn(config, model, sde, 2)  # a training snapshot: no prior given
    null = build.make_score_model(config).score_fn(model, y=jnp.zeros((2, int(config.model.cond_dim))))
    np.testing.assert_array_equal(np.asarray(snap(x, t)), np.asarray(null(x, t)))
    with config.unlocked():
        config.prior.clip_workdir = ""
    with pytest.raises(ValueError, match="config.prior.clip_workdir is empty"):
        build.clip_workdir(config)
    assert not build.is_unclip_decoder(build.with_defaults(load_config("digits_vp")))
