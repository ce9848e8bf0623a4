"""Parameter counts of the real reference configurations (shapes only, via ``nnx.eval_shape``).

The configs are written out here with the reference's values (score_sde ``configs/``) rather than
imported from ``configs/``, so this test pins the architecture independently of our config files.
"""

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from scoresde import build


def _config(name="ncsnpp", image_size=32, **model):
    base = dict(
        name=name,
        nf=128,
        ch_mult=(1, 2, 2, 2),
        num_res_blocks=4,
        attn_resolutions=(16,),
        dropout=0.1,
        resamp_with_conv=True,
        conditional=True,
        fir=False,
        fir_kernel=(1, 3, 3, 1),
        skip_rescale=True,
        resblock_type="biggan",
        progressive="none",
        progressive_input="none",
        progressive_combine="sum",
        embedding_type="positional",
        fourier_scale=16,
        init_scale=0.0,
        scale_by_sigma=False,
        sigma_min=0.01,
        sigma_max=50.0,
        num_scales=1000,
        beta_min=0.1,
        beta_max=20.0,
        nonlinearity="swish",
    )
    base.update(model)
    return ml_collections.ConfigDict(
        dict(
            model=base,
            data=dict(image_size=image_size, num_channels=3, centered=name != "ddpm"),
            training=dict(continuous=True),
        )
    )


_NCSNPP = dict(fir=True, progressive_input="residual", embedding_type="fourier", scale_by_sigma=True)
CASES = {
    # configs/vp/cifar10_ddpmpp_continuous.py (and subvp/)
    "ddpmpp_continuous": (_config(), 61_804_419),
    # configs/vp/cifar10_ddpmpp_deep_continuous.py
    "ddpmpp_deep_continuous": (_config(num_res_blocks=8), 106_632_579),
    # configs/ve/cifar10_ncsnpp_continuous.py
    "ncsnpp_continuous": (_config(**_NCSNPP), 62_758_915),
    # the same network with the positional embedding (configs/ve/cifar10_ncsnpp.py, discrete)
    "ncsnpp_positional": (_config(**{**_NCSNPP, "embedding_type": "positional"}), 62_693_251),
    # configs/ve/cifar10_ncsnpp_deep_continuous.py
    "ncsnpp_deep_continuous": (_config(**_NCSNPP, num_res_blocks=8), 107_587_075),
    # configs/vp/ddpm/cifar10.py
    "ddpm_cifar10": (_config(name="ddpm", num_res_blocks=2), 35_218_947),
    # configs/ve/church_ncsnpp_continuous.py (also LSUN bedroom, FFHQ/CelebA-HQ 256)
    "ncsnpp_256": (
        _config(
            image_size=256,
            ch_mult=(1, 1, 2, 2, 2, 2, 2),
            num_res_blocks=2,
            fir=True,
            progressive="output_skip",
            progressive_input="input_skip",
            embedding_type="fourier",
            scale_by_sigma=True,
            sigma_max=348.0,
            num_scales=2000,
        ),
        65_574_549,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_reference_parameter_count(case):
    config, expected = CASES[case]
    model = nnx.eval_shape(lambda: build.get_model(config, rngs=nnx.Rngs(0)))
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)  # nothing was allocated
    assert sum(int(np.prod(x.shape)) for x in leaves) == expected


def test_class_conditional_adds_only_the_label_table():
    config, expected = CASES["ddpmpp_continuous"]
    config = ml_collections.ConfigDict(config.to_dict())
    config.model.num_classes = 10
    model = nnx.eval_shape(lambda: build.get_model(config, rngs=nnx.Rngs(0)))
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert n == expected + (10 + 1) * 4 * config.model.nf  # one row per class plus the null label
