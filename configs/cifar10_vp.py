"""CIFAR-10, VP SDE, DDPM++ (cont.) — the reference `vp/cifar10_ddpmpp_continuous.py`.

Batch 128, Adam lr 2e-4 with 5000 warm-up steps, grad clip 1, EMA 0.9999, 1.3M iterations,
Euler–Maruyama sampling. Variants: `deep` (DDPM++ cont. deep: 8 res blocks), `smoke` (tiny, 2 steps).

    python -m scoresde.main --config=configs/cifar10_vp.py --workdir=runs/cifar10_vp
    python -m scoresde.main --config=configs/cifar10_vp.py:deep --workdir=runs/cifar10_vp_deep
    python -m scoresde.main --config=configs/cifar10_vp.py:smoke --workdir=/tmp/smoke --config.data.download=True
"""

from scoresde import config_defaults as base


def deep(config):
    config.model.num_res_blocks = 8
    config.training.n_iters = 950001


def get_config(variant=None):
    config = base.get_default_configs()
    config.training.sde = "vpsde"
    config.training.continuous = True
    config.training.reduce_mean = True
    config.sampling.method = "pc"
    config.sampling.predictor = "euler_maruyama"
    config.sampling.corrector = "none"
    config.data.centered = True
    base.ddpmpp_model(config.model)
    return base.apply_variants(config, variant, {"deep": deep, "smoke": base.smoke}, "cifar10_vp")
