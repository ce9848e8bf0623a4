"""2-D toy data (default: the 3×3 Gaussian-mixture grid), rectified flow trained by flow matching, MLP velocity.

The velocity network predicts ``z - x_0`` on the linear interpolant ``x_t = (1 - t) x_0 + t z``
(``config.training.objective = "flow_matching"``); sampling starts exactly at ``T = 1`` with a grid
method (default ``dpm_solver++``; ``unipc``, ``deis``, ``ddim`` (= Euler on the flow), ``euler_ancestral``,
``dpm_solver++_sde`` also work). ``pc`` / ``ode`` and ``--mode=likelihood`` integrate the SDE's drift, infinite
at ``t = 1``: add ``--config.model.rf_T=0.999``. Variants: a dataset name (`gmm_grid`, `checkerboard`,
`two_moons`, `swiss_roll`) and/or `smoke`, comma-separated.

    python -m scoresde.main --config=configs/toy2d_fm.py --workdir=runs/toy2d_fm
    python -m scoresde.main --config=configs/toy2d_fm.py --workdir=runs/toy2d_fm --mode=sample --config.sampling.method=unipc
    python -m scoresde.main --config=configs/toy2d_fm.py --workdir=runs/toy2d_fm --mode=likelihood --config.model.rf_T=0.999
"""

from scoresde import config_defaults as base

_toy = base.sibling(__file__, "toy2d_vp")


def get_config(variant=None):
    names = [v for v in (variant or "").split(",") if v]
    config = _toy.get_config(",".join(names))
    t = config.training
    t.sde = "rectified_flow"
    t.objective = "flow_matching"
    t.time_sampling = "uniform"
    config.model.rf_T = 1.0
    s = config.sampling
    s.method = "dpm_solver++"
    s.steps = 20
    s.order = 2
    s.noise_removal = False
    return config
