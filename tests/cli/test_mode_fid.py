"""The FID/IS/KID protocol end to end with a tiny stand-in feature extractor (the real weights are not here)."""

import glob
import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from scoresde import build
from scoresde.metrics import frechet_distance, inception_score, kernel_distance
from scoresde.metrics.features import FeatureAccumulator, inception_feature_fn
from scoresde.modes.fid import evaluate_samples
from scoresde.modes.fid_stats import fid_stats

from conftest import REPO, load_config


def standin_feature_fn(images):
    """A deterministic 16-d linear feature and 10 logits of uint8 images (any shape)."""
    assert images.dtype == np.uint8
    x = images.reshape(len(images), -1).astype(np.float64) / 255.0
    rng = np.random.default_rng(x.shape[1])
    proj, head = rng.standard_normal((x.shape[1], 16)) / np.sqrt(x.shape[1]), rng.standard_normal((16, 10))
    feats = x @ proj
    return feats.astype(np.float32), (feats @ head).astype(np.float32)


standin_feature_fn.name = "standin_linear16"


def _digits_uint8(split):
    from sklearn.datasets import load_digits

    d = load_digits()
    test = np.arange(len(d.images)) % 10 == 0
    images = d.images[test if split == "test" else ~test] / 16.0
    return np.clip(images[..., None] * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _config(tmp_path, **eval_overrides):
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = ml_collections.ConfigDict(
        dict(
            dataset="digits", image_size=8, num_channels=1, centered=True, uniform_dequantization=True, random_flip=True
        )
    )
    c.sampling = ml_collections.ConfigDict(dict(method="pc", predictor="euler_maruyama", corrector="none"))
    c.eval = ml_collections.ConfigDict(
        dict(
            batch_size=8,
            num_samples=180,
            sample_batch_size=8,
            inception_batch_size=100,
            stats_split="train",
            fid_stats_path=str(tmp_path / "stats" / "digits_train.npz"),
            stats_max_features=5000,
            kid_subsets=20,
            kid_subset_size=50,
        )
    )
    c.eval.update(eval_overrides)
    return c


def test_fid_stats_covers_the_whole_split_as_uint8(tmp_path):
    # Dequantisation and flips are on in the training config: the statistics must ignore them.
    config = _config(tmp_path)
    summary = fid_stats(config, str(tmp_path), feature_fn=standin_feature_fn)
    data = _digits_uint8("train")
    assert len(data) == 1617 and len(data) % config.eval.inception_batch_size  # a last partial batch
    assert summary["num_examples"] == len(data) and summary["features_kept"]
    with np.load(config.eval.fid_stats_path) as f:
        pool, _ = standin_feature_fn(data)
        np.testing.assert_allclose(f["mu"], pool.astype(np.float64).mean(0), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(f["sigma"], np.cov(pool.astype(np.float64), rowvar=False), rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(f["pool_3"], pool)
        assert str(f["feature_extractor"]) == "standin_linear16" and int(f["num_examples"]) == 1617
    # Above the cap only the moments are kept.
    small = _config(tmp_path, stats_max_features=1000, fid_stats_path=str(tmp_path / "capped.npz"))
    fid_stats(small, str(tmp_path), feature_fn=standin_feature_fn)
    with np.load(small.eval.fid_stats_path) as f:
        assert "pool_3" not in f.files and int(f["num_examples"]) == 1617


def test_accumulator_merge_equals_one_pass():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 5)) * 3 + 100.0  # a large mean: the shifted sums keep the covariance exact
    a, b, whole = (FeatureAccumulator() for _ in range(3))
    a.add(x[:120])
    b.add(x[120:200])
    b.add(x[200:])
    a.merge(b)
    whole.add(x)
    for acc in (a, whole):
        mu, sigma = acc.statistics()
        np.testing.assert_allclose(mu, x.mean(0), rtol=1e-12)
        np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), rtol=1e-9)
    np.testing.assert_array_equal(a.pool, x.astype(np.float32))


