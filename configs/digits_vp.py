"""The 8×8 handwritten digits scikit-learn ships (no download), VP SDE, a small DDPM++ U-Net.

README command (a): trains on 2 CPU cores in a few minutes and writes a sample grid of recognisable
digits to `workdir/samples/snapshot_<step>.png`. Variant: `smoke` (tiny, 2 steps).

    python -m scoresde.main --config=configs/digits_vp.py --workdir=runs/digits
    python -m scoresde.main --config=configs/digits_vp.py --workdir=runs/digits --mode=sample
"""

from scoresde import config_defaults as base


def smoke(config):
    base.smoke(config, image_size=8)
    config.model.nf = 8
    config.model.attn_resolutions = ()


def get_config(variant=None):
    config = base.get_default_configs()
    t = config.training
    t.sde = "vpsde"
    t.continuous = True
    t.reduce_mean = True
    t.batch_size = 128
    t.n_iters = 1500
    t.log_freq = 50
    t.eval_freq = 500
    t.snapshot_freq = 1500
    t.snapshot_freq_for_preemption = 500
    t.snapshot_num_samples = 64
    config.eval.batch_size = 128
    config.eval.num_samples = 256
    config.eval.sample_batch_size = 128
    config.sampling.method = "pc"
    config.sampling.predictor = "euler_maruyama"
    config.sampling.corrector = "none"
    d = config.data
    d.dataset = "digits"
    d.image_size = 8
    d.num_channels = 1
    d.centered = True
    d.random_flip = False
    base.ddpmpp_model(config.model)
    m = config.model
    m.nf = 16
    m.ch_mult = (1, 2)
    m.num_res_blocks = 1
    m.attn_resolutions = ()
    m.dropout = 0.0
    m.ema_rate = 0.99  # a ~100-step horizon: at 1500 steps 0.999 still carries the early, undertrained weights
    m.num_scales = 500
    o = config.optim
    o.lr = 2e-3
    o.warmup = 100
    o.grad_clip = 1.0
    return base.apply_variants(config, variant, {"smoke": smoke}, "digits_vp")
