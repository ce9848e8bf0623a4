"""sCD (Lu & Song 2025, arXiv 2410.11081): continuous-time consistency distillation of the digits_vp model.

The teacher (README's digits model, `configs/digits_vp.py`, VP SDE, ε-prediction) is read through
`scoresde.fewstep.trigflow.trigflow_velocity_from_score`: its denoiser at the VP state and time of the same
noise level gives the exact TrigFlow probability-flow velocity dx_t/dt. The student is the teacher's U-Net read as
the TrigFlow network F (`scoresde.build.trigflow_net`), started from the teacher's EMA weights, and samples in
1 or 2 steps (`--config.sampling.steps=2`, t_mid = 1.1). Field by field:

* `distill.scm_p_mean = -1.0`, `scm_p_std = 1.4`: paper, App. G (CIFAR-10), as `scoresde.fewstep.scm` cites it.
* `distill.scm_tangent_c = 0.1`: tangent normalisation, paper Sec. 4.2.
* `distill.scm_adaptive_weight = True`: paper Sec. 4.2 (deviation: a separate Fourier-feature module).
* `distill.scm_warmup = 300`: deviation, the paper's H = 10k iterations scaled to this 3000-step run.
* Teacher: deviation. The paper distils a TrigFlow diffusion model (its velocity is one network call); here a
  VP ε-model converted exactly by the time and state maps of `scoresde.fewstep.trigflow` (also one call).
  Times above the teacher's T (σ̃ > σ̃(T) ≈ 157) read the teacher at T.
* Initialisation from the teacher: the paper's (it starts sCD from the pretrained diffusion model); here the
  output convention differs (ε vs F) and so does the time input (the teacher's 999 s against the student's
  c_noise(t) = t, `distill.scm_time_label = "trigflow"` from digits_sct), so only the features carry over, as for
  CD (`configs/digits_cd.py`).
* `optim.lr = 2e-4`, `n_iters = 2400`, `model.ema_rate = 0.99`: this project's CD budget, not the paper's.

Variant: `smoke`.

    python -m scoresde.main --config=configs/digits_vp.py --workdir=runs/digits
    python -m scoresde.main --config=configs/digits_scd.py --workdir=runs/digits_scd --mode=distill
    python -m scoresde.main --config=configs/digits_scd.py --workdir=runs/digits_scd --mode=sample --config.sampling.steps=2
"""

from scoresde import config_defaults as base

digits_sct = base.sibling(__file__, "digits_sct")


def smoke(config):
    digits_sct.smoke(config)
    config.distill.teacher_workdir = "runs/digits_smoke"


def get_config(variant=None):
    config = digits_sct.get_config()
    t = config.training
    t.n_iters = 2400
    t.snapshot_freq = 2400
    config.optim.lr = 2e-4
    config.optim.warmup = 0
    config.distill.teacher_workdir = "runs/digits"
    return base.apply_variants(config, variant, {"smoke": smoke}, "digits_scd")
