"""The FID feature extractor and reference-statistics path from ``config.eval``.
"""

from __future__ import annotations

import os







def get_feature_fn(config):
    """The feature extractor ``config.eval.feature_extractor`` names (default and only one: ``inception``)."""
    from scoresde.metrics.features import inception_feature_fn  # noqa: PLC0415  (jax model only when used)

    name = str(config.eval.get("feature_extractor", "inception")).lower()
    factories = {"inception": lambda: inception_feature_fn(config.eval.get("inception_weights", "") or None,
                                                            batch_size=int(config.eval.get("inception_batch_size", 250)))}
    if name not in factories:
        raise ValueError(f"unknown config.eval.feature_extractor {name!r}; expected one of: {', '.join(factories)}")
    return factories[name]()


def reference_stats_path(config, workdir: str, split: str | None = None) -> str:
    """``config.eval.fid_stats_path`` if set, else ``workdir/fid_stats/<dataset>_<split>_<size>.npz``."""
    explicit = config.eval.get("fid_stats_path", "")
    if explicit:
        return explicit
    split = split or config.eval.get("stats_split", "train")
    name = f"{str(config.data.dataset).lower()}_{split}_{int(config.data.image_size)}.npz"
    return os.path.join(workdir, "fid_stats", name)
