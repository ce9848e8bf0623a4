"""Datasets: embedded toy / digits / stroke data, users' ``.npz`` or image folders, and tfds datasets.

:func:`get_dataset` yields numpy batches ``{"image": float32 (B_local, ...), "label": int32 (B_local,)}``
holding *this process's* slice of each global batch, already scaled by :func:`get_data_scaler`; with
``config.data.captions`` (digits only) also ``"caption"``: int32 ``(B_local, config.data.caption_len)`` tokens of
each image's caption (:mod:`scoresde.data.captions`). Batches
are a pure function of ``(seed, step)``, so a resumed run sees the batches an uninterrupted one would have.
Dataset names and sources: ``docs/data.md``.
"""

from __future__ import annotations

import functools
import os
import zipfile
from collections.abc import Iterator

import jax
import numpy as np

from scoresde import parallel
from scoresde.config_defaults import with_defaults
from scoresde.data import captions, strokes, toy
from scoresde.images import to_uint8

__all__ = [
    "get_dataset",
    "get_data_scaler",
    "get_data_inverse_scaler",
    "data_shape",
    "is_image_data",
    "is_sequence_data",
    "TOY_DATASETS",
    "TFDS_DATASETS",
]

TOY_DATASETS = ("gmm_grid", "checkerboard", "two_moons", "swiss_roll")
TFDS_DATASETS = ("cifar10", "svhn", "celeba", "lsun")
_IN_MEMORY = ("digits", "strokes", "npz", "folder")
SEQUENCE_DATASETS = ("strokes",)
STROKE_CHARS = {
    "digits": strokes.DIGITS,
    "letters": strokes.LETTERS,
    "digits+letters": strokes.DIGITS + strokes.LETTERS,
}


def _name(config) -> str:
    return str(config.data.dataset).lower()


def known_datasets() -> tuple[str, ...]:
    return TOY_DATASETS + _IN_MEMORY + TFDS_DATASETS


def check_dataset_name(config) -> str:
    name = _name(config)
    if name not in known_datasets():
        raise ValueError(f"unknown dataset {config.data.dataset!r}; expected one of: {', '.join(known_datasets())}")
    return name


def is_image_data(config) -> bool:
    """True unless the data are flat vectors (the 2-D toy sets or an explicit ``config.data.shape``) or sequences."""
    if is_sequence_data(config):
        return False
    return _name(config) not in TOY_DATASETS and not ("shape" in config.data and config.data.shape)


def is_sequence_data(config) -> bool:
    """True for point sequences ``(N, C)``: the ``strokes`` drawings (:mod:`scoresde.data.strokes`)."""
    return _name(config) in SEQUENCE_DATASETS


def data_shape(config) -> tuple[int, ...]:
    """Per-example shape: ``config.data.shape`` for vector data, else ``(H, W, C)``.

    Raises:
        ValueError: a non-positive size or channel count.
    """
    d = config.data
    if is_sequence_data(config):
        if float(d.num_points) != int(d.num_points) or int(d.num_points) < 2:
            raise ValueError(f"config.data.num_points={d.num_points} must be an integer >= 2")
        return (int(d.num_points), strokes.CHANNELS)
    if "shape" in d and d.shape:
        shape = tuple(int(s) for s in d.shape)
    elif _name(config) in TOY_DATASETS:
        return (2,)
    else:
        shape = (int(d.image_size), int(d.image_size), int(d.num_channels))
        if shape[0] < 1 or shape[2] < 1:
            raise ValueError(
                f"config.data.image_size={d.image_size} and num_channels={d.num_channels} must be positive integers"
            )
    if any(s < 1 for s in shape):
        raise ValueError(f"config.data.shape={shape} must be positive")
    return shape


def get_data_scaler(config):
    """Data in [0, 1] -> model space: ``2x - 1`` when ``config.data.centered``, else identity (reference)."""
    if config.data.centered and is_image_data(config):
        return lambda x: x * 2.0 - 1.0
    return lambda x: x


def get_data_inverse_scaler(config):
    """Model space -> [0, 1], the inverse of :func:`get_data_scaler`."""
    if config.data.centered and is_image_data(config):
        return lambda x: (x + 1.0) / 2.0
    return lambda x: x


