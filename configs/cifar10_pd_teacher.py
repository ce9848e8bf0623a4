"""The teacher of progressive distillation on CIFAR-10 (Salimans & Ho 2022): google-research
``diffusion_distillation/config/cifar_base.py`` field by field (``docs/recipes.md``), on this project's DDPM++.

The cosine log-SNR process clipped to [-20, 20] (``training.sde = "vp_cosine"``), an x-prediction network
(``mean_type='x'``) trained in continuous time with the truncated-SNR weighting max(SNR, 1) ||x̂₀ - x₀||²
(``training.snr_truncation``), Adam lr 2e-4 with 1000 warm-up steps, weight decay 0.001, grad clip 1, EMA 0.9999,
batch 128, dropout 0.2, random flips; DDIM sampling with the data predictions clipped to [-1, 1]
(``eval_clip_denoised=True``). Deviation (reasons in ``docs/recipes.md``): the network is this project's DDPM++,
not the official ``unet_iddpm`` (ch 256, ch_mult [1, 1, 1]). Variant: `smoke`.

    python -m scoresde.main --config=configs/cifar10_pd_teacher.py --workdir=runs/cifar10_pd_teacher
    python -m scoresde.main --config=configs/cifar10_pd.py --workdir=runs/cifar10_pd --mode=distill --config.distill.teacher_workdir=runs/cifar10_pd_teacher
"""

from scoresde import config_defaults as base

cifar10_vp = base.sibling(__file__, "cifar10_vp")


def get_config(variant=None):
    config = cifar10_vp.get_config()
    t = config.training
    t.sde = "vp_cosine"
    t.continuous = True
    t.snr_truncation = True
    t.batch_size = 128
    m = config.model
    m.logsnr_min = -20.0
    m.logsnr_max = 20.0
    m.output = "x0"
    m.time_label = "999t"
    m.dropout = 0.2
    m.ema_rate = 0.9999
    o = config.optim
    o.lr = 2e-4
    o.warmup = 1000
    o.weight_decay = 0.001
    o.grad_clip = 1.0
    config.data.random_flip = True
    s = config.sampling
    s.method = "ddim"
    s.steps = 1024  # eval_sampling_num_steps
    s.clip_denoised = True
    s.noise_removal = False
    return base.apply_variants(config, variant, {"smoke": base.smoke}, "cifar10_pd_teacher")
