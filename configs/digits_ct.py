"""Consistency training with the iCT improvements (Song & Dhariwal 2024) on the digits: no teacher.

The digits_vp U-Net trained from scratch as a consistency function: pseudo-Huber metric, lognormal noise
levels, weighting 1/(sigma_{n+1} - sigma_n), target = the online network (mu = 0), N doubling from 10 to
160 over the run (iCT's 10 -> 1280 over 400k steps is too long for a CPU demo). `config.training.objective =
"ct"` marks the run; it runs with `--mode=distill` (`--mode=train` refuses it with a pointer here).
Variant: `smoke`.

    python -m scoresde.main --config=configs/digits_ct.py --workdir=runs/digits_ct --mode=distill
    python -m scoresde.main --config=configs/digits_ct.py --workdir=runs/digits_ct --mode=sample --config.sampling.steps=2
"""

from scoresde import config_defaults as base

digits_vp = base.sibling(__file__, "digits_vp")


def smoke(config):
    digits_vp.smoke(config)


def get_config(variant=None):
    config = digits_vp.get_config()
    t = config.training
    t.objective = "ct"
    t.n_iters = 3000
    t.snapshot_freq = 3000
    t.snapshot_freq_for_preemption = 500
    config.optim.lr = 1e-3
    config.optim.warmup = 100
    config.model.ema_rate = 0.99
    d = config.distill
    d.method = "ct"
    d.metric = "pseudo_huber"
    d.weighting = "icm"
    d.schedule = "lognormal"
    d.target_ema = 0.0
    d.ct_s0 = 10
    d.ct_s1 = 160
    d.sigma_data = 0.5
    s = config.sampling
    s.method = "consistency"
    s.steps = 1
    return base.apply_variants(config, variant, {"smoke": smoke}, "digits_ct")