def _write_sample_files(workdir, images, sizes, nfe=None):
    os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
    start = 0
    for i, n in enumerate(sizes):
        extra = {} if nfe is None else {"nfe": np.int64(nfe)}
        np.savez(os.path.join(workdir, "samples", f"samples_{i}.npz"), samples=images[start : start + n], **extra)
        start += n


def test_evaluate_sample_files(tmp_path, capsys):
    config = _config(tmp_path)
    fid_stats(config, str(tmp_path), feature_fn=standin_feature_fn)
    workdir = str(tmp_path / "run")
    samples = _digits_uint8("test")  # 180 held-out digits as "samples"
    # samples_10 must come after samples_9 (natural order): IS depends on the order through its splits.
    _write_sample_files(workdir, samples, [8] * 10 + [100], nfe=37)
    report = evaluate_samples(config, workdir, feature_fn=standin_feature_fn)

    with np.load(config.eval.fid_stats_path) as f:
        ref = {k: f[k] for k in f.files}
    pool, logits = standin_feature_fn(samples)
    p64 = pool.astype(np.float64)
    np.testing.assert_allclose(
        report["fid"], frechet_distance(p64.mean(0), np.cov(p64, rowvar=False), ref["mu"], ref["sigma"]), rtol=1e-6
    )
    np.testing.assert_allclose(report["inception_score"], inception_score(logits, splits=10), rtol=1e-6)
    np.testing.assert_allclose(
        report["kid"], kernel_distance(pool, ref["pool_3"], num_subsets=20, subset_size=50), rtol=1e-6
    )
    assert report["num_samples"] == 180 and report["nfe"] == 37
    assert report["sampler"]["method"] == "pc"
    assert {m["name"] for m in report["metrics"]} == {"fid", "inception_score", "inception_score_std", "kid", "kid_std"}
    assert all(m["nfe"] == 37 and m["sampler"]["predictor"] == "euler_maruyama" for m in report["metrics"])
    assert any("fewer than the 50,000" in w for w in report["warnings"])
    assert "50,000" in capsys.readouterr().err  # loud, not only in the file
    on_disk = json.load(open(report["path"]))
    assert on_disk["fid"] == report["fid"] and on_disk["nfe"] == 37
    assert glob.glob(os.path.join(workdir, "eval", "events.out.tfevents.*"))

    # Held-out data are much closer to the training statistics than noise is.
    noise = np.random.default_rng(0).integers(0, 256, samples.shape, dtype=np.uint8)
    noisy_dir = str(tmp_path / "noise")
    _write_sample_files(noisy_dir, noise, [180])
    noisy = evaluate_samples(config, noisy_dir, feature_fn=standin_feature_fn)
    assert noisy["fid"] > 20 * report["fid"] and noisy["kid"] > 20 * report["kid"]
    assert noisy["nfe"] is None and any("no 'nfe'" in w for w in noisy["warnings"])


def test_sampling_rounds_resume(tmp_path):
    config = _config(tmp_path, num_samples=10, sample_batch_size=4, is_splits=2)
    fid_stats(config, str(tmp_path), feature_fn=standin_feature_fn)
    calls = []

    def sampler(key):
        calls.append(key)
        return np.asarray(jax.random.uniform(key, (4, 8, 8, 1))), 11

    workdir = str(tmp_path / "run")
    first = evaluate_samples(config, workdir, standin_feature_fn, sampler=sampler, step=3)
    assert len(calls) == 3 and first["num_samples"] == 10 and first["nfe"] == 11 and first["step"] == 3
    rounds = sorted(glob.glob(os.path.join(workdir, "eval_samples", "step_3", "round_*.npz")))
    assert len(rounds) == 3
    # Kill-and-resume: one round lost, one cut short. Only those two are sampled again, with the same keys.
    os.remove(rounds[1])
    with open(rounds[2], "r+b") as f:
        f.truncate(20)
    calls.clear()
    again = evaluate_samples(config, workdir, standin_feature_fn, sampler=sampler, step=3)
    assert len(calls) == 2
    assert again["fid"] == first["fid"] and again["inception_score"] == first["inception_score"]
    assert again["sampling"]["resumed_rounds"] == 1
    assert os.path.exists(os.path.join(workdir, "eval", "metrics_step_3.json"))


