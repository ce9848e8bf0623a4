"""CIFAR-10, EDM (Karras et al. 2022) with its DDPM++ recipe — NVlabs/edm `train.py --arch=ddpmpp`
(Table 7, config F): preconditioned denoiser, lognormal sigma training, Heun sampling.

Process ``x_sigma = x_0 + sigma z`` (``EDMSDE``, sigma in [0.002, 80]); network output ``edm`` (the raw ``F`` of
``D = c_skip x + c_out F(c_in x; c_noise)``, sigma_data 0.5) with ``c_noise = ln(sigma) / 4`` labels; loss
weight ``(sigma² + sigma_data²) / (sigma sigma_data)²`` with ``ln sigma ~ N(-1.2, 1.2²)``. DDPM++ with
128 channels, channel multipliers (2, 2, 2), 4 blocks per resolution, attention at 16×16, dropout 0.13,
positional embedding. Batch 512, Adam lr 1e-3 (betas 0.9 / 0.999, eps 1e-8) ramped up over 10M images
(19,531 steps), EMA by half-life 0.5M images with EDM's ramp-up (``model.ema_halflife_img`` = 500,000,
``model.ema_rampup_ratio`` = 0.05: half-life min(0.5M, 0.05 x images seen), so 0.5^(512/500000) = 0.99929 per
step once past 10M images), 200M images (390,625 steps), no gradient clipping. Sampling: EDM's deterministic Heun sampler, 18 steps on the rho = 7 grid ending at
sigma = 0 with a final Euler step (``sampling.to_zero``): 35 NFE, as EDM.
Deliberate deviations (not yet reproduced, ``docs/recipes.md``): the authors' non-leaking augmentation pipeline (``--augment=0.12``) and the per-layer
details of their SongUNet port (resample filter [1, 1]); expect an FID above their 1.97 without them.
Variants: `smoke` (tiny, 2 steps).

    python -m scoresde.main --config=configs/cifar10_edm.py --workdir=runs/cifar10_edm
    python -m scoresde.main --config=configs/cifar10_edm.py --workdir=runs/cifar10_edm --mode=sample
    python -m scoresde.main --config=configs/cifar10_edm.py:smoke --workdir=/tmp/smoke --config.data.download=True
"""

from scoresde import config_defaults as base


def get_config(variant=None):
    config = base.get_default_configs()
    t = config.training
    t.sde = "edm"
    t.objective = "edm"
    t.p_mean = -1.2
    t.p_std = 1.2
    t.continuous = True
    t.reduce_mean = True
    t.batch_size = 512
    t.n_iters = 390625  # 200M images
    t.snapshot_freq = 25000
    config.data.centered = True
    config.data.random_flip = False  # EDM's CIFAR-10 runs use --xflip=False (augmentation instead)
    base.ddpmpp_model(config.model)
    m = config.model
    m.sigma_min = 0.002
    m.sigma_max = 80.0
    m.sigma_data = 0.5
    m.ch_mult = (2, 2, 2)
    m.dropout = 0.13
    m.ema_halflife_img = 500_000.0  # train.py --ema=0.5 (Mimg); replaces model.ema_rate
    m.ema_rampup_ratio = 0.05  # training_loop.py ema_rampup_ratio
    m.embedding_type = "positional"
    o = config.optim
    o.lr = 1e-3
    o.warmup = 19531  # 10M images
    o.grad_clip = -1.0  # off: EDM does not clip (training_loop.py only replaces NaN / inf gradients)
    o.beta1, o.beta2, o.eps = 0.9, 0.999, 1e-8
    s = config.sampling
    s.method = "edm_heun"
    s.steps = 18
    s.rho = 7.0
    s.S_churn = 0.0
    s.noise_removal = False
    s.to_zero = True
    return base.apply_variants(config, variant, {"smoke": base.smoke}, "cifar10_edm")
