"""The FID / IS / KID protocol's pieces that read no config: reference statistics, sample files, metrics, reports.

What the protocol fixes (whole reference splits read as uint8, 50,000 samples, the FID Inception, every
number with its sampler and NFE) and why: ``docs/metrics.md``. The modes ``fid_stats`` and ``fid`` read the
config and call these.
"""

from __future__ import annotations

import fcntl
import glob
import json
import logging
import os
import re
import socket
import sys
from collections.abc import Iterable

import numpy as np

from scoresde.metrics import stats
from scoresde.metrics.features import FeatureAccumulator, FeatureFn, accumulate_features

__all__ = [
    "PAPER_NUM_SAMPLES",
    "compute_reference_statistics",
    "load_reference_stats",
    "load_sample_files",
    "compute_metrics",
    "loud_warning",
    "json_default",
    "write_tensorboard",
    "REQUEST_FILE",
    "RequestLock",
    "RequestBusyError",
    "check_request_name",
    "read_request",
    "remove_request_files",
    "check_reference_stats",
    "real_directory",
]

log = logging.getLogger(__name__)

PAPER_NUM_SAMPLES = 50_000


def compute_reference_statistics(
    feature_fn: FeatureFn, batches: Iterable[np.ndarray], *, keep_max: int | None = PAPER_NUM_SAMPLES
) -> dict:
    """mu, sigma (and the features, if at most ``keep_max``) of uint8 image batches."""
    acc = accumulate_features(feature_fn, batches, keep_max=keep_max)
    mu, sigma = acc.statistics()
    out = {"mu": mu, "sigma": sigma, "num_examples": np.int64(acc.n)}
    if acc.pool is not None:
        out["pool_3"] = acc.pool
    if acc.logits is not None:
        out["logits"] = acc.logits
    return out


