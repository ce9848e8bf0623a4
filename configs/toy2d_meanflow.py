"""MeanFlow (Geng et al. 2025, arXiv 2505.13447) on the 2-D Gaussian-mixture grid: a 1-step sampler from scratch.

The toy MLP built with a second time input (`config.model.second_time`: an embedding of t - r added to the time
embedding) is the average velocity u(z, r, t) of the rectified flow z_t = (1 - t) x + t ε, trained with
`scoresde.fewstep.meanflow.meanflow_loss` (`scoresde.build.continuous`), sampled with `method=meanflow`
(`--config.sampling.steps=2` for 2 jumps). Field by field:

* `distill.mf_p_mean = -0.4`, `mf_p_std = 1.0`, `mf_ratio = 0.25`, `mf_power = 1.0`, `mf_weight_c = 1e-3`:
  the paper's ablation defaults (Table 1, ImageNet), as `scoresde.fewstep.meanflow` cites them.
* `model.time_label = "t"`: raw t and t - r in [0, 1], as the official code (Gsunshine/py-meanflow) feeds its
  positional embedding; 999 t makes ∂_t u of the JVP dominated by the embedding's fast sinusoids.
* `n_iters = 4000`, batch 512, Adam lr 1e-3, EMA 0.999: deviation, this project's toy2d budget
  (`configs/toy2d_vp.py`); the network is the toy MLP, not the paper's DiT / U-Net.

Variant: `smoke`.

    python -m scoresde.main --config=configs/toy2d_meanflow.py --workdir=runs/toy2d_meanflow --mode=distill
    python -m scoresde.main --config=configs/toy2d_meanflow.py --workdir=runs/toy2d_meanflow --mode=sample --config.sampling.steps=2
"""

from scoresde import config_defaults as base

toy2d_vp = base.sibling(__file__, "toy2d_vp")


def smoke(config):
    toy2d_vp.smoke(config)


def get_config(variant=None):
    config = toy2d_vp.get_config()
    t = config.training
    t.sde = "rectified_flow"
    t.n_iters = 4000
    config.model.rf_T = 1.0
    config.model.output = "flow_velocity"
    config.model.time_label = "t"
    config.model.second_time = True
    d = config.distill
    d.method = "meanflow"
    d.mf_p_mean = -0.4
    d.mf_p_std = 1.0
    d.mf_ratio = 0.25
    d.mf_power = 1.0
    d.mf_weight_c = 1e-3
    s = config.sampling
    s.method = "meanflow"
    s.steps = 1
    return base.apply_variants(config, variant, {"smoke": smoke}, "toy2d_meanflow")
