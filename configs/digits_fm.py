"""The 8×8 digits scikit-learn ships (no download), rectified flow trained by flow matching, a small DDPM++.

The flow-matching counterpart of `digits_vp.py` (same network, data, optimiser): the network predicts the
velocity ``z - x_0`` of the linear interpolant ``x_t = (1 - t) x_0 + t z`` and is fed ``999 t`` as the
rectified-flow authors feed DDPM++. Trains on 2 CPU cores in a few minutes; snapshots and ``--mode=sample``
use DPM-Solver++(2M) from exactly ``T = 1`` (any grid method works: ``unipc``, ``deis``, ``ddim`` = Euler on
the flow, ``euler_ancestral``, ``dpm_solver++_sde``). ``pc`` / ``ode`` / ``--mode=likelihood`` need ``T < 1``:
add ``--config.model.rf_T=0.999``. Variants: `logit_normal` (t = sigmoid(n), Esser et al. 2024), `smoke`.

    python -m scoresde.main --config=configs/digits_fm.py --workdir=runs/digits_fm
    python -m scoresde.main --config=configs/digits_fm.py --workdir=runs/digits_fm --mode=sample
    python -m scoresde.main --config=configs/digits_fm.py --workdir=runs/digits_fm --mode=sample --config.sampling.method=unipc --config.sampling.steps=10
"""

from scoresde import config_defaults as base

_digits = base.sibling(__file__, "digits_vp")


def logit_normal(config):
    config.training.time_sampling = "logit_normal"


def rectified_flow(config):
    """The digits network as a rectified flow trained by flow matching (also ``digits_t2i``'s ``fm`` variant)."""
    t = config.training
    t.sde = "rectified_flow"
    t.objective = "flow_matching"
    t.time_sampling = "uniform"
    config.model.rf_T = 1.0
    config.model.time_label = "999t"
    s = config.sampling
    s.method = "dpm_solver++"
    s.steps = 20
    s.order = 2
    s.noise_removal = False
    return config


def get_config(variant=None):
    config = rectified_flow(_digits.get_config())
    return base.apply_variants(config, variant, {"logit_normal": logit_normal, "smoke": _digits.smoke}, "digits_fm")
