"""Improved consistency training (iCT, Song & Dhariwal 2024) on CIFAR-10: no teacher.

The paper's recipe as far as this project can follow it: batch 1024, Adam lr 1e-4 (beta2 = 0.995), 400k
iterations, pseudo-Huber metric (c = 0.00054 sqrt(d)), lognormal noise levels (P_mean = -1.1, P_std = 2),
weighting 1/(sigma_{n+1} - sigma_n), N doubling from 10 to 1280, target = the online network (mu = 0),
sampling EMA 0.99993, dropout 0.3, sigma_data = 0.5, no gradient clipping, and the target evaluated in train
mode with the online network's dropout key (as the consistency-models code, openai/consistency_models_cifar10
``jcm/losses.py``: with mu = 0 the target is then the online network exactly). Deliberate deviations
(``docs/recipes.md``): the network is this project's NCSN++ / DDPM++ (`configs/cifar10_vp.py`'s), not the
paper's EDM-style NCSN++ with its "deep" variant, and the noise levels come from the VP SDE's scaled sigma (from
0.01 at eps = 1e-3 to ~152 at T) rather than EDM's 0.002..80. Variant: `smoke`.

    python -m scoresde.main --config=configs/cifar10_ct.py --workdir=runs/cifar10_ct --mode=distill
    python -m scoresde.main --config=configs/cifar10_ct.py --workdir=runs/cifar10_ct --mode=sample --config.sampling.steps=2
"""

from scoresde import config_defaults as base

cifar10_vp = base.sibling(__file__, "cifar10_vp")


def smoke(config):
    base.smoke(config)


def get_config(variant=None):
    config = cifar10_vp.get_config()
    t = config.training
    t.objective = "ct"
    t.batch_size = 1024
    t.n_iters = 400000
    o = config.optim
    o.lr = 1e-4
    o.beta2 = 0.995
    o.warmup = 0
    o.grad_clip = 0.0  # no clipping (iCT states none; the consistency-models code's float("inf"))
    config.model.ema_rate = 0.99993
    config.model.dropout = 0.3
    d = config.distill
    d.method = "ct"
    d.metric = "pseudo_huber"
    d.weighting = "icm"
    d.schedule = "lognormal"
    d.target_ema = 0.0
    d.shared_dropout = True
    d.ct_s0 = 10
    d.ct_s1 = 1280
    d.sigma_data = 0.5
    s = config.sampling
    s.method = "consistency"
    s.steps = 1
    return base.apply_variants(config, variant, {"smoke": smoke}, "cifar10_ct")