def test_fid_over_several_seeds_reports_each_the_mean_std_and_minimum(tmp_path, capsys):
    """EDM's protocol: one full sample set per seed; each FID against an independent computation from the saved
    rounds, then their mean ± std (ddof 1) and minimum, the headline being the minimum's seed."""
    config = _config(tmp_path, num_samples=40, sample_batch_size=8, is_splits=2, kid_subset_size=20, fid_seeds=3)
    fid_stats(config, str(tmp_path), feature_fn=standin_feature_fn)
    calls = []

    def sampler(key):  # a different image distribution per key: the seeds' FIDs differ
        calls.append(key)
        return np.asarray(jax.random.beta(key, 0.5, 2.0, (8, 8, 8, 1))), 5

    workdir = str(tmp_path / "run")
    report = evaluate_samples(config, workdir, standin_feature_fn, sampler=sampler, step=3)
    assert len(calls) == 15  # 3 seeds x 5 rounds
    seeds = report["fid_seeds"]
    assert seeds["seeds"] == [0, 1, 2] and seeds["num_samples_each"] == 40
    assert seeds["reference_stats"] == config.eval.fid_stats_path == report["reference_stats"]
    with np.load(config.eval.fid_stats_path) as f:
        ref_mu, ref_sigma = f["mu"], f["sigma"]
    expected = []
    for sub in ["step_3", "step_3_seed_1", "step_3_seed_2"]:
        rounds = sorted(glob.glob(os.path.join(workdir, "eval_samples", sub, "round_*.npz")))
        assert len(rounds) == 5, sub
        x = np.concatenate([np.load(r)["samples"] for r in rounds])[:40]
        pool = standin_feature_fn(x)[0].astype(np.float64)
        expected.append(frechet_distance(pool.mean(0), np.cov(pool, rowvar=False), ref_mu, ref_sigma))
    np.testing.assert_allclose(seeds["fid"], expected, rtol=1e-6)
    assert len(set(np.round(expected, 6))) == 3
    np.testing.assert_allclose(seeds["mean"], np.mean(expected), rtol=1e-9)
    np.testing.assert_allclose(seeds["std"], np.std(expected, ddof=1), rtol=1e-9)
    assert seeds["min"] == min(seeds["fid"]) == report["fid"]
    assert seeds["best_seed"] == int(np.argmin(expected))
    assert [r["fid"] for r in seeds["per_seed"]] == seeds["fid"]
    on_disk = json.load(open(report["path"]))
    assert on_disk["fid_seeds"]["fid"] == seeds["fid"] and on_disk["num_samples"] == 40
    out = capsys.readouterr()
    assert "over 3 seeds of 40 samples each" in out.err and config.eval.fid_stats_path in out.err
    assert json.loads(out.out.strip().splitlines()[-1])["fid_min"] == seeds["min"]

    # seed 0 is the one-seed evaluation's set (same keys, same directory): a one-seed run reuses its rounds
    calls.clear()
    one = _config(tmp_path, num_samples=40, sample_batch_size=8, is_splits=2, kid_subset_size=20)
    single = evaluate_samples(one, workdir, standin_feature_fn, sampler=sampler, step=3)
    assert not calls and single["fid"] == seeds["fid"][0] and "fid_seeds" not in single


def test_missing_reference_stats_is_a_clear_error(tmp_path):
    config = _config(tmp_path)
    _write_sample_files(str(tmp_path), _digits_uint8("test"), [180])
    with pytest.raises(FileNotFoundError, match="--mode=fid_stats"):
        evaluate_samples(config, str(tmp_path), feature_fn=standin_feature_fn)


def test_unknown_feature_extractor_is_refused(tmp_path):
    config = _config(tmp_path, feature_extractor="dinov2")
    with pytest.raises(ValueError, match="feature_extractor 'dinov2'"):
        build.get_feature_fn(config)