def load_reference_stats(path: str) -> dict:
    """Reads a :func:`fid_stats` file (or any ``.npz`` with ``mu``/``sigma``, or with ``pool_3`` features)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"no reference statistics at {path!r}; compute them with --mode=fid_stats "
            "(same config) or set config.eval.fid_stats_path to an existing .npz"
        )
    with np.load(path) as f:
        d = {k: f[k] for k in f.files}
    if "mu" not in d:
        if "pool_3" not in d:
            raise ValueError(f"{path} has neither mu/sigma nor pool_3 features; keys {sorted(d)}")
        d["mu"], d["sigma"] = stats.feature_statistics(d["pool_3"])
        d["num_examples"] = np.int64(len(d["pool_3"]))
    return d


def _natural_key(path: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", os.path.basename(path))]


REQUEST_FILE = "request.json"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class RequestBusyError(RuntimeError):
    """Another live process is writing the same sample request or FID rounds."""


class RequestLock:
    """An exclusive OS file lock (``fcntl.flock``) on ``directory/name``: one writer of a request at a time.

    Released when the process dies; the file records the holder's pid and host for the refusal message.
    """

    def __init__(self, directory: str, name: str = ".request.lock", *, what: str = "this directory"):
        self.path, self.what, self._fd = os.path.join(directory, name), what, None

    def __enter__(self) -> RequestLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 512).decode(errors="replace").strip() or "an unknown process"
            os.close(fd)
            raise RequestBusyError(
                f"{self.what} is being written by {holder}; wait for it to finish (two runs "
                "would delete or overwrite each other's files)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def real_directory(path: str, what: str) -> str:
    """Creates ``path`` if needed and returns it; refuses a symlink (files would land, and be deleted, elsewhere).

    Raises:
        ValueError: ``path`` (or a parent below the workdir's own) is a symlink or not a directory.
    """
    if os.path.islink(path):
        raise ValueError(
            f"{path} is a symlink (to {os.path.realpath(path)!r}); {what} writes and deletes files only "
            "in a real directory of the workdir: remove the link"
        )
    os.makedirs(path, exist_ok=True)
    if not os.path.isdir(path):
        raise ValueError(f"{path} is not a directory")
    return path


def check_request_name(name, manifest_path: str) -> str:
    """``name`` if it is a plain file name inside the samples directory, else an error (no ``../``, no absolute
    paths, no sub-directories: a request owns files of its directory and no others)."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or ".." in name:
        raise ValueError(
            f"{manifest_path} lists {name!r}: a request lists plain file names inside "
            f"{os.path.dirname(manifest_path)} (no directories, '..' or absolute paths)"
        )
    return name


def read_request(sample_dir: str) -> dict | None:
    """The request of ``sample_dir/request.json`` with its file names checked, or ``None`` when there is none.

    Raises:
        ValueError: an unreadable manifest, or one listing a name outside the directory.
    """
    path = os.path.join(sample_dir, REQUEST_FILE)
    if not os.path.lexists(path):
        return None
    if os.path.islink(path):
        raise ValueError(f"{path} is a symlink; a request manifest is a file written by --mode=sample")
    try:
        with open(path) as f:
            request = json.load(f)
        files, visuals = list(request["files"]), list(request.get("visuals", ()))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a request manifest ({type(e).__name__}: {e}); move it away") from e
    request["files"] = [check_request_name(n, path) for n in files]
    request["visuals"] = [check_request_name(n, path) for n in visuals]
    return request


def remove_request_files(sample_dir: str) -> None:
    """Deletes the files the request in ``sample_dir`` lists (and nothing else), then its manifest.

    A listed name that is a symlink loses the link only; nothing outside ``sample_dir`` is touched.
    """
    request = read_request(sample_dir)
    if request is None:
        return
    names = list(request["files"]) + list(request["visuals"])
    if "visuals" not in request or not request["visuals"]:  # manifests that list only the arrays
        names += [n[:-4] + ".png" for n in request["files"] if re.fullmatch(r"samples_\d+\.npz", n)]
    for name in names:
        path = os.path.join(sample_dir, name)
        if os.path.islink(path) or os.path.isfile(path):
            os.remove(path)
    os.remove(os.path.join(sample_dir, REQUEST_FILE))


def load_sample_files(workdir: str) -> tuple[np.ndarray, dict] | None:
    """The samples of ``workdir/samples`` (key ``samples``, uint8 NHWC), or None if there are none.

    When ``samples/request.json`` exists (the sample mode writes it last, after every file of one request),
    exactly the files it lists are read, in its order. Without it, every ``*.npz`` there is read in natural
    order (samples supplied by the user), unless the files say they come from a sample-mode request that
    never finished: that is an error, not a silent mix.

    Returns:
        ``(images, meta)``; ``meta`` holds ``nfe`` / ``sampler`` when the files carry them, and the
        request's ``step`` and ``num_samples`` when there is one.

    Raises:
        ValueError: files of an unfinished request, a listed file missing, or a file that is not uint8 NHWC.
    """
    sample_dir = os.path.join(workdir, "samples")
    manifest_path = os.path.join(sample_dir, REQUEST_FILE)
    request = read_request(sample_dir)
    if request is not None:
        if not request.get("complete", True):
            raise ValueError(
                f"{manifest_path}: request {request.get('request')} did not finish (a --mode=sample run "
                "is writing it, or was killed); wait for it or rerun --mode=sample"
            )
        files = [os.path.join(sample_dir, name) for name in request["files"]]
        missing = [p for p in files if not os.path.exists(p)]
        if missing:
            raise ValueError(f"{manifest_path} lists files that do not exist: {missing}; rerun --mode=sample")
        links = [p for p in files if os.path.islink(p)]
        if links:
            raise ValueError(f"{manifest_path} lists symlinks {links}; a request's files are its own")
    else:
        files = sorted(glob.glob(os.path.join(sample_dir, "*.npz")), key=_natural_key)
    if not files:
        return None
    images, nfes, samplers = [], set(), set()
    for path in files:
        with np.load(path, allow_pickle=False) as f:
            if "samples" not in f:
                raise ValueError(f"{path} has no 'samples' array; keys {sorted(f.files)}")
            if request is None and "request" in f:
                raise ValueError(
                    f"{path} belongs to a --mode=sample request that did not finish ({manifest_path} "
                    "is missing); rerun --mode=sample before evaluating"
                )
            if (
                request is not None
                and "request" in request
                and ("request" not in f or str(f["request"]) != str(request["request"]))
            ):
                owner = str(f["request"]) if "request" in f else "no request"
                raise ValueError(
                    f"{path} belongs to {owner}, not to request {request['request']} that "
                    f"{manifest_path} describes (another --mode=sample run replaced it); rerun "
                    "--mode=sample"
                )
            x = f["samples"]
            if "nfe" in f:
                nfes.add(int(f["nfe"]))
            if "sampler" in f:
                samplers.add(str(f["sampler"]))
        if x.dtype != np.uint8 or x.ndim != 4:
            raise ValueError(f"{path}: 'samples' must be uint8 NHWC images; got {x.dtype} {x.shape}")
        images.append(x)
    meta = {"files": len(files)}
    if request is not None:
        meta.update(step=request.get("checkpoint_step"), request=request.get("request"))
        for key in ("params_hash", "config_hash"):
            if key in request:
                meta[key] = request[key]
    if len(nfes) == 1:
        meta["nfe"] = nfes.pop()
    elif nfes:
        meta["nfe"] = sorted(nfes)
    if samplers:
        meta["sampler"] = samplers.pop() if len(samplers) == 1 else sorted(samplers)
    images = np.concatenate(images)
    if request is not None and len(images) != int(request["num_samples"]):
        raise ValueError(
            f"{sample_dir} holds {len(images)} samples but {manifest_path} says "
            f"{request['num_samples']}; rerun --mode=sample"
        )
    return images, meta


def check_reference_stats(
    ref: dict, path: str, *, feature_extractor: str, dataset: str, image_size: int | None = None
) -> None:
    """Refuses reference statistics made by another feature extractor or of another data set.

    Files that do not record one (statistics from elsewhere) are not compared on it.

    Raises:
        ValueError: naming the recorded and the expected value.
    """
    wanted = {"feature_extractor": feature_extractor, "dataset": str(dataset).lower()}
    if image_size is not None:
        wanted["image_size"] = int(image_size)
    for key, now in wanted.items():
        if key not in ref:
            continue
        stored = ref[key].item() if isinstance(ref[key], np.ndarray) else ref[key]
        stored = str(stored).lower() if key == "dataset" else stored
        if (int(stored) if key == "image_size" else str(stored)) != now:
            raise ValueError(
                f"{path} holds reference statistics of {key} {stored!r}, but these samples are "
                f"scored with {key} {now!r}; compute matching ones with --mode=fid_stats (same config) "
                "or set config.eval.fid_stats_path to them"
            )


def loud_warning(message: str) -> None:
    banner = "!" * 100
    log.warning("\n%s\n%s\n%s", banner, message, banner)
    print(f"{banner}\nWARNING: {message}\n{banner}", file=sys.stderr)


def compute_metrics(
    sample_acc: FeatureAccumulator,
    ref: dict,
    *,
    is_splits: int = 10,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
) -> dict:
    """FID, IS and KID of sample features against reference statistics (KID only if the reference kept features)."""
    mu, sigma = sample_acc.statistics()
    out = {"fid": stats.frechet_distance(mu, sigma, ref["mu"], ref["sigma"])}
    logits = sample_acc.logits
    if logits is not None:
        out["inception_score"], out["inception_score_std"] = stats.inception_score(
            logits, splits=min(is_splits, len(logits)), return_std=True
        )
    if "pool_3" in ref and sample_acc.pool is not None:
        out["kid"], out["kid_std"] = stats.kernel_distance(
            sample_acc.pool, ref["pool_3"], num_subsets=kid_subsets, subset_size=kid_subset_size, return_std=True
        )
    return out


def json_default(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


def sampler_tag(report) -> str:
    s = report["sampler"]
    method = s.get("method", "unknown") if isinstance(s, dict) else str(s)
    if isinstance(s, dict) and method == "pc":
        method = f"pc_{s.get('predictor', '')}_{s.get('corrector', '')}"
    return f"{method}_nfe{report['nfe']}".replace("/", "_").replace(" ", "")


def write_tensorboard(workdir: str, report: dict) -> None:
    from tensorboardX import SummaryWriter  # noqa: PLC0415  (only when a report is written)

    writer = SummaryWriter(logdir=os.path.join(workdir, "eval"))
    tag = sampler_tag(report)
    step = report["step"] or 0
    for entry in report["metrics"]:
        writer.add_scalar(f"{entry['name']}/{tag}", entry["value"], step)
    writer.add_text(
        "eval/protocol",
        json.dumps(
            {
                k: report[k]
                for k in ("sampler", "nfe", "num_samples", "feature_extractor", "reference_stats", "warnings")
            },
            default=json_default,
        ),
        step,
    )
    writer.close()
