"""The FID / IS / KID protocol: reference statistics (``--mode=fid_stats``) and the evaluation of samples.

What the protocol fixes, because each of these moves FID by more than the differences papers report:

* **Reference statistics** (:func:`fid_stats`) cover a *whole* split: every example, no dropped last
  batch, read as ``uint8`` (the stored pixels; no dequantisation, no flips). They are pool_3 mean and
  covariance, plus the features themselves when there are at most ``config.eval.stats_max_features``
  of them (KID needs them). CIFAR-10 in the paper: the 50,000 training images.
* **Samples**: ``config.eval.num_samples`` (50,000 in the paper; fewer gives a biased, larger FID and a
  loud warning), mapped to ``uint8`` by rounding ``x · 255`` (:func:`scoresde.metrics_log.to_uint8`).
* **Features**: the FID Inception (pytorch-fid's ``pt_inception-2015-12-05`` weights, which reproduce
  TF FID), images resized bilinearly to 299. No other extractor is ever substituted silently; other
  ``feature_fn`` s are explicit (tests use a tiny stand-in).
* **Every number carries its sampler and its NFE** in the JSON report and in the TensorBoard tag.

CLI: ``--mode=fid_stats`` runs :func:`fid_stats`, ``--mode=fid`` runs :func:`evaluate_samples`.

Samples come from ``workdir/samples/*.npz`` (the ``sample`` mode's files, key ``samples``, uint8
NHWC; optional keys ``nfe`` and ``sampler``) when they exist, else they are drawn here in rounds of
``config.eval.sample_batch_size`` with the EMA model, sharded over the ``('data',)`` mesh. Each round is
saved to ``workdir/eval_samples/step_<step>/round_<r>.npz`` before the next starts, so a killed
evaluation resumes at the first missing round.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import re
import sys
import zipfile
from collections.abc import Iterable

import numpy as np

from scoresde.metrics import stats
from scoresde.metrics.features import (  # noqa: F401  (re-exported: the protocol's public names)
    FeatureAccumulator,
    FeatureFn,
    feature_name,
    process_rows,
    accumulate_features,
    get_feature_fn,
    inception_feature_fn,
    to_uint8,
)

log = logging.getLogger(__name__)

PAPER_NUM_SAMPLES = 50_000


# --------------------------------------------------------------------------- reference statistics

def reference_stats_path(config, workdir: str, split: str | None = None) -> str:
    """``config.eval.fid_stats_path`` if set, else ``workdir/fid_stats/<dataset>_<split>_<size>.npz``."""
    explicit = config.eval.get("fid_stats_path", "")
    if explicit:
        return explicit
    split = split or config.eval.get("stats_split", "train")
    name = f"{str(config.data.dataset).lower()}_{split}_{int(config.data.image_size)}.npz"
    return os.path.join(workdir, "fid_stats", name)


def dataset_uint8_batches(config, split: str, batch_size: int = 500) -> Iterable[np.ndarray]:
    """This process's share of a whole dataset split as uint8 NHWC batches: all examples, no dequantisation.

    Uses the data module's loaders (the same preprocessing as training, including the reference's
    resizing) but not its training iterator, which drops the last incomplete batch.
    """
    from scoresde import data as data_lib

    name = data_lib.check_dataset_name(config)
    if not data_lib.is_image_data(config):
        raise ValueError(f"FID statistics need image data; dataset {config.data.dataset!r} is not images")
    if name in data_lib.TFDS_DATASETS:
        yield from _tfds_uint8_batches(config, name, split, batch_size)
        return
    images01, _ = data_lib._load_in_memory(config, name, split)  # noqa: SLF001 (the full split, in [0, 1])
    images = to_uint8(images01)[process_rows(len(images01))]
    for start in range(0, len(images), batch_size):
        yield images[start:start + batch_size]


def _tfds_uint8_batches(config, name, split, batch_size):
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from scoresde.datasets import tfds_data
    from scoresde.parallel import hide_accelerators_from_tensorflow

    hide_accelerators_from_tensorflow()
    tfds_name, train_split, eval_split, resize_op = tfds_data.tfds_spec(config, name)
    builder = tfds_data._builder(config, tfds_name)  # noqa: SLF001 (same availability checks as training)
    the_split = train_split if split == "train" else eval_split
    ds = builder.as_dataset(split=tfds.split_for_jax_process(the_split, drop_remainder=False), shuffle_files=False)
    channels = int(config.data.num_channels)

    def preprocess(d):
        img = resize_op(d["image"])
        if img.shape[-1] != channels:
            img = tf.image.rgb_to_grayscale(img) if channels == 1 else tf.image.grayscale_to_rgb(img)
        return img

    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size, drop_remainder=False)
    for images01 in tfds.as_numpy(ds):
        yield to_uint8(images01)


def compute_reference_statistics(feature_fn: FeatureFn, batches: Iterable[np.ndarray], *,
                                 keep_max: int | None = PAPER_NUM_SAMPLES) -> dict:
    """mu, sigma (and the features, if at most ``keep_max``) of uint8 image batches."""
    acc = accumulate_features(feature_fn, batches, keep_max=keep_max)
    mu, sigma = acc.statistics()
    out = {"mu": mu, "sigma": sigma, "num_examples": np.int64(acc.n)}
    if acc.pool is not None:
        out["pool_3"] = acc.pool
    if acc.logits is not None:
        out["logits"] = acc.logits
    return out


def fid_stats(config, workdir: str, feature_fn: FeatureFn | None = None) -> dict:
    """``--mode=fid_stats``: reference statistics over the whole ``config.eval.stats_split`` (default train).

    Writes an ``.npz`` (keys ``mu``, ``sigma``, ``num_examples``, ``feature_extractor``, ``dataset``,
    ``split``, and ``pool_3``/``logits`` when kept) to :func:`reference_stats_path` and returns a summary.
    """
    import jax

    split = config.eval.get("stats_split", "train")
    feature_fn = feature_fn or get_feature_fn(config)
    batch_size = int(config.eval.get("inception_batch_size", 250))
    result = compute_reference_statistics(feature_fn, dataset_uint8_batches(config, split, batch_size),
                                          keep_max=int(config.eval.get("stats_max_features", PAPER_NUM_SAMPLES)))
    path = reference_stats_path(config, workdir, split)
    summary = {"path": path, "dataset": str(config.data.dataset), "split": split,
               "num_examples": int(result["num_examples"]), "feature_extractor": feature_name(feature_fn),
               "features_kept": "pool_3" in result}
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = path + ".tmp.npz"
        np.savez(tmp, **result, feature_extractor=summary["feature_extractor"], dataset=summary["dataset"],
                 split=split)
        os.replace(tmp, path)
    log.info("fid_stats: %s", summary)
    print(json.dumps(summary))
    return summary


def load_reference_stats(path: str) -> dict:
    """Reads a :func:`fid_stats` file (or any ``.npz`` with ``mu``/``sigma``, or with ``pool_3`` features)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no reference statistics at {path!r}; compute them with --mode=fid_stats "
                                "(same config) or set config.eval.fid_stats_path to an existing .npz")
    with np.load(path) as f:
        d = {k: f[k] for k in f.files}
    if "mu" not in d:
        if "pool_3" not in d:
            raise ValueError(f"{path} has neither mu/sigma nor pool_3 features; keys {sorted(d)}")
        d["mu"], d["sigma"] = stats.feature_statistics(d["pool_3"])
        d["num_examples"] = np.int64(len(d["pool_3"]))
    return d


