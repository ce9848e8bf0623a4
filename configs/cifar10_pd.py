"""Progressive distillation (Salimans & Ho 2022) on CIFAR-10: DDIM 1024 -> 512 -> ... -> 1 steps.

The paper's recipe as far as this project can follow it: batch 128, Adam lr 1e-4 (no warm-up), 50k
updates per halving round, v-prediction student started from the teacher, truncated-SNR weighting
max(SNR, 1), the teacher's DDIM grid uniform in t, each round's student the next round's teacher.
What differs: the paper's teacher is already trained with v-prediction and its rounds start at 8192 steps
with a learning rate decayed within each round; here the teacher is this project's eps-prediction VP DDPM++
(`configs/cifar10_vp.py`), round 0 starts at 1024 DDIM steps and the learning rate is constant (this
project's optimiser has warm-up only). Variant: `smoke`.

    python -m scoresde.main --config=configs/cifar10_pd.py --workdir=runs/cifar10_pd --mode=distill --config.distill.teacher_workdir=runs/cifar10_vp
    python -m scoresde.main --config=configs/cifar10_pd.py --workdir=runs/cifar10_pd --mode=sample
"""

from scoresde import config_defaults as base

cifar10_vp = base.sibling(__file__, "cifar10_vp")


def smoke(config):
    base.smoke(config)
    config.distill.start_steps = 4


def get_config(variant=None):
    config = cifar10_vp.get_config()
    t = config.training
    t.batch_size = 128
    t.n_iters = 50000 * 10  # 10 rounds: 1024 -> 1
    t.snapshot_freq = 50000  # every round's end is checkpointed (and kept) and snapshotted
    o = config.optim
    o.lr = 1e-4
    o.warmup = 0
    config.model.output = "v"
    d = config.distill
    d.method = "pd"
    d.teacher_workdir = "runs/cifar10_vp"
    d.start_steps = 1024
    d.end_steps = 1
    d.pd_weighting = "truncated_snr"
    s = config.sampling
    s.method = "ddim"
    s.steps = 1
    s.noise_removal = False
    return base.apply_variants(config, variant, {"smoke": smoke}, "cifar10_pd")
