"""ECT (Geng et al., "Consistency Models Made Easy", ICLR 2025): consistency tuning of the digits_vp model.

The trained digits_vp U-Net (the teacher workdir) becomes a consistency function on the VP SDE (the CD student's
parameterisation, `scoresde.build.student_consistency_fn`, read in EDM noise levels by
`scoresde.build.ect_consistency_fn`), started from its EMA weights, and is trained on ECT's loss
(`scoresde.fewstep.ect`) with the shrinking-Δt stages. Samples with `method=consistency` in 1 or 2 steps.
Field by field (locuslab/ect `ct_train.py` defaults and `run_ecm.sh` CIFAR-10 = "code"; the paper = "paper"):

* `distill.ect_q = 2.0`, `ect_k = 8.0`, `ect_b = 1.0`, the "sigmoid" mapping: code defaults (-q 2, -k 8, -b 1).
* `distill.ect_huber_c = 0.0` (the L2 norm, sqrt(||.||^2)): code default (-c 0.0).
* `distill.ect_p_mean = -1.1`, `ect_p_std = 2.0`: code defaults (--mean, --std).
* `distill.ect_stage_steps = 300`: deviation. run_ecm.sh halves Δt every 250 ticks of 12.8 kimg (25k iterations
  at batch 128) over 25.6 Mimg (8 stages); this 2400-step run keeps 8 stages.
* Weighting: deviation. `scoresde.fewstep.ect.ect_loss` weights by 1 / (t - r) (the paper); the code's current
  loss weights by 1/t² + 1/σ_d² ("snrpk").
* Initialisation from a trained diffusion model: code (--transfer of EDM's VP CIFAR-10 model).
* Network/preconditioning: deviation. The code's ECMPrecond (EDM's c_skip/c_out on σ); here CD's consistency
  parameterisation on the VP SDE, so σ ranges over the VP's σ̃(eps)..σ̃(T) ≈ 0.003..157 (clipped) not 0.002..80.
* `optim.lr = 1e-3`, `warmup = 100`, Adam, `model.ema_rate = 0.99`, dropout 0: deviation, this project's
  consistency-training budget (`configs/digits_ct.py`, from scratch on the same network); the code uses RAdam lr
  1e-4, dropout 0.2, EMA 0.9999, batch 128. Why CT's and not CD's lr: the teacher's ε-network read through the
  consistency parameterisation (input c_in x̄, output c_skip x̄ + c_out F) is not the teacher's denoiser at
  initialisation (at σ̃(T) it returns σ_d times the input noise), so only its features carry over and the run is
  consistency training from a feature initialisation. BENCHMARKS.md ("ECT: the learning rate"): at CD's 2e-4 the
  1-step samples reach mean p_max 0.70, at 1e-3 0.76 (1024 samples, two sampling seeds).

Variant: `smoke`.

    python -m scoresde.main --config=configs/digits_vp.py --workdir=runs/digits
    python -m scoresde.main --config=configs/digits_ect.py --workdir=runs/digits_ect --mode=distill
    python -m scoresde.main --config=configs/digits_ect.py --workdir=runs/digits_ect --mode=sample --config.sampling.steps=2
"""

from scoresde import config_defaults as base

digits_vp = base.sibling(__file__, "digits_vp")


def smoke(config):
    digits_vp.smoke(config)
    config.distill.teacher_workdir = "runs/digits_smoke"
    config.distill.ect_stage_steps = 1


def get_config(variant=None):
    config = digits_vp.get_config()
    t = config.training
    t.n_iters = 2400
    t.log_freq = 50
    t.snapshot_freq = 2400
    t.snapshot_freq_for_preemption = 300
    config.optim.lr = 1e-3
    config.optim.warmup = 100
    config.model.ema_rate = 0.99
    d = config.distill
    d.method = "ect"
    d.teacher_workdir = "runs/digits"
    d.sigma_data = 0.5
    d.ect_stage_steps = 300
    d.ect_q = 2.0
    d.ect_k = 8.0
    d.ect_b = 1.0
    d.ect_huber_c = 0.0
    d.ect_p_mean = -1.1
    d.ect_p_std = 2.0
    s = config.sampling
    s.method = "consistency"
    s.steps = 1
    return base.apply_variants(config, variant, {"smoke": smoke}, "digits_ect")
