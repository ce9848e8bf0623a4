"""Data sources: determinism, resume positions, scaling, user data, and the tfds path (mocked, offline)."""

import os

import ml_collections
import numpy as np
import pytest

from scoresde import data as data_lib

from conftest import load_config


def take(it, n):
    return [next(it) for _ in range(n)]


def test_digits_batches_scaled_and_resumable():
    config = load_config("digits_vp", "smoke")
    assert config.data.centered
    batches = take(data_lib.get_dataset(config, split="train", batch_size=16), 120)  # > one epoch (1617 / 16)
    x = np.concatenate([b["image"] for b in batches])
    assert x.shape == (120 * 16, 8, 8, 1) and x.dtype == np.float32
    assert x.min() >= -1.0 and x.max() <= 1.0 and x.min() < -0.99 and x.max() > 0.99
    # a run restarted at step 103 reads exactly the batches of the uninterrupted run (across the epoch boundary)
    resumed = take(data_lib.get_dataset(config, split="train", batch_size=16, start_step=103), 17)
    for a, b in zip(batches[103:], resumed):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    # the first epoch is a permutation: every training image appears once in the first 101 batches
    first_epoch = np.concatenate([b["label"] for b in batches[:101]])
    assert np.bincount(first_epoch, minlength=10).min() > 100
    # the test split is disjoint in position and finite without repeat
    test = list(data_lib.get_dataset(config, split="test", batch_size=16))
    assert len(test) == 180 // 16


def test_inverse_scaler_inverts_scaler():
    config = load_config("digits_vp", "smoke")
    x = np.linspace(0, 1, 11, dtype=np.float32)
    np.testing.assert_allclose(data_lib.get_data_inverse_scaler(config)(data_lib.get_data_scaler(config)(x)), x)
    config.data.centered = False
    np.testing.assert_array_equal(data_lib.get_data_scaler(config)(x), x)


def test_toy_batches_depend_only_on_step():
    config = load_config("toy2d_vp", "smoke")
    a = take(data_lib.get_dataset(config, split="train", batch_size=32), 4)
    b = take(data_lib.get_dataset(config, split="train", batch_size=32, start_step=2), 2)
    np.testing.assert_array_equal(a[2]["image"], b[0]["image"])
    assert a[0]["image"].shape == (32, 2)
    assert not np.array_equal(a[0]["image"], a[1]["image"])


def test_npz_and_folder_sources(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(20, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=images, labels=np.arange(20) % 3)
    config = load_config("digits_vp", "smoke")
    with config.unlocked():
        config.data.dataset = "npz"
        config.data.path = str(tmp_path / "d.npz")
        config.data.num_channels = 3
        config.data.centered = False
    (batch,) = take(data_lib.get_dataset(config, split="train", batch_size=4, shuffle=False), 1)
    np.testing.assert_allclose(batch["image"], images[:4] / 255.0, atol=1e-6)
    np.testing.assert_array_equal(batch["label"], [0, 1, 2, 0])

    for i in range(6):
        os.makedirs(tmp_path / "imgs" / f"c{i % 2}", exist_ok=True)
        Image.fromarray(images[i, :, :]).resize((12, 10)).save(tmp_path / "imgs" / f"c{i % 2}" / f"{i}.png")
    with config.unlocked():
        config.data.dataset = "folder"
        config.data.path = str(tmp_path / "imgs")
    (batch,) = take(data_lib.get_dataset(config, split="train", batch_size=6, shuffle=False), 1)
    assert batch["image"].shape == (6, 8, 8, 3)
    assert sorted(batch["label"].tolist()) == [0, 0, 0, 1, 1, 1]


def test_unknown_dataset_and_missing_path_are_clear_errors(tmp_path):
    config = load_config("digits_vp", "smoke")
    with config.unlocked():
        config.data.dataset = "imagenet_typo"
    with pytest.raises(ValueError, match="unknown dataset 'imagenet_typo'; expected one of"):
        data_lib.get_dataset(config, split="train", batch_size=8)
    with config.unlocked():
        config.data.dataset = "npz"
        config.data.path = str(tmp_path / "missing.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        next(data_lib.get_dataset(config, split="train", batch_size=8))


def test_tfds_missing_dataset_offline_is_a_clear_error(tmp_path):
    config = load_config("cifar10_vp", "smoke")
    with config.unlocked():
        config.data.tfds_data_dir = str(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="tfds build cifar10"):
        next(data_lib.get_dataset(config, split="train", batch_size=8))


def test_tfds_mock_cifar10_preprocessing_and_resume():
    tfds = pytest.importorskip("tensorflow_datasets")
    config = load_config("cifar10_vp", "smoke")  # 16x16, centered, random flip
    with config.unlocked():
        config.data.download = True
    with tfds.testing.mock_data(num_examples=24):
        batches = take(data_lib.get_dataset(config, split="train", batch_size=8), 5)  # crosses an epoch
        resumed = take(data_lib.get_dataset(config, split="train", batch_size=8, start_step=3), 2)
        test = list(data_lib.get_dataset(config, split="test", batch_size=8))
    x = batches[0]["image"]
    assert x.shape == (8, 16, 16, 3) and x.dtype == np.float32
    assert -1.0 <= x.min() and x.max() <= 1.0 and x.std() > 0.1
    assert batches[0]["label"].dtype == np.int32
    for a, b in zip(batches[3:], resumed):
        np.testing.assert_array_equal(a["image"], b["image"])
    assert len(test) == 3


def test_config_dataset_shape_helpers():
    config = ml_collections.ConfigDict({"data": {"dataset": "two_moons", "centered": True}})
    assert data_lib.data_shape(config) == (2,)
    assert not data_lib.is_image_data(config)
    np.testing.assert_array_equal(data_lib.get_data_scaler(config)(np.ones(2)), np.ones(2))
