"""Noise-conditional classifiers: the reference WRN's structure, an MLP that learns the exact Bayes
classifier of a Gaussian mixture (and guides sampling with it), and the label dropout of classifier-free
training. (The train_classifier mode end to end is in ``cli/test_mode_train_classifier.py``.)"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from scoresde import build, guidance, sampling
from scoresde import sde as sde_lib
from scoresde.data import toy
from scoresde.models import classifiers
from scoresde.modes import train_classifier

from conftest import load_config


def _load_config(name, variant=None):
    return load_config(name, variant)


def _n_params(module):
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(module, nnx.Param)))


def test_wrn_28_10_structure():
    wrn = nnx.eval_shape(lambda: classifiers.WideResNet(10, depth=28, width=10, rngs=nnx.Rngs(0)))
    assert len(wrn.blocks) == 12  # 3 groups of (28 - 4) / 6 = 4 blocks
    # The reference's parameters, counted by hand: init conv; per block GroupNorm (2 c_in), 3×3 conv
    # c_in→c_out, the noise-embedding dense (512→c_out), GroupNorm (2 c_out), 3×3 conv c_out→c_out;
    # zero-padded identity shortcuts (no 1×1 convs, unlike the 36.5M-parameter original WRN-28-10);
    # final GroupNorm and dense; the embedding: 128 Fourier frequencies, dense 256→512, dense 512→512.
    chans = [(16, 160)] + [(160, 160)] * 3 + [(160, 320)] + [(320, 320)] * 3 + [(320, 640)] + [(640, 640)] * 3
    blocks = sum(2 * a + 9 * a * b + 513 * b + 2 * b + 9 * b * b for a, b in chans)
    expected = 27 * 16 + blocks + 2 * 640 + 6410 + 128 + 257 * 512 + 513 * 512
    assert _n_params(wrn) == expected
    assert abs(expected - 36.5e6) < 2.5e6  # the same size class as the classic WRN-28-10
    with pytest.raises(ValueError, match="6 n \\+ 4"):
        classifiers.WideResNet(10, depth=27, rngs=nnx.Rngs(0))


def test_wrn_standardises_each_image_and_conditions_on_noise():
    wrn = classifiers.WideResNet(10, in_channels=3, depth=10, width=1, embed_size=16, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
    level = jnp.array([0.01, 0.1, 1.0, 10.0])
    apply = nnx.jit(lambda m, x, level: m(x, level))
    out = apply(wrn, x, level)
    assert out.shape == (4, 10)
    # per-image standardisation: logits are invariant to a positive affine map of each image
    np.testing.assert_allclose(apply(wrn, 3.0 * x + 0.5, level), out, rtol=2e-4, atol=2e-4)
    assert not np.allclose(apply(wrn, x, level[::-1]), out, atol=1e-3)  # the noise level matters
    # the Fourier frequencies are fixed: no gradient reaches them
    grads = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x, level) ** 2)))(wrn)
    assert float(jnp.abs(grads.embed.W[...]).max()) == 0.0
    assert float(jnp.abs(grads.temb0.kernel[...]).max()) > 0.0


GRID = toy.gmm_grid()  # 9 classes, the toy2d_vp_cond data
VP = sde_lib.VPSDE()


@pytest.fixture(scope="module")
def trained_mlp():
    """An MLP classifier trained with :func:`train_classifier.classifier_loss` on the 3×3 mixture grid."""
    clf = classifiers.MLPClassifier(2, 9, hidden=64, num_layers=2, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(clf, nnx.Param)
    tx = optax.adam(3e-3)

    @jax.jit
    def step(params, opt, key):
        k_data, k_loss = jax.random.split(key)
        x, y = GRID.sample(k_data, 512, return_labels=True)
        (loss, acc), g = jax.value_and_grad(
            lambda p: train_classifier.classifier_loss(nnx.merge(graphdef, p), VP, x, y, k_loss, eps=1e-3), has_aux=True
        )(params)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), opt, loss

    opt = tx.init(params)
    for i in range(1000):
        params, opt, loss = step(params, opt, jax.random.fold_in(jax.random.key(1), i))
    return nnx.merge(graphdef, params)


def test_mlp_classifier_learns_the_bayes_classifier(trained_mlp):
    log_prob_fn = guidance.classifier_log_prob_fn(trained_mlp, VP)
    x0, y = GRID.sample(jax.random.key(2), 4000, return_labels=True)
    for t_val in (0.05, 0.3, 0.6):
        t = jnp.full((4000,), t_val)
        xt = VP.alpha(t)[:, None] * x0 + VP.sigma(t)[:, None] * jax.random.normal(jax.random.key(3), x0.shape)
        exact = GRID.class_log_prob(VP, xt, t)
        learned = log_prob_fn(xt, t)
        kl = float(jnp.mean(jnp.sum(jnp.exp(exact) * (exact - learned), -1)))
        acc_exact = float(jnp.mean(jnp.argmax(exact, -1) == y))
        acc = float(jnp.mean(jnp.argmax(learned, -1) == y))
        assert kl < 0.05 and acc > acc_exact - 0.03, (t_val, kl, acc, acc_exact)


def test_classifier_guidance_with_a_trained_classifier_samples_the_class(trained_mlp):
    y = 4  # the centre component
    guided = guidance.classifier_guidance(GRID.score_fn(VP), guidance.classifier_log_prob_fn(trained_mlp, VP), y, 1.0)
    n = 2000
    x, _ = sampling.sample(guided, VP, (n, 2), jax.random.key(4), method="pc", steps=300)
    frac = float(jnp.mean(jnp.argmax(GRID.class_log_prob(VP, x, jnp.zeros((n,))), -1) == y))
    assert frac > 0.9  # unguided: 1/9
    np.testing.assert_allclose(np.asarray(x).mean(0), np.asarray(GRID.means[y]), atol=0.05)


def test_missing_classifier_is_a_clear_error(tmp_path):
    config = _load_config("toy2d_vp_cond", "smoke,classifier")
    with pytest.raises(FileNotFoundError, match="train_classifier"):
        build.load_classifier(str(tmp_path), config)
    with pytest.raises(ValueError, match="classifier"):
        build.guided_score_fn(config, None, VP, 4, classifier=None)
    bad = ml_collections.ConfigDict(config.to_dict())
    bad.sampling.guidance = "clap"
    with pytest.raises(ValueError, match="none, cfg, classifier, clip"):
        build.guided_score_fn(bad, None, VP, 4)
    bad.classifier.name = "resnet"
    with pytest.raises(ValueError, match="wrn, mlp"):
        build.get_classifier(bad, rngs=nnx.Rngs(0))


def test_sample_class_labels():
    config = _load_config("digits_vp_cond")
    np.testing.assert_array_equal(build.sample_class_labels(config, 20), np.repeat(np.arange(10), 2))
    with config.unlocked():
        config.sampling.class_label = 7
    np.testing.assert_array_equal(build.sample_class_labels(config, 3), [7, 7, 7])
    with config.unlocked():
        config.sampling.class_label = 10
    with pytest.raises(ValueError, match="class_label=10"):
        build.sample_class_labels(config, 3)


def test_label_dropout():

    y = jnp.arange(20000) % 10
    dropped = guidance.drop_labels(jax.random.key(0), y, 0.2, 10)
    frac = float(jnp.mean(dropped == 10))
    assert abs(frac - 0.2) < 4 * np.sqrt(0.2 * 0.8 / 20000)
    np.testing.assert_array_equal(
        np.asarray(dropped)[np.asarray(dropped) != 10], np.asarray(y)[np.asarray(dropped) != 10]
    )
    config = _load_config("digits_vp_cond")
    batch = {"label": np.asarray(y[:8], np.int32)}
    assert build.class_labels(_load_config("digits_vp"), batch, jax.random.key(0)) is None  # unconditional
    with config.unlocked():
        config.training.p_uncond = 0.0
    np.testing.assert_array_equal(build.class_labels(config, batch, jax.random.key(0)), batch["label"])
    with config.unlocked():
        config.training.p_uncond = 1.0
    np.testing.assert_array_equal(build.class_labels(config, batch, jax.random.key(0)), 10)