def test_inception_feature_fn_pads_the_last_batch(tmp_path, monkeypatch):
    # The real feature_fn on random weights: 3 images with a compiled batch of 2 -> one padded call.
    from metrics.test_inception import random_torch_state_dict

    from scoresde.metrics import weights as W

    path = str(tmp_path / "w.npz")
    W.save_params(path, W.torch_state_dict_to_params(random_torch_state_dict(seed=9)))
    monkeypatch.setenv(W.ENV_OFFLINE, "1")
    fn = inception_feature_fn(path, batch_size=2)
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    pool, logits = fn(images)
    assert pool.shape == (3, 2048) and logits.shape == (3, 1008)
    pool1, _ = fn(images[2:])
    np.testing.assert_allclose(pool1[0], pool[2], rtol=1e-5, atol=1e-6)


def _digits_config(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("digits_vp_config", os.path.join(REPO, "configs", "digits_vp.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config = mod.get_config("smoke")
    with config.unlocked():
        config.eval.num_samples = 12  # not a multiple of the round size: the last round is cut
        config.eval.sample_batch_size = 8
        config.eval.fid_stats_path = str(tmp_path / "digits_stats.npz")
        config.eval.kid_subset_size = 8
    return config


@pytest.mark.slow  # ~30 s idle, minutes on a loaded 2-core box: the U-Net's eager init dominates
def test_eval_pipeline_on_the_digits_model(tmp_path):
    """Checkpoint of the digits U-Net -> sampling rounds on the mesh -> stand-in features -> FID/IS/KID report."""
    from flax import nnx

    from scoresde.checkpointing import save_model_checkpoint

    config = _digits_config(tmp_path)
    workdir = str(tmp_path / "digits")
    model = build.get_model(config, rngs=nnx.Rngs(0))  # untrained weights: this tests the pipeline
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    save_model_checkpoint(workdir, params=params, ema_params=params, step=7, config=config)
    fid_stats(config, workdir, feature_fn=standin_feature_fn)
    report = evaluate_samples(config, workdir, feature_fn=standin_feature_fn)
    assert report["step"] == 7 and report["num_samples"] == 12
    assert report["nfe"] == config.model.num_scales  # Euler-Maruyama: one score evaluation per step
    assert report["sampler"]["method"] == config.sampling.method
    assert all(np.isfinite(report[k]) for k in ("fid", "inception_score", "kid"))
    rounds = glob.glob(os.path.join(workdir, "eval_samples", "step_7", "round_*.npz"))
    assert len(rounds) == 2
    with np.load(sorted(rounds)[0]) as f:
        assert f["samples"].dtype == np.uint8 and f["samples"].shape == (8, 8, 8, 1)
    assert os.path.exists(os.path.join(workdir, "eval", "metrics_step_7.json"))


def _load_config(name, variant=None):
    return load_config(name, variant)


def test_fid_stats_tfds_whole_split_exact_uint8(tmp_path):
    """CIFAR-10 through tfds (mocked): all 21 examples with batches of 8, the stored pixels exactly."""
    tfds = pytest.importorskip("tensorflow_datasets")
    config = _load_config("cifar10_vp")  # 32x32: the reference's resize is the identity here
    with config.unlocked():
        config.data.download = True
        config.data.uniform_dequantization = True  # must be ignored by the statistics
        config.eval.inception_batch_size = 8
        config.eval.fid_stats_path = str(tmp_path / "cifar10_train.npz")
    with tfds.testing.mock_data(num_examples=21):
        summary = fid_stats(config, str(tmp_path), feature_fn=standin_feature_fn)
        raw = np.stack([d["image"] for d in tfds.as_numpy(tfds.load("cifar10", split="train"))])
    assert raw.dtype == np.uint8 and raw.shape == (21, 32, 32, 3)
    assert summary["num_examples"] == 21
    with np.load(config.eval.fid_stats_path) as f:
        np.testing.assert_array_equal(f["pool_3"], standin_feature_fn(raw)[0])
