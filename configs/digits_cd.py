"""Consistency distillation (Song et al. 2023, Algorithm 2) of the README's digits model (configs/digits_vp.py).

Student: the teacher's DDPM++ U-Net wrapped as a consistency function, started from the teacher's EMA
weights. Teacher steps: Heun on an N=18 rho-grid; target EMA mu=0.95; squared-L2 metric (the CD paper's
LPIPS needs downloaded VGG weights: not offline; `scoresde.fewstep.consistency.distance` has the `feature_fn` hook).
Samples with `method=consistency`, 1 step (`--config.sampling.steps=2` for 2). Variant: `smoke`.

    python -m scoresde.main --config=configs/digits_vp.py --workdir=runs/digits
    python -m scoresde.main --config=configs/digits_cd.py --workdir=runs/digits_cd --mode=distill
    python -m scoresde.main --config=configs/digits_cd.py --workdir=runs/digits_cd --mode=sample --config.sampling.steps=2
"""

from scoresde import config_defaults as base

digits_vp = base.sibling(__file__, "digits_vp")


def smoke(config):
    digits_vp.smoke(config)
    config.distill.teacher_workdir = "runs/digits_smoke"


def get_config(variant=None):
    config = digits_vp.get_config()
    t = config.training
    t.n_iters = 2400  # 600 steps gave noisy 1-step digits (mean SVC p_max 0.59); 2400 give 0.81 (BENCHMARKS.md)
    t.log_freq = 25
    t.snapshot_freq = 600
    t.snapshot_freq_for_preemption = 200
    o = config.optim
    o.lr = 2e-4
    o.warmup = 0
    config.model.ema_rate = 0.99
    d = config.distill
    d.method = "cd"
    d.teacher_workdir = "runs/digits"
    d.num_scales = 18
    d.solver = "heun"
    d.metric = "l2"
    d.weighting = "uniform"
    d.target_ema = 0.95
    d.sigma_data = 0.5
    s = config.sampling
    s.method = "consistency"
    s.steps = 1
    return base.apply_variants(config, variant, {"smoke": smoke}, "digits_cd")
