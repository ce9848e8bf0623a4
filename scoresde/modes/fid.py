"""``--mode=fid``: FID / Inception Score / KID of a model's samples against reference statistics.

Samples come from ``workdir/samples/*.npz`` (the ``sample`` mode's files, key ``samples``, uint8 NHWC;
optional keys ``nfe`` and ``sampler``) when they exist, else they are drawn here in rounds of
``config.eval.sample_batch_size`` with the EMA model, sharded over the ``('data',)`` mesh. Each round is
saved to ``workdir/eval_samples/step_<step>/round_<r>.npz`` before the next starts, so a killed
evaluation resumes at the first missing round. The protocol's choices are in :mod:`scoresde.metrics.protocol`.

With ``config.eval.fid_seeds = k > 1`` the drawn evaluation is repeated with ``k`` sample seeds (``config.seed``,
``config.seed + 1``, ...; the rounds of seed ``s > config.seed`` in ``eval_samples/step_<step>_seed_<s>/``), each a
full set of ``config.eval.num_samples``: the report lists every seed's FID / IS / KID, the FID's mean ± std
(sample standard deviation) and minimum, and its headline values are those of the seed with the minimum FID (the
protocol of Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models", Sec. 5:
"the minimum of three evaluations").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import zipfile

import jax
import numpy as np

from scoresde import build, images, parallel, runlog
from scoresde.metrics import protocol
from scoresde.metrics.features import FeatureFn, accumulate_features, feature_name, to_uint8

__all__ = ["evaluate_samples", "sample_in_rounds"]

log = logging.getLogger(__name__)


def _model_sampler(config, workdir: str, batch: int):
    """``(sampler(key) -> (images in [0, 1] on host, nfe), step, params_hash)`` with the EMA model of ``workdir``."""
    mesh = parallel.make_mesh()
    parallel.check_batch_size(batch, mesh, "config.eval.sample_batch_size")
    graphdef, params, rest, step = build.load_ema(config, workdir, mesh, mode="fid")
    fn = build.make_sample_fn(config, build.make_sde(config), graphdef, rest, batch, mesh)

    def sampler(key):
        x, nfe = fn(params, key)
        return parallel.to_host(x), int(nfe)

    return sampler, step, build.params_digest(params)


_ROUND = re.compile(r"round_\d{5}\.npz")


def _settings_digest(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _start_rounds(out_dir: str, settings: dict) -> None:
    """Keeps the saved rounds of ``out_dir`` only if they were drawn with ``settings``; else starts afresh.

    Only this mode's round files are deleted (regular files named ``round_<r>.npz``, never through a symlink).
    """
    path = os.path.join(out_dir, "settings.json")
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        if saved == settings:
            return
        log.warning("%s holds rounds drawn with other settings (%s); sampling afresh", out_dir, saved)
        if jax.process_index() == 0:
            for name in os.listdir(out_dir):
                old = os.path.join(out_dir, name)
                if _ROUND.fullmatch(name) and (os.path.islink(old) or os.path.isfile(old)):
                    os.remove(old)
    if jax.process_index() == 0:
        images.save_json_atomic(path, settings)


def sample_in_rounds(
    config, workdir: str, sampler, *, step: int | None = None, params_hash: str | None = None, seed: int | None = None
) -> tuple[np.ndarray, dict]:
    """``config.eval.num_samples`` uint8 samples from ``sampler(key) -> (images in [0, 1], nfe)``, by round.

    Round ``r`` uses ``fold_in(purpose_key(key(seed), "fid"), r)`` (``seed`` defaults to ``config.seed``) and is
    saved (process 0, atomically) to ``workdir/eval_samples/step_<step>/round_<r>.npz`` (``step_<step>_seed_<seed>``
    for a seed other than ``config.seed``) with its ``nfe`` and the digest of the settings that
    drew it (step, parameter hash, config hash, batch, seed, sampler); existing rounds of the same settings are
    loaded instead of resampled, so an interrupted evaluation resumes where it stopped. One run writes the
    rounds of a step at a time (a lock); non-finite samples are an error.
    """
    s = build.sample_quality_settings(config)
    total, batch = s.num_samples, s.sample_batch_size
    rounds = int(math.ceil(total / batch))
    seed = int(config.seed) if seed is None else int(seed)
    eval_dir = os.path.join(workdir, "eval_samples")
    tag = f"step_{step if step is not None else 'none'}" + ("" if seed == int(config.seed) else f"_seed_{seed}")
    out_dir = os.path.join(eval_dir, tag)
    settings = {
        "checkpoint_step": step,
        "params_hash": params_hash,
        "config_hash": build.config_digest(config),
        "batch": batch,
        "seed": seed,
        "sampler": build.sampler_description(config),
    }
    settings = json.loads(json.dumps(settings, default=str))
    digest = _settings_digest(settings)
    is_main = jax.process_index() == 0
    if is_main:
        protocol.real_directory(eval_dir, "--mode=fid")
        protocol.real_directory(out_dir, "--mode=fid")
    lock = protocol.RequestLock(out_dir, what=f"the FID sample rounds in {out_dir}") if is_main else None
    with lock or contextlib.nullcontext():  # processes other than 0 write no files
        _start_rounds(out_dir, settings)
        root = build.purpose_key(jax.random.key(seed), "fid")
        chunks, nfes, resumed = [], [], 0
        for r in range(rounds):
            path = os.path.join(out_dir, f"round_{r:05d}.npz")
            x = None
            if os.path.isfile(path) and not os.path.islink(path):
                try:
                    with np.load(path) as f:
                        if "settings" in f and str(f["settings"]) == digest:
                            x, nfe = f["samples"], int(f["nfe"])
                            resumed += 1
                        else:
                            log.warning("round %d: %s was drawn with other settings; sampling it again", r, path)
                except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:  # cut short by a kill
                    log.warning("round %d: unreadable %s (%s); sampling it again", r, path, e)
                    x = None
            if x is None:
                x01, nfe = sampler(jax.random.fold_in(root, r))
                bad = int(np.size(x01) - np.count_nonzero(np.isfinite(x01)))
                if bad:
                    raise FloatingPointError(
                        f"round {r}: the sampler returned {bad} non-finite values of {np.size(x01)} (step {step}); "
                        f"no FID is computed from them. Check: {build.nonfinite_hint(config)}"
                    )
                x = to_uint8(x01)
                if is_main:
                    images.save_npz_atomic(path, samples=x, nfe=np.int64(nfe), settings=np.array(digest))
            chunks.append(x)
            nfes.append(nfe)
    samples = np.concatenate(chunks)[:total]
    meta = {
        "rounds": rounds,
        "resumed_rounds": resumed,
        "dir": out_dir,
        "nfe": nfes[0] if len(set(nfes)) == 1 else sorted(set(nfes)),
    }
    return samples, meta


def evaluate_samples(
    config, workdir: str, feature_fn: FeatureFn | None = None, *, sampler=None, step: int | None = None
) -> dict:
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
    config = build.with_defaults(config)
    s = build.sample_quality_settings(config)
    num_seeds = int(config.eval.fid_seeds)
    warnings = []
    # what can fail cheaply fails before any sampling: the feature extractor's weights, the reference stats
    feature_fn = feature_fn or build.get_feature_fn(config)
    stats_path = build.reference_stats_path(config, workdir)
    ref = protocol.load_reference_stats(stats_path)
    protocol.check_reference_stats(
        ref,
        stats_path,
        feature_extractor=feature_name(feature_fn),
        dataset=str(config.data.dataset),
        image_size=int(config.data.image_size),
    )
    from_files = sampler is None and protocol.load_sample_files(workdir)
    runlog.announce(
        "scoresde fid: FID / IS / KID",
        {
            "samples": (
                os.path.join(os.path.abspath(workdir), "samples")
                if from_files
                else f"{s.num_samples:,} drawn now by {build.sampler_description(config)}"
            ),
            "seeds": (
                f"{num_seeds} (seed {int(config.seed)} to {int(config.seed) + num_seeds - 1}; min, mean ± std)"
                if num_seeds > 1 and not from_files
                else None
            ),
            "reference": os.path.abspath(stats_path),
            "workdir": os.path.abspath(workdir),
        },
    )
    if from_files:
        samples, meta = from_files
        step = meta.get("step", step)
        source = os.path.join(workdir, "samples")
        if len(samples) < s.num_samples:
            warnings.append(
                f"{source} holds {len(samples)} samples, fewer than config.eval.num_samples="
                f"{s.num_samples}; evaluating the {len(samples)} there"
            )
        if num_seeds > 1:
            warnings.append(
                f"config.eval.fid_seeds={num_seeds} is not applied: the samples come from {source}, one set; "
                "remove them to draw one set per seed here"
            )
        sets = [(None, samples, meta)]
    else:
        params_hash = None
        if sampler is None:
            sampler, step, params_hash = _model_sampler(config, workdir, s.sample_batch_size)
        sets = []
        for k in range(num_seeds):  # one full set of samples per seed (Karras et al. 2022's protocol)
            seed = int(config.seed) + k
            sets.append(
                (seed, *sample_in_rounds(config, workdir, sampler, step=step, params_hash=params_hash, seed=seed))
            )
        samples, meta = sets[0][1], sets[0][2]
        source = meta["dir"]
    n = len(samples)
    if n < protocol.PAPER_NUM_SAMPLES:
        warnings.append(
            f"FID/IS/KID from {n} samples, fewer than the {protocol.PAPER_NUM_SAMPLES:,} of the paper's protocol: "
            "FID is biased upwards by roughly O(1/N) and NOT comparable to published numbers"
        )
    nfe = meta.get("nfe")
    if nfe is None:
        warnings.append("the sample files carry no 'nfe'; the NFE of these numbers is unknown")
    sampler_info = meta.get("sampler") or build.sampler_description(config)
    sampler_source = "files" if meta.get("sampler") else ("config" if from_files else "this run")
    if from_files and not meta.get("sampler"):
        warnings.append(
            "the sample files record no 'sampler'; reporting config.sampling, which must be the sampler that wrote them"
        )
    for w in warnings:
        protocol.loud_warning(w)

    rows = parallel.process_rows(n)
    chunk = s.inception_batch_size
    per_seed = []
    for seed, x, m in sets:
        acc = accumulate_features(feature_fn, (x[rows][i : i + chunk] for i in range(0, rows.stop - rows.start, chunk)))
        values = protocol.compute_metrics(
            acc, ref, is_splits=s.is_splits, kid_subsets=s.kid_subsets, kid_subset_size=s.kid_subset_size
        )
        bad = sorted(k for k, v in values.items() if not np.all(np.isfinite(v)))
        if bad:
            raise FloatingPointError(
                f"{', '.join(bad)} of {n} samples{'' if seed is None else f' (seed {seed})'} is not finite ({values}); "
                f"the reference statistics {stats_path} or the samples' features are degenerate"
            )
        per_seed.append({"seed": seed, **values, "samples_source": m.get("dir", source)})
    best = min(range(len(per_seed)), key=lambda i: per_seed[i]["fid"])
    values = {k: v for k, v in per_seed[best].items() if k not in ("seed", "samples_source")}
    source = per_seed[best]["samples_source"]
    if "kid" not in values:
        warnings.append(
            f"no KID: {stats_path} keeps no pool_3 features (raise config.eval.stats_max_features "
            "and rerun --mode=fid_stats)"
        )
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
    if len(per_seed) > 1:
        fids = np.asarray([r["fid"] for r in per_seed], np.float64)
        report["fid_seeds"] = {
            "protocol": "one full sample set per seed; headline = the seed of minimum FID (Karras et al. 2022)",
            "seeds": [r["seed"] for r in per_seed],
            "fid": fids.tolist(),
            "mean": float(fids.mean()),
            "std": float(fids.std(ddof=1)),
            "min": float(fids.min()),
            "best_seed": per_seed[best]["seed"],
            "num_samples_each": n,
            "reference_stats": stats_path,
            "per_seed": per_seed,
        }
    if jax.process_index() == 0:
        tag = f"step_{step}" if step is not None else "samples"
        out_dir = os.path.join(workdir, "eval")
        os.makedirs(out_dir, exist_ok=True)
        report["path"] = os.path.join(out_dir, f"metrics_{tag}.json")
        with open(report["path"], "w") as f:
            json.dump(report, f, indent=1, default=protocol.json_default)
        protocol.write_tensorboard(workdir, report)
    line = {k: report[k] for k in ("fid", "inception_score", "kid", "nfe", "num_samples", "step") if k in report}
    seeds = report.get("fid_seeds")
    if seeds:
        line.update({f"fid_{k}": seeds[k] for k in ("min", "mean", "std", "seeds")})
    print(json.dumps(line, default=protocol.json_default))
    done = f"FID {report['fid']:.4g} from {n} samples (sampler {protocol.sampler_tag(report)})"
    if seeds:
        done = (
            f"FID min {seeds['min']:.4g}, mean {seeds['mean']:.4g} ± {seeds['std']:.3g} over {len(seeds['fid'])} "
            f"seeds of {n} samples each (sampler {protocol.sampler_tag(report)}; reference {stats_path})"
        )
    runlog.conclude(done, results={"report": report.get("path")})
    return report
