"""Data parallelism with ``jax.jit`` over a one-axis ``('data',)`` mesh (no ``pmap``).

Parameters and optimiser state are replicated; the batch is split along its leading axis. Each
process reads only its own slice of the global batch and :func:`shard_batch` assembles the global
array with ``jax.make_array_from_process_local_data``. The same code runs on one CPU, on eight fake
CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=8``), on a GPU, and on several
hosts after :func:`initialize_distributed`.

Examples:
    >>> mesh = make_mesh()
    >>> x = shard_batch(mesh, {"image": np.zeros((8, 2), np.float32)})["image"]
"""

from __future__ import annotations

import collections
import itertools
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "initialize_distributed",
    "make_mesh",
    "data_sharding",
    "replicated_sharding",
    "shard_batch",
    "replicate",
    "check_batch_size",
    "local_batch_size",
    "to_host",
    "process_rows",
]

DATA_AXIS = "data"


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    cpu_collectives: str | None = None,
) -> None:
    """Calls ``jax.distributed.initialize`` (multi-host runs); a no-op when already initialised.

    With no arguments JAX auto-detects the cluster (SLURM, TPU pods, Kubernetes, ...). On CPU-only
    hosts ``cpu_collectives`` (``"gloo"``) selects the cross-process collectives implementation.
    """
    if cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    kwargs = {}
    if coordinator_address:
        kwargs["coordinator_address"] = coordinator_address
    if num_processes is not None:
        kwargs["num_processes"] = num_processes
    if process_id is not None:
        kwargs["process_id"] = process_id
    jax.distributed.initialize(**kwargs)


def make_mesh(devices=None) -> Mesh:
    """A 1-D ``('data',)`` mesh over all devices of all processes (or the given ones)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices).reshape(-1), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Split the leading (batch) axis across the mesh."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """Every device holds the full array."""
    return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh: Mesh | None = None, what: str = "batch_size") -> None:
    """Raises a clear ``ValueError`` unless the global batch splits evenly over devices and processes."""
    n_dev = mesh.size if mesh is not None else jax.device_count()
    if batch_size <= 0:
        raise ValueError(f"{what}={batch_size} must be a positive multiple of the number of devices ({n_dev})")
    if batch_size % n_dev:
        raise ValueError(
            f"{what}={batch_size} is not divisible by the number of devices ({n_dev}); "
            f"use a multiple of {n_dev} "
            f"(e.g. --config.training.batch_size={max(n_dev, batch_size // n_dev * n_dev or n_dev)})"
        )
    if batch_size % jax.process_count():
        raise ValueError(f"{what}={batch_size} is not divisible by the number of processes ({jax.process_count()})")


def local_batch_size(batch_size: int) -> int:
    """The slice of a global batch that this process reads."""
    return batch_size // jax.process_count()


def shard_batch(mesh: Mesh, local_batch):
    """Builds global batch-sharded ``jax.Array`` s from this process's numpy slice (a pytree)."""
    sharding = data_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def replicate(mesh: Mesh, tree):
    """Places a pytree of (host-identical) arrays replicated on every device of the mesh."""
    sharding = replicated_sharding(mesh)

    def put(x):
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        return jax.make_array_from_process_local_data(sharding, np.asarray(x))

    return jax.tree.map(put, tree)


def to_host(x) -> np.ndarray:
    """A global (possibly sharded, possibly multi-process) array as one numpy array on every host."""
    if jax.process_count() == 1:
        return np.asarray(x)
    from jax.experimental import multihost_utils  # noqa: PLC0415  (multi-host only)

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def process_rows(n: int) -> slice:
    """This process's contiguous share of ``n`` rows (uneven shares allowed: nothing is dropped)."""
    bounds = np.linspace(0, n, jax.process_count() + 1).round().astype(int)
    p = jax.process_index()
    return slice(bounds[p], bounds[p + 1])


def hide_accelerators_from_tensorflow() -> None:
    """Keeps TensorFlow (tf.data / tfds) off GPUs so it never competes with JAX for memory."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf  # noqa: PLC0415  (imported only when a tfds dataset is used)

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # already initialised; visible devices can no longer change
        pass


def prefetch_to_device(batches, mesh: Mesh, size: int = 2):
    """Yields :func:`shard_batch` of each host batch, with ``size`` batches already transferred ahead.

    ``jax.make_array_from_process_local_data`` starts an asynchronous host-to-device copy, so keeping
    ``size`` batches in flight overlaps the transfer (and the host pipeline's next ``next()``) with
    the step that consumes the current batch. Order and contents are those of ``batches``.

    Raises:
        ValueError: ``size < 1``.
    """
    if size < 1:
        raise ValueError(f"prefetch size must be >= 1; got {size}")
    it = iter(batches)
    queue = collections.deque(shard_batch(mesh, b) for b in itertools.islice(it, size))
    while queue:
        for b in itertools.islice(it, 1):
            queue.append(shard_batch(mesh, b))
        yield queue.popleft()
