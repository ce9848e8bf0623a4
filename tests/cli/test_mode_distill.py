"""``--mode=distill`` end to end on smoke configs: CD from a toy teacher trained here, PD, CT; exact resume;
the self-contained sample mode of a student workdir."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from scoresde import main as main_lib
from scoresde.runlog import read_metrics

from conftest import REPO, cli_env, load_config


def _cli(*args, timeout=300):
    env = cli_env()
    return subprocess.run(
        [sys.executable, "-m", "scoresde.main", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _config(name, variant="smoke", **overrides):
    config = load_config(name, variant)
    for path, value in overrides.items():
        section, field = path.split("__")
        config[section][field] = value
    return config


# The toy MLP stands in for the U-Net wherever the mode's mechanics are tested (compiles in seconds); the
# digits configs run the same paths with the U-Net under -m slow.
TOY_PD = dict(
    distill__method="pd",
    distill__start_steps=4,
    model__output="v",
    sampling__method="ddim",
    sampling__steps=1,
    sampling__noise_removal=False,
)
TOY_CT = dict(
    distill__method="ct",
    distill__metric="pseudo_huber",
    distill__weighting="icm",
    distill__schedule="lognormal",
    distill__ct_s1=40,
)


@pytest.fixture(scope="module")
def toy_teacher(tmp_path_factory):
    """A 2-step toy2d_vp smoke teacher (the toy2d_cd student's architecture)."""
    workdir = str(tmp_path_factory.mktemp("toy") / "teacher")
    main_lib.run(load_config("toy2d_vp", "smoke"), workdir, "train")
    return workdir


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory):
    """A 2-step digits_vp smoke teacher (the digits student configs' architecture)."""
    workdir = str(tmp_path_factory.mktemp("digits") / "teacher")
    main_lib.run(load_config("digits_vp", "smoke"), workdir, "train")
    return workdir


def test_toy_cd_through_the_cli_then_sample_without_the_teacher(tmp_path):
    teacher, student = str(tmp_path / "teacher"), str(tmp_path / "cd")
    proc = _cli("--config=configs/toy2d_vp.py:smoke", f"--workdir={teacher}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _cli(
        "--config=configs/toy2d_cd.py:smoke",
        f"--workdir={student}",
        "--mode=distill",
        f"--config.distill.teacher_workdir={teacher}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "scoresde distill (cd)" in proc.stderr and "next: python -m scoresde.main" in proc.stderr
    records = read_metrics(student)
    assert [r["step"] for r in records] == [1, 2] and all(r["num_scales"] == 18 for r in records)
    assert os.path.exists(os.path.join(student, "samples", "snapshot_00000002.png"))
    record = json.load(open(os.path.join(student, "student.json")))
    assert (record["method"], record["network"], record["sampling"]) == (
        "cd",
        "consistency",
        {"method": "consistency", "steps": 1},
    )
    assert len(record["teacher_hash"]) >= 16  # the teacher's parameters, not only its step
    # self-contained: the teacher is gone, and the sample mode needs nothing of it
    shutil.rmtree(teacher)
    proc = _cli(
        "--config=configs/toy2d_cd.py:smoke",
        f"--workdir={student}",
        "--mode=sample",
        "--config.sampling.method=consistency",
        "--config.sampling.steps=2",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
    assert result["nfe"] == 2 and result["num_samples"] == 128
    samples = np.load(os.path.join(student, "samples", "samples_0.npz"))["samples"]
    assert samples.shape == (64, 2) and np.all(np.isfinite(samples))


def test_consistency_workdir_refuses_a_score_sampler(tmp_path, toy_teacher):
    workdir = str(tmp_path / "cd")
    main_lib.run(_config("toy2d_cd", distill__teacher_workdir=toy_teacher), workdir, "distill")
    with pytest.raises(ValueError, match="consistency model .* --config.sampling.method=consistency, not 'pc'"):
        main_lib.run(_config("toy2d_cd", sampling__method="pc"), workdir, "sample")
    with pytest.raises(ValueError, match="holds a consistency model"):  # the teacher's own config
        main_lib.run(load_config("toy2d_vp", "smoke"), workdir, "sample")
    out = main_lib.run(_config("toy2d_cd", distill__teacher_workdir="/nonexistent"), workdir, "sample")
    assert out["nfe"] == 1


def _pd_rounds_and_sampling(tmp_path, name, teacher, **overrides):
    workdir = str(tmp_path / "pd")
    out = main_lib.run(_config(name, distill__teacher_workdir=teacher, **overrides), workdir, "distill")
    assert out["step"] == 2
    records = read_metrics(workdir)
    assert [(r["round"], r["student_steps"]) for r in records] == [(0, 2), (1, 1)]
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2"]  # every round
    result = main_lib.run(_config(name, **{**overrides, "distill__teacher_workdir": "/nonexistent"}), workdir, "sample")
    assert result["nfe"] == 1  # ddim at the final PD step count, no teacher
    assert json.load(open(os.path.join(workdir, "student.json")))["model_output"] == "v"


def test_pd_rounds_checkpoint_and_the_student_samples_with_ddim_at_its_step_count(tmp_path, toy_teacher):
    _pd_rounds_and_sampling(tmp_path, "toy2d_cd", toy_teacher, training__snapshot_freq=1, **TOY_PD)


@pytest.mark.slow
def test_digits_pd_smoke(tmp_path, digits_teacher):
    _pd_rounds_and_sampling(tmp_path, "digits_pd", digits_teacher)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["digits_cd", "digits_ct"])
def test_digits_consistency_smoke_then_sample(tmp_path, digits_teacher, name):
    workdir = str(tmp_path / name)
    main_lib.run(_config(name, distill__teacher_workdir=digits_teacher), workdir, "distill")
    out = main_lib.run(_config(name, sampling__steps=2), workdir, "sample")
    assert out["nfe"] == 2


@pytest.mark.parametrize("method", ["cd", "ct", "pd"])
def test_killed_run_resumes_exactly(tmp_path, toy_teacher, method):
    """Run to the end, drop the checkpoints (and log lines) after ``drop_after`` as a kill would, resume:
    the resumed steps log the same losses and end at the same parameters, EMA, target and teacher, bit for
    bit. PD resumes across a round boundary (2 steps per round), so the teacher swap must be restored."""
    n_iters, drop_after = 4, 1
    overrides = dict(
        training__n_iters=n_iters,
        training__snapshot_freq=n_iters,
        training__snapshot_freq_for_preemption=1,
        training__keep_checkpoints=10,
        training__snapshot_sampling=False,
        distill__teacher_workdir=toy_teacher,
        **{"cd": {}, "ct": TOY_CT, "pd": TOY_PD}[method],
    )
    name = "toy2d_cd"
    workdir = str(tmp_path / "run")
    main_lib.run(_config(name, **overrides), workdir, "distill")
    full = read_metrics(workdir)
    final = np.load(_export(workdir, n_iters))
    for step in range(drop_after + 1, n_iters + 1):
        shutil.rmtree(os.path.join(workdir, "checkpoints", str(step)))
    main_lib.run(_config(name, **overrides), workdir, "distill")
    resumed = read_metrics(workdir)
    assert [r["step"] for r in resumed] == list(range(1, n_iters + 1))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]
    again = np.load(_export(workdir, n_iters))
    for k in final.files:
        np.testing.assert_array_equal(again[k], final[k], err_msg=k)