# --------------------------------------------------------------------------- samples

def _natural_key(path: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", os.path.basename(path))]


def load_sample_files(workdir: str) -> tuple[np.ndarray, dict] | None:
    """All ``workdir/samples/*.npz`` (key ``samples``, uint8 NHWC) in natural order, or None if there are none.

    Returns:
        ``(images, meta)``; ``meta`` holds ``nfe`` / ``sampler`` when the files carry them.
    """
    files = sorted(glob.glob(os.path.join(workdir, "samples", "*.npz")), key=_natural_key)
    if not files:
        return None
    images, nfes, samplers = [], set(), set()
    for path in files:
        with np.load(path, allow_pickle=False) as f:
            if "samples" not in f:
                raise ValueError(f"{path} has no 'samples' array; keys {sorted(f.files)}")
            x = f["samples"]
            if "nfe" in f:
                nfes.add(int(f["nfe"]))
            if "sampler" in f:
                samplers.add(str(f["sampler"]))
        if x.dtype != np.uint8 or x.ndim != 4:
            raise ValueError(f"{path}: 'samples' must be uint8 NHWC images; got {x.dtype} {x.shape}")
        images.append(x)
    meta = {"files": len(files)}
    if len(nfes) == 1:
        meta["nfe"] = nfes.pop()
    elif nfes:
        meta["nfe"] = sorted(nfes)
    if samplers:
        meta["sampler"] = samplers.pop() if len(samplers) == 1 else sorted(samplers)
    return np.concatenate(images), meta


def _model_sampler(config, workdir: str, batch: int):
    """``(sampler(key) -> (images in [0, 1] on host, nfe), step)`` with the EMA model of ``workdir``."""
    import jax
    from flax import nnx

    from scoresde import evaluate, parallel
    from scoresde.checkpointing import load_model
    from scoresde.train import make_sde

    mesh = parallel.make_mesh()
    parallel.check_batch_size(batch, mesh, "config.eval.sample_batch_size")
    model, step = load_model(workdir, config, ema=True)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params = parallel.replicate(mesh, params)
    fn = evaluate.make_sample_fn(config, make_sde(config), graphdef, rest, batch, mesh)

    def sampler(key):
        x, nfe = fn(params, key)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            x = multihost_utils.process_allgather(x, tiled=True)
        return np.asarray(x), int(nfe)

    return sampler, step


def sample_in_rounds(config, workdir: str, sampler, *, step: int | None = None) -> tuple[np.ndarray, dict]:
    """``config.eval.num_samples`` uint8 samples from ``sampler(key) -> (images in [0, 1], nfe)``, by round.

    Round ``r`` uses ``fold_in(fold_in(key(config.seed), 6), r)`` and is saved (process 0, atomically)
    to ``workdir/eval_samples/step_<step>/round_<r>.npz`` with its ``nfe``; existing rounds are loaded
    instead of resampled, so an interrupted evaluation resumes where it stopped.
    """
    import jax

    total = int(config.eval.num_samples)
    batch = int(config.eval.get("sample_batch_size", 0) or config.eval.batch_size)
    rounds = int(math.ceil(total / batch))
    out_dir = os.path.join(workdir, "eval_samples", f"step_{step if step is not None else 'none'}")
    os.makedirs(out_dir, exist_ok=True)
    root = jax.random.fold_in(jax.random.key(int(config.get("seed", 0))), 6)
    images, nfes, resumed = [], [], 0
    for r in range(rounds):
        path = os.path.join(out_dir, f"round_{r:05d}.npz")
        x = None
        if os.path.exists(path):
            try:
                with np.load(path) as f:
                    x, nfe = f["samples"], int(f["nfe"])
                resumed += 1
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:  # cut short by a kill
                log.warning("round %d: unreadable %s (%s); sampling it again", r, path, e)
                x = None
        if x is None:
            x01, nfe = sampler(jax.random.fold_in(root, r))
            x = to_uint8(x01)
            if jax.process_index() == 0:
                tmp = path + ".tmp.npz"
                np.savez(tmp, samples=x, nfe=np.int64(nfe))
                os.replace(tmp, path)
        images.append(x)
        nfes.append(nfe)
    samples = np.concatenate(images)[:total]
    meta = {"rounds": rounds, "resumed_rounds": resumed, "dir": out_dir,
            "nfe": nfes[0] if len(set(nfes)) == 1 else sorted(set(nfes))}
    return samples, meta


def sampler_description(config) -> dict:
    """The sampler settings reported with every number (``config.sampling`` as a plain dict)."""
    desc = {}
    for k, v in config.sampling.items():
        desc[k] = list(v) if isinstance(v, tuple) else v
    return desc


def _loud_warning(message: str) -> None:
    banner = "!" * 100
    log.warning("\n%s\n%s\n%s", banner, message, banner)
    print(f"{banner}\nWARNING: {message}\n{banner}", file=sys.stderr)


def compute_metrics(sample_acc: FeatureAccumulator, ref: dict, *, is_splits: int = 10, kid_subsets: int = 100,
                    kid_subset_size: int = 1000) -> dict:
    """FID, IS and KID of sample features against reference statistics (KID only if the reference kept features)."""
    mu, sigma = sample_acc.statistics()
    out = {"fid": stats.frechet_distance(mu, sigma, ref["mu"], ref["sigma"])}
    logits = sample_acc.logits
    if logits is not None:
        out["inception_score"], out["inception_score_std"] = stats.inception_score(
            logits, splits=min(is_splits, len(logits)), return_std=True)
    if "pool_3" in ref and sample_acc.pool is not None:
        out["kid"], out["kid_std"] = stats.kernel_distance(sample_acc.pool, ref["pool_3"], num_subsets=kid_subsets,
                                                           subset_size=kid_subset_size, return_std=True)
    return out


def evaluate_samples(config, workdir: str, feature_fn: FeatureFn | None = None, *, sampler=None,
                     step: int | None = None) -> dict:
    """FID, Inception Score and KID of samples against the reference statistics; writes a JSON report.

    Args:
        config: run config (``config.eval``: ``num_samples``, ``sample_batch_size``, ``fid_stats_path`` /
            ``stats_split``, ``inception_weights``, ``kid_subsets``, ``kid_subset_size``;
            ``config.sampling``: the sampler reported with the numbers).
        workdir: run directory. Samples are read from ``workdir/samples/*.npz`` if present, else drawn
            by ``sampler`` (default: the EMA model of ``workdir``'s newest checkpoint) in resumable rounds.
        feature_fn: ``uint8 images -> (pool, logits)``; default :func:`get_feature_fn` (FID Inception).
        sampler: optional ``sampler(key) -> (images in [0, 1], nfe)`` used instead of the checkpoint.
        step: the checkpoint step to report when ``sampler`` is given.

    Returns:
        The report (also written to ``workdir/eval/metrics_<tag>.json`` and TensorBoard in ``workdir``).
    """
    import jax

    warnings = []
    from_files = sampler is None and load_sample_files(workdir)
    if from_files:
        samples, meta = from_files
        source = os.path.join(workdir, "samples")
        if len(samples) < int(config.eval.num_samples):
            warnings.append(f"{source} holds {len(samples)} samples, fewer than config.eval.num_samples="
                            f"{int(config.eval.num_samples)}; evaluating the {len(samples)} there")
    else:
        if sampler is None:
            batch = int(config.eval.get("sample_batch_size", 0) or config.eval.batch_size)
            sampler, step = _model_sampler(config, workdir, batch)
        samples, meta = sample_in_rounds(config, workdir, sampler, step=step)
        source = meta["dir"]
    n = len(samples)
    if n < PAPER_NUM_SAMPLES:
        warnings.append(f"FID/IS/KID from {n} samples, fewer than the {PAPER_NUM_SAMPLES:,} of the paper's protocol: "
                        "FID is biased upwards by roughly O(1/N) and NOT comparable to published numbers")
    nfe = meta.get("nfe")
    if nfe is None:
        warnings.append("the sample files carry no 'nfe'; the NFE of these numbers is unknown")
    sampler_info = meta.get("sampler") or sampler_description(config)
    sampler_source = "files" if meta.get("sampler") else ("config" if from_files else "this run")
    if from_files and not meta.get("sampler"):
        warnings.append("the sample files record no 'sampler'; reporting config.sampling, which must be the "
                        "sampler that wrote them")
    for w in warnings:
        _loud_warning(w)

    feature_fn = feature_fn or get_feature_fn(config)
    rows = process_rows(n)
    chunk = int(config.eval.get("inception_batch_size", 250))
    acc = accumulate_features(feature_fn, (samples[rows][i:i + chunk] for i in range(0, rows.stop - rows.start, chunk)))
    stats_path = reference_stats_path(config, workdir)
    ref = load_reference_stats(stats_path)
    values = compute_metrics(acc, ref, is_splits=int(config.eval.get("is_splits", 10)),
                             kid_subsets=int(config.eval.get("kid_subsets", 100)),
                             kid_subset_size=int(config.eval.get("kid_subset_size", 1000)))
    if "kid" not in values:
        warnings.append(f"no KID: {stats_path} keeps no pool_3 features (raise config.eval.stats_max_features "
                        "and rerun --mode=fid_stats)")
    context = {"sampler": sampler_info, "nfe": nfe, "num_samples": n, "step": step}
    report = {
        **values,
        **context,
        "sampler_source": sampler_source,
        "feature_extractor": feature_name(feature_fn),
        "reference_stats": stats_path,
        "reference_num_examples": int(ref.get("num_examples", -1)),
        "samples_source": source,
        "sampling": {k: v for k, v in meta.items() if k not in ("nfe", "sampler")},
        "metrics": [{"name": k, "value": v, **context} for k, v in values.items()],
        "warnings": warnings,
    }
    if jax.process_index() == 0:
        tag = f"step_{step}" if step is not None else "samples"
        out_dir = os.path.join(workdir, "eval")
        os.makedirs(out_dir, exist_ok=True)
        report["path"] = os.path.join(out_dir, f"metrics_{tag}.json")
        with open(report["path"], "w") as f:
            json.dump(report, f, indent=1, default=_json_default)
        _write_tensorboard(workdir, report)
    print(json.dumps({k: report[k] for k in ("fid", "inception_score", "kid", "nfe", "num_samples", "step")
                      if k in report}, default=_json_default))
    return report


def _json_default(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


def _sampler_tag(report) -> str:
    s = report["sampler"]
    method = s.get("method", "unknown") if isinstance(s, dict) else str(s)
    if isinstance(s, dict) and method == "pc":
        method = f"pc_{s.get('predictor', '')}_{s.get('corrector', '')}"
    return f"{method}_nfe{report['nfe']}".replace("/", "_").replace(" ", "")


def _write_tensorboard(workdir: str, report: dict) -> None:
    from tensorboardX import SummaryWriter

    writer = SummaryWriter(logdir=os.path.join(workdir, "eval"))
    tag = _sampler_tag(report)
    step = report["step"] or 0
    for entry in report["metrics"]:
        writer.add_scalar(f"{entry['name']}/{tag}", entry["value"], step)
    writer.add_text("eval/protocol", json.dumps({k: report[k] for k in ("sampler", "nfe", "num_samples",
                                                                        "feature_extractor", "reference_stats",
                                                                        "warnings")}, default=_json_default), step)
    writer.close()
