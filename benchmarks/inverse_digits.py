"""End to end: inverse problems on the test digits through the CLI, scored by the shared SVC.

For every ``variant:method[:jacobian]`` it runs
``python -m scoresde.main --config=configs/digits_inverse.py:<variant> --workdir=W --mode=sample
--config.inverse.method=<method> [--config.inverse.jacobian=<jacobian>]
--config.inverse.samples_per_image=K [extra overrides]``, times it (wall and the child's user+sys CPU), reads
the run's ``report.json`` and ``restorations.npz`` and scores with
:func:`benchmarks.digits_scorer.class_probabilities` against the true classes:

* ``acc.`` — a single posterior sample is recognised as the true class (mean over the K samples);
* ``post. acc.`` — the posterior predictive: the class of the SVC probabilities averaged over the K samples
  (an estimate of ``argmax_c p(c | y)``). Where ``y`` leaves the class ambiguous (the top half of a 0 is
  also that of a 9), a single exact posterior sample is right only with probability ``Σ_c p(c | y)²``, below
  the ``max_c p(c | y)`` a classifier of ``y`` can reach; averaging over samples recovers the latter.
* ``baseline acc.`` — the SVC on the naive ``A⁺y`` (or the blurred ``y``).

PSNR: of one sample (mean over all), of the posterior mean of the K samples (the MMSE estimate), and of the
naive baseline. Prints a markdown table and writes ``W/inverse/summary.json``.

    python benchmarks/inverse_digits.py --workdir=runs/digits
    python benchmarks/inverse_digits.py --workdir=runs/digits --runs=sr4:dps,inpaint:pigdm:isotropic -- \\
        --config.sampling.steps=50
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks.digits_scorer import class_probabilities  # noqa: E402

OPERATOR = {
    "sr4": "super_resolution 4x",
    "sr2": "super_resolution 2x",
    "inpaint": "inpainting (lower half)",
    "deblur": "deblur",
}
DEFAULT_RUNS = (
    "sr2:replacement,sr2:dps,sr2:pigdm,sr2:pigdm:isotropic,"
    "sr4:replacement,sr4:dps,sr4:pigdm,sr4:pigdm:isotropic,"
    "inpaint:replacement,inpaint:dps,inpaint:pigdm,inpaint:pigdm:isotropic,"
    "deblur:dps,deblur:pigdm,deblur:pigdm:isotropic"
)


def _accuracies(samples, naive, labels):
    n, k = samples.shape[:2]
    probs = class_probabilities(samples.reshape((n * k,) + samples.shape[2:])).reshape(n, k, -1)
    single = float((probs.argmax(-1) == labels[:, None]).mean())
    predictive = float((probs.mean(1).argmax(-1) == labels).mean())
    baseline = float((class_probabilities(naive).argmax(-1) == labels).mean())
    return single, predictive, baseline


def run_one(workdir, spec, samples_per_image, extra):
    variant, method, *rest = spec.split(":")
    cmd = [
        sys.executable,
        "-m",
        "scoresde.main",
        f"--config=configs/digits_inverse.py:{variant}",
        f"--workdir={workdir}",
        "--mode=sample",
        f"--config.inverse.method={method}",
        f"--config.inverse.samples_per_image={samples_per_image}",
    ]
    if rest:  # the isotropic Jacobian is set by data_var too: the digits' own variance, not the 1e4 damping
        cmd += [f"--config.inverse.jacobian={rest[0]}", "--config.inverse.data_var=1.0", "--config.inverse.scale=1.0"]
    cmd += list(extra)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.time() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    out = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])["dir"]
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    with np.load(os.path.join(out, "restorations.npz")) as f:
        samples = f["samples"] if "samples" in f else f["restoration"][:, None]
        naive, labels = f["measurement_pinv"], f["labels"]
    single, predictive, baseline = _accuracies(samples, naive, labels)
    return {
        "command": "python -m scoresde.main " + " ".join(cmd[3:]),
        "spec": spec,
        "variant": variant,
        "method": method + (f" ({rest[0]} J)" if rest else ""),
        "psnr": report["psnr_mean"],
        "posterior_mean_psnr": report.get("posterior_mean_psnr_mean", report["psnr_mean"]),
        "baseline_psnr": report["baseline_psnr_mean"],
        "baseline": report["baseline"],
        "accuracy": single,
        "posterior_accuracy": predictive,
        "baseline_accuracy": baseline,
        "nfe": report["nfe"],
        "step": report["step"],
        "sigma_y": report["sigma_y"],
        "scale": report["scale"],
        "data_var": report.get("data_var"),
        "num_images": report["num_images"],
        "samples_per_image": int(samples.shape[1]),
        "sampler": report["sampler"],
        "sampler_options": report["sampler_options"],
        "wall_s": round(wall, 1),
        "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--runs", default=DEFAULT_RUNS, help="comma-separated variant:method[:jacobian]")
    parser.add_argument("--samples", type=int, default=8, help="posterior samples per image (K)")
    parser.add_argument("extra", nargs="*", help="config overrides passed to every run (after --)")
    args = parser.parse_args()
    rows = []
    for spec in args.runs.split(","):
        row = run_one(args.workdir, spec, args.samples, args.extra)
        print(json.dumps(row), flush=True)
        rows.append(row)
    path = os.path.join(args.workdir, "inverse", "summary.json")
    with open(path, "w") as f:
        json.dump(rows, f, indent=1)
    print(
        "\n| operator | method | PSNR 1 sample | PSNR post. mean | baseline PSNR | acc. | post. acc. | baseline acc. "
        "| NFE | wall s | CPU s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {OPERATOR[r['variant']]} | {r['method']} | {r['psnr']:.2f} | {r['posterior_mean_psnr']:.2f} "
            f"| {r['baseline_psnr']:.2f} ({r['baseline']}) | {r['accuracy']:.2f} | {r['posterior_accuracy']:.2f} "
            f"| {r['baseline_accuracy']:.2f} | {r['nfe']} | {r['wall_s']} | {r['cpu_s']} |"
        )


if __name__ == "__main__":
    main()
