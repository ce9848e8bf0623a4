"""Weights of the FID Inception: conversion from pytorch-fid's state dict, local files, download once.

Search order (explicit path, ``SCORESDE_INCEPTION_WEIGHTS``, the cache, a checked download; never a silent
fallback to other features) and accepted formats (``.pth``, ``.npz``, ``.msgpack``): ``docs/metrics.md``.

Offline, place a local copy of pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` in the cache (converted,
so evaluation needs no torch) with::

    python -m scoresde.metrics.weights --convert=/path/to/pt_inception-2015-12-05-6726825d.pth

or convert it anywhere (``python -m scoresde.metrics.weights IN.pth OUT.npz``) and point
``config.eval.inception_weights`` or ``$SCORESDE_INCEPTION_WEIGHTS`` at the result.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import tempfile
import urllib.request
from collections.abc import Mapping

import numpy as np

FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
)
FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
# the file name carries its first 8 hex digits (the torch.hub convention)
FID_WEIGHTS_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
CONVERTED_FILENAME = "inception_fid.npz"
ENV_WEIGHTS = "SCORESDE_INCEPTION_WEIGHTS"
ENV_CACHE = "SCORESDE_CACHE_DIR"
ENV_OFFLINE = "SCORESDE_OFFLINE"


class InceptionWeightsError(FileNotFoundError):
    """The FID Inception weights are not available (or not the right ones)."""


# --------------------------------------------------------------------------- layout


def _abstract_model():
    from flax import nnx  # noqa: PLC0415  (flax only once a model is built: this module's file handling is numpy-only)

    from scoresde.metrics.inception import InceptionV3FID  # noqa: PLC0415  (needs flax, as above)

    return nnx.eval_shape(lambda: InceptionV3FID(rngs=nnx.Rngs(0)))


def expected_param_shapes() -> dict[str, tuple[int, ...]]:
    """Flat ``"a/b/leaf" -> shape`` of our Inception parameters (and batch-norm statistics)."""
    return dict(_expected_shapes())


@functools.lru_cache(maxsize=1)
def _expected_shapes():
    from flax import nnx  # noqa: PLC0415  (flax only once a model is built)

    pure = nnx.to_pure_dict(nnx.state(_abstract_model()))
    return tuple((k, tuple(v.shape)) for k, v in flatten(pure).items())


def flatten(tree: Mapping, prefix: str = "") -> dict:
    """Nested dict → flat dict with ``/``-joined keys."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def unflatten(flat: Mapping) -> dict:
    """Flat dict with ``/``-joined keys → nested dict."""
    out: dict = {}
    for key, v in flat.items():
        node = out
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out


# Leaf renames between the PyTorch state dict and our parameters: (torch suffix, ours, transpose).
_CONV = (".conv.weight", "/conv/kernel", (2, 3, 1, 0))  # OIHW -> HWIO
_LEAVES = [
    _CONV,
    (".bn.weight", "/bn/scale", None),
    (".bn.bias", "/bn/bias", None),
    (".bn.running_mean", "/bn/mean", None),
    (".bn.running_var", "/bn/var", None),
]
_FC = {"fc.weight": ("fc/kernel", (1, 0)), "fc.bias": ("fc/bias", None)}


def _torch_to_ours_key(key: str):
    if key in _FC:
        return _FC[key]
    for suffix, ours, perm in _LEAVES:
        if key.endswith(suffix):
            return key[: -len(suffix)].replace(".", "/") + ours, perm
    return None, None


