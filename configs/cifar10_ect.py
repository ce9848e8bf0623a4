"""ECT on CIFAR-10 (Geng et al., "Consistency Models Made Easy", ICLR 2025): tuning a trained diffusion model.

The diffusion model in `config.distill.teacher_workdir` (e.g. `configs/cifar10_vp.py`'s) becomes a
consistency function on its VP SDE (`scoresde.build.ect_consistency_fn`) and is trained on ECT's loss with the
shrinking-Δt stages (`scoresde.fewstep.ect`); `method=consistency` samples it in 1 or 2 steps. Field by field
("code" = locuslab/ect `ct_train.py` defaults and `run_ecm.sh`, the CIFAR-10 run; "paper" = the paper):

* `distill.ect_q = 2.0`, `ect_k = 8.0`, `ect_b = 1.0` (sigmoid mapping), `ect_huber_c = 0.0`, `ect_p_mean = -1.1`,
  `ect_p_std = 2.0`: code defaults.
* `distill.ect_stage_steps = 25000`: code (`--double=250` ticks of `--tick=12.8` kimg at `--batch=128`).
* `training.batch_size = 128`, `n_iters = 200000` (`--duration=25.6` Mimg), `optim.lr = 1e-4`, `model.dropout =
  0.2`, `model.ema_rate = 0.9999`, no augmentation: code (run_ecm.sh, `--ema_beta` default).
* Deviations: Adam for the code's RAdam; the weighting 1 / (t - r) (the paper; the code now weights by
  1/t² + 1/σ_d²); the teacher is this project's VP DDPM++ rather than EDM's VP checkpoint, and the consistency
  function is CD's parameterisation on the VP SDE (noise levels σ̃(1e-3)..σ̃(T), clipped) rather than ECMPrecond on
  EDM's σ.

Variant: `smoke`.

    python -m scoresde.main --config=configs/cifar10_ect.py --workdir=runs/cifar10_ect --mode=distill --config.distill.teacher_workdir=runs/cifar10_vp
    python -m scoresde.main --config=configs/cifar10_ect.py --workdir=runs/cifar10_ect --mode=sample --config.sampling.steps=2
"""

from scoresde import config_defaults as base

cifar10_vp = base.sibling(__file__, "cifar10_vp")


def smoke(config):
    base.smoke(config)
    config.distill.ect_stage_steps = 1


def get_config(variant=None):
    config = cifar10_vp.get_config()
    t = config.training
    t.batch_size = 128
    t.n_iters = 200000
    o = config.optim
    o.lr = 1e-4
    o.warmup = 0
    config.model.ema_rate = 0.9999
    config.model.dropout = 0.2
    d = config.distill
    d.method = "ect"
    d.teacher_workdir = "runs/cifar10_vp"
    d.sigma_data = 0.5
    d.ect_stage_steps = 25000
    d.ect_q = 2.0
    d.ect_k = 8.0
    d.ect_b = 1.0
    d.ect_huber_c = 0.0
    d.ect_p_mean = -1.1
    d.ect_p_std = 2.0
    s = config.sampling
    s.method = "consistency"
    s.steps = 1
    return base.apply_variants(config, variant, {"smoke": smoke}, "cifar10_ect")
