"""Reflow on the digits: the 2-rectified flow of a trained `digits_fm` run (Liu et al. 2023, Sec. 2.3).

`--mode=reflow` maps `reflow.num_pairs` prior draws through the source flow's ODE (DPM-Solver++(2M), 20 steps),
stores the (noise, sample) couplings in `workdir/reflow/` (resumable), then fine-tunes the source's EMA weights
by flow matching on the fixed pairs. The straighter flow samples in one or two Euler steps (`sampling.method=ddim`
is Euler on the flow; 1 step by default). Variant: `smoke`.

    python -m scoresde.main --config=configs/digits_fm.py --workdir=runs/digits_fm
    python -m scoresde.main --config=configs/digits_reflow.py --workdir=runs/digits_reflow --mode=reflow \
        --config.reflow.source_workdir=runs/digits_fm
    python -m scoresde.main --config=configs/digits_reflow.py --workdir=runs/digits_reflow --mode=sample
"""

from scoresde import config_defaults as base

_fm = base.sibling(__file__, "digits_fm")


def get_config(variant=None):
    return reflow_settings(_fm.get_config(variant), "smoke" in (variant or "").split(","))


def reflow_settings(config, smoke: bool):
    """The reflow of a digits flow (also ``digits_t2i_reflow``'s): couplings, fine-tuning, 1-step Euler sampling."""
    r = config.reflow
    r.source_workdir = "runs/digits_fm"
    r.num_pairs = 128 if smoke else 8192  # 5x the 1,617 training digits: pairs are free to draw, data is not
    r.batch_size = 64 if smoke else 512
    r.method = "dpm_solver++"
    r.steps = 4 if smoke else 20
    r.order = 2
    r.init_from_source = True
    t = config.training
    if not smoke:
        t.n_iters = 1500
        t.snapshot_freq = 1500
        t.snapshot_freq_for_preemption = 500
        config.optim.warmup = 0
        config.optim.lr = 5e-4  # fine-tuning from the source's EMA weights
    s = config.sampling
    s.method = "ddim"  # eta = 0: Euler on the flow
    s.steps = 1
    s.eta = 0.0
    return config
