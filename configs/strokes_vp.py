"""Pen-stroke drawings of digits (``(x, y, pen)`` sequences of 64 points), VP SDE, a bidirectional-GRU score network.

ChiroDiff (Das et al., ICLR 2023): a drawing ``X = [x(0), ..., x(N-1)]`` is noised point-wise like an image and
``eps(X_t, t) = BiRNN(X_t, t)``. The drawings are glyph outlines of matplotlib's fonts, built offline from a seed
(:mod:`scoresde.data.strokes`). ``--mode=sample`` writes ``samples_<i>.npz`` (float32 ``(B, N, 3)``) with a PNG
and an SVG grid; ``--config.sampling.num_points`` samples at another resolution than trained on.
Variant: ``smoke`` (tiny, 2 steps).

    python -m scoresde.main --config=configs/strokes_vp.py --workdir=runs/strokes
    python -m scoresde.main --config=configs/strokes_vp.py --workdir=runs/strokes --mode=sample
    python -m scoresde.main --config=configs/strokes_vp.py --workdir=runs/strokes --mode=sample \
        --config.sampling.num_points=96
    python -m scoresde.main --config=configs/strokes_vp.py --workdir=runs/strokes --mode=likelihood
"""

from scoresde import config_defaults as base


def smoke(config):
    t = config.training
    t.batch_size = 16
    t.n_iters = 2
    t.log_freq = 1
    t.eval_freq = 2
    t.snapshot_freq = 2
    t.snapshot_freq_for_preemption = 2
    t.snapshot_num_samples = 8
    t.tensorboard = False
    t.progress = False
    config.eval.batch_size = 16
    config.eval.num_samples = 8
    config.eval.sample_batch_size = 8
    config.eval.num_eval_batches = 1
    config.eval.bpd_batch_size = 8
    config.eval.bpd_rtol = 1e-3
    config.eval.bpd_atol = 1e-3
    config.data.num_points = 16
    config.data.num_drawings = 200
    config.model.hidden = 16
    config.model.num_layers = 1
    config.model.embed_dim = 16
    config.model.num_scales = 20
    config.optim.warmup = 0


def get_config(variant=None):
    config = base.get_default_configs()
    t = config.training
    t.sde = "vpsde"
    t.continuous = True
    t.reduce_mean = True
    t.batch_size = 64
    t.n_iters = 3000
    t.log_freq = 50
    t.eval_freq = 500
    t.snapshot_freq = 1500
    t.snapshot_freq_for_preemption = 500
    t.snapshot_num_samples = 64
    config.eval.batch_size = 64
    config.eval.num_samples = 100
    config.eval.sample_batch_size = 100
    config.eval.num_eval_batches = 2
    s = config.sampling
    s.method = "dpm_solver++"
    s.steps = 50
    d = config.data
    d.dataset = "strokes"
    d.num_points = 64
    d.num_drawings = 2000
    d.stroke_chars = "digits"
    d.image_size = 0
    d.num_channels = 0
    d.centered = False
    d.random_flip = False
    m = config.model
    m.name = "birnn"
    m.hidden = 96
    m.num_layers = 2
    m.embed_dim = 64
    m.num_classes = 0
    m.ema_rate = 0.995
    m.dropout = 0.0
    m.num_scales = 1000
    o = config.optim
    o.lr = 2e-3
    o.warmup = 100
    o.grad_clip = 1.0
    return base.apply_variants(config, variant, {"smoke": smoke}, "strokes_vp")
