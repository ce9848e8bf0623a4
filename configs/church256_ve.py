"""LSUN church_outdoor 256×256, VE SDE, NCSN++ (cont.) — the reference `ve/church_ncsnpp_continuous.py`.

tfds `lsun/church_outdoor` with the reference crop-resize, batch 64, sigma_max 380, 2000 scales,
reverse-diffusion + Langevin at snr 0.075. Set `--config.data.category=bedroom` for LSUN bedroom.
Variant: `smoke`.

    python -m scoresde.main --config=configs/church256_ve.py --workdir=runs/church256_ve --config.data.tfds_data_dir=DIR
"""

from scoresde import config_defaults as base


def get_config(variant=None):
    config = base.get_default_configs()
    t = config.training
    t.sde = "vesde"
    t.continuous = True
    t.batch_size = 64
    t.n_iters = 2400001
    t.snapshot_freq = 50000
    t.snapshot_freq_for_preemption = 5000
    config.eval.batch_size = 8
    config.sampling.method = "pc"
    config.sampling.predictor = "reverse_diffusion"
    config.sampling.corrector = "langevin"
    config.sampling.snr = 0.075
    d = config.data
    d.dataset = "LSUN"
    d.category = "church_outdoor"
    d.image_size = 256
    d.centered = False
    base.ncsnpp_model(config.model)
    m = config.model
    m.sigma_max = 380.0
    m.num_scales = 2000
    m.ch_mult = (1, 1, 2, 2, 2, 2, 2)
    m.num_res_blocks = 2
    m.attn_resolutions = (16,)
    m.progressive = "output_skip"
    m.progressive_input = "input_skip"
    m.progressive_combine = "sum"
    m.fourier_scale = 16
    return base.apply_variants(config, variant, {"smoke": base.smoke}, "church256_ve")
