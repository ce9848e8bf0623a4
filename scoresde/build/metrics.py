"""Sample-quality evaluation from ``config.eval``: the FID feature extractor, the reference-statistics path and
the settings of the FID / IS / KID and reference-statistics runs.
"""

from __future__ import annotations

import dataclasses
import os


def get_feature_fn(config):
    """The feature extractor ``config.eval.feature_extractor`` names (default and only one: ``inception``)."""
    from scoresde.metrics.features import inception_feature_fn  # noqa: PLC0415  (jax model only when used)

    name = str(config.eval.feature_extractor).lower()
    factories = {
        "inception": lambda: inception_feature_fn(
            config.eval.inception_weights or None, batch_size=int(config.eval.inception_batch_size)
        )
    }
    if name not in factories:
        raise ValueError(f"unknown config.eval.feature_extractor {name!r}; expected one of: {', '.join(factories)}")
    return factories[name]()


def inception_weights_found(config) -> bool:
    """Whether the FID Inception weights are on this machine (no download): what ``--mode=fid`` needs first."""
    from scoresde.metrics.weights import local_weights_path  # noqa: PLC0415  (numpy-only file handling)

    return local_weights_path(config.eval.inception_weights or None) is not None


def reference_stats_path(config, workdir: str, split: str | None = None) -> str:
    """``config.eval.fid_stats_path`` if set, else ``workdir/fid_stats/<dataset>_<split>_<size>.npz``."""
    if config.eval.fid_stats_path:
        return config.eval.fid_stats_path
    split = split or config.eval.stats_split
    name = f"{str(config.data.dataset).lower()}_{split}_{int(config.data.image_size)}.npz"
    return os.path.join(workdir, "fid_stats", name)


def sample_batch_size(config) -> int:
    """Samples per sampler call: ``config.eval.sample_batch_size``, or ``config.eval.batch_size`` when it is 0."""
    return int(config.eval.sample_batch_size or config.eval.batch_size)


@dataclasses.dataclass(frozen=True)
class SampleQualitySettings:
    """What ``--mode=fid`` and ``--mode=fid_stats`` read from ``config.eval``."""

    num_samples: int
    sample_batch_size: int  # samples per sampler call (one resumable round)
    inception_batch_size: int  # images per compiled feature-extractor call
    is_splits: int
    kid_subsets: int
    kid_subset_size: int
    stats_split: str  # the split of the reference statistics
    stats_max_features: int  # reference features kept (for KID) up to this many examples


def sample_quality_settings(config) -> SampleQualitySettings:
    """The :class:`SampleQualitySettings` of ``config.eval``."""
    e = config.eval
    return SampleQualitySettings(
        num_samples=int(e.num_samples),
        sample_batch_size=sample_batch_size(config),
        inception_batch_size=int(e.inception_batch_size),
        is_splits=int(e.is_splits),
        kid_subsets=int(e.kid_subsets),
        kid_subset_size=int(e.kid_subset_size),
        stats_split=str(e.stats_split),
        stats_max_features=int(e.stats_max_features),
    )
