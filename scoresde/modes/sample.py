"""``--mode=sample``: ``config.eval.num_samples`` samples with the EMA parameters of a workdir.

Writes ``workdir/samples/samples_<i>.npz`` (array key ``samples``: uint8 NHWC for images, float32 for
vector data; ``nfe``, ``sampler``, ``checkpoint_step`` and the request id travel with them) plus a PNG grid
per file (a scatter plot for 2-D data), and last ``workdir/samples/request.json`` listing exactly the files of
this request. A new request first removes the previous one's files, so ``fid`` never mixes requests. ``config.sampling`` chooses the sampler and guidance (:func:`scoresde.builders.sampler_from_config`).
"""

from __future__ import annotations

import glob
import json
import os
import uuid

import jax
import numpy as np

from scoresde import builders, distillation, images, parallel, runlog
from scoresde import data as data_lib
from scoresde.metrics.protocol import REQUEST_FILE

__all__ = ["sample"]


def _write_visual(config, path_png, samples01, title=""):
    if data_lib.is_image_data(config):
        size = data_lib.data_shape(config)[0]
        images.save_image_grid(path_png, images.to_uint8(samples01), upscale=max(1, 64 // size))
    elif samples01.shape[-1] == 2:
        images.save_scatter(path_png, np.asarray(samples01), title=title)


def _clear_previous_request(out_dir: str) -> None:
    """Removes this mode's earlier outputs (never the training snapshots that share the directory).

    The manifest goes first, so a crash midway leaves files that ``fid`` recognises as unfinished.
    """
    os.makedirs(out_dir, exist_ok=True)
    manifest = os.path.join(out_dir, REQUEST_FILE)
    if os.path.exists(manifest):
        os.remove(manifest)
    for path in glob.glob(os.path.join(out_dir, "samples_*.npz")) + glob.glob(os.path.join(out_dir, "samples_*.png")):
        os.remove(path)


def sample(config, workdir: str) -> dict:
    """Writes ``config.eval.num_samples`` EMA samples to ``workdir/samples/samples_<i>.npz`` and PNG grids."""
    mesh = parallel.make_mesh()
    sde = builders.make_sde(config)
    student = distillation.read_student_file(workdir)
    if student and student["network"] == "consistency" and not builders.is_consistency_model(config):
        raise ValueError(f"{workdir} holds a consistency model ({distillation.STUDENT_FILE}: method "
                         f"{student['method']!r}); sample it with the config it was trained with "
                         f"(config.distill.method={student['method']!r}, config.sampling.method=consistency)")
    graphdef, params, rest, step = builders.load_ema(config, workdir, mesh)
    total = int(config.eval.num_samples)
    batch = min(int(config.eval.get("sample_batch_size", 0) or config.eval.batch_size), total)
    parallel.check_batch_size(batch, mesh, "config.eval.sample_batch_size")
    classifier = None
    if str(config.sampling.get("guidance", "none")).lower() == "classifier":
        classifier, _ = builders.load_classifier(workdir, config)
    method, options = builders.sampling_options(config)
    runlog.announce(f"scoresde sample: {total} samples from step {step}", {
        "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
        "sampler": f"{method} {options}",
        "guidance": str(config.sampling.get("guidance", "none")),
        "workdir": os.path.abspath(workdir),
    })
    sample_fn = builders.make_sample_fn(config, sde, graphdef, rest, batch, mesh, classifier=classifier)
    out_dir = os.path.join(workdir, "samples")
    key = builders.purpose_key(builders.root_key(config), "sample")
    description = json.dumps(builders.sampler_description(config), sort_keys=True, default=str)
    request = uuid.uuid4().hex
    if jax.process_index() == 0:
        _clear_previous_request(out_dir)
    written, i, nfe, names = 0, 0, 0, []
    while written < total:
        samples, nfe = sample_fn(params, jax.random.fold_in(key, i))
        samples = parallel.to_host(samples)[: total - written]
        if jax.process_index() == 0:
            arr = images.to_uint8(samples) if data_lib.is_image_data(config) else np.asarray(samples, np.float32)
            images.save_npz_atomic(os.path.join(out_dir, f"samples_{i}.npz"), samples=arr, nfe=np.int64(nfe),
                                   sampler=np.array(description), checkpoint_step=np.int64(step),
                                   request=np.array(request))
            _write_visual(config, os.path.join(out_dir, f"samples_{i}.png"), samples, title=f"step {step}")
        names.append(f"samples_{i}.npz")
        written += len(samples)
        i += 1
    if jax.process_index() == 0:  # written last: a request without it did not finish
        images.save_json_atomic(os.path.join(out_dir, REQUEST_FILE), {
            "request": request, "files": names, "num_samples": written, "checkpoint_step": int(step),
            "nfe": int(nfe), "sampler": builders.sampler_description(config)})
    result = {"step": step, "num_samples": written, "files": i, "nfe": int(nfe), "dir": out_dir}
    print(json.dumps(result))
    runlog.conclude(f"wrote {written} samples ({int(nfe)} NFE each) from step {step}", results={"samples": out_dir},
                    next_command=runlog.command("fid", workdir))
    return result
