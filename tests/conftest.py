import os

# The tests are bound by XLA:CPU compile time (small shapes, a few steps each), so XLA's LLVM back end runs
# without optimisation (--xla_backend_optimization_level=0): the same programs and the same numbers to float
# rounding, about 40% less CPU for the suite. SCORESDE_TEST_XLA_OPT=full runs them at the production level.
# Set before JAX starts, and passed to the CLI subprocesses by cli_env().
TEST_XLA_FLAGS = "" if os.environ.get("SCORESDE_TEST_XLA_OPT", "") == "full" else "--xla_backend_optimization_level=0"
if TEST_XLA_FLAGS and TEST_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + TEST_XLA_FLAGS).strip()

# Tests that need several devices set this before JAX starts; keep the default single device here.
import jax  # noqa: E402

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


class BackendCompiles:
    """Counts XLA backend compilations of programs named ``fun_name`` (JAX's
    ``/jax/core/compile/backend_compile_duration`` event) in a block; one-off eager ops are not counted."""

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self, fun_name):
        self.fun_name = fun_name

    def __enter__(self):
        self.count = 0
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def _listen(self, event, duration, **kwargs):
        if event == self.EVENT and self.fun_name in str(kwargs.get("fun_name", "")):
            self.count += 1

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listen)


def cli_env(devices: int = 1) -> dict:
    """``os.environ`` for a subprocess: ``devices`` fake host devices (one: no inherited device count) and the tests'
    XLA flags."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    flags = TEST_XLA_FLAGS + (f" --xla_force_host_platform_device_count={devices}" if devices > 1 else "")
    if flags.strip():
        env["XLA_FLAGS"] = flags.strip()
    return env
