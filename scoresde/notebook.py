"""Small helpers shared by the notebooks in ``experiments/``: paths, configs, the accelerator, plots.

Only boilerplate lives here; every scoresde call the notebooks teach is written out in the notebooks
themselves. Nothing in the library imports it (``from scoresde import notebook as nbu`` in a notebook).

Environment variables (all optional):

* ``SCORESDE_SMALL=1``: shrink every run so a notebook finishes on a CPU in about a minute.
* ``SCORESDE_RUNS``: where training runs are written (default: ``<tmp>/scoresde_runs``). Notebooks that
  need the same model (quickstart, likelihood, controllable) share runs by name, so a run trained by
  one is resumed — already finished — by the next.
* ``SCORESDE_ROOT``: the repository checkout (found automatically otherwise).
* ``SCORESDE_FIXTURES``: the shared reference fixtures (default ``<root>/../shared/fixtures``).
"""

from __future__ import annotations

import importlib.util
import os
import tempfile

import numpy as np

from scoresde.images import image_grid, to_uint8
from scoresde.runlog import read_metrics

__all__ = [
    "small",
    "repo_root",
    "runs_dir",
    "fixtures_dir",
    "load_config",
    "describe_accelerator",
    "quiet",
    "digits_config",
    "toy_config",
    "per_class_indices",
    "show_images",
    "plot_loss",
    "colored_digits_npz",
]


def small() -> bool:
    """True when ``SCORESDE_SMALL=1``: every run shrinks to CPU size."""
    return os.environ.get("SCORESDE_SMALL", "0").strip().lower() in ("1", "true", "yes")


def _is_root(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "configs", "digits_vp.py"))


def repo_root() -> str:
    """The scoresde checkout: ``$SCORESDE_ROOT``, the checkout of an editable install, or an ancestor of cwd.

    Raises:
        FileNotFoundError: no checkout with ``configs/`` was found.
    """
    candidates = [os.environ.get("SCORESDE_ROOT", "")]
    spec = importlib.util.find_spec("scoresde")
    if spec is not None and spec.origin:
        candidates.append(os.path.dirname(os.path.dirname(os.path.abspath(spec.origin))))
    here = os.path.abspath(os.getcwd())
    while True:
        candidates += [here, os.path.join(here, "scoresde")]
        parent = os.path.dirname(here)
        if parent == here:
            break
        here = parent
    for c in candidates:
        if c and _is_root(c):
            return os.path.abspath(c)
    raise FileNotFoundError(
        "no scoresde checkout (a directory with configs/digits_vp.py) found; set SCORESDE_ROOT to the cloned repository"
    )


def runs_dir() -> str:
    """``$SCORESDE_RUNS`` or ``<tmp>/scoresde_runs`` (created)."""
    path = os.environ.get("SCORESDE_RUNS") or os.path.join(tempfile.gettempdir(), "scoresde_runs")
    os.makedirs(path, exist_ok=True)
    return path


def fixtures_dir() -> str:
    """``$SCORESDE_FIXTURES`` or ``<repo root>/../shared/fixtures``."""
    return os.environ.get("SCORESDE_FIXTURES") or os.path.join(os.path.dirname(repo_root()), "shared", "fixtures")


def load_config(name: str, variant: str | None = None):
    """``configs/<name>.py``'s ``get_config(variant)`` (what ``--config=configs/<name>.py:<variant>`` loads)."""
    path = os.path.join(repo_root(), "configs", f"{name}.py")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"no config {path!r}; expected one of: "
            f"{sorted(f[:-3] for f in os.listdir(os.path.dirname(path)) if f.endswith('.py'))}"
        )
    from scoresde import build  # noqa: PLC0415  (ml_collections only when a config is read)

    return build.load_config(path + (f":{variant}" if variant else ""))


def describe_accelerator() -> str:
    """One line naming JAX's backend and devices (TPU VM, GPU or CPU)."""
    import jax  # noqa: PLC0415

    devices = jax.devices()
    platform = devices[0].platform
    kind = {"tpu": "TPU", "gpu": "GPU", "cuda": "GPU", "rocm": "GPU", "cpu": "CPU"}.get(platform, platform)
    line = (
        f"{kind}: {len(devices)} x {devices[0].device_kind} ({jax.process_count()} process(es)); jax {jax.__version__}"
    )
    if kind == "CPU" and not small():
        line += "\n  (no accelerator: full-size runs are slow here; set SCORESDE_SMALL=1 for the CPU version)"
    return line


def quiet(config):
    """No TensorBoard, no progress bar, no snapshot sampling during training: the notebook samples itself."""
    t = config.training
    t.tensorboard = False
    t.progress = False
    t.snapshot_sampling = False
    t.eval_freq = 0
    return config


