"""The CIFAR-10 / SVHN preprocessing skips an identity resize: the skipped op is the identity exactly."""

import ml_collections
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from scoresde.data import tfds as tfds_data  # noqa: E402


@pytest.mark.parametrize("dataset", ["cifar10", "svhn"])
def test_same_size_resize_is_skipped_and_is_the_identity(dataset):
    config = ml_collections.ConfigDict({"data": {"image_size": 32}})
    resize_op = tfds_data.tfds_spec(config, dataset)[3]
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (8, 32, 32, 3)).astype(np.uint8)
    for img in imgs:
        ref = tf.image.resize(tf.image.convert_image_dtype(img, tf.float32), [32, 32], antialias=True)
        got = resize_op(tf.constant(img))
        np.testing.assert_array_equal(got.numpy(), ref.numpy())  # exact, not approximately
    # A different size still resizes (the skip is for equal sizes only).
    small = tfds_data.tfds_spec(ml_collections.ConfigDict({"data": {"image_size": 16}}), dataset)[3]
    assert tuple(small(tf.constant(imgs[0])).shape) == (16, 16, 3)