def get_dataset(
    config,
    *,
    split: str = "train",
    batch_size: int | None = None,
    shuffle: bool | None = None,
    repeat: bool | None = None,
    start_step: int = 0,
    seed: int | None = None,
    uniform_dequantization: bool | None = None,
) -> Iterator[dict]:
    """An iterator over this process's slices of global batches.

    Args:
        config: the run config (reads ``config.data`` and ``config.seed``).
        split: ``"train"`` or ``"test"``.
        batch_size: the *global* batch size (default ``config.training.batch_size``); each process
            gets ``batch_size // jax.process_count()`` examples.
        shuffle: shuffle the data (default: True for train).
        repeat: loop over epochs forever (default: True for train); otherwise one pass, dropping the
            last incomplete batch.
        start_step: the number of global batches already consumed (resume position).
        seed: data seed (default ``config.seed``).
        uniform_dequantization: ``(u + 255 x) / 256`` noise (default ``config.data.uniform_dequantization``).

    Raises:
        ValueError: unknown dataset or split, or a batch size the process count does not divide.
        FileNotFoundError: a dataset that is not available offline (with how to prepare it).
    """
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
    config = with_defaults(config)
    name = check_dataset_name(config)
    data_shape(config)  # bad sizes are a clear error here, not one from deep inside PIL
    batch_size = int(batch_size or config.training.batch_size)
    if batch_size % jax.process_count():
        raise ValueError(f"batch_size={batch_size} is not divisible by the process count {jax.process_count()}")
    train = split == "train"
    shuffle = train if shuffle is None else shuffle
    repeat = train if repeat is None else repeat
    seed = int(config.seed if seed is None else seed)
    if uniform_dequantization is None:
        uniform_dequantization = bool(config.data.uniform_dequantization)
    opts = dict(
        batch_size=batch_size,
        shuffle=shuffle,
        repeat=repeat,
        start_step=int(start_step),
        seed=seed,
        dequant=uniform_dequantization,
        flip=bool(config.data.random_flip) and train,
        scaler=get_data_scaler(config),
    )
    tokens = caption_tokens(config, split) if config.data.captions else None
    if name in TOY_DATASETS:
        return _toy_batches(config, name, split, **opts)
    if name in _IN_MEMORY:
        images, labels = _load_in_memory(config, name, split)
        return _array_batches(images, labels, tokens=tokens, **opts)
    return _tfds_module().tfds_batches(config, name, split, **opts)


def _tfds_module():
    """:mod:`scoresde.data.tfds`, imported only for tfds datasets (TensorFlow is heavy).

    Raises:
        ModuleNotFoundError: TensorFlow / tensorflow-datasets are not installed, with the install hint.
    """
    try:
        import tensorflow  # noqa: F401, PLC0415
        import tensorflow_datasets  # noqa: F401, PLC0415
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            f"dataset needs {e.name}, which is not installed: pip install 'scoresde[tfds]' (tensorflow-cpu and "
            "tensorflow-datasets), or use an in-memory dataset (digits, npz, folder)",
            name=e.name,
        ) from e
    from scoresde.data import tfds as tfds_data  # noqa: PLC0415  (TensorFlow only for tfds datasets)

    return tfds_data


def describe(config, split: str = "train") -> str:
    """``"<dataset> <split>: <N> examples of <shape>"`` for the run header (``N`` unknown for tfds until prepared)."""
    name = check_dataset_name(config)
    shape = "x".join(str(s) for s in data_shape(config))
    if name in TOY_DATASETS:
        return f"{name} (generated, unlimited), {shape}"
    if name in _IN_MEMORY:
        return f"{name} {split}: {len(_load_in_memory(config, name, split)[0]):,} examples of {shape}"
    return f"{name} {split} (tfds), {shape}"


def num_examples(config, split: str = "train") -> int | None:
    """How many examples a split holds, or ``None`` where that is not known without preparing it (toy, tfds)."""
    name = check_dataset_name(config)
    if name in _IN_MEMORY:
        return len(_load_in_memory(config, name, split)[0])
    return None


