"""End to end: a caption-conditioned digits model trained (2 steps) through the CLI, then sampled from a prompt and
from a prompts file; the grids carry their captions. Then the rest of the pipeline on the same workdir: every
sampler, the likelihood (of the null caption's model, and conditional on each caption), and the refusals of distillation and bad prompts."""

import os

import numpy as np
import pytest

from scoresde import main as cli

from conftest import load_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("t2i"))
    config = load_config("digits_t2i", "smoke")
    config.training.snapshot_sampling = False
    cli.run(config, path, mode="train")
    return path, config


def _sample(workdir, config, **sampling):
    config = config.copy_and_resolve_references()
    for k, v in sampling.items():
        config.sampling[k] = v
    return cli.run(config, workdir, mode="sample")


def test_prompt_and_prompts_file_label_the_grid(workdir, tmp_path):
    path, config = workdir
    _sample(path, config, prompt="a bold seven", method="ddim", steps=5)
    out = os.path.join(path, "samples")
    with np.load(os.path.join(out, "samples_0.npz")) as f:
        assert list(f["captions"]) == ["a bold seven"] * 10
    assert "a bold seven" in open(os.path.join(out, "samples_0.txt")).read()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a thin two\nthe digit 5, slanted to the left\n")
    _sample(path, config, prompts_file=str(prompts), method="ddim", steps=5)
    legend = open(os.path.join(out, "samples_0.txt")).read()
    assert "samples 0-4 (rows 0-1): a thin two" in legend and "samples 5-9 (rows 1-2): the digit 5" in legend
    with pytest.raises(ValueError, match="empty prompt"):
        _sample(path, config, prompt=" . ")
    with pytest.raises(ValueError, match="unknown word 'blue'"):
        _sample(path, config, prompt="a blue seven")


@pytest.mark.parametrize(
    "method,options",
    [
        ("pc", {"steps": 5}),
        ("ode", {}),
        ("dpm_solver", {"steps": 5}),
        ("unipc", {"steps": 5}),
        ("deis", {"steps": 5}),
        ("edm_heun", {"steps": 5}),
        ("dpm_solver++_sde", {"steps": 5}),
        ("euler_ancestral", {"steps": 5}),
    ],
)
def test_every_sampler_samples_captions(workdir, method, options):
    path, config = workdir
    result = _sample(path, config, method=method, prompt="a seven", **options)
    assert result["num_samples"] == 10 and result["nfe"] > 0


def test_likelihood_runs_on_a_caption_conditioned_model(workdir):
    """Bits/dim of the model with the null caption: the unconditional density it learnt by caption dropout."""
    path, config = workdir
    config = config.copy_and_resolve_references()
    config.eval.bpd_num_repeats, config.eval.bpd_rtol = 1, 1e-3
    config.eval.bpd_atol = 1e-3
    result = cli.run(config, path, mode="likelihood")
    assert np.isfinite(result["mean_bpd"]) and result["N"] == 8


def test_conditional_likelihood_uses_each_examples_caption(workdir):
    """bpd_conditional: log p(x | its caption), each example solved under its own caption; the report says so and
    the figure differs from the null caption's, so the captions reached the solve."""
    path, config = workdir
    config = config.copy_and_resolve_references()
    config.eval.bpd_num_repeats, config.eval.bpd_rtol = 1, 1e-3
    config.eval.bpd_atol = 1e-3
    plain = cli.run(config, path, mode="likelihood")
    config.eval.bpd_conditional = True
    cond = cli.run(config, path, mode="likelihood")
    assert cond["conditional"] is True and plain["conditional"] is False and cond["N"] == plain["N"] == 8
    assert np.isfinite(cond["mean_bpd"]) and cond["mean_bpd"] != plain["mean_bpd"]
    # each figure has its own report (and partial file), so neither run replaced or blocked the other
    assert os.path.exists(os.path.join(path, "likelihood", "bpd_test.json"))
    assert os.path.exists(os.path.join(path, "likelihood", "bpd_test_conditional.json"))
