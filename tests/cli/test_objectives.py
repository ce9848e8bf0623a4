"""Flow matching and EDM through the config edge and the CLI: rectified-flow / EDM processes, flow-matching / EDM
objectives, sampling and likelihood on their workdirs, and ``--mode=reflow``."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scoresde import build, checkpointing, losses, parameterization, sampling
from scoresde import sde as sde_lib
from scoresde.modes import likelihood as likelihood_mode
from scoresde.modes import reflow as reflow_mode
from scoresde.modes import train
from scoresde.modes.sample import sample
from scoresde.runlog import read_metrics

from conftest import REPO, cli_env, config_module, load_config

NEW_CONFIGS = [
    "toy2d_fm",
    "digits_fm",
    "cifar10_fm",
    "cifar10_edm",
    "toy2d_reflow",
    "digits_reflow",
    "digits_t2i_reflow",
]


def _toy_edm(variant="smoke"):
    config = load_config("toy2d_vp", variant)
    t = config.training
    t.sde, t.objective = "edm", "edm"
    config.model.sigma_min, config.model.sigma_max = 0.002, 80.0
    config.sampling.method, config.sampling.steps, config.sampling.noise_removal = "edm_heun", 6, False
    return config


@pytest.mark.parametrize("name", NEW_CONFIGS)
def test_new_configs_have_a_command_and_a_smoke_variant(name):
    module = config_module(name)
    assert f"python -m scoresde.main --config=configs/{name}.py" in module.__doc__
    smoke = module.get_config("smoke")
    assert smoke.training.n_iters <= 3 and smoke.training.batch_size <= 64
    config = module.get_config()
    sde = build.make_sde(config)
    assert build.training_objective(config) in ("flow_matching", "edm")
    build.make_loss_fn(config, sde)  # objective and process agree
    build.sampling_options(config)
    with pytest.raises(ValueError, match="unknown variant 'smok'"):
        module.get_config("smok")


def test_processes_and_conventions_from_the_config():
    fm = load_config("digits_fm")
    sde = build.make_sde(fm)
    assert isinstance(sde, sde_lib.RectifiedFlow) and sde.T == 1.0
    fm.model.rf_T = 0.999
    assert build.make_sde(fm).T == 0.999
    assert build.score_convention(fm, sde) == {"output": "flow_velocity", "time_label": "999t"}
    toy = load_config("toy2d_fm")
    assert build.score_convention(toy, build.make_sde(toy)) == {"output": "flow_velocity", "time_label": "t"}

    edm = load_config("cifar10_edm")
    sde = build.make_sde(edm)
    assert isinstance(sde, sde_lib.EDMSDE) and (sde.sigma_min, sde.sigma_max, sde.T) == (0.002, 80.0, 80.0)
    model = build.make_score_model(edm)
    assert (model.output, model.time_label, model.sigma_data) == ("edm", "edm_noise", 0.5)
    assert sampling.default_eps(sde) == 0.002

    vp = load_config("digits_vp")  # dsm: the reference convention, unchanged
    assert build.score_convention(vp, build.make_sde(vp)) == {"output": "eps", "time_label": "999t"}


@pytest.mark.parametrize(
    "field,value,message",
    [
        (
            "training.objective",
            "flow_matchin",
            "unknown objective 'flow_matchin'; expected one of: dsm, flow_matching, edm",
        ),
        (
            "training.sde",
            "vpsde",
            "objective='flow_matching' is defined on the rectified_flow process; got config.training.sde='vpsde'",
        ),
        ("model.output", "eps", "config.model.output='eps' contradicts config.training.objective='flow_matching'"),
        ("training.time_sampling", "beta", "unknown config.training.time_sampling 'beta'"),
    ],
)
def test_bad_objective_settings_are_clear_errors(field, value, message):
    config = load_config("toy2d_fm", "smoke")
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(ValueError, match=message):
        build.make_loss_fn(config, build.make_sde(config))


def test_loss_fns_feed_the_network_its_labels_and_match_the_math():
    """The edge's losses equal the math's losses on the same key, with the configured time labels."""
    x = jax.random.normal(jax.random.key(0), (16, 2))
    key = jax.random.key(1)
    w = jnp.asarray([[0.3, -0.7]])

    def net_fn(xx, labels):  # depends on the label, so a wrong label convention changes the loss
        return xx * w + jnp.sin(labels)[:, None]

    fm = load_config("toy2d_fm", "smoke")
    fm.model.time_label = "999t"
    rf = build.make_sde(fm)
    got, _ = build.make_loss_fn(fm, rf)(net_fn, x, key)
    want, _ = losses.flow_matching_loss(lambda xx, t: net_fn(xx, 999.0 * t), x, key)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    fm.training.time_sampling = "logit_normal"
    got_ln, _ = build.make_loss_fn(fm, rf)(net_fn, x, key)
    want_ln, _ = losses.flow_matching_loss(lambda xx, t: net_fn(xx, 999.0 * t), x, key, time_sampling="logit_normal")
    np.testing.assert_allclose(got_ln, want_ln, rtol=1e-6)
    assert abs(float(got_ln) - float(got)) > 1e-4

    edm = _toy_edm()
    edm.model.sigma_data = 0.7
    esde = build.make_sde(edm)
    got, _ = build.make_loss_fn(edm, esde)(net_fn, x, key)
    denoiser = parameterization.model_denoiser(net_fn, esde, output="edm", time_label="edm_noise", sigma_data=0.7)
    want, _ = losses.edm_loss(denoiser, x, key, sigma_data=0.7)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    wrong, _ = losses.edm_loss(denoiser, x, key, sigma_data=0.5)
    assert abs(float(wrong) - float(got)) > 1e-4


def test_flow_matching_workdir_trains_samples_with_every_grid_method_and_has_a_likelihood(tmp_path):
    config = load_config("toy2d_fm", "smoke")
    workdir = str(tmp_path)
    out = train.train(config, workdir)
    assert out["step"] == 2 and np.isfinite(out["loss"])
    records = read_metrics(workdir)
    assert "eval_loss" in records[-1] and np.isfinite(records[-1]["eval_loss"])
    assert os.path.exists(os.path.join(workdir, "samples", "snapshot_00000002.png"))

    nfes = {}
    for method in ("dpm_solver++", "unipc", "deis", "euler_ancestral", "dpm_solver++_sde", "ddim"):
        config.sampling.method, config.sampling.steps, config.sampling.order = method, 4, 0
        nfes[method] = sample(config, workdir)["nfe"]
        with np.load(os.path.join(workdir, "samples", "samples_0.npz")) as f:
            s = f["samples"]
            assert json.loads(str(f["sampler"]))["method"] == method
        assert s.shape == (config.eval.sample_batch_size, 2) and np.all(np.isfinite(s)), method
    assert nfes == {m: 4 for m in nfes}, nfes

    config.sampling.method = "pc"
    with pytest.raises(ValueError, match=r"method 'pc' integrates the SDE's drift, infinite at alpha\(T\) = 0"):
        sample(config, workdir)
    config.model.rf_T = 0.999  # pc integrates the drift from T < 1
    config.sampling.steps = 5
    with pytest.raises(build.ConfigMismatchError, match=r"model\.rf_T: checkpoint 1\.0, now 0\.999"):
        sample(config, workdir)  # another SDE than the checkpoint's: only deliberately
    config.training.allow_config_change = True
    assert sample(config, workdir)["nfe"] == 5  # toy2d_fm: noise_removal=False
    config.training.allow_config_change = False
    with np.load(os.path.join(workdir, "samples", "samples_0.npz")) as f:
        assert np.all(np.isfinite(f["samples"]))

    config.eval.bpd_batch_size, config.eval.num_eval_batches, config.eval.bpd_num_repeats = 8, 1, 1
    config.eval.bpd_rtol = config.eval.bpd_atol = 1e-4
    config.model.rf_T = 1.0  # the flow's velocity form is finite at t = 1: the likelihood starts there
    report = likelihood_mode.likelihood(config, workdir)
    assert report["N"] == 8 and np.isfinite(report["mean_bpd"]) and report["mean_nfe"] > 0


def test_edm_workdir_trains_and_samples(tmp_path):
    config = _toy_edm()
    workdir = str(tmp_path)
    assert train.train(config, workdir)["step"] == 2
    # edm_heun ends at sigma_min with a Heun step (2 NFE per step); EDM's own grid appends sigma = 0 (2N - 1)
    for method, steps, nfe in (("edm_heun", 6, 12), ("unipc", 5, 5), ("euler_ancestral", 5, 5), ("dpm_solver++", 5, 5)):
        config.sampling.method, config.sampling.steps = method, steps
        result = sample(config, workdir)
        assert result["nfe"] == nfe, (method, result)
        with np.load(os.path.join(workdir, "samples", "samples_0.npz")) as f:
            assert np.all(np.isfinite(f["samples"])), method


def _couplings_map(score, sde, noise):
    """The smoke reflow configs' coupling sampler (DPM-Solver++(2M), 4 steps) from the stored noise."""
    x, _ = sampling.sample(
        score,
        sde,
        noise.shape,
        jax.random.key(0),
        method="dpm_solver++",
        x_init=jnp.asarray(noise),
        steps=4,
        order=2,
        eps=build.sampling_eps(sde),
    )
    return np.asarray(x)


