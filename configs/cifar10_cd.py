"""Consistency distillation on CIFAR-10 (Song et al. 2023, Table 3 / App. C, CD with the Heun teacher).

The paper's recipe as far as this project can follow it: batch 512, Adam lr 4e-4 (no warm-up), 800k
iterations, N = 18, rho = 7, Heun teacher steps, target EMA mu = 0.95, sampling EMA 0.9999, sigma_data = 0.5,
dropout 0, the NCSN++-style U-Net of the teacher (the student starts from the teacher's weights).
What differs: the metric is squared L2, not LPIPS (LPIPS needs downloaded VGG weights; pass
`scoresde.fewstep.consistency.distance(feature_fn=...)` from Python to use it), so expect the paper's L2 row
(FID 3.55 is LPIPS); the teacher is this project's VP DDPM++ (`configs/cifar10_vp.py`, or an imported
reference checkpoint), not EDM's, so the boundary time is the VP sampling eps (1e-3). Variant: `smoke`.

    python -m scoresde.main --config=configs/cifar10_cd.py --workdir=runs/cifar10_cd --mode=distill --config.distill.teacher_workdir=runs/cifar10_vp
    python -m scoresde.main --config=configs/cifar10_cd.py --workdir=runs/cifar10_cd --mode=sample --config.sampling.steps=2
"""

from scoresde import config_defaults as base

cifar10_vp = base.sibling(__file__, "cifar10_vp")


def smoke(config):
    base.smoke(config)


def get_config(variant=None):
    config = cifar10_vp.get_config()
    t = config.training
    t.batch_size = 512
    t.n_iters = 800000
    o = config.optim
    o.lr = 4e-4
    o.warmup = 0
    config.model.ema_rate = 0.9999
    config.model.dropout = 0.0
    d = config.distill
    d.method = "cd"
    d.teacher_workdir = "runs/cifar10_vp"
    d.num_scales = 18
    d.rho = 7.0
    d.solver = "heun"
    d.metric = "l2"
    d.weighting = "uniform"
    d.target_ema = 0.95
    d.sigma_data = 0.5
    s = config.sampling
    s.method = "consistency"
    s.steps = 1
    return base.apply_variants(config, variant, {"smoke": smoke}, "cifar10_cd")
