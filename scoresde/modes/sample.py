"""``--mode=sample``: ``config.eval.num_samples`` samples with the EMA parameters of a workdir.

Writes ``workdir/samples/samples_<i>.npz`` (array key ``samples``: uint8 NHWC for images, float32 for
vector data; ``nfe``, ``sampler``, ``checkpoint_step`` and the request id travel with them) plus a PNG grid
per file (a scatter plot for 2-D data; for stroke sequences ``(B, N, 3)`` a PNG and an SVG grid of the
drawings, at ``config.sampling.num_points`` points when that is set), and last ``workdir/samples/request.json`` listing exactly the files of
this request, its checkpoint step, parameter hash and config hash. A request owns its files: one request at a
time per workdir (a lock), a new one deletes exactly the files the previous ``request.json`` lists (never a
user's own file, nothing through a symlink), and ``fid`` checks every file's request id. Non-finite samples are an
error naming the settings that can cause them.
``config.sampling`` chooses the sampler and guidance (:func:`scoresde.build.sampler_from_config`);
``config.sampling.parallel_window > 0`` samples ddim with ParaDiGMS and reports its sequential ``rounds``.

Inverse problems: with ``config.inverse.operator != "none"`` the mode instead restores the first
``config.inverse.num_images`` test images from their measurements (:func:`_restore`) and writes
``workdir/inverse/<operator>_<method>[_isotropic]/``: ``report.json`` (PSNR of the restorations and of the
naive ``A⁺y`` against the ground truth, per image and mean, in ``[0, 1]`` after clipping; operator, method,
``sigma_y``, scale, NFE, checkpoint step), ``restorations.npz`` and the PNG grids ``measurement.png``
(``A⁺y``; the blurred image for deblurring), ``restoration.png``, ``ground_truth.png`` and
``comparison.png`` (rows of measurement / restoration / ground truth, 10 images a row). With
``config.inverse.samples_per_image = K > 1`` every image gets K posterior samples (one measurement):
``restorations.npz`` adds ``samples`` (N, K, ...), ``posterior_mean`` and ``posterior_std``, the report adds
the posterior mean's PSNR (``psnr_mean`` is then the mean over all N·K samples), and the grids a row of means.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import uuid

import jax
import numpy as np

from scoresde import build, images, parallel, runlog
from scoresde import data as data_lib
from scoresde.data import stroke_render
from scoresde.metrics import protocol
from scoresde.metrics.protocol import REQUEST_FILE

__all__ = ["sample"]


def _write_visual(config, path_png, samples01, title=""):
    if data_lib.is_sequence_data(config):
        stroke_render.save_png_grid(path_png, samples01, ncol=10)
        stroke_render.save_svg_grid(path_png[: -len(".png")] + ".svg", samples01, ncol=10)
    elif data_lib.is_image_data(config):
        size = data_lib.data_shape(config)[0]
        images.save_image_grid(path_png, images.to_uint8(samples01), upscale=max(1, 64 // size))
    elif samples01.shape[-1] == 2:
        images.save_scatter(path_png, np.asarray(samples01), title=title)


def _guidance_line(config) -> str:
    """The guidance the samples get: a few-step student (consistency, sCM, MeanFlow) samples its condition unguided
    (:func:`scoresde.build.student_condition`), whatever ``config.sampling.guidance`` says."""
    kind = build.guidance_kind(config)
    few_step = build.is_consistency_model(config) or str(config.distill.method).lower() in build.CONTINUOUS_SAMPLERS
    if few_step and kind != "none":
        return f"none (a few-step student samples unguided; config.sampling.guidance={kind!r} is not applied)"
    return kind


def _visual_extensions(config) -> tuple[str, ...]:
    if data_lib.is_sequence_data(config):
        return ("png", "svg")
    return ("png", "txt") if build.conditioning_kind(config) == "text" else ("png",)


def _prompts_line(config, batch: int) -> str | None:
    """The distinct captions a caption-conditioned model samples (for the header); ``None`` for other models."""
    if build.conditioning_kind(config) != "text":
        return None
    distinct = list(dict.fromkeys(build.sample_prompts(config, batch)[1]))
    return ", ".join(repr(p) for p in distinct[:4]) + (f", ... ({len(distinct)} captions)" if len(distinct) > 4 else "")


def _caption_legend(path_txt: str, prompts: list[str], ncol: int) -> None:
    """Writes which caption each grid row (and sample range) was sampled from, next to the PNG grid."""
    lines = [f"# captions of the grid {os.path.basename(path_txt)[:-4]}.png: {ncol} samples a row, top row first"]
    start = 0
    for i in range(1, len(prompts) + 1):
        if i == len(prompts) or prompts[i] != prompts[start]:
            rows = (
                f"rows {start // ncol}-{(i - 1) // ncol}" if (i - 1) // ncol > start // ncol else f"row {start // ncol}"
            )
            lines.append(f"samples {start}-{i - 1} ({rows}): {prompts[start]}")
            start = i
    tmp = f"{path_txt}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path_txt)


def _at_resolution(config):
    """``config`` sampling sequences of ``config.sampling.num_points`` points (ChiroDiff's resolution change).

    The BiRNN has no parameter that depends on the length, so the trained weights sample any ``N``; only the
    sampler's shape changes. A config without sequence data, or with ``num_points`` 0, is returned as it is.
    """
    n = int(config.sampling.num_points)
    if not data_lib.is_sequence_data(config) or n in (0, int(config.data.num_points)):
        if n and not data_lib.is_sequence_data(config):
            raise ValueError(
                f"config.sampling.num_points={n} changes the length of sequence data; dataset "
                f"{config.data.dataset!r} is not sequences (set it to 0)"
            )
        return config
    config = config.copy_and_resolve_references()
    config.data.num_points = n
    return config


def _start_request(out_dir: str, manifest: dict) -> None:
    """Replaces the previous request by this one's unfinished manifest (process 0, under the request lock).

    Only the files the previous manifest lists are deleted. The new manifest lists this request's files before
    any is written (``complete: false``), so a killed run's files are deleted by the next request and ``fid``
    refuses them meanwhile. A file of a planned name that no request owns is the user's: it is never overwritten.
    """
    protocol.remove_request_files(out_dir)
    theirs = [n for n in manifest["files"] + manifest["visuals"] if os.path.lexists(os.path.join(out_dir, n))]
    if theirs:
        raise ValueError(
            f"{out_dir} holds {theirs}, which no --mode=sample request wrote ({REQUEST_FILE} does not "
            "list them); move them away so that this request does not overwrite them"
        )
    images.save_json_atomic(os.path.join(out_dir, REQUEST_FILE), {**manifest, "complete": False})


def _check_finite(samples, config, step: int) -> None:
    bad = int(np.size(samples) - np.count_nonzero(np.isfinite(samples)))
    if bad:
        raise FloatingPointError(
            f"the sampler returned {bad} non-finite values of {np.size(samples)} (step {step}); "
            f"nothing was written. Check: {build.nonfinite_hint(config)}"
        )


def sample(config, workdir: str) -> dict:
    """Writes ``config.eval.num_samples`` EMA samples to ``workdir/samples/samples_<i>.npz`` and PNG grids.

    With ``config.inverse.operator`` set, restores test images instead (see the module docstring).
    """
    config = build.with_defaults(config)
    if build.inverse_operator_name(config) != "none":
        return _restore(config, workdir)
    sampling_config = _at_resolution(config)
    mesh = parallel.make_mesh()
    sde = build.make_sde(config)
    student = build.read_student_file(workdir)
    if student and student["network"] == "consistency" and not build.is_consistency_model(config):
        raise ValueError(
            f"{workdir} holds a consistency model ({build.STUDENT_FILE}: method "
            f"{student['method']!r}); sample it with the config it was trained with "
            f"(config.distill.method={student['method']!r}, config.sampling.method=consistency)"
        )
    method = str(config.distill.method).lower()
    if student and student["network"] in ("trigflow_consistency", "average_velocity") and student["method"] != method:
        raise ValueError(
            f"{workdir} holds a {student['method']} student ({build.STUDENT_FILE}: network "
            f"{student['network']!r}); sample it with the config it was trained with "
            f"(config.distill.method={student['method']!r}, config.sampling.method={student['sampling']['method']})"
        )
    graphdef, params, rest, step = build.load_ema(config, workdir, mesh, mode="sample")
    params_hash = build.params_digest(params)
    total = int(config.eval.num_samples)
    batch = min(build.sample_batch_size(config), total)
    parallel.check_batch_size(batch, mesh, "config.eval.sample_batch_size")
    classifier = build.load_guidance_classifier(workdir, config)
    clip, prior = build.load_guidance_clip(config), build.load_unclip_prior(config, workdir)
    method, options = build.sampling_options(config)
    paradigms = build.parallel_settings(config)
    runlog.announce(
        f"scoresde sample: {total} samples from step {step}",
        {
            "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
            "sampler": f"{method} {options}",
            "paradigms": f"window {paradigms[0]}, tol {paradigms[1]}" if paradigms else None,
            "guidance": _guidance_line(config),
            "prompts": _prompts_line(config, batch),
            "workdir": os.path.abspath(workdir),
        },
    )
    sample_fn = build.make_sample_fn(
        sampling_config,
        sde,
        graphdef,
        rest,
        batch,
        mesh,
        classifier=classifier,
        with_rounds=True,
        clip=clip,
        prior=prior,
    )
    prompts = build.sample_prompts(config, batch)[1] if build.conditioning_kind(config) == "text" else None
    out_dir = os.path.join(workdir, "samples")
    key = build.purpose_key(build.root_key(config), "sample")
    description = json.dumps(build.sampler_description(config), sort_keys=True, default=str)
    request = uuid.uuid4().hex
    n_files = math.ceil(total / batch)
    manifest = {
        "request": request,
        "files": [f"samples_{i}.npz" for i in range(n_files)],
        "visuals": [f"samples_{i}.{ext}" for i in range(n_files) for ext in _visual_extensions(config)],
        "checkpoint_step": int(step),
        "params_hash": params_hash,
        "config_hash": build.config_digest(config),
        "sampler": build.sampler_description(config),
    }
    is_main = jax.process_index() == 0
    if is_main:
        protocol.real_directory(out_dir, "--mode=sample")
    lock = protocol.RequestLock(out_dir, what=f"the sample request in {out_dir}") if is_main else None
    with lock or contextlib.nullcontext():  # processes other than 0 write no files
        if is_main:
            _start_request(out_dir, manifest)
        written, i, nfe, rounds = 0, 0, 0, 0
        try:
            while written < total:
                samples, nfe, rounds = sample_fn(params, jax.random.fold_in(key, i))
                samples = parallel.to_host(samples)[: total - written]
                _check_finite(samples, config, step)
                if is_main:
                    arr = (
                        images.to_uint8(samples) if data_lib.is_image_data(config) else np.asarray(samples, np.float32)
                    )
                    images.save_npz_atomic(
                        os.path.join(out_dir, manifest["files"][i]),
                        samples=arr,
                        nfe=np.int64(nfe),
                        sampler=np.array(description),
                        checkpoint_step=np.int64(step),
                        params_hash=np.array(params_hash),
                        request=np.array(request),
                        **({} if prompts is None else {"captions": np.array(prompts[: len(samples)])}),
                    )
                    _write_visual(config, os.path.join(out_dir, f"samples_{i}.png"), samples, title=f"step {step}")
                    if prompts is not None:
                        ncol = math.ceil(math.sqrt(len(samples)))  # images.image_grid's default layout
                        _caption_legend(os.path.join(out_dir, f"samples_{i}.txt"), prompts[: len(samples)], ncol)
                written += len(samples)
                i += 1
        except Exception:  # a failed request leaves nothing behind (a killed one is cleaned up by the next)
            if is_main:
                protocol.remove_request_files(out_dir)
            raise
        if is_main:  # complete only now: fid refuses a request that did not finish
            images.save_json_atomic(
                os.path.join(out_dir, REQUEST_FILE),
                {**manifest, "complete": True, "num_samples": written, "nfe": int(nfe), "rounds": int(rounds)},
            )
    result = {"step": step, "num_samples": written, "files": i, "nfe": int(nfe), "rounds": int(rounds), "dir": out_dir}
    print(json.dumps(result))
    runlog.conclude(
        f"wrote {written} samples ({int(nfe)} NFE each, {int(rounds)} sequential rounds) from step {step}",
        results={"samples": out_dir},
        next_command=runlog.command("likelihood", workdir)
        if data_lib.is_sequence_data(config)  # FID reads images; sequences are scored by their likelihood
        else runlog.command("fid", workdir)
        if build.inception_weights_found(config)
        else "python -m scoresde.metrics.weights --help (how to place the FID Inception weights that "
        "--mode=fid needs; none are on this machine)",
    )
    return result


def _comparison_rows(rows: list[np.ndarray], per_row: int = 10) -> np.ndarray:
    """Interleaves equal-length image stacks: ``per_row`` of the first, the same of the second, ... then the next block."""
    n = len(rows[0])
    blocks = [r[s : s + per_row] for s in range(0, n, per_row) for r in rows]
    pad = [np.concatenate([b, np.zeros((per_row - len(b),) + b.shape[1:], b.dtype)]) for b in blocks]
    return np.concatenate(pad)


def _restore(config, workdir: str) -> dict:
    """Restores ``config.inverse.num_images`` test images from measurements; see the module docstring."""
    import time  # noqa: PLC0415

    if not data_lib.is_image_data(config):
        raise ValueError(
            "config.inverse restores images; the data of this config are vectors "
            f"(config.data.dataset={config.data.dataset!r})"
        )
    mesh = parallel.make_mesh()
    sde = build.make_sde(config)
    graphdef, params, rest, step = build.load_ema(config, workdir, mesh, mode="sample")
    operator = build.operator_from_config(config)
    settings = build.posterior_settings(config)
    name, method = build.inverse_operator_name(config), settings["method"]
    total, per_image = build.restore_counts(config)
    batch = min(build.sample_batch_size(config), total)
    parallel.check_batch_size(batch, mesh, "min(config.eval.sample_batch_size, config.inverse.num_images)")
    classifier = build.load_guidance_classifier(workdir, config)
    sampler, options = build.sampling_options(config)
    per = f", {per_image} posterior samples each" if per_image > 1 else ""
    runlog.announce(
        f"scoresde sample: restoring {total} test images ({name}, {method}{per}) from step {step}",
        {
            "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
            "operator": f"{name} {operator}",
            "posterior": json.dumps(settings),
            "sampler": f"{sampler} {options}",
            "workdir": os.path.abspath(workdir),
        },
    )
    restore_fn = build.make_restore_fn(config, sde, graphdef, rest, operator, classifier=classifier)
    key = build.root_key(config)
    data = data_lib.get_dataset(
        config, split="test", batch_size=batch, shuffle=False, repeat=False, uniform_dequantization=False
    )
    scaler = data_lib.get_data_inverse_scaler(config)
    truth, naive, restored, labels, measurements = [], [], [], [], []
    nfe, i, start = 0, 0, time.time()
    while sum(len(t) for t in truth) < total:
        try:
            b = next(data)
        except StopIteration:
            raise ValueError(
                f"config.inverse.num_images={total} is more than the test split gives in batches of "
                f"{batch} ({sum(len(t) for t in truth)})"
            ) from None
        x, label = parallel.shard_batch(mesh, (b["image"], b["label"]))
        keep = total - sum(len(t) for t in truth)
        draws = []
        for k in range(per_image):
            y, a_pinv, r, nfe = restore_fn(params, x, jax.random.fold_in(key, i), k)
            draws.append(parallel.to_host(r)[:keep])
        truth.append(np.asarray(scaler(parallel.to_host(x)))[:keep])
        measurements.append(parallel.to_host(y)[:keep])
        naive.append(parallel.to_host(a_pinv)[:keep])
        restored.append(np.stack(draws, axis=1))  # (b, K, ...)
        labels.append(parallel.to_host(label)[:keep])
        i += 1
    wall = time.time() - start
    truth, naive, samples = (np.clip(np.concatenate(a), 0.0, 1.0).astype(np.float32) for a in (truth, naive, restored))
    restored = samples[:, 0]
    labels = np.concatenate(labels)
    psnr = np.stack([np.asarray(images.psnr(samples[:, k], truth, data_range=1.0)) for k in range(per_image)], 1)
    baseline = np.asarray(images.psnr(naive, truth, data_range=1.0))
    tag = f"{name}_{method}" + ("_isotropic" if settings.get("jacobian") == "isotropic" else "")
    out_dir = os.path.join(workdir, "inverse", tag)
    report = {
        "operator": name,
        "operator_repr": str(operator),
        "method": method,
        "sigma_y": settings["sigma_y"],
        "scale": settings.get("scale"),
        "weighting": settings.get("weighting"),
        "data_var": settings.get("data_var"),
        "jacobian": settings.get("jacobian"),
        "samples_per_image": per_image,
        "sampler": sampler,
        "sampler_options": {k: v for k, v in options.items()},
        "nfe": int(nfe),
        "step": step,
        "num_images": int(len(truth)),
        "psnr_mean": float(np.mean(psnr)),
        "psnr": [float(v) for v in psnr[:, 0]],
        "baseline": "y" if name == "deblur" else "A+y",
        "baseline_psnr_mean": float(np.mean(baseline)),
        "baseline_psnr": [float(v) for v in baseline],
        "labels": [int(v) for v in labels],
        "psnr_space": "[0, 1] data space, clipped",
        "wall_seconds": round(wall, 2),
        "dir": out_dir,
    }
    extra = {}
    if per_image > 1:  # the posterior mean is the MMSE estimate: its PSNR is the one to compare with A⁺y
        mean, std = samples.mean(axis=1), samples.std(axis=1)
        mean_psnr = np.asarray(images.psnr(mean, truth, data_range=1.0))
        report.update(
            posterior_mean_psnr_mean=float(np.mean(mean_psnr)), posterior_mean_psnr=[float(v) for v in mean_psnr]
        )
        extra = dict(samples=samples, posterior_mean=mean, posterior_std=std, posterior_mean_psnr=mean_psnr)
    if jax.process_index() == 0:
        os.makedirs(out_dir, exist_ok=True)
        images.save_npz_atomic(
            os.path.join(out_dir, "restorations.npz"),
            restoration=restored,
            measurement_pinv=naive,
            ground_truth=truth,
            measurement=np.concatenate(measurements).astype(np.float32),
            labels=labels,
            psnr=psnr[:, 0],
            baseline_psnr=baseline,
            nfe=np.int64(nfe),
            checkpoint_step=np.int64(step),
            **extra,
        )
        up = max(1, 64 // data_lib.data_shape(config)[0])
        shown = [("measurement", naive), ("restoration", restored), ("ground_truth", truth)]
        if per_image > 1:
            shown.insert(2, ("posterior_mean", extra["posterior_mean"]))
        for fname, arr in shown:
            images.save_image_grid(os.path.join(out_dir, f"{fname}.png"), images.to_uint8(arr), upscale=up)
        per_row = min(10, len(truth))
        images.save_image_grid(
            os.path.join(out_dir, "comparison.png"),
            images.to_uint8(_comparison_rows([a for _, a in shown], per_row)),
            upscale=up,
            ncol=per_row,
        )
        images.save_json_atomic(os.path.join(out_dir, "report.json"), report)
    summary = {k: report[k] for k in ("operator", "method", "psnr_mean", "baseline_psnr_mean", "nfe", "step", "dir")}
    print(json.dumps(summary))
    runlog.conclude(
        f"restored {len(truth)} test images ({name}, {method}, {int(nfe)} NFE each): PSNR "
        f"{report['psnr_mean']:.2f} dB vs {report['baseline_psnr_mean']:.2f} dB for {report['baseline']}",
        results={"report": os.path.join(out_dir, "report.json")},
        next_command=runlog.command("sample", workdir, "--config.inverse.method=dps"),
    )
    return report
