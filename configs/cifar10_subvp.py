"""CIFAR-10, sub-VP SDE, DDPM++ (cont.) — the reference `subvp/cifar10_ddpmpp_continuous.py`.

As `cifar10_vp.py` with `training.sde = 'subvpsde'`. Variants: `deep`, `smoke`.

    python -m scoresde.main --config=configs/cifar10_subvp.py --workdir=runs/cifar10_subvp
"""

from scoresde import config_defaults as base


def deep(config):
    config.model.num_res_blocks = 8
    config.training.n_iters = 950001


def get_config(variant=None):
    config = base.get_default_configs()
    config.training.sde = "subvpsde"
    config.training.continuous = True
    config.training.reduce_mean = True
    config.sampling.method = "pc"
    config.sampling.predictor = "euler_maruyama"
    config.sampling.corrector = "none"
    config.data.centered = True
    base.ddpmpp_model(config.model)
    return base.apply_variants(config, variant, {"deep": deep, "smoke": base.smoke}, "cifar10_subvp")
