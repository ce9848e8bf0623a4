"""Run logging: ``workdir/metrics.jsonl`` (a contract other tools read), TensorBoard, image grids.

``metrics.jsonl`` holds one JSON object per logged step with at least ``step`` and ``loss`` (training
also writes ``grad_norm``, ``lr``, ``steps_per_sec``, ``img_per_sec``, ``nonfinite_total``; evaluation
steps write ``eval_loss``). Only process 0 writes. On resume, lines past the restored step are dropped
so the file reads like one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

__all__ = ["MetricsLogger", "read_metrics", "image_grid", "save_image_grid", "save_scatter", "to_uint8"]


class MetricsLogger:
    """Appends metrics to ``workdir/metrics.jsonl`` and TensorBoard event files in ``workdir``.

    Args:
        workdir: run directory.
        enabled: write anything at all (False on processes other than 0).
        tensorboard: also write TensorBoard events (tensorboardX).
    """

    def __init__(self, workdir: str, *, enabled: bool = True, tensorboard: bool = True):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.enabled = enabled
        self._tb = None
        if enabled and tensorboard:
            from tensorboardX import SummaryWriter  # noqa: PLC0415

            self._tb = SummaryWriter(logdir=workdir, flush_secs=30)

    def truncate_after(self, step: int) -> None:
        """Drops records with ``step > step`` (written after the checkpoint a run resumes from)."""
        if not self.enabled or not os.path.exists(self.path):
            return
        with open(self.path) as f:
            lines = [ln for ln in f if ln.strip()]
        keep = []
        for ln in lines:
            try:
                if json.loads(ln).get("step", 0) <= step:
                    keep.append(ln)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
        with open(self.path, "w") as f:
            f.writelines(keep)

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"step": int(step)}
        for k, v in metrics.items():
            v = np.asarray(v).item() if np.ndim(v) == 0 else v
            record[k] = v if not isinstance(v, float) or math.isfinite(v) else str(v)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, int(step))

    def image(self, tag: str, step: int, grid_uint8: np.ndarray) -> None:
        if self._tb is not None:
            self._tb.add_image(tag, grid_uint8, int(step), dataformats="HWC")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
    """All records of ``workdir/metrics.jsonl``."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(ln) for ln in f if ln.strip()]


def to_uint8(images01: np.ndarray) -> np.ndarray:
    """Images in [0, 1] (clipped) to uint8, rounding as the reference does (``x * 255`` clipped)."""
    return np.clip(np.asarray(images01, np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def image_grid(images: np.ndarray, ncol: int | None = None, padding: int = 2) -> np.ndarray:
    """Tiles ``(N, H, W, C)`` uint8 images into one ``(rows H', cols W', 3)`` grid (like ``make_grid``)."""
    images = np.asarray(images)
    n, h, w, c = images.shape
    if c == 1:
        images = np.repeat(images, 3, axis=-1)
    ncol = ncol or int(math.ceil(math.sqrt(n)))
    nrow = int(math.ceil(n / ncol))
    grid = np.zeros((nrow * (h + padding) + padding, ncol * (w + padding) + padding, 3), np.uint8)
    for i in range(n):
        r, col = divmod(i, ncol)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[y:y + h, x:x + w] = images[i]
    return grid


def save_image_grid(path: str, images_uint8: np.ndarray, *, upscale: int = 1) -> np.ndarray:
    """Writes a PNG grid of uint8 NHWC images (optionally upscaled by pixel repetition); returns the grid."""
    from PIL import Image  # noqa: PLC0415

    grid = image_grid(images_uint8)
    if upscale > 1:
        grid = grid.repeat(upscale, axis=0).repeat(upscale, axis=1)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(grid).save(path)
    return grid


def save_scatter(path: str, points: np.ndarray, *, reference: np.ndarray | None = None, title: str = "") -> None:
    """Writes a scatter plot PNG of 2-D samples (and, faintly, reference data)."""
    # The object API with an Agg canvas: no pyplot, so a notebook's backend is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(4, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if reference is not None:
        ax.scatter(reference[:, 0], reference[:, 1], s=2, c="0.75", label="data")
    ax.scatter(points[:, 0], points[:, 1], s=2, c="C0", label="samples")
    ax.set_aspect("equal")
    ax.set_title(title)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
