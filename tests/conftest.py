import os

# Tests that need several devices set this before JAX starts; keep the default single device here.
import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
FIXTURES = os.path.join(REPO, "..", "shared", "fixtures")


def config_module(name):
    """``configs/<name>.py`` as a module."""
    from scoresde import config_defaults

    return config_defaults.load_module(os.path.join(CONFIGS, f"{name}.py"))


def load_config(name, variant=None):
    """``configs/<name>.py[:variant]`` through the one config loader."""
    from scoresde import build

    return build.load_config(os.path.join(CONFIGS, f"{name}.py") + (f":{variant}" if variant else ""))
