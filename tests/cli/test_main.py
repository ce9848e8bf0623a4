"""The command line: a real run through ``python -m scoresde.main``, locked overrides, mode dispatch."""

import os
import subprocess
import sys

import pytest

from scoresde import main as main_lib
from scoresde.runlog import read_metrics

from conftest import REPO, cli_env, config_module

CONFIGS = ["toy2d_vp", "digits_vp", "cifar10_vp", "cifar10_subvp", "cifar10_ve", "celeba64_ve", "church256_ve"]


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


def test_cli_trains_with_overrides_and_rejects_unknown_keys(tmp_path):
    workdir = str(tmp_path / "run")
    proc = _cli(
        "--config=configs/toy2d_vp.py:smoke",
        f"--workdir={workdir}",
        "--config.training.n_iters=3",
        "--config.optim.lr=0.002",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_metrics(workdir)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir)) is False  # smoke: TB off

    bad = _cli("--config=configs/toy2d_vp.py:smoke", f"--workdir={workdir}", "--config.training.n_itres=3")
    assert bad.returncode != 0
    assert "n_itres" in bad.stderr


def test_modes_resolve_lazily_with_clear_errors():
    assert main_lib.resolve_mode("train").__name__ == "train"
    assert main_lib.resolve_mode("sample").__name__ == "sample"
    with pytest.raises(ValueError, match="unknown mode 'trian'; expected one of: train, eval, sample"):
        main_lib.resolve_mode("trian")
    for mode in main_lib.MODES:  # every entry is "module:function"
        assert ":" in main_lib.MODES[mode]


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_has_a_command_and_a_smoke_variant(name):
    module = config_module(name)
    assert f"python -m scoresde.main --config=configs/{name}.py" in module.__doc__
    config = module.get_config()
    smoke = module.get_config("smoke")
    assert smoke.training.n_iters <= 3 and smoke.training.batch_size <= 64
    for field in (
        "sde",
        "continuous",
        "reduce_mean",
        "likelihood_weighting",
        "n_iters",
        "snapshot_freq",
        "log_freq",
        "eval_freq",
        "batch_size",
    ):
        assert field in config.training
    for field in ("lr", "warmup", "grad_clip"):
        assert field in config.optim
    for field in ("dataset", "image_size", "num_channels", "centered", "uniform_dequantization", "random_flip"):
        assert field in config.data
    assert "ema_rate" in config.model
    with pytest.raises(ValueError, match="unknown variant 'smok'"):
        module.get_config("smok")


def test_cifar10_recipes_match_the_reference():
    cifar10_ve, cifar10_vp = config_module("cifar10_ve"), config_module("cifar10_vp")

    vp = cifar10_vp.get_config()
    assert (
        vp.training.batch_size,
        vp.optim.lr,
        vp.optim.warmup,
        vp.optim.grad_clip,
        vp.model.ema_rate,
        vp.training.n_iters,
    ) == (128, 2e-4, 5000, 1.0, 0.9999, 1300001)
    assert vp.model.name == "ncsnpp" and vp.training.sde == "vpsde" and vp.data.centered
    assert cifar10_vp.get_config("deep").model.num_res_blocks == 8
    ve = cifar10_ve.get_config()
    assert (ve.model.ema_rate, ve.sampling.predictor, ve.sampling.corrector, ve.sampling.snr) == (
        0.999,
        "reverse_diffusion",
        "langevin",
        0.16,
    )


# A command line that cannot start: exactly one line on stderr, exit status 2, and no workdir.
COMMAND_LINE_ERRORS = [
    (
        ["--config=configs/digits_vp.py:smoke", "--config.training.batch_sz=3"],
        "error: unknown config field training.batch_sz; did you mean training.batch_size?",
    ),
    (
        ["--config=configs/digits_vp.py:smoke", "--mode=smaple"],
        "error: unknown mode 'smaple'; expected one of: train, eval, sample, likelihood, fid_stats, fid, "
        "train_classifier, train_prior, train_autoencoder, train_clip, distill, reflow, posthoc_ema; "
        "did you mean sample?",
    ),
    (
        ["--config=configs/digits_vq.py"],
        "error: no config file 'configs/digits_vq.py'; expected a .py file with get_config(); "
        "did you mean configs/digits_vp.py?",
    ),
    (
        ["--config=configs/digits_vp.py:smok"],
        "error: unknown variant 'smok' of digits_vp; expected one of: smoke; did you mean smoke?",
    ),
    (
        ["--config=configs/digits_vp.py:smoke", "--config.training.batch_size=abc"],
        "error: bad value 'abc' for config field training.batch_size; expected an integer (now 8)",
    ),
    (
        ["--config", "configs/digits_vp.py:smoke", "--config.training.batch_size", "abc"],  # absl's other form
        "error: bad value 'abc' for config field training.batch_size; expected an integer (now 8)",
    ),
    (
        ["--config=configs/digits_vp.py:smoke", "--config.training.continuous=maybe"],
        "error: bad value 'maybe' for config field training.continuous; expected True or False (now True)",
    ),
    (
        ["--config=configs/digits_vp.py:smoke", "--config.optim.lr=fast"],
        "error: bad value 'fast' for config field optim.lr; expected a number (now 0.002)",
    ),
    (
        ["--config=configs/digits_vp.py:smoke", "--config.training=3"],
        "error: config field training is a section; expected one of its fields, e.g. training.allow_config_change",
    ),
]


@pytest.mark.parametrize(
    "args,line", COMMAND_LINE_ERRORS, ids=[f"{i}-{line[7:40]}" for i, (_, line) in enumerate(COMMAND_LINE_ERRORS)]
)
def test_a_bad_command_line_is_one_error_line_and_writes_nothing(tmp_path, args, line):
    workdir = tmp_path / "run"
    proc = _cli(*args, f"--workdir={workdir}", timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip() == line
    assert not workdir.exists()


def test_a_missing_workdir_flag_is_one_error_line():
    proc = _cli("--config=configs/digits_vp.py:smoke", timeout=120)
    assert (proc.returncode, proc.stderr.strip()) == (
        2,
        "error: no --workdir given; expected --workdir=DIR, the run directory",
    )


def test_a_run_that_fails_at_its_start_leaves_no_workdir(tmp_path):
    # An unknown choice found by the mode itself (after the command line passed): the nearest choice is named,
    # and the empty directories the trainer had created are removed.
    workdir = tmp_path / "run"
    proc = _cli("--config=configs/toy2d_vp.py:smoke", f"--workdir={workdir}", "--config.training.sde=vpsd")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: unknown sde 'vpsd'; expected one of: vpsde, vp_cosine, subvpsde, vesde, rectified_flow, edm; "
        "did you mean vpsde?"
    )
    assert not workdir.exists()


def test_explain_names_the_nearest_choice_once():
    assert main_lib.explain(ValueError("unknown solver 'eulr'; expected one of: euler, heun")) == (
        "unknown solver 'eulr'; expected one of: euler, heun; did you mean euler?"
    )
    assert main_lib.explain(ValueError("unknown solver 'zzz'; expected one of: euler, heun")) == (
        "unknown solver 'zzz'; expected one of: euler, heun"
    )
    already = "unknown mode 'smaple'; expected one of: sample; did you mean sample?"
    assert main_lib.explain(ValueError(already)) == already
