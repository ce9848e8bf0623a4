"""CLIP's pieces against exact answers: the symmetric contrastive loss, prompt ensembling, retrieval recall."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scoresde.models.clip import CLIP, ImageEncoder, clip_loss, recall_at_k, zero_shot_weights
from scoresde.models.text import TextEncoder


def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_clip_loss_is_the_symmetric_cross_entropy():
    rng = np.random.default_rng(0)
    img, txt = _unit(rng.normal(size=(5, 3))), _unit(rng.normal(size=(5, 3)))
    loss, acc = clip_loss(jnp.asarray(img, jnp.float32), jnp.asarray(txt, jnp.float32), 10.0)
    logits = 10.0 * img @ txt.T

    def ce(lg):  # -log softmax of the diagonal, row-wise
        lg = lg - lg.max(1, keepdims=True)
        return np.mean(np.log(np.exp(lg).sum(1)) - np.diag(lg))

    assert float(loss) == pytest.approx(0.5 * (ce(logits) + ce(logits.T)), rel=1e-5)
    assert float(acc) == pytest.approx(np.mean(logits.argmax(1) == np.arange(5)))


def test_clip_loss_of_perfectly_matched_pairs():
    eye = jnp.eye(4)
    loss, acc = clip_loss(eye, eye, 100.0)
    assert float(acc) == 1.0
    assert float(loss) == pytest.approx(np.log(1 + 3 * np.exp(-100.0)), abs=1e-6)  # one hit, three misses at 0


def test_zero_shot_weights_average_then_normalise():
    emb = jnp.asarray(_unit(np.random.default_rng(1).normal(size=(6, 4))), jnp.float32)
    w = zero_shot_weights(emb, 3)
    expected = _unit(np.asarray(emb).reshape(3, 2, 4).mean(1))
    np.testing.assert_allclose(w, expected, rtol=1e-6)


def test_recall_at_k_on_a_known_ranking():
    keys = jnp.eye(4)
    # query 0 finds its own key first; query 1 second; query 2 fourth; query 3 ties with another key
    queries = jnp.asarray([[1.0, 0.5, 0, 0], [0.9, 0.5, 0, 0], [0.9, 0.8, 0.7, 0.1], [0, 0, 0.6, 0.6]])
    r = recall_at_k(queries, keys, (1, 2, 4))
    assert float(r[1]) == 0.25 and float(r[2]) == 0.75 and float(r[4]) == 1.0  # the tie counts against query 3


@pytest.fixture(scope="module")
def models():
    rngs = nnx.Rngs(0)
    clean = CLIP(ImageEncoder(1, 8, 4, 8, rngs=rngs), TextEncoder(20, 6, 8, 1, 2, rngs=rngs), embed_dim=5, rngs=rngs)
    return clean, ImageEncoder(1, 8, 4, 8, noised=True, rngs=rngs)


def test_embeddings_are_unit_vectors_and_the_temperature_starts_at_clips(models):
    clean, noised = models
    x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 8, 8, 1)), jnp.float32)
    tokens = jnp.asarray([[1, 2, 0, 0, 0, 0], [3, 0, 0, 0, 0, 0], [4, 5, 6, 7, 8, 9]])
    img, txt, scale = nnx.jit(lambda m, x, t: m(x, t))(clean, x, tokens)
    assert img.shape == txt.shape == (3, 5)
    np.testing.assert_allclose(jnp.linalg.norm(img, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(jnp.linalg.norm(txt, axis=-1), 1.0, rtol=1e-5)
    assert float(scale) == pytest.approx(1 / 0.07, rel=1e-5)
    level = jnp.asarray([0.1, 1.0, 10.0])
    encode = nnx.jit(lambda m, x, lv: m(x, lv))
    a, b = encode(noised, x, level), encode(noised, x, level[::-1])
    assert a.shape == (3, 8) and float(jnp.abs(a - b).max()) > 1e-4  # the noise level is read


def test_the_learned_scale_is_capped(models):
    clean, _ = models
    clean.log_logit_scale[...] = jnp.asarray(10.0)
    assert float(clean.logit_scale) == pytest.approx(100.0, rel=1e-5)
    clean.log_logit_scale[...] = jnp.asarray(np.log(1 / 0.07), jnp.float32)


def test_noise_level_only_for_the_noised_encoder(models):
    clean, noised = models
    x = jnp.zeros((1, 8, 8, 1))
    with pytest.raises(ValueError, match="needs a noise_level"):
        noised(x)
    with pytest.raises(ValueError, match="takes no noise_level"):
        clean.encode_image(x, jnp.ones((1,)))
    with pytest.raises(ValueError, match="even integer"):
        ImageEncoder(1, 7, 4, 8, rngs=nnx.Rngs(0))
