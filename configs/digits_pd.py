"""Progressive distillation (Salimans & Ho 2022) of the README's digits model: DDIM 16 -> 8 -> 4 -> 2 -> 1 steps.

Round 0's teacher is configs/digits_vp.py's model (eps-prediction) sampled by DDIM at 16 steps; the student
(same U-Net, started from the teacher's EMA weights) predicts `v` (`model.output`), so its 1-step target at
t = T is well posed; truncated-SNR weighting; `training.n_iters` split evenly over the 4 rounds, each
round's EMA student the next round's teacher, a checkpoint and a snapshot at every round's end. Samples
with `ddim` at the final step count (`--config.sampling.steps=2` etc. for the earlier rounds' counts:
those read the final student). Variant: `smoke`.

    python -m scoresde.main --config=configs/digits_vp.py --workdir=runs/digits
    python -m scoresde.main --config=configs/digits_pd.py --workdir=runs/digits_pd --mode=distill
    python -m scoresde.main --config=configs/digits_pd.py --workdir=runs/digits_pd --mode=sample
"""

from scoresde import config_defaults as base

digits_vp = base.sibling(__file__, "digits_vp")


def smoke(config):
    digits_vp.smoke(config)
    config.distill.teacher_workdir = "runs/digits_smoke"
    config.distill.start_steps = 4  # two rounds: 2 and 1 steps, one training step each
    config.training.snapshot_freq = 1


def get_config(variant=None):
    config = digits_vp.get_config()
    t = config.training
    t.n_iters = 800
    t.log_freq = 25
    t.snapshot_freq = 200  # = steps per round: every round is checkpointed and snapshotted
    t.snapshot_freq_for_preemption = 200
    o = config.optim
    o.lr = 2e-4
    o.warmup = 0
    config.model.ema_rate = 0.99
    config.model.output = "v"
    d = config.distill
    d.method = "pd"
    d.teacher_workdir = "runs/digits"
    d.start_steps = 16
    d.end_steps = 1
    d.pd_weighting = "truncated_snr"
    s = config.sampling
    s.method = "ddim"
    s.steps = 1
    s.noise_removal = False  # the student's last step lands at eps itself: no extra Tweedie step (1 NFE, not 2)
    return base.apply_variants(config, variant, {"smoke": smoke}, "digits_pd")
