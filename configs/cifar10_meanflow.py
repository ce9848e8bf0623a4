"""MeanFlow on CIFAR-10 (Geng et al. 2025, arXiv 2505.13447): 1-step generation from scratch.

This project's DDPM++ (`configs/cifar10_fm.py`'s) with a second time input (`config.model.second_time`) is the
average velocity u(z, r, t) of the rectified flow (`scoresde.build.continuous`); `method=meanflow` samples it in
1 or 2 jumps. Field by field ("paper" = arXiv 2505.13447, the values `scoresde.fewstep.meanflow` cites;
"fastgen" = NVIDIA fastgen's CIFAR-10 MeanFlow config, which says it imitates Gsunshine/py-meanflow v1: code,
third party):

* `distill.mf_p_mean = -2.0`, `mf_p_std = 2.0`, `mf_ratio = 0.75`, `mf_power = 0.75`: paper (CIFAR-10).
  fastgen draws t ~ logit-normal(-0.6, 1.6) and r ~ logit-normal(-4.0, 1.6) separately; same ratio and p.
* `distill.mf_weight_c = 1e-3`: paper and fastgen.
* `optim.lr = 6e-4`, Adam (0.9, 0.999), `training.batch_size = 1024`, `model.dropout = 0.2`: fastgen.
* `optim.warmup = 9765` (200 epochs of 50k at batch 1024): fastgen.
* `training.n_iters = 800000`, `model.ema_rate = 0.99995`: deviation / not verified (fastgen runs 1M iterations
  and keeps EMAs 0.9999, 0.99995, 0.9996; the paper's table was not checked here).
* `model.time_label = "t"`: DDPM++ fed raw t and t - r, as Gsunshine/py-meanflow feeds EDM's positional
  embedding (it concatenates the two embeddings; DDPM++ adds them).
* Deviations: no augmentation (fastgen: EDM's AugmentPipe p = 0.12 with x-flips).

Variant: `smoke`.

    python -m scoresde.main --config=configs/cifar10_meanflow.py --workdir=runs/cifar10_meanflow --mode=distill
    python -m scoresde.main --config=configs/cifar10_meanflow.py --workdir=runs/cifar10_meanflow --mode=sample --config.sampling.steps=2
"""

from scoresde import config_defaults as base

cifar10_fm = base.sibling(__file__, "cifar10_fm")


def smoke(config):
    base.smoke(config)


def get_config(variant=None):
    config = cifar10_fm.get_config()
    t = config.training
    t.objective = "dsm"
    t.batch_size = 1024
    t.n_iters = 800000
    o = config.optim
    o.lr = 6e-4
    o.warmup = 9765
    m = config.model
    m.output = "flow_velocity"
    m.time_label = "t"
    m.second_time = True
    m.dropout = 0.2
    m.ema_rate = 0.99995
    d = config.distill
    d.method = "meanflow"
    d.mf_p_mean = -2.0
    d.mf_p_std = 2.0
    d.mf_ratio = 0.75
    d.mf_power = 0.75
    d.mf_weight_c = 1e-3
    s = config.sampling
    s.method = "meanflow"
    s.steps = 1
    return base.apply_variants(config, variant, {"smoke": smoke}, "cifar10_meanflow")