def test_reflow_couplings_are_the_source_flow_map_and_resume(tmp_path):
    source, workdir = str(tmp_path / "source"), str(tmp_path / "reflow")
    config = load_config("toy2d_reflow", "smoke")
    _perturbed_source(config, source)
    config.reflow.source_workdir = source
    out = reflow_mode.reflow_mode(config, workdir)
    assert out["step"] == 2 and out["num_pairs"] == 128 and out["coupling_nfe"] == 4 and np.isfinite(out["loss"])
    chunks = sorted(os.listdir(reflow_mode.couplings_dir(workdir)))
    assert chunks == ["couplings_00000.npz", "couplings_00001.npz"]

    # The stored samples are the source's deterministic map of the stored noise.
    model, _ = build.load_model(source, config)
    score_fn = build.make_score_model(config).score_fn(model)
    with np.load(os.path.join(reflow_mode.couplings_dir(workdir), chunks[1])) as f:
        noise, stored = f["noise"], f["samples"]
    np.testing.assert_allclose(stored, _couplings_map(score_fn, build.make_sde(config), noise), atol=1e-5)
    assert np.mean(np.abs(noise - stored)) > 0.1  # the map is not the identity: the source moves the noise

    # Killed after the couplings: only training reruns, from the stored pairs.
    os.remove(os.path.join(workdir, "reflow", chunks[1]))
    config.training.n_iters = 3
    pairs = reflow_mode.generate_couplings(config, workdir, source)
    assert pairs["generated_chunks"] == 1
    with np.load(os.path.join(reflow_mode.couplings_dir(workdir), chunks[1])) as f:
        np.testing.assert_array_equal(f["samples"], stored)  # regenerated from its own key: the same pairs
    assert reflow_mode.reflow_mode(config, workdir)["step"] == 3
    assert [r["step"] for r in read_metrics(workdir)] == [1, 2, 3]

    config.reflow.steps = 5  # other couplings than the ones on disk
    with pytest.raises(ValueError, match="remove .*reflow to regenerate the couplings"):
        reflow_mode.generate_couplings(config, workdir, source)
    config.reflow.method = "euler_ancestral"
    with pytest.raises(ValueError, match="reflow couplings need a deterministic sampler"):
        reflow_mode.reflow_mode(config, workdir)
    config.reflow.method, config.reflow.source_workdir = "dpm_solver++", ""
    with pytest.raises(ValueError, match="needs config.reflow.source_workdir"):
        reflow_mode.reflow_mode(config, workdir)


