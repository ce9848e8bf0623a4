"""TensorFlow Datasets input pipelines with the reference's preprocessing (score_sde ``datasets.py``).

Imported only when a tfds dataset is used; TensorFlow is hidden from GPUs before anything else.
Each process reads its own ``1 / process_count`` shard (``tfds.split_for_jax_process``). Every epoch is
shuffled with a seed derived from ``(seed, epoch)`` and per-example randomness (flip, dequantisation) is
stateless in ``(seed, position)``, so a run resumed at step ``s`` skips to exactly the batch it would
have read next.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from scoresde.images import to_uint8
from scoresde.parallel import hide_accelerators_from_tensorflow

__all__ = ["tfds_batches", "tfds_spec", "uint8_batches"]

_SHUFFLE_BUFFER = 10000


def tfds_spec(config, name: str):
    """``(tfds name, train split, eval split, resize_op)`` as in the reference ``get_dataset``."""
    import tensorflow as tf  # noqa: PLC0415  (TensorFlow loads only for tfds data, after hiding the GPUs from it)

    size = int(config.data.image_size)

    def resize_small(img, resolution):
        h, w = tf.shape(img)[0], tf.shape(img)[1]
        ratio = resolution / tf.cast(tf.minimum(h, w), tf.float32)
        h = tf.cast(tf.round(tf.cast(h, tf.float32) * ratio), tf.int32)
        w = tf.cast(tf.round(tf.cast(w, tf.float32) * ratio), tf.int32)
        return tf.image.resize(img, [h, w], antialias=True)

    def central_crop(img, crop):
        top = (tf.shape(img)[0] - crop) // 2
        left = (tf.shape(img)[1] - crop) // 2
        return tf.image.crop_to_bounding_box(img, top, left, crop, crop)

    def crop_resize(img, resolution):
        crop = tf.minimum(tf.shape(img)[0], tf.shape(img)[1])
        h, w = tf.shape(img)[0], tf.shape(img)[1]
        img = img[(h - crop) // 2 : (h + crop) // 2, (w - crop) // 2 : (w + crop) // 2]
        img = tf.image.resize(img, size=(resolution, resolution), antialias=True, method=tf.image.ResizeMethod.BICUBIC)
        return tf.cast(img, tf.uint8)

    def plain_resize(img):
        img = tf.image.convert_image_dtype(img, tf.float32)
        if img.shape[0] == size and img.shape[1] == size:
            # Antialiased bilinear resizing to the same size is the identity (tested exactly); skipping it
            # takes the per-image resampling kernel out of the CIFAR-10 / SVHN pipelines.
            return img
        return tf.image.resize(img, [size, size], antialias=True)

    if name == "cifar10":
        return "cifar10", "train", "test", plain_resize
    if name == "svhn":
        return "svhn_cropped", "train", "test", plain_resize
    if name == "celeba":

        def celeba_resize(img):
            img = tf.image.convert_image_dtype(img, tf.float32)
            return resize_small(central_crop(img, 140), size)

        return "celeb_a", "train", "validation", celeba_resize
    if name == "lsun":
        category = config.data.category
        if not category:
            raise ValueError("dataset 'LSUN' needs config.data.category (e.g. 'church_outdoor' or 'bedroom')")
        if size == 128:

            def lsun_resize(img):
                img = tf.image.convert_image_dtype(img, tf.float32)
                return central_crop(resize_small(img, size), size)
        else:

            def lsun_resize(img):
                return tf.image.convert_image_dtype(crop_resize(img, size), tf.float32)

        return f"lsun/{category}", "train", "validation", lsun_resize
    raise ValueError(f"unknown tfds dataset {name!r}; expected one of: cifar10, svhn, celeba, lsun")


def _builder(config, tfds_name):
    import tensorflow_datasets as tfds  # noqa: PLC0415  (TensorFlow loads only for tfds data, after hiding the GPUs from it)

    data_dir = config.data.tfds_data_dir or os.environ.get("TFDS_DATA_DIR") or None
    builder = tfds.builder(tfds_name, data_dir=data_dir)
    if not builder.is_prepared():
        if not config.data.download:
            raise FileNotFoundError(
                f"tfds dataset {tfds_name!r} is not prepared in {builder.data_dir!r}. Prepare it on a machine with "
                f"network access: `tfds build {tfds_name} --data_dir=DIR` (manual-download datasets such as "
                f"celeb_a/lsun need their files in DIR/downloads/manual), copy DIR here and pass "
                f"--config.data.tfds_data_dir=DIR (or set TFDS_DATA_DIR); or let this run download it with "
                f"--config.data.download=True."
            )
        builder.download_and_prepare()
    return builder


def tfds_batches(config, name, split, *, batch_size, shuffle, repeat, start_step, seed, dequant, flip, scaler):
    """Yields this process's numpy slices of global batches (see :func:`scoresde.data.get_dataset`)."""
    hide_accelerators_from_tensorflow()
    import tensorflow as tf  # noqa: PLC0415  (TensorFlow loads only for tfds data, after hiding the GPUs from it)
    import tensorflow_datasets as tfds  # noqa: PLC0415

    tfds_name, train_split, eval_split, resize_op = tfds_spec(config, name)
    builder = _builder(config, tfds_name)
    proc_split = tfds.split_for_jax_process(train_split if split == "train" else eval_split, drop_remainder=True)
    options = tf.data.Options()
    options.deterministic = True
    options.threading.max_intra_op_parallelism = 1
    base = builder.as_dataset(split=proc_split, shuffle_files=False, read_config=tfds.ReadConfig(options=options))
    n = int(base.cardinality().numpy())
    if n < 0:
        n = int(base.reduce(np.int64(0), lambda c, _: c + 1).numpy())
    local_batch = batch_size // jax.process_count()
    if n < local_batch:
        raise ValueError(
            f"{tfds_name}[{split}] has {n} examples on this process, fewer than one batch of {local_batch}"
        )
    start = start_step * local_batch
    channels = int(config.data.num_channels)

    def epoch_ds(epoch):
        ds = base
        if shuffle:
            ds = ds.shuffle(_SHUFFLE_BUFFER, seed=seed * 1_000_003 + epoch, reshuffle_each_iteration=False)
        return ds

    if repeat:
        first_epoch = start // n
        ds = tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch_ds)
        ds = ds.enumerate(start=first_epoch * n).skip(start - first_epoch * n)
    else:
        ds = epoch_ds(tf.constant(0, tf.int64)).enumerate().skip(start)

    def preprocess(pos, d):
        img = resize_op(d["image"])
        if img.shape[-1] != channels:
            img = tf.image.rgb_to_grayscale(img) if channels == 1 else tf.image.grayscale_to_rgb(img)
        key = tf.stack([tf.cast(seed, tf.int64), pos])
        if flip:
            img = tf.image.stateless_random_flip_left_right(img, seed=key)
        if dequant:
            u = tf.random.stateless_uniform(tf.shape(img), seed=key + tf.constant([0, 1 << 40], tf.int64))
            img = (u + img * 255.0) / 256.0
        label = d["label"] if "label" in d else tf.zeros((), tf.int64)
        return {"image": img, "label": tf.cast(label, tf.int32)}

    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    for batch in tfds.as_numpy(ds):
        yield {"image": np.asarray(scaler(batch["image"]), np.float32), "label": batch["label"]}


def uint8_batches(config, name, split, batch_size):
    """The whole ``split`` as uint8 NHWC batches (this process's share): no dequantisation, flips or dropping."""
    hide_accelerators_from_tensorflow()
    import tensorflow as tf  # noqa: PLC0415  (TensorFlow loads only for tfds data, after hiding the GPUs from it)
    import tensorflow_datasets as tfds  # noqa: PLC0415

    tfds_name, train_split, eval_split, resize_op = tfds_spec(config, name)
    builder = _builder(config, tfds_name)  # same availability checks as training
    the_split = train_split if split == "train" else eval_split
    ds = builder.as_dataset(split=tfds.split_for_jax_process(the_split, drop_remainder=False), shuffle_files=False)
    channels = int(config.data.num_channels)

    def preprocess(d):
        img = resize_op(d["image"])
        if img.shape[-1] != channels:
            img = tf.image.rgb_to_grayscale(img) if channels == 1 else tf.image.grayscale_to_rgb(img)
        return img

    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size, drop_remainder=False)
    for images01 in tfds.as_numpy(ds):
        yield to_uint8(images01)