def uint8_batches(config, split: str, batch_size: int = 500) -> Iterator[np.ndarray]:
    """This process's share of a whole dataset split as uint8 NHWC batches: all examples, no dequantisation.

    Uses the data module's loaders (the same preprocessing as training, including the reference's
    resizing) but not its training iterator, which drops the last incomplete batch.
    """
    name = check_dataset_name(config)
    if not is_image_data(config):
        raise ValueError(f"FID statistics need image data; dataset {config.data.dataset!r} is not images")
    if name in TFDS_DATASETS:
        yield from _tfds_module().uint8_batches(config, name, split, batch_size)
        return
    images01, _ = _load_in_memory(config, name, split)
    images = to_uint8(images01)[parallel.process_rows(len(images01))]
    for start in range(0, len(images), batch_size):
        yield images[start : start + batch_size]


def _process_slice(n_global: int) -> slice:
    p, n_proc = jax.process_index(), jax.process_count()
    n_local = n_global // n_proc
    return slice(p * n_local, (p + 1) * n_local)


def _toy_batches(config, name, split, *, batch_size, shuffle, repeat, start_step, seed, dequant, flip, scaler):
    del shuffle, dequant, flip
    base = jax.random.fold_in(jax.random.key(seed), 0 if split == "train" else 1)
    num_eval = int(config.data.get("num_eval_examples", 10 * batch_size))
    sl = _process_slice(batch_size)

    def sample(k):  # eager: toy.sample builds its mixture per call (not jit-safe to cache)
        return toy.sample(name, k, batch_size, return_labels=True)

    step = start_step
    while repeat or step < num_eval // batch_size:
        x, y = sample(jax.random.fold_in(base, step))
        x, y = np.asarray(x)[sl], np.asarray(y)[sl]
        yield {"image": np.asarray(scaler(x), np.float32), "label": y.astype(np.int32)}
        step += 1


def _load_in_memory(config, name, split):
    if name == "digits":
        from sklearn.datasets import load_digits  # noqa: PLC0415  (optional scikit-learn, digits only)

        d = load_digits()
        images = (d.images.astype(np.float32) / 16.0)[..., None]
        labels = d.target.astype(np.int32)
        test = np.arange(len(images)) % 10 == 0
        keep = test if split == "test" else ~test
        images, labels = images[keep], labels[keep]
        size = int(config.data.image_size)
        if size != 8:
            images = _resize_float(images, size)
        return _match_channels(images, int(config.data.num_channels)), labels
    if name == "strokes":
        return _load_strokes(config, split)
    path = config.data.path
    if not path:
        raise ValueError(f"dataset {name!r} needs config.data.path (e.g. --config.data.path=/data/my_images)")
    if name == "npz":
        return _load_npz(config, path, split)
    return _load_folder(config, path)


def split_arrays(config, split: str = "test") -> dict[str, np.ndarray]:
    """A whole in-memory split at once, the same on every process: ``{"image"`` (scaled by
    :func:`get_data_scaler`), ``"label"`` and, with ``config.data.captions``, ``"caption"}``, in data order.

    Raises:
        ValueError: a dataset that is not held in memory (toy, tfds).
    """
    name = check_dataset_name(config)
    if name not in _IN_MEMORY:
        raise ValueError(
            f"dataset {config.data.dataset!r} is not held in memory; expected one of: {', '.join(_IN_MEMORY)}"
        )
    images, labels = _load_in_memory(config, name, split)
    out = {"image": np.asarray(get_data_scaler(config)(images), np.float32), "label": labels}
    if config.data.captions:
        out["caption"] = caption_tokens(config, split)
    return out


def caption_tokens(config, split: str = "train") -> np.ndarray:
    """The caption tokens of every digit of ``split``, int32 ``(N, config.data.caption_len)``, in data order.

    Captions (:func:`scoresde.data.captions.make_captions`, seed 0) are measured on the 8x8 originals, so they
    do not depend on ``config.data.image_size``.

    Raises:
        ValueError: a dataset other than digits, or random flips (a mirror image reverses the slant a caption
            names).
    """
    name = check_dataset_name(config)
    if name != "digits":
        raise ValueError(f"config.data.captions=True needs dataset 'digits'; got {config.data.dataset!r}")
    if config.data.random_flip:
        raise ValueError(
            "config.data.captions=True needs config.data.random_flip=False: a flipped digit reverses the slant "
            "its caption names"
        )
    return _digit_caption_tokens(split, int(config.data.caption_len)).copy()