def _perturbed_source(config, source, step=7):
    """A source flow whose map moves the noise: every parameter perturbed (the output layer starts at zero, which
    would make the flow the identity and the couplings ``(z, z)``)."""
    params = nnx.to_pure_dict(nnx.state(build.get_model(config, rngs=nnx.Rngs(0)), nnx.Param))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    pure = jax.tree.unflatten(tree, [p + 0.3 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
    checkpointing.save_model_checkpoint(source, params=pure, ema_params=pure, step=step, config=config)


def _class_conditional_reflow():
    config = load_config("toy2d_reflow", "smoke")
    config.data.dataset = "gmm_grid"
    from scoresde import config_defaults

    return config_defaults.add_guidance(config, 9, p_uncond=0.1)


def test_reflow_of_a_class_conditional_flow_stores_each_pairs_label_and_trains_on_it(tmp_path):
    source, workdir = str(tmp_path / "source"), str(tmp_path / "reflow")
    config = _class_conditional_reflow()
    _perturbed_source(config, source)
    config.reflow.source_workdir = source
    out = reflow_mode.reflow_mode(config, workdir)
    assert out["step"] == 2 and out["num_pairs"] == 128 and np.isfinite(out["loss"])

    # Chunk i holds the labels of the i-th training batch, and its samples are the source's conditional flow map
    # of its noise under those labels (not under others).
    from scoresde import data as data_lib

    batches = data_lib.get_dataset(config, split="train", batch_size=64, start_step=0)
    model, _ = build.load_model(source, config)
    score_model = build.make_score_model(config)
    sde = build.make_sde(config)

    def flow_map(noise, labels):
        return _couplings_map(score_model.score_fn(model, y=jnp.asarray(labels)), sde, noise)

    for i in range(2):
        expected_labels = next(batches)["label"]
        with np.load(os.path.join(reflow_mode.couplings_dir(workdir), f"couplings_{i:05d}.npz")) as f:
            noise, stored, labels = f["noise"], f["samples"], f["label"]
            assert json.loads(str(f["identity"]))["condition"] == "class"
        np.testing.assert_array_equal(labels, expected_labels)
        assert len(np.unique(labels)) > 3
        # float32 rounding of the jitted generator against this eager call (the perturbed flow reaches |x| ~ 30)
        np.testing.assert_allclose(stored, flow_map(noise, labels), rtol=1e-5, atol=1e-5)
        assert np.mean(np.abs(stored - flow_map(noise, (labels + 1) % 9))) > 0.05  # the label matters

    # The training batches keep each pair with its own label.
    pairs = reflow_mode.generate_couplings(config, workdir, source)
    assert pairs["generated_chunks"] == 0 and pairs["condition_key"] == "label"
    batch = next(reflow_mode._pair_batches(pairs, 32, 0, 5))
    for x, z, y in zip(batch["image"], batch["noise"], batch["label"]):
        row = int(np.flatnonzero(np.all(pairs["noise"] == z, axis=1))[0])
        np.testing.assert_array_equal(pairs["samples"][row], x)
        assert pairs["conditions"][row] == y

    # Guided couplings: the source read as (1 + w) v(x | c) - w v(x | null), score and denoiser alike.
    w = 2.0
    config.reflow.source_guidance = w
    with pytest.raises(ValueError, match="remove .*reflow to regenerate the couplings"):
        reflow_mode.generate_couplings(config, workdir, source)
    guided_dir = str(tmp_path / "guided")
    pairs = reflow_mode.generate_couplings(config, guided_dir, source)
    noise, labels = pairs["noise"][:64], pairs["conditions"][:64]
    cond = score_model.score_fn(model, y=jnp.asarray(labels))
    null = score_model.score_fn(model, y=jnp.full_like(jnp.asarray(labels), 9))
    guided = parameterization.with_denoiser(
        lambda x, t: (1 + w) * cond(x, t) - w * null(x, t),
        lambda x, t: (1 + w) * cond.denoiser(x, t) - w * null.denoiser(x, t),
    )
    np.testing.assert_allclose(pairs["samples"][:64], _couplings_map(guided, sde, noise), rtol=1e-5, atol=1e-5)
    assert np.mean(np.abs(pairs["samples"][:64] - flow_map(noise, labels))) > 0.05


REFLOW_PARITY = r"""
import json, sys
import jax
import numpy as np
jax.config.update("jax_numpy_rank_promotion", "raise")
from scoresde import build, config_defaults
from scoresde.modes import reflow
from scoresde.runlog import read_metrics

config = build.load_config("configs/toy2d_reflow.py:smoke")
config.data.dataset = "gmm_grid"
config_defaults.add_guidance(config, 9, p_uncond=0.1)
config.reflow.source_workdir, config.reflow.source_guidance = sys.argv[1], 1.0
config.training.n_iters = 3
config.training.snapshot_sampling = False
reflow.reflow_mode(config, sys.argv[2])
pairs = reflow.generate_couplings(config, sys.argv[2], sys.argv[1])
print("RESULT " + json.dumps({
    "devices": jax.device_count(),
    "losses": [r["loss"] for r in read_metrics(sys.argv[2])],
    "labels": pairs["conditions"].tolist(),
    "samples": np.asarray(pairs["samples"]).ravel().tolist(),
}))
"""


@pytest.mark.slow
def test_conditioned_reflow_on_eight_devices_matches_one(tmp_path):
    """The conditions are read per process and sharded over the devices with the noise: 8 fake devices make the
    same labelled, guided couplings and the same three training losses as one."""
    source = str(tmp_path / "source")
    _perturbed_source(_class_conditional_reflow(), source)
    out = {}
    for devices in (1, 8):
        proc = _python("-c", REFLOW_PARITY, source, str(tmp_path / f"rf{devices}"), devices=devices)
        out[devices] = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
    assert out[1]["devices"] == 1 and out[8]["devices"] == 8
    assert out[8]["labels"] == out[1]["labels"] and len(set(out[1]["labels"])) > 3
    np.testing.assert_allclose(out[8]["samples"], out[1]["samples"], rtol=1e-5, atol=1e-5)
    assert len(set(out[1]["losses"])) == 3
    np.testing.assert_allclose(out[8]["losses"], out[1]["losses"], rtol=1e-5, atol=1e-6)


def test_reflow_source_guidance_is_checked():
    config = _class_conditional_reflow()
    assert build.reflow_source_guidance(config) == 0.0
    config.reflow.source_guidance = -1.0
    with pytest.raises(ValueError, match=r"source_guidance must be >= 0.*got -1.0"):
        build.reflow_source_guidance(config)
    config.reflow.source_guidance = 2.0
    assert build.reflow_source_guidance(config) == 2.0
    config.training.p_uncond = 0.0
    with pytest.raises(ValueError, match="trained with training.p_uncond=0.0"):
        build.reflow_source_guidance(config)
    plain = load_config("toy2d_reflow", "smoke")
    plain.reflow.source_guidance = 1.0
    with pytest.raises(ValueError, match="this one is unconditional"):
        build.reflow_source_guidance(plain)


def _python(*args, devices=1, timeout=600):
    """``python *args`` in the repository with ``devices`` fake devices; it must succeed."""
    proc = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=cli_env(devices), capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _cli(*args, timeout=600):
    return _python("-m", "scoresde.main", *args, timeout=timeout)


@pytest.mark.slow
def test_cli_trains_samples_and_reflows_each_objective(tmp_path):
    fm, edm, rf2 = str(tmp_path / "fm"), str(tmp_path / "edm"), str(tmp_path / "rf2")
    _cli("--config=configs/digits_fm.py:smoke", f"--workdir={fm}")
    for method in ("dpm_solver++", "unipc", "deis"):
        proc = _cli(
            "--config=configs/digits_fm.py:smoke",
            f"--workdir={fm}",
            "--mode=sample",
            f"--config.sampling.method={method}",
            "--config.sampling.steps=3",
        )
        assert json.loads(proc.stdout.strip().splitlines()[-1])["nfe"] == 3
    edm_flags = [
        "--config.training.sde=edm",
        "--config.training.objective=edm",
        "--config.model.sigma_min=0.002",
        "--config.model.sigma_max=80.0",
        "--config.sampling.method=edm_heun",
        "--config.sampling.steps=4",
        "--config.sampling.noise_removal=False",
    ]
    _cli("--config=configs/digits_vp.py:smoke", f"--workdir={edm}", *edm_flags)
    proc = _cli("--config=configs/digits_vp.py:smoke", f"--workdir={edm}", "--mode=sample", *edm_flags)
    assert json.loads(proc.stdout.strip().splitlines()[-1])["nfe"] == 8
    proc = _cli(
        "--config=configs/digits_fm.py:smoke",
        f"--workdir={rf2}",
        "--mode=reflow",
        f"--config.reflow.source_workdir={fm}",
        "--config.reflow.num_pairs=16",
        "--config.reflow.batch_size=8",
        "--config.reflow.steps=2",
    )
    assert "trained the next flow to step 2" in proc.stderr
    with np.load(os.path.join(rf2, "reflow", "couplings_00001.npz")) as f:
        assert f["samples"].shape == (8, 8, 8, 1)


@pytest.mark.slow
def test_cli_reflows_a_caption_conditioned_flow_and_samples_a_prompt(tmp_path):
    source, rf2 = str(tmp_path / "t2i_fm"), str(tmp_path / "t2i_rf2")
    _cli("--config=configs/digits_t2i.py:fm,smoke", f"--workdir={source}")
    proc = _cli(
        "--config=configs/digits_t2i_reflow.py:smoke",
        f"--workdir={rf2}",
        "--mode=reflow",
        f"--config.reflow.source_workdir={source}",
    )
    assert "trained the next flow to step 2" in proc.stderr
    with np.load(os.path.join(rf2, "reflow", "couplings_00001.npz")) as f:
        assert f["samples"].shape == (10, 8, 8, 1) and f["caption"].shape[0] == 10
        assert json.loads(str(f["identity"]))["source_guidance"] == 1.0
        assert np.any(f["caption"] != 0, axis=1).all()  # real captions, never the empty one
    proc = _cli(
        "--config=configs/digits_t2i_reflow.py:smoke",
        f"--workdir={rf2}",
        "--mode=sample",
        f"--config.reflow.source_workdir={source}",  # as the reflow's closing line says: part of the stored config
        "--config.sampling.prompt=a bold seven",
    )
    assert json.loads(proc.stdout.strip().splitlines()[-1])["nfe"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cifar10_fm", "cifar10_edm"])
def test_cifar10_smoke_on_mock_tfds(tmp_path, name):
    tfds = pytest.importorskip("tensorflow_datasets")
    config = load_config(name, "smoke")
    config.data.download = True  # a no-op under mock_data
    config.sampling.steps = 2
    with tfds.testing.mock_data(num_examples=32):
        train.train(config, str(tmp_path))
    records = read_metrics(str(tmp_path))
    assert [r["step"] for r in records] == [1, 2] and all(np.isfinite(r["loss"]) for r in records)
    assert os.path.exists(os.path.join(str(tmp_path), "samples", "snapshot_00000002.png"))


def test_to_zero_is_k_diffusions_ending():
    """``to_zero``: ``steps`` steps whose last goes to sigma = 0, i.e. ``steps - 1`` steps then the denoiser."""
    from scoresde import analytic

    gm = analytic.GaussianMixture(np.array([[-1.0, 0.5], [1.0, -0.5]]), np.array([0.3, 0.6]))
    x_init = jax.random.normal(jax.random.key(3), (64, 2))
    for sde, method, steps, nfe in (
        (sde_lib.EDMSDE(), "edm_heun", 18, 35),
        (sde_lib.VPSDE(), "dpm_solver++", 10, 10),
        (sde_lib.VPSDE(), "unipc", 6, 6),
    ):
        score_fn = gm.score_fn(sde)
        x0, n0 = sampling.sample(
            score_fn,
            sde,
            x_init.shape,
            jax.random.key(0),
            method=method,
            x_init=x_init * sde.prior_std,
            steps=steps,
            to_zero=True,
        )
        x1, n1 = sampling.sample(
            score_fn,
            sde,
            x_init.shape,
            jax.random.key(0),
            method=method,
            x_init=x_init * sde.prior_std,
            steps=steps - 1,
            denoise=True,
        )
        assert (int(n0), int(n1)) == (nfe, nfe), method
        np.testing.assert_array_equal(np.asarray(x0), np.asarray(x1))
        x2, _ = sampling.sample(
            score_fn, sde, x_init.shape, jax.random.key(0), method=method, x_init=x_init * sde.prior_std, steps=steps
        )
        assert float(jnp.max(jnp.abs(x2 - x0))) > 1e-4  # the ending changes the samples: the option is live
    with pytest.raises(ValueError, match="to_zero=True already ends with the denoiser step"):
        sampling.sample(
            gm.score_fn(sde_lib.VPSDE()),
            sde_lib.VPSDE(),
            (4, 2),
            jax.random.key(0),
            method="ddim",
            to_zero=True,
            denoise=True,
        )
    with pytest.raises(ValueError, match="to_zero=True needs steps >= 2"):
        sampling.sample(
            gm.score_fn(sde_lib.VPSDE()),
            sde_lib.VPSDE(),
            (4, 2),
            jax.random.key(0),
            method="ddim",
            to_zero=True,
            steps=1,
        )
    config = load_config("cifar10_edm")
    method, options = build.sampling_options(config)
    assert (method, options["steps"], options["to_zero"]) == ("edm_heun", 18, True)