def _shrink_training(config, n_iters, log_freq, batch_size):
    t = config.training
    t.n_iters, t.log_freq, t.batch_size = n_iters, log_freq, batch_size
    t.snapshot_freq = t.snapshot_freq_for_preemption = n_iters


def toy_config(dataset: str = "gmm_grid"):
    """``configs/toy2d_vp.py`` (full size: 4000 steps; small: 1500 steps of a narrower MLP)."""
    config = quiet(load_config("toy2d_vp", dataset))
    if small():
        _shrink_training(config, 1500, 100, 256)
        config.model.hidden, config.model.ema_rate, config.optim.lr = 128, 0.99, 2e-3
    return config


def digits_config(conditional: bool = False):
    """``configs/digits_vp.py`` (or ``digits_vp_cond.py``).

    Full size trains the configs' U-Net (DDPM++) as they are. Small swaps it for the MLP score network on
    the flattened 8×8 image (``config.model.name = 'mlp'``; the rest of the pipeline is unchanged), because
    compiling and training the U-Net takes minutes on a CPU; the samples are then rougher digits.
    """
    config = quiet(load_config("digits_vp_cond" if conditional else "digits_vp"))
    if small():
        _shrink_training(config, 500, 25, 128)
        m = config.model
        m.name, m.hidden, m.num_layers, m.embed_dim, m.ema_rate, m.num_scales = "mlp", 256, 3, 64, 0.99, 100
        config.optim.lr, config.optim.warmup = 2e-3, 50
        if conditional:
            c = config.classifier
            c.name, c.hidden, c.num_layers, c.embed_size, c.fourier_scale = "mlp", 128, 3, 32, 4.0
            c.n_iters, c.snapshot_freq, c.log_freq, c.batch_size, c.lr, c.num_eval_batches = 400, 400, 100, 128, 2e-3, 2
    return config


def per_class_indices(labels, per_class: int = 1, num_classes: int = 10) -> np.ndarray:
    """Indices of the first ``per_class`` examples of each class, class by class (a varied batch to show)."""
    labels = np.asarray(labels)
    idx = [np.flatnonzero(labels == k)[:per_class] for k in range(num_classes)]
    return np.concatenate(idx).astype(np.int32)


def show_images(images01, title: str = "", ncol: int | None = None, ax=None, scale: float = 0.35):
    """Shows ``(N, H, W, C)`` images in ``[0, 1]`` as one grid (gray images in gray)."""
    import matplotlib.pyplot as plt  # noqa: PLC0415

    images = np.asarray(images01)
    grid = image_grid(to_uint8(images), ncol=ncol, padding=1)
    if ax is None:
        h, w = grid.shape[:2]
        _, ax = plt.subplots(figsize=(max(2.0, scale * w / 8), max(2.0, scale * h / 8)))
    ax.imshow(grid, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    return ax


def plot_loss(workdir: str, ax=None, label: str | None = None):
    """Plots the training loss of ``workdir/metrics.jsonl`` against the step."""
    import matplotlib.pyplot as plt  # noqa: PLC0415

    records = [r for r in read_metrics(workdir) if isinstance(r.get("loss"), (int, float))]
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 3))
    ax.plot([r["step"] for r in records], [r["loss"] for r in records], label=label or os.path.basename(workdir))
    ax.set_xlabel("step")
    ax.set_ylabel("DSM loss")
    ax.set_yscale("log")
    ax.legend()
    return ax


# Stroke colours of the coloured digits (RGB in [0, 1]); their gray levels differ, so gray -> colour is learnable.
PALETTE = np.array([[1.0, 0.25, 0.2], [0.2, 0.9, 0.3], [0.3, 0.45, 1.0], [1.0, 0.85, 0.1]], np.float32)


def colored_digits_npz(path: str, seed: int = 0) -> str:
    """Writes the 8×8 digits with randomly coloured strokes (:data:`PALETTE`) as an ``npz`` dataset.

    The layout is what ``config.data.dataset = 'npz'`` reads: ``images``/``labels`` for training and
    ``test_images``/``test_labels`` (every 10th digit, as the gray digits' test split).
    """
    from sklearn.datasets import load_digits  # noqa: PLC0415

    d = load_digits()
    gray = d.images.astype(np.float32) / 16.0
    colors = PALETTE[np.random.default_rng(seed).integers(0, len(PALETTE), len(gray))]
    rgb = gray[..., None] * colors[:, None, None, :]
    test = np.arange(len(gray)) % 10 == 0
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez(path, images=rgb[~test], labels=d.target[~test], test_images=rgb[test], test_labels=d.target[test])
    return path
