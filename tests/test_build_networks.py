"""The config edge's networks: architectures from config.model (also hand-made and reference configs)."""

import ml_collections
import pytest
from flax import nnx

from scoresde import build

from conftest import load_config


def _mlp_config(**model):
    config = ml_collections.ConfigDict(
        {"model": {"name": "mlp", **model}, "data": {"dataset": "gmm_grid", "shape": (2,), "image_size": 0}}
    )
    config.lock()
    return config


def test_a_hand_made_config_gets_the_architectures_defaults():
    model = build.abstract_model(_mlp_config())  # hidden 128, 3 layers, embedding 64, unconditional
    assert model.temb.kernel.shape == (64, 128)
    assert model.inp.kernel.shape == (2, 128)
    assert len(model.hidden) == 3 and model.label_emb is None


def test_the_configs_own_fields_win():
    model = build.abstract_model(_mlp_config(hidden=16, num_layers=1, embed_dim=8, num_classes=4))
    assert model.temb.kernel.shape == (8, 16) and len(model.hidden) == 1
    assert model.label_emb.embedding.shape == (5, 16)  # one row per class and the null label


def test_abstract_model_takes_a_plain_dict():
    config = {"model": {"name": "mlp", "hidden": 16}, "data": {"dataset": "gmm_grid", "shape": [2], "image_size": 0}}
    assert build.abstract_model(config).inp.kernel.shape == (2, 16)


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model 'unet'; expected one of: birnn, ddpm, ddpmpp, mlp, ncsnpp"):
        build.get_model(ml_collections.ConfigDict({"model": {"name": "unet"}}), rngs=nnx.Rngs(0))


def test_guidance_classifier_only_for_classifier_guidance(tmp_path):
    assert build.load_guidance_classifier(str(tmp_path), load_config("toy2d_vp_cond", "smoke")) is None  # cfg
    with pytest.raises(FileNotFoundError, match="train_classifier"):
        build.load_guidance_classifier(str(tmp_path), load_config("toy2d_vp_cond", "smoke,classifier"))


def test_classifier_architecture_from_its_section():
    config = load_config("toy2d_vp_cond", "smoke")  # mlp classifier, hidden 32 (smoke), embed_size 32 (default)
    clf = nnx.eval_shape(lambda: build.get_classifier(config, rngs=nnx.Rngs(0)))
    assert clf.temb.kernel.shape == (64, 32) and clf.inp.kernel.shape == (2, 32)
    with config.unlocked():
        config.classifier.num_classes = 1
    with pytest.raises(ValueError, match="config.classifier.num_classes >= 2; got 1"):
        build.get_classifier(config, rngs=nnx.Rngs(0))