def torch_state_dict_to_params(state_dict: Mapping[str, np.ndarray]) -> dict:
    """Converts pytorch-fid's FID Inception state dict to our nested parameter dict.

    Args:
        state_dict: name → array (numpy, or anything ``np.asarray`` takes, e.g. CPU torch tensors) in
            the layout of ``pytorch_fid.inception.fid_inception_v3()``. ``num_batches_tracked`` buffers
            are ignored.

    Returns:
        Nested dict of float32 numpy arrays, the pure-dict form of :class:`InceptionV3FID`'s state.

    Raises:
        ValueError: on unknown, missing or mis-shaped entries (the message lists them).
    """
    expected = expected_param_shapes()
    flat, unknown, bad_shape, bad_keys = {}, [], [], set()
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        ours, perm = _torch_to_ours_key(key)
        if ours is None or ours not in expected:
            unknown.append(key)
            continue
        arr = np.asarray(value, dtype=np.float32)
        if perm is not None:
            if arr.ndim != len(perm):
                bad_shape.append(f"{key}: {arr.shape}")
                bad_keys.add(ours)
                continue
            arr = arr.transpose(perm)
        if arr.shape != expected[ours]:
            bad_shape.append(f"{key}: {arr.shape} (as {ours}: expected {expected[ours]})")
            bad_keys.add(ours)
            continue
        flat[ours] = np.ascontiguousarray(arr)
    missing = sorted(set(expected) - set(flat) - bad_keys)
    if unknown or missing or bad_shape:
        raise ValueError(
            "state dict does not match the FID Inception-v3 layout of pytorch-fid: "
            f"unknown keys {unknown[:8]}{'...' if len(unknown) > 8 else ''}; "
            f"missing (ours) {missing[:8]}{'...' if len(missing) > 8 else ''}; "
            f"bad shapes {bad_shape[:8]}"
        )
    return unflatten(flat)


def params_to_torch_state_dict(params: Mapping) -> dict[str, np.ndarray]:
    """Inverse of :func:`torch_state_dict_to_params` (without ``num_batches_tracked``)."""
    out = {}
    inverse_fc = {ours: (key, perm) for key, (ours, perm) in _FC.items()}
    for ours, value in flatten(params).items():
        arr = np.asarray(value)
        if ours in inverse_fc:
            key, perm = inverse_fc[ours]
        else:
            for suffix, ours_suffix, perm in _LEAVES:  # noqa: B007  (perm is read after the break)
                if ours.endswith(ours_suffix):
                    key = ours[: -len(ours_suffix)].replace("/", ".") + suffix
                    break
            else:
                raise ValueError(f"unknown parameter {ours!r}; expected conv/bn/fc leaves of the FID Inception")
        if perm is not None:
            arr = arr.transpose(np.argsort(perm))
        out[key] = np.ascontiguousarray(arr)
    return out


# --------------------------------------------------------------------------- files


def save_params(path: str, params: Mapping) -> None:
    """Writes parameters as ``.npz`` (flat keys) or ``.msgpack`` (flax serialisation), by extension."""
    if path.endswith(".npz"):
        np.savez(path, **{k: np.asarray(v) for k, v in flatten(params).items()})
    elif path.endswith(".msgpack"):
        from flax import serialization  # noqa: PLC0415  (flax only for this format)

        with open(path, "wb") as f:
            f.write(serialization.msgpack_serialize(unflatten({k: np.asarray(v) for k, v in flatten(params).items()})))
    else:
        raise ValueError(f"unknown weights format {path!r}; expected a .npz or .msgpack path")


def load_params(path: str) -> dict:
    """Reads FID Inception parameters from ``.pth`` (pytorch-fid), ``.npz`` or ``.msgpack`` (ours).

    Our own formats are checked against the expected layout too, so a wrong file fails here, loudly.
    """
    if path.endswith((".pth", ".pt")):
        try:
            import torch  # noqa: PLC0415  (optional: only to read the original .pth)
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise InceptionWeightsError(
                f"reading {path!r} needs torch (pip install torch), or convert it once elsewhere with "
                f"`python -m scoresde.metrics.weights {os.path.basename(path)} {CONVERTED_FILENAME}`"
            ) from e
        sd = torch.load(path, map_location="cpu", weights_only=True)
        return torch_state_dict_to_params({k: v.numpy() for k, v in sd.items()})
    if path.endswith(".npz"):
        with np.load(path) as f:
            flat = {k: f[k] for k in f.files}
    elif path.endswith(".msgpack"):
        from flax import serialization  # noqa: PLC0415  (flax only for this format)

        with open(path, "rb") as f:
            flat = flatten(serialization.msgpack_restore(f.read()))
    else:
        raise ValueError(f"unknown weights format {path!r}; expected .pth, .npz or .msgpack")
    expected = expected_param_shapes()
    got = {k: tuple(np.shape(v)) for k, v in flat.items()}
    if got != expected:
        diff = sorted(set(got.items()) ^ set(expected.items()))[:8]
        raise ValueError(f"{path!r} is not FID Inception parameters; differing (key, shape): {diff}")
    return unflatten({k: np.asarray(v, np.float32) for k, v in flat.items()})


