import os

# Tests that need several devices set this before JAX starts; keep the default single device here.
import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "fixtures")
