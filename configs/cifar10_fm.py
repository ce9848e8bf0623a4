"""CIFAR-10, rectified flow (1-rectified flow, Liu et al. ICLR 2023) with DDPM++ — the authors'
`RectifiedFlow/ImageGeneration/configs/rectified_flow/cifar10_rf_gaussian_ddpmpp.py`.

Flow matching on the linear interpolant from a standard Gaussian, velocity output, ``999 t`` time labels
(as the authors feed their DDPM++), batch 128, Adam lr 2e-4 with 5000 warm-up steps, grad clip 1, dropout
0.15, EMA 0.999999, 1.3M iterations. The authors sample with an adaptive RK45 solve of the flow ODE;
here the default is a deliberate deviation, the same flow through DPM-Solver++(2M) from ``T = 1`` (``--config.sampling.method=ode
--config.model.rf_T=0.999`` for the adaptive solve). Variants: `smoke` (tiny, 2 steps).

    python -m scoresde.main --config=configs/cifar10_fm.py --workdir=runs/cifar10_fm
    python -m scoresde.main --config=configs/cifar10_fm.py --workdir=runs/cifar10_fm --mode=sample
    python -m scoresde.main --config=configs/cifar10_fm.py:smoke --workdir=/tmp/smoke --config.data.download=True
"""

from scoresde import config_defaults as base


def get_config(variant=None):
    config = base.get_default_configs()
    t = config.training
    t.sde = "rectified_flow"
    t.objective = "flow_matching"
    t.time_sampling = "uniform"
    t.continuous = True
    t.reduce_mean = True
    config.data.centered = True
    base.ddpmpp_model(config.model)
    m = config.model
    m.rf_T = 1.0
    m.time_label = "999t"
    m.dropout = 0.15
    m.ema_rate = 0.999999
    s = config.sampling
    s.method = "dpm_solver++"
    s.steps = 50
    s.order = 2
    s.noise_removal = False
    return base.apply_variants(config, variant, {"smoke": base.smoke}, "cifar10_fm")