def cache_dir() -> str:
    """Directory of cached weights (``docs/metrics.md``, "The weights")."""
    if os.environ.get(ENV_CACHE):
        return os.environ[ENV_CACHE]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "scoresde")


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _how_to_provide(reason: str) -> str:
    """One line: why the weights are missing and the ways to place them (no other extractor is substituted)."""
    return (
        f"FID Inception weights not available: {reason}; place a local copy of pytorch-fid's "
        f"{FID_WEIGHTS_FILENAME} (sha256 {FID_WEIGHTS_SHA256[:8]}..., from {FID_WEIGHTS_URL}) with "
        f"`python -m scoresde.metrics.weights --convert=PATH_TO/{FID_WEIGHTS_FILENAME}`, or set "
        f"config.eval.inception_weights or ${ENV_WEIGHTS} to a .pth / .npz file"
    )


def offline() -> bool:
    """Whether ``$SCORESDE_OFFLINE`` forbids downloading."""
    return os.environ.get(ENV_OFFLINE, "").lower() in ("1", "true", "yes")


def local_weights_path(path: str | None = None) -> str | None:
    """The weights file found without downloading (given path, ``$SCORESDE_INCEPTION_WEIGHTS``, the cache),
    or ``None``."""
    for candidate in (path, os.environ.get(ENV_WEIGHTS)):
        if candidate:
            return candidate if os.path.isfile(candidate) else None
    for name in (CONVERTED_FILENAME, FID_WEIGHTS_FILENAME):
        cached = os.path.join(cache_dir(), name)
        if os.path.isfile(cached):
            return cached
    return None


def download_weights(
    dest_dir: str | None = None, *, url: str = FID_WEIGHTS_URL, sha256: str = FID_WEIGHTS_SHA256, timeout: float = 60.0
) -> str:
    """Downloads the pytorch-fid ``.pth`` once, checks its SHA-256 and moves it into the cache atomically.

    Raises:
        InceptionWeightsError: when the download fails (offline) or the checksum does not match.
    """
    dest_dir = dest_dir or cache_dir()
    os.makedirs(dest_dir, exist_ok=True)
    dest = os.path.join(dest_dir, FID_WEIGHTS_FILENAME)
    fd, tmp = tempfile.mkstemp(dir=dest_dir, suffix=".part")
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                h.update(chunk)
                out.write(chunk)
        if h.hexdigest() != sha256:
            raise InceptionWeightsError(
                f"checksum mismatch for {url}: got sha256 {h.hexdigest()}, expected {sha256}; the file was not cached"
            )
        os.replace(tmp, dest)
    except OSError as e:  # URLError, timeouts and socket errors are OSErrors
        if isinstance(e, InceptionWeightsError):
            raise
        raise InceptionWeightsError(
            _how_to_provide(
                f"none given, none in {dest_dir}, and downloading it from pytorch-fid's release failed ({e})"
            )
        ) from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest


def resolve_weights_path(path: str | None = None, *, download: bool | None = None) -> str:
    """Finds the weights file, in the search order of ``docs/metrics.md``.

    Args:
        path: an explicit file (e.g. ``config.eval.inception_weights``); must exist when given.
        download: allow the download; None means "unless ``SCORESDE_OFFLINE`` is set".

    Returns:
        The path of an existing ``.npz`` or ``.pth`` weights file.

    Raises:
        InceptionWeightsError: with instructions, when no file is found and none can be downloaded.
    """
    for source, candidate in (("the given path", path), (f"${ENV_WEIGHTS}", os.environ.get(ENV_WEIGHTS))):
        if candidate:
            if not os.path.isfile(candidate):
                raise InceptionWeightsError(_how_to_provide(f"{source} {candidate!r} is not a file"))
            return candidate
    for name in (CONVERTED_FILENAME, FID_WEIGHTS_FILENAME):
        cached = os.path.join(cache_dir(), name)
        if os.path.isfile(cached):
            return cached
    if download is None:
        download = not offline()
    if not download:
        why = f"${ENV_OFFLINE} is set" if offline() else "downloading is off"
        raise InceptionWeightsError(_how_to_provide(f"none given, none in {cache_dir()}, and {why}"))
    return download_weights()


