"""Throughput of the tfds CIFAR-10 input pipeline alone (no network), on tfds mock data of CIFAR-10's shape.

    python benchmarks/input_pipeline.py [--batch 128] [--batches 200] [--examples 5000] [--device]

Prints one JSON line: ``img_per_s`` of :func:`scoresde.data.get_dataset` (the training configuration:
shuffle, random flip, repeat, scaling to [0, 1]) with ``tfds.testing.mock_data`` standing in for the
prepared dataset (random uint8 32x32x3 images, so the decode/resize/flip/batch work is the real one).
``--device`` also moves each batch onto the device with :func:`scoresde.parallel.prefetch_to_device`.
By default the mock examples are cached in memory first (see ``--mock_source``). The training goal is 4,500 img/s (BENCHMARKS.md), so the pipeline should sustain >= 9,000 img/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time


def _serve_mock_from_memory(tfds):
    """Makes the (mocked) ``as_dataset`` return its examples from an in-memory cache filled up front.

    tfds's mock examples come from a Python generator that is itself slower than the pipeline; a
    prepared dataset is read from TFRecord files at far higher rates. Caching the mock examples in
    memory times the pipeline alone.
    """
    mocked = tfds.core.DatasetBuilder.as_dataset

    def as_dataset(self, *a, **kw):
        ds = mocked(self, *a, **kw).cache()
        for _ in ds.batch(1024):  # one full pass fills the cache
            pass
        return ds

    tfds.core.DatasetBuilder.as_dataset = as_dataset
    return mocked


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=200, help="timed batches (after 20 warm-up ones)")
    parser.add_argument("--examples", type=int, default=5000, help="mock dataset size")
    parser.add_argument("--device", action="store_true", help="also prefetch every batch to the device")
    parser.add_argument(
        "--mock_source",
        action="store_true",
        help="read tfds's mock generator directly (a Python generator, ~5k img/s on one core) "
        "instead of its examples cached in memory",
    )
    args = parser.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import jax  # noqa: PLC0415
    import ml_collections  # noqa: PLC0415
    import tensorflow_datasets as tfds  # noqa: PLC0415

    from scoresde import data, parallel  # noqa: PLC0415

    config = ml_collections.ConfigDict(
        {
            "seed": 0,
            "training": {"batch_size": args.batch},
            "data": {
                "dataset": "CIFAR10",
                "image_size": 32,
                "num_channels": 3,
                "centered": False,
                "random_flip": True,
                "uniform_dequantization": False,
                "download": True,
            },
        }
    )
    with tfds.testing.mock_data(num_examples=args.examples):
        mocked = None if args.mock_source else _serve_mock_from_memory(tfds)
        it = data.get_dataset(config, split="train")
        if args.device:
            it = parallel.prefetch_to_device(it, parallel.make_mesh())
        for _ in range(20):
            jax.block_until_ready(next(it)["image"])
        t0 = time.perf_counter()
        for _ in range(args.batches):
            jax.block_until_ready(next(it)["image"])
        dt = time.perf_counter() - t0
        if mocked is not None:
            tfds.core.DatasetBuilder.as_dataset = mocked
    print(
        json.dumps(
            {
                "what": "input_pipeline_cifar10_mock",
                "batch": args.batch,
                "batches": args.batches,
                "to_device": bool(args.device),
                "source": "mock_generator" if args.mock_source else "mock_in_memory",
                "img_per_s": round(args.batch * args.batches / dt, 1),
                "cpus": os.cpu_count(),
                "machine": platform.processor() or platform.machine(),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
