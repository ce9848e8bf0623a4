"""The persistent compilation cache: enabled in a chosen / env-var directory, disabled by 'off', and a
second process reuses what the first one wrote instead of compiling."""

import os
import subprocess
import sys

import pytest

from scoresde import compilation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = """
import jax, jax.numpy as jnp
from scoresde.compilation import enable_compilation_cache
print("DIR", enable_compilation_cache(min_compile_time_s=0))
f = jax.jit(lambda x: jnp.sin(x) @ jnp.cos(x).T + 3.0)
f(jnp.ones((16, 16))).block_until_ready()
"""


def _child(env_value, xdg):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", compilation.ENV_VAR)}
    env.update(PYTHONPATH=REPO, XDG_CACHE_HOME=xdg)
    if env_value is not None:
        env[compilation.ENV_VAR] = env_value
    proc = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.split("DIR ", 1)[1].split()[0]


def _entries(path):
    return sorted(f for f in os.listdir(path) if not f.startswith("."))


def test_cache_dir_from_env_is_written_then_reused(tmp_path):
    cache = tmp_path / "jaxcache"
    assert _child(str(cache), str(tmp_path / "xdg")) == str(cache)
    first = _entries(cache)
    assert first  # the jitted program was written
    mtimes = {f: os.path.getmtime(cache / f) for f in first}
    _child(str(cache), str(tmp_path / "xdg"))
    assert _entries(cache) == first  # a second process hit the cache: nothing new compiled or written
    assert all(os.path.getmtime(cache / f) == m for f, m in mtimes.items() if not f.endswith("-atime"))


def test_default_dir_is_under_the_user_cache_dir(tmp_path):
    assert _child(None, str(tmp_path / "xdg")) == str(tmp_path / "xdg" / "scoresde" / "jax")
    assert _entries(tmp_path / "xdg" / "scoresde" / "jax")


@pytest.mark.parametrize("value", ["", "off"])
def test_empty_or_off_disables_the_cache(tmp_path, value):
    assert _child(value, str(tmp_path / "xdg")) == "None"
    assert not (tmp_path / "xdg").exists()