def _export(workdir, step):
    """The checkpoint's params, EMA and aux trees (target, teacher) flattened into an .npz."""
    import jax

    from scoresde.checkpointing import Checkpointer

    ckpt = Checkpointer(workdir, max_to_keep=None, async_save=False)
    try:
        restored = ckpt.manager.restore(step)
    finally:
        ckpt.close()
    leaves = jax.tree_util.tree_leaves_with_path({k: restored[k] for k in ("params", "ema_params", "opt_state")})
    path = os.path.join(workdir, f"export_{len(os.listdir(workdir))}.npz")
    np.savez(path, **{jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves})
    return path


def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown config.distill.method 'xd'; expected one of: cd, ct, pd"):
        main_lib.run(_config("digits_cd", distill__method="xd"), str(tmp_path / "a"), "distill")
    with pytest.raises(ValueError, match="needs config.distill.teacher_workdir"):
        main_lib.run(_config("digits_cd", distill__teacher_workdir=""), str(tmp_path / "b"), "distill")
    with pytest.raises(ValueError, match="objective='ct' .* runs with --mode=distill"):
        main_lib.run(load_config("digits_ct", "smoke"), str(tmp_path / "c"), "train")
    with pytest.raises(ValueError, match="halves the step count"):
        main_lib.run(
            _config("digits_pd", distill__start_steps=6, distill__teacher_workdir="x"), str(tmp_path / "d"), "distill"
        )


FEW_STEP_CONFIGS = ["toy2d_cd", "digits_cd", "digits_ct", "digits_pd", "cifar10_cd", "cifar10_ct", "cifar10_pd"]


@pytest.mark.parametrize("name", FEW_STEP_CONFIGS)
def test_few_step_configs_have_a_command_a_smoke_variant_and_their_sampler(name):
    from conftest import config_module

    module = config_module(name)
    assert f"python -m scoresde.main --config=configs/{name}.py" in module.__doc__ and "--mode=" in module.__doc__
    config, smoke = module.get_config(), module.get_config("smoke")
    assert smoke.training.n_iters <= 3 and smoke.training.batch_size <= 64
    method = config.distill.method
    assert method in ("cd", "ct", "pd")
    assert config.sampling.method == ("ddim" if method == "pd" else "consistency") and config.sampling.steps == 1
    if method == "pd":
        # cifar10_pd: the official CIFAR-10 student predicts x (mean_type='x'); the digits student v
        assert config.model.output == ("x0" if name == "cifar10_pd" else "v") and not config.sampling.noise_removal
    if method == "ct":
        assert config.training.objective == "ct" and config.distill.target_ema == 0.0
    with pytest.raises(ValueError, match="unknown variant 'smok'"):
        module.get_config("smok")
