"""sCM on CIFAR-10 (Lu & Song 2025, arXiv 2410.11081): sCT from scratch, or sCD with a teacher workdir.

Without `config.distill.teacher_workdir` the run is sCT; with one (a VP / EDM / flow diffusion model of
CIFAR-10, e.g. `configs/cifar10_vp.py`'s) it is sCD: the teacher's denoiser gives the TrigFlow velocity exactly
(`scoresde.fewstep.trigflow`) and the student starts from the teacher's weights. 1- or 2-step sampling
(`method=scm`, t_mid = 1.1). Field by field ("paper" = arXiv 2410.11081; values the library cites from its
App. G / Sec. 4; the rest of the paper's table was not checked in this project):

* `distill.scm_p_mean = -1.0`, `scm_p_std = 1.4`: paper, App. G (CIFAR-10).
* `distill.scm_tangent_c = 0.1`, `scm_warmup = 10000` (H), `scm_adaptive_weight = True`: paper, Sec. 4.2.
* `distill.sigma_data = 0.5`: paper.
* `optim.lr = 1e-4`, no warm-up, `model.ema_rate = 0.9999`, `model.dropout = 0.2`, batch 512, 400k
  iterations: this project's reading of the paper's CIFAR-10 setting, not verified against its table here.
* `distill.scm_time_label = "trigflow"`: paper, Sec. 4.1: the network reads c_noise(t) = t
  (`scoresde.build.trigflow_net`).
* Deviations: Adam rather than the paper's RAdam; this project's DDPM++ (`configs/cifar10_vp.py`), not the paper's
  NCSN++ with adaptive double normalisation; the adaptive weight is a separate Fourier-feature module.

Variant: `smoke`.

    python -m scoresde.main --config=configs/cifar10_scm.py --workdir=runs/cifar10_sct --mode=distill
    python -m scoresde.main --config=configs/cifar10_scm.py --workdir=runs/cifar10_scd --mode=distill --config.distill.teacher_workdir=runs/cifar10_vp
    python -m scoresde.main --config=configs/cifar10_scm.py --workdir=runs/cifar10_sct --mode=sample --config.sampling.steps=2
"""

from scoresde import config_defaults as base

cifar10_vp = base.sibling(__file__, "cifar10_vp")


def smoke(config):
    base.smoke(config)
    config.distill.scm_warmup = 1


def get_config(variant=None):
    config = cifar10_vp.get_config()
    t = config.training
    t.batch_size = 512
    t.n_iters = 400000
    o = config.optim
    o.lr = 1e-4
    o.warmup = 0
    config.model.ema_rate = 0.9999
    config.model.dropout = 0.2
    d = config.distill
    d.method = "scm"
    d.teacher_workdir = ""
    d.sigma_data = 0.5
    d.scm_p_mean = -1.0
    d.scm_p_std = 1.4
    d.scm_tangent_c = 0.1
    d.scm_warmup = 10000
    d.scm_adaptive_weight = True
    d.scm_time_label = "trigflow"
    s = config.sampling
    s.method = "scm"
    s.steps = 1
    return base.apply_variants(config, variant, {"smoke": smoke}, "cifar10_scm")
