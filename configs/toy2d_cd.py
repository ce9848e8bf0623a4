"""Consistency distillation (Song et al. 2023) of the toy2d_vp score model: a 1-step sampler for the 2-D grid.

The student is the teacher's MLP wrapped as a consistency function, started from the teacher's EMA weights;
Heun teacher steps on an N=18 rho-grid, squared-L2 metric, target EMA mu=0.95 (the CD paper's CIFAR-10 choices;
no LPIPS for 2-D data). Variant: `smoke` (tiny, 2 steps). `--mode=sample` needs no teacher.

    python -m scoresde.main --config=configs/toy2d_vp.py --workdir=runs/toy2d
    python -m scoresde.main --config=configs/toy2d_cd.py --workdir=runs/toy2d_cd --mode=distill
    python -m scoresde.main --config=configs/toy2d_cd.py --workdir=runs/toy2d_cd --mode=sample --config.sampling.steps=2
"""

from scoresde import config_defaults as base

toy2d_vp = base.sibling(__file__, "toy2d_vp")


def smoke(config):
    toy2d_vp.smoke(config)
    config.distill.teacher_workdir = "runs/toy2d_smoke"


def get_config(variant=None):
    config = toy2d_vp.get_config()
    t = config.training
    t.n_iters = 2000
    t.snapshot_freq = 1000
    t.snapshot_freq_for_preemption = 500
    config.optim.lr = 1e-3
    config.optim.warmup = 0
    config.model.ema_rate = 0.999
    d = config.distill
    d.method = "cd"
    d.teacher_workdir = "runs/toy2d"
    d.num_scales = 18
    d.solver = "heun"
    d.metric = "l2"
    d.weighting = "uniform"
    d.target_ema = 0.95
    d.sigma_data = 0.8  # the grid's per-coordinate std
    s = config.sampling
    s.method = "consistency"
    s.steps = 1
    return base.apply_variants(config, variant, {"smoke": smoke}, "toy2d_cd")