@functools.cache
def _digit_caption_tokens(split: str, caption_len: int) -> np.ndarray:
    from sklearn.datasets import load_digits  # noqa: PLC0415  (optional scikit-learn, digits only)

    d = load_digits()
    test = np.arange(len(d.target)) % 10 == 0
    keep = test if split == "test" else ~test
    images01, labels = d.images[keep] / 16.0, d.target[keep]
    return captions.tokenize(captions.make_captions(images01, labels, seed=0), caption_len)


def stroke_chars(config) -> str:
    """The characters the ``strokes`` data set draws (``config.data.stroke_chars``); class k is character k.

    Raises:
        ValueError: an unknown set, naming the valid ones.
    """
    chars = str(config.data.stroke_chars)
    if chars not in STROKE_CHARS:
        raise ValueError(f"unknown config.data.stroke_chars={chars!r}; expected one of: {', '.join(STROKE_CHARS)}")
    return STROKE_CHARS[chars]


@functools.cache
def _stroke_set(num_drawings: int, num_points: int, chars: str):
    x, _, y = strokes.make_dataset(num_drawings, num_points, seed=0, chars=chars)
    return x, y, strokes.split(num_drawings, len(chars))


def _load_strokes(config, split):
    """The drawings of :mod:`scoresde.data.strokes`, data seed 0 (one set for every run), ``num_points`` each."""
    n = config.data.num_drawings
    if float(n) != int(n) or int(n) < 10:
        raise ValueError(f"config.data.num_drawings={n} must be an integer >= 10 (every tenth block is the test split)")
    x, y, test = _stroke_set(int(n), int(config.data.num_points), stroke_chars(config))
    keep = test if split == "test" else ~test
    return x[keep], y[keep]


def _to_unit_float(images: np.ndarray, source: str = "images") -> np.ndarray:
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    if not np.issubdtype(images.dtype, np.number):
        raise ValueError(f"{source}: images must be numeric (uint8 or float in [0, 1]); got dtype {images.dtype}")
    images = images.astype(np.float32)
    bad = ~np.isfinite(images)
    if bad.any():
        first = np.argwhere(bad)[0]
        raise ValueError(
            f"{source}: {int(bad.sum())} non-finite pixel value(s) (NaN or inf), the first in image "
            f"{int(first[0])} at {tuple(int(i) for i in first[1:])}; expected finite values in [0, 1]"
        )
    if images.min() < -1e-6 or images.max() > 1 + 1e-6:
        raise ValueError(
            f"{source}: float images must lie in [0, 1]; got range [{images.min():.3g}, {images.max():.3g}]"
        )
    return images


def _match_channels(images, channels):
    if images.shape[-1] == channels:
        return images
    if images.shape[-1] == 1:
        return np.repeat(images, channels, axis=-1)
    if channels == 1:
        return images.mean(axis=-1, keepdims=True)
    raise ValueError(f"images have {images.shape[-1]} channels; config.data.num_channels={channels}")


def _resize_float(images, size):
    from PIL import Image  # noqa: PLC0415  (Pillow only for image files)

    out = []
    for im in images:
        chans = [
            np.asarray(Image.fromarray(im[..., c]).resize((size, size), Image.BICUBIC)) for c in range(im.shape[-1])
        ]
        out.append(np.stack(chans, -1))
    return np.clip(np.stack(out), 0.0, 1.0).astype(np.float32)


