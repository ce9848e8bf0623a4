"""CIFAR-10, VE SDE, NCSN++ (cont.) — the reference `ve/cifar10_ncsnpp_continuous.py`.

EMA 0.999, reverse-diffusion predictor + Langevin corrector at snr 0.16, data in [0, 1].
Variants: `deep` (NCSN++ cont. deep: 8 res blocks), `smoke`.

    python -m scoresde.main --config=configs/cifar10_ve.py --workdir=runs/cifar10_ve
"""

from scoresde import config_defaults as base


def deep(config):
    config.model.num_res_blocks = 8
    config.training.n_iters = 950001


def get_config(variant=None):
    config = base.get_default_configs()
    config.training.sde = "vesde"
    config.training.continuous = True
    config.sampling.method = "pc"
    config.sampling.predictor = "reverse_diffusion"
    config.sampling.corrector = "langevin"
    config.sampling.snr = 0.16
    base.ncsnpp_model(config.model)
    return base.apply_variants(config, variant, {"deep": deep, "smoke": base.smoke}, "cifar10_ve")
