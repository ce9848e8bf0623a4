"""Progressive distillation (Salimans & Ho 2022) on CIFAR-10: DDIM 8192 -> 4096 -> ... -> 1 steps — the official
google-research ``diffusion_distillation/config/cifar_distill.py`` field by field (``docs/recipes.md``).

As the official code: batch 128, Adam lr 5e-5 without warm-up, decayed linearly to 0 within every 50k-update
round (``optim.lr_decay_steps``), grad clip 1, no weight decay, 50k updates per halving round from an 8192-step
teacher sampler, the student predicts x (``mean_type='x'``) and starts from the teacher, truncated-SNR weighting
max(SNR, 1), student dropout 0, EMA decay 0 (each round's student itself is the next round's teacher).
The process is the teacher's cosine log-SNR schedule clipped to [-20, 20] (``training.sde = "vp_cosine"``,
the teacher ``configs/cifar10_pd_teacher.py``), on the uniform-in-t DDIM grid, and the DDIM sampler clips
x-predictions to [-1, 1] (``eval_clip_denoised``). Deviation (reasons in ``docs/recipes.md``): the network is
this project's DDPM++, not the official ``unet_iddpm``. Variant: `smoke`.

    python -m scoresde.main --config=configs/cifar10_pd.py --workdir=runs/cifar10_pd --mode=distill --config.distill.teacher_workdir=runs/cifar10_pd_teacher
    python -m scoresde.main --config=configs/cifar10_pd.py --workdir=runs/cifar10_pd --mode=sample
"""

from scoresde import config_defaults as base

teacher = base.sibling(__file__, "cifar10_pd_teacher")

ROUND_UPDATES = 50000  # official distill_steps_per_iter


def smoke(config):
    base.smoke(config)
    config.distill.start_steps = 4
    config.optim.lr_decay_steps = 1


def get_config(variant=None):
    config = teacher.get_config()
    t = config.training
    t.batch_size = 128
    t.n_iters = ROUND_UPDATES * 13  # 13 rounds: 8192 -> 1
    t.snapshot_freq = ROUND_UPDATES  # every round's end is checkpointed (and kept) and snapshotted
    o = config.optim
    o.lr = 5e-5
    o.warmup = 0
    o.lr_decay_steps = ROUND_UPDATES
    o.grad_clip = 1.0
    o.weight_decay = 0.0
    m = config.model
    m.output = "x0"
    m.dropout = 0.0
    m.ema_rate = 0.0
    d = config.distill
    d.method = "pd"
    d.teacher_workdir = "runs/cifar10_pd_teacher"
    d.start_steps = 8192
    d.end_steps = 1
    d.pd_weighting = "truncated_snr"
    s = config.sampling
    s.method = "ddim"
    s.steps = 1
    s.noise_removal = False
    s.clip_denoised = True
    return base.apply_variants(config, variant, {"smoke": smoke}, "cifar10_pd")