def _load_npz(config, path, split):
    if not os.path.exists(path):
        raise FileNotFoundError(f"config.data.path={path!r} does not exist; expected an .npz with an 'images' array")
    expected = "an .npz with a numeric 'images' array (N, H, W[, C]) and optional integer 'labels' (N,)"
    try:
        f = np.load(path, allow_pickle=False)
    except (OSError, EOFError, zipfile.BadZipFile, ValueError) as e:
        what = "a Python pickle" if "pickle" in str(e) else f"unreadable ({e})"
        raise ValueError(f"config.data.path={path!r} is not a numpy .npz: it is {what}; expected {expected}") from e
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise ValueError(f"config.data.path={path!r} is a single .npy array, not an .npz; expected {expected}")
    with f:
        key = "test_images" if split == "test" else "images"
        if split == "test" and key not in f:
            raise ValueError(
                f"{path} has no 'test_images' array, so it has no test split (found keys "
                f"{sorted(f.keys())}); add 'test_images' (and 'test_labels') to it: the training images "
                "are never used as the test split"
            )
        if key not in f:
            raise ValueError(f"{path} has no 'images' array; found keys {sorted(f.keys())}")
        lkey = "test_labels" if key == "test_images" else "labels"
        try:
            images = f[key]
            labels = f[lkey] if lkey in f else np.zeros(len(images), np.int32)
        except ValueError as e:
            if "pickle" not in str(e):
                raise
            raise ValueError(f"{path}: its arrays hold Python objects, not numbers; expected {expected}") from e
    if images.ndim not in (3, 4) or len(images) == 0:
        raise ValueError(f"{path}: '{key}' has shape {images.shape}; expected (N, H, W[, C]) with N >= 1")
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{path}: '{lkey}' has shape {labels.shape} and dtype {labels.dtype}; expected {len(images)} "
            "integer labels, one per image"
        )
    labels = labels.astype(np.int32)
    if images.ndim == 3:
        images = images[..., None]
    images = _to_unit_float(images, path)
    size = int(config.data.image_size)
    if images.shape[1:3] != (size, size):
        raise ValueError(f"{path}: images are {images.shape[1]}x{images.shape[2]}; config.data.image_size={size}")
    return _match_channels(images, int(config.data.num_channels)), labels


def _load_folder(config, path):
    from PIL import Image  # noqa: PLC0415  (Pillow only for image files)

    if not os.path.isdir(path):
        raise FileNotFoundError(f"config.data.path={path!r} is not a directory of images")
    exts = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
    files = []
    for root, _, names in sorted(os.walk(path)):
        files += [os.path.join(root, n) for n in sorted(names) if n.lower().endswith(exts)]
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(exts)}) found under {path!r}")
    classes = sorted({os.path.relpath(os.path.dirname(f), path) for f in files})
    size, channels = int(config.data.image_size), int(config.data.num_channels)
    images, labels = [], []
    for f in files:
        try:
            im = Image.open(f).convert("RGB" if channels == 3 else "L")
        except (OSError, ValueError) as e:  # PIL.UnidentifiedImageError is an OSError
            raise ValueError(f"cannot read image {f!r} ({type(e).__name__}: {e}); remove or replace it") from e
        w, h = im.size
        c = min(w, h)
        im = im.crop(((w - c) // 2, (h - c) // 2, (w + c) // 2, (h + c) // 2)).resize((size, size), Image.BICUBIC)
        a = np.asarray(im, np.uint8)
        images.append(a[..., None] if a.ndim == 2 else a)
        labels.append(classes.index(os.path.relpath(os.path.dirname(f), path)))
    return np.stack(images).astype(np.float32) / 255.0, np.asarray(labels, np.int32)


def _array_batches(
    images, labels, *, batch_size, shuffle, repeat, start_step, seed, dequant, flip, scaler, tokens=None
):
    """Global batch ``s`` = positions ``[s B, (s + 1) B)`` of the concatenated per-epoch permutations.

    ``tokens`` (one row per image, or None) are batched alongside as ``"caption"``.
    """
    n = len(images)
    if n < batch_size and not repeat:
        raise ValueError(f"the split has {n} examples, fewer than one batch of {batch_size}")
    sl = _process_slice(batch_size)
    perms: dict[int, np.ndarray] = {}

    def order(epoch):
        if not shuffle:
            return np.arange(n)
        if epoch not in perms:
            perms.clear()
            perms[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
        return perms[epoch]

    step = start_step
    steps_per_pass = n // batch_size
    while repeat or step < steps_per_pass:
        pos = np.arange(step * batch_size, (step + 1) * batch_size)[sl]
        epochs = pos // n
        idx = np.concatenate([order(e)[pos[epochs == e] % n] for e in np.unique(epochs)])
        x = images[idx]
        rng = np.random.default_rng([seed, 1, step])
        if flip:
            do = rng.random(batch_size)[sl] < 0.5
            x = np.where(do[:, None, None, None], x[:, :, ::-1], x)
        if dequant:
            u = rng.random((batch_size,) + x.shape[1:], dtype=np.float32)[sl]
            x = (u + x * 255.0) / 256.0
        batch = {"image": np.asarray(scaler(x), np.float32), "label": labels[idx]}
        if tokens is not None:
            batch["caption"] = tokens[idx]
        yield batch
        step += 1