def build_inception(params: Mapping, *, resize_method: str = "pytorch_fid"):
    """An :class:`InceptionV3FID` holding ``params`` (built abstractly: no random initialisation cost)."""
    import jax.numpy as jnp  # noqa: PLC0415  (jax/flax only once a model is built)
    from flax import nnx  # noqa: PLC0415  (as above)

    from scoresde.metrics.inception import InceptionV3FID  # noqa: PLC0415  (as above)

    abstract = nnx.eval_shape(lambda: InceptionV3FID(resize_method=resize_method, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    nnx.replace_by_pure_dict(state, unflatten({k: jnp.asarray(v) for k, v in flatten(params).items()}))
    return nnx.merge(graphdef, state)


def load_inception(path: str | None = None, *, download: bool | None = None, resize_method: str = "pytorch_fid"):
    """The FID Inception with its real weights (see :func:`resolve_weights_path`)."""
    return build_inception(load_params(resolve_weights_path(path, download=download)), resize_method=resize_method)


def convert_into_cache(src: str) -> str:
    """Converts a local copy of pytorch-fid's weights into the cache, where every FID run finds it.

    Raises:
        InceptionWeightsError: ``src`` is not a file, or not the pytorch-fid release (its SHA-256 differs).
    """
    if not os.path.isfile(src):
        raise InceptionWeightsError(f"no file {src!r}; expected a local copy of pytorch-fid's {FID_WEIGHTS_FILENAME}")
    if src.endswith((".pth", ".pt")) and sha256_of(src) != FID_WEIGHTS_SHA256:
        raise InceptionWeightsError(
            f"{src} has sha256 {sha256_of(src)}, not the pytorch-fid release's "
            f"{FID_WEIGHTS_SHA256}; FID needs exactly those weights"
        )
    os.makedirs(cache_dir(), exist_ok=True)
    dst = os.path.join(cache_dir(), CONVERTED_FILENAME)
    save_params(dst, load_params(src))
    return dst


_USAGE = f"""usage: python -m scoresde.metrics.weights --convert=PATH_TO/{FID_WEIGHTS_FILENAME}
       python -m scoresde.metrics.weights IN.pth OUT.(npz|msgpack)

The FID Inception weights are pytorch-fid's {FID_WEIGHTS_FILENAME}
(sha256 {FID_WEIGHTS_SHA256}, {FID_WEIGHTS_URL}).
--convert reads a local copy (needs torch) and writes {CONVERTED_FILENAME} into the cache ({cache_dir()};
${ENV_CACHE} moves it), where every FID run finds it without torch or a network. The second form converts to
any file; set config.eval.inception_weights or ${ENV_WEIGHTS} to it."""


def main(argv=None) -> int:
    """``python -m scoresde.metrics.weights --convert=IN.pth`` (into the cache) or ``IN.pth OUT.(npz|msgpack)``."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].startswith("--convert="):
        try:
            dst = convert_into_cache(argv[0].split("=", 1)[1])
        except (InceptionWeightsError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"wrote {dst}; --mode=fid and --mode=fid_stats find it there")
        return 0
    if len(argv) != 2 or any(a.startswith("-") for a in argv):
        print(_USAGE, file=sys.stderr)
        return 0 if argv in (["--help"], ["-h"]) else 2
    src, dst = argv
    if src.endswith((".pth", ".pt")) and sha256_of(src) != FID_WEIGHTS_SHA256:
        print(
            f"warning: {src} has sha256 {sha256_of(src)}, not the pytorch-fid release's {FID_WEIGHTS_SHA256}",
            file=sys.stderr,
        )
    save_params(dst, load_params(src))
    print(f"wrote {dst}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
