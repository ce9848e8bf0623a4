"""One command per CIFAR-10 recipe of docs/recipes.md: every run it needs, then FID by the paper's protocol.

    python benchmarks/gpu_recipes.py cifar10_cd            # prints the commands, in order
    python benchmarks/gpu_recipes.py cifar10_cd --run      # runs them (a GPU and CIFAR-10 prepared for tfds)
    python benchmarks/gpu_recipes.py --list                # the recipes

A recipe's row in docs/recipes.md is reproduced by its steps: the runs it starts from (a teacher for CD / PD /
ECT / sCD, the autoencoder for LDM, the score model for a classifier), its own training, the reference statistics
of the CIFAR-10 training set (``--mode=fid_stats``) and ``--mode=fid`` over ``--seeds`` sample seeds (default 3:
EDM's protocol, the minimum and the mean ± std of three 50,000-sample FIDs; ``config.eval.fid_seeds``). Each step
is an ordinary ``python -m scoresde.main`` command, resumable: rerunning the script after a preemption resumes the
step it stopped in (finished steps return at once). Runs go to ``--runs`` (default ``runs/``).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys

# recipe -> (its training mode, the recipes whose runs it starts from, extra flags naming those runs)
RECIPES = {
    "cifar10_vp": ("train", (), ()),
    "cifar10_subvp": ("train", (), ()),
    "cifar10_ve": ("train", (), ()),
    "cifar10_vp_cond": ("train", (), ()),
    "cifar10_t2i": ("train", (), ()),
    "cifar10_edm": ("train", (), ()),
    "cifar10_fm": ("train", (), ()),
    "cifar10_ve_classifier": ("train_classifier", ("cifar10_ve",), ()),
    "cifar10_cd": ("distill", ("cifar10_vp",), ("--config.distill.teacher_workdir={runs}/cifar10_vp",)),
    "cifar10_ct": ("distill", (), ()),
    "cifar10_pd": ("distill", ("cifar10_vp",), ("--config.distill.teacher_workdir={runs}/cifar10_vp",)),
    "cifar10_ect": ("distill", ("cifar10_vp",), ("--config.distill.teacher_workdir={runs}/cifar10_vp",)),
    "cifar10_scm": ("distill", (), ()),
    "cifar10_meanflow": ("distill", (), ()),
    "cifar10_ae": ("train_autoencoder", (), ()),
    "cifar10_ldm": ("train", ("cifar10_ae",), ("--config.latent.autoencoder_workdir={runs}/cifar10_ae",)),
}
# a classifier trains into the score model's workdir and is measured by classifier-guided samples of it
SHARED_WORKDIR = {"cifar10_ve_classifier": "cifar10_ve"}
NO_FID = {"cifar10_ae"}  # an autoencoder is measured by its reconstructions (its run's closing line)


def workdir(name: str, runs: str) -> str:
    return f"{runs}/{SHARED_WORKDIR.get(name, name)}"


def _main(name: str, runs: str, mode: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "scoresde.main",
        f"--config=configs/{name}.py",
        f"--workdir={workdir(name, runs)}",
        f"--mode={mode}",
        *extra,
    ]


def commands(name: str, runs: str = "runs", seeds: int = 3) -> list[list[str]]:
    """The commands that reproduce ``name``'s row, its prerequisites first (each once).

    Raises:
        ValueError: an unknown recipe (naming the known ones).
    """
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; expected one of: {', '.join(sorted(RECIPES))}")
    out: list[list[str]] = []

    def add(n: str, with_fid: bool) -> None:
        mode, needs, flags = RECIPES[n]
        for need in needs:
            add(need, with_fid=False)
        cmd = _main(n, runs, mode, *(f.format(runs=runs) for f in flags))
        if cmd not in out:
            out.append(cmd)
        if with_fid and n not in NO_FID:
            flags_fmt = [f.format(runs=runs) for f in flags]
            out.append(_main(n, runs, "fid_stats", *flags_fmt))
            out.append(_main(n, runs, "fid", f"--config.eval.fid_seeds={seeds}", *flags_fmt))

    add(name, with_fid=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", nargs="?", help="a configs/cifar10_*.py name, e.g. cifar10_cd")
    ap.add_argument("--run", action="store_true", help="run the commands (default: print them)")
    ap.add_argument("--runs", default="runs", help="the folder of the runs")
    ap.add_argument("--seeds", type=int, default=3, help="FID sample seeds (EDM: 3)")
    ap.add_argument("--list", action="store_true", help="list the recipes")
    args = ap.parse_args(argv)
    if args.list or not args.recipe:
        print("\n".join(sorted(RECIPES)))
        return 0
    try:
        cmds = commands(args.recipe, args.runs, args.seeds)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for cmd in cmds:
        line = shlex.join(["python", *cmd[1:]])
        print(line, flush=True)
        if args.run:
            rc = subprocess.call(cmd)
            if rc:
                print(f"error: step failed (exit {rc}): {line}; rerun this script to resume it", file=sys.stderr)
                return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
