"""``--mode=fid_stats``: FID reference statistics over a whole dataset split.

Every example of ``config.eval.stats_split`` (default ``train``), no dropped last batch, read as uint8
(:func:`scoresde.data.uint8_batches`), through the feature extractor of ``config.eval``
(:func:`scoresde.build.get_feature_fn`). See :mod:`scoresde.metrics.protocol` for why each choice.
"""

from __future__ import annotations

import json
import logging
import os

import jax

from scoresde import build, images, runlog
from scoresde import data as data_lib
from scoresde.metrics import protocol
from scoresde.metrics.features import FeatureFn, feature_name

__all__ = ["fid_stats"]

log = logging.getLogger(__name__)


def fid_stats(config, workdir: str, feature_fn: FeatureFn | None = None) -> dict:
    """Writes reference statistics to :func:`scoresde.build.reference_stats_path` and returns a summary.

    The ``.npz`` holds ``mu``, ``sigma``, ``num_examples``, ``feature_extractor``, ``dataset``, ``split``,
    ``image_size`` (``fid`` refuses statistics of another extractor, data set or size), and
    ``pool_3``/``logits`` when at most ``config.eval.stats_max_features`` examples were read.
    """
    config = build.with_defaults(config)
    s = build.sample_quality_settings(config)
    split = s.stats_split
    feature_fn = feature_fn or build.get_feature_fn(config)
    runlog.announce(
        f"scoresde fid_stats: reference statistics of {config.data.dataset} {split}",
        {
            "data": data_lib.describe(config, split),
            "to": os.path.abspath(build.reference_stats_path(config, workdir, split)),
        },
    )
    result = protocol.compute_reference_statistics(
        feature_fn, data_lib.uint8_batches(config, split, s.inception_batch_size), keep_max=s.stats_max_features
    )
    path = build.reference_stats_path(config, workdir, split)
    summary = {
        "path": path,
        "dataset": str(config.data.dataset),
        "split": split,
        "num_examples": int(result["num_examples"]),
        "feature_extractor": feature_name(feature_fn),
        "features_kept": "pool_3" in result,
    }
    if jax.process_index() == 0:
        images.save_npz_atomic(
            path,
            **result,
            feature_extractor=summary["feature_extractor"],
            dataset=summary["dataset"],
            split=split,
            image_size=int(config.data.image_size),
        )
    log.info("fid_stats: %s", summary)
    print(json.dumps(summary))
    runlog.conclude(
        f"reference statistics of {summary['num_examples']:,} {summary['dataset']} {split} images",
        results={"stats": os.path.abspath(path)},
        next_command=runlog.command("fid", workdir),
    )
    return summary
