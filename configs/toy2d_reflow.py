"""Reflow on 2-D toy data: the 2-rectified flow of a trained `toy2d_fm` run (Liu et al. 2023, Sec. 2.3).

`--mode=reflow` maps `reflow.num_pairs` prior draws through the source flow's ODE (`reflow.method`,
`reflow.steps`), stores the (noise, sample) couplings in `workdir/reflow/` (resumable), then trains the next
flow on them starting from the source's EMA weights. Its straighter paths give good samples in one or two
Euler steps (`sampling.method=ddim`, which is Euler on the flow). Variants as `toy2d_fm` (a dataset
name and/or `smoke`).

    python -m scoresde.main --config=configs/toy2d_fm.py --workdir=runs/toy2d_fm
    python -m scoresde.main --config=configs/toy2d_reflow.py --workdir=runs/toy2d_reflow --mode=reflow
    python -m scoresde.main --config=configs/toy2d_reflow.py --workdir=runs/toy2d_reflow --mode=sample
"""

from scoresde import config_defaults as base

_fm = base.sibling(__file__, "toy2d_fm")


def get_config(variant=None):
    config = _fm.get_config(variant)
    smoke = "smoke" in (variant or "").split(",")
    r = config.reflow
    r.source_workdir = "runs/toy2d_fm"
    r.num_pairs = 128 if smoke else 20000
    r.batch_size = 64 if smoke else 2000
    r.method = "dpm_solver++"
    r.steps = 4 if smoke else 20
    r.order = 2
    r.init_from_source = True
    t = config.training
    if not smoke:
        t.n_iters = 2000
        t.snapshot_freq = 1000
        t.snapshot_freq_for_preemption = 500
        config.optim.warmup = 0
        config.optim.lr = 5e-4
    s = config.sampling
    s.method = "ddim"  # eta = 0: Euler on the flow
    s.steps = 1
    return config
