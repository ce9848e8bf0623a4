"""CelebA 64×64, VE SDE, NCSN++ — after the reference `ve/celeba_ncsnpp.py`.

tfds `celeb_a` (manual download), central 140-px crop resized to 64 (reference preprocessing).
sigma_max 90, reverse-diffusion + Langevin at snr 0.17. Variant: `smoke`.

    python -m scoresde.main --config=configs/celeba64_ve.py --workdir=runs/celeba64_ve --config.data.tfds_data_dir=DIR
"""

from scoresde import config_defaults as base


def get_config(variant=None):
    config = base.get_default_configs()
    config.training.sde = "vesde"
    config.training.continuous = True
    config.sampling.method = "pc"
    config.sampling.predictor = "reverse_diffusion"
    config.sampling.corrector = "langevin"
    config.sampling.snr = 0.17
    config.data.dataset = "CELEBA"
    config.data.image_size = 64
    config.data.centered = False
    base.ncsnpp_model(config.model)
    m = config.model
    m.sigma_max = 90.0
    m.num_scales = 1000
    m.ch_mult = (1, 2, 2, 2)
    m.num_res_blocks = 4
    m.attn_resolutions = (16,)
    m.progressive = "output_skip"
    m.progressive_input = "input_skip"
    m.progressive_combine = "sum"
    return base.apply_variants(config, variant, {"smoke": base.smoke}, "celeba64_ve")
