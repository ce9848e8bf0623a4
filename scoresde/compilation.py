"""JAX's persistent compilation cache, on by default so that a restarted run does not recompile.

The edge (``main.py``) calls :func:`enable_compilation_cache` once, before the first ``jit``.
"""

from __future__ import annotations

import os

import jax

ENV_VAR = "SCORESDE_COMPILATION_CACHE"
_OFF = ("", "off", "none", "0", "false")


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/scoresde/jax`` (``~/.cache/scoresde/jax`` when ``XDG_CACHE_HOME`` is unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "scoresde", "jax")


def enable_compilation_cache(path: str | None = None, *, min_compile_time_s: float = 1.0) -> str | None:
    """Points JAX's persistent compilation cache at a directory and returns it (``None`` if disabled).

    Args:
        path: the cache directory. ``None``: the environment variable ``SCORESDE_COMPILATION_CACHE`` if
            set (empty or ``off`` disables the cache), else :func:`default_cache_dir`.
        min_compile_time_s: programs that compile faster than this are not written (JAX's
            ``jax_persistent_cache_min_compile_time_secs``); 0 caches everything.

    Returns:
        The absolute cache directory, or ``None`` when the cache was disabled.
    """
    if path is None:
        path = os.environ.get(ENV_VAR, default_cache_dir())
    if path.strip().lower() in _OFF:
        jax.config.update("jax_compilation_cache_dir", None)
        return None
    path = os.path.abspath(os.path.expanduser(path))
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
