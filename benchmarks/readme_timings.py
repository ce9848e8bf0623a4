"""Measures every timing figure of README.md on this machine, with the machine and its load beside them.

    python benchmarks/readme_timings.py                      # the README's runs (tens of minutes on 2 cores)
    python benchmarks/readme_timings.py --install            # also README command (a)'s install, in a fresh venv
    python benchmarks/readme_timings.py --smoke              # checks the script: tiny variants, about a minute

Each figure is the wall time of the README's own command, run as a user runs it (``python -m scoresde.main``
in a fresh process, so start-up and compilation count), in order, each on the outputs of the ones before:

- ``install``: ``pip install -e .`` in a fresh virtual environment (only with ``--install``; pip's cache
  makes a large difference: the line says whether ``--no-cache`` was used);
- ``train_digits``: README command (a), ``configs/digits_vp.py``;
- ``likelihood_digits``: ``--mode=likelihood`` on that run with the digits default;
- ``distill_digits``: consistency distillation of that run (``configs/digits_cd.py``);
- ``latent_digits``: the two stages of latent diffusion (``digits_ae``, then ``digits_ldm``), and each stage;
- ``flow_matching_digits``: ``configs/digits_fm.py``;
- ``reflow_digits``: ``configs/digits_reflow.py`` on the flow-matching run.

Load from other processes makes every figure longer: the load average is printed before and after, and a
figure measured under load says so. Prints one line per figure and, last, one JSON object with them all.
Timings are meaningful only on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def machine() -> dict:
    """Cores, CPU model, Python and the load average now."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


# --smoke: the same sequence on the 2-D toy configs where they exist (an MLP compiles in seconds) and the
# smallest work each mode allows; the latent stages have no toy config and run the digits smoke variants.
_SMOKE_CONFIG = {
    "digits_vp": "toy2d_vp",
    "digits_cd": "toy2d_cd",
    "digits_fm": "toy2d_fm",
    "digits_reflow": "toy2d_reflow",
}
_SMOKE_TRAIN = ["--config.training.snapshot_sampling=False"]
_SMOKE_LIKELIHOOD = ["--config.eval.bpd_num_repeats=1", "--config.eval.num_eval_batches=1"]


def steps(root: str, smoke: bool) -> list[tuple[str, list[str]]]:
    """``(figure, CLI arguments)`` in the order they run; later steps use the workdirs of earlier ones."""

    def config(name):
        return f"--config=configs/{_SMOKE_CONFIG.get(name, name)}.py:smoke" if smoke else f"--config=configs/{name}.py"

    def run(name):
        return f"--workdir={os.path.join(root, name)}"

    train, bpd = (_SMOKE_TRAIN, _SMOKE_LIKELIHOOD) if smoke else ([], [])
    return [
        ("train_digits", [config("digits_vp"), run("digits"), *train]),
        ("likelihood_digits", [config("digits_vp"), run("digits"), "--mode=likelihood", *bpd]),
        (
            "distill_digits",
            [
                config("digits_cd"),
                run("digits_cd"),
                "--mode=distill",
                f"--config.distill.teacher_workdir={os.path.join(root, 'digits')}",
                *train,
            ],
        ),
        ("latent_digits_autoencoder", [config("digits_ae"), run("digits_ae"), "--mode=train_autoencoder"]),
        (
            "latent_digits_score_model",
            [
                config("digits_ldm"),
                run("digits_ldm"),
                f"--config.latent.autoencoder_workdir={os.path.join(root, 'digits_ae')}",
                *train,
            ],
        ),
        ("flow_matching_digits", [config("digits_fm"), run("digits_fm"), *train]),
        (
            "reflow_digits",
            [
                config("digits_reflow"),
                run("digits_reflow"),
                "--mode=reflow",
                f"--config.reflow.source_workdir={os.path.join(root, 'digits_fm')}",
                *train,
            ],
        ),
    ]


def timed(cmd: list[str], env: dict, log) -> float:
    """Runs ``cmd`` in the repository root, its output into ``log``; its wall time in seconds.

    Raises:
        RuntimeError: the command failed (naming it and where its output is).
    """
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with status {proc.returncode}; its output is in {log.name}")
    return seconds


def install(root: str, env: dict, log, no_cache: bool) -> tuple[float, str]:
    """``python3 -m venv`` + ``pip install -e .`` of this checkout, timed together as README command (a) runs them;
    returns the seconds and the new environment's python."""
    venv = os.path.join(root, "venv")
    python = os.path.join(venv, "bin", "python")
    t0 = time.perf_counter()
    timed([sys.executable, "-m", "venv", venv], env, log)
    timed([python, "-m", "pip", "install", "-q", *(["--no-cache-dir"] if no_cache else []), "-e", REPO], env, log)
    return time.perf_counter() - t0, python


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:04.1f} s" if seconds >= 60 else f"{seconds:.1f} s"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="smoke variants of every config: checks the script")
    ap.add_argument("--install", action="store_true", help="also time the install in a fresh virtual environment")
    ap.add_argument("--no-cache", action="store_true", help="with --install: pip without its cache (a first install)")
    ap.add_argument("--root", default=None, help="where the runs go (default: a temporary directory, removed)")
    ap.add_argument("--only", default="", help="comma-separated figures to run (and those they depend on)")
    args = ap.parse_args(argv)

    root = args.root or tempfile.mkdtemp(prefix="readme_timings_")
    os.makedirs(root, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device, as README's commands run
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH", "")) if p)
    before = machine()
    print(
        f"machine: {before['cores']} cores, {before['cpu']}, Python {before['python']}; "
        f"load average {before['load_average']} (1, 5, 15 min)",
        flush=True,
    )
    figures = {}
    python = sys.executable
    wanted = set(filter(None, args.only.split(",")))
    needs = {
        "likelihood_digits": {"train_digits"},
        "distill_digits": {"train_digits"},
        "latent_digits_score_model": {"latent_digits_autoencoder"},
        "reflow_digits": {"flow_matching_digits"},
    }
    for name in list(wanted):
        wanted |= needs.get(name, set())
    try:
        with open(os.path.join(root, "output.log"), "w") as log:
            if args.install:
                figures["install"], python = install(root, env, log, args.no_cache)
                print(f"install{' (no pip cache)' if args.no_cache else ''}: {minutes(figures['install'])}", flush=True)
            for name, cli in steps(root, args.smoke):
                if wanted and name not in wanted:
                    continue
                figures[name] = timed([python, "-m", "scoresde.main", *cli], env, log)
                print(f"{name}: {minutes(figures[name])}  (python -m scoresde.main {' '.join(cli)})", flush=True)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)
    if {"latent_digits_autoencoder", "latent_digits_score_model"} <= set(figures):
        figures["latent_digits"] = figures["latent_digits_autoencoder"] + figures["latent_digits_score_model"]
        print(f"latent_digits (both stages): {minutes(figures['latent_digits'])}", flush=True)
    after = machine()
    # the load after includes these runs; the load before is what other processes add
    busy = before["load_average"][0] > 0.5
    print(
        f"load average after: {after['load_average']}"
        + ("; other processes were running before: these figures are longer than on an idle machine" if busy else ""),
        flush=True,
    )
    print(
        json.dumps(
            {
                "machine": before,
                "load_average_after": after["load_average"],
                "smoke": args.smoke,
                "seconds": {k: round(v, 1) for k, v in figures.items()},
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
