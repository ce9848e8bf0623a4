"""2-D toy data (default: the 3×3 Gaussian-mixture grid), VP SDE, MLP score network. Trains in seconds.

Variants: a dataset name (`gmm_grid`, `checkerboard`, `two_moons`, `swiss_roll`) and/or `smoke`,
comma-separated. Snapshots are scatter plots in `workdir/samples/`.

    python -m scoresde.main --config=configs/toy2d_vp.py --workdir=runs/toy2d
    python -m scoresde.main --config=configs/toy2d_vp.py:two_moons --workdir=runs/moons
"""

from scoresde import config_defaults as base


def _dataset(name):
    def apply(config):
        config.data.dataset = name

    return apply


def smoke(config):
    t = config.training
    t.batch_size = 64
    t.n_iters = 2
    t.log_freq = 1
    t.eval_freq = 2
    t.snapshot_freq = 2
    t.snapshot_freq_for_preemption = 2
    t.snapshot_num_samples = 64
    t.tensorboard = False
    t.progress = False
    config.eval.batch_size = 64
    config.eval.num_samples = 128
    config.eval.sample_batch_size = 64
    config.model.hidden = 32
    config.model.num_layers = 2
    config.model.num_scales = 20


def get_config(variant=None):
    config = base.get_default_configs()
    t = config.training
    t.sde = "vpsde"
    t.continuous = True
    t.reduce_mean = True
    t.batch_size = 512
    t.n_iters = 4000
    t.log_freq = 100
    t.eval_freq = 500
    t.snapshot_freq = 2000
    t.snapshot_freq_for_preemption = 1000
    t.snapshot_num_samples = 2000
    config.eval.batch_size = 512
    config.eval.num_samples = 4000
    config.eval.sample_batch_size = 2000
    config.eval.num_eval_batches = 10
    d = config.data
    d.dataset = "gmm_grid"
    d.shape = (2,)
    d.image_size = 0
    d.num_channels = 0
    d.centered = False
    d.random_flip = False
    m = config.model
    m.name = "mlp"
    m.hidden = 256
    m.num_layers = 3
    m.embed_dim = 64
    m.num_classes = 0
    m.ema_rate = 0.999
    m.dropout = 0.0
    m.num_scales = 500
    o = config.optim
    o.lr = 1e-3
    o.warmup = 100
    o.grad_clip = 1.0
    names = ("gmm_grid", "checkerboard", "two_moons", "swiss_roll")
    return base.apply_variants(config, variant, {"smoke": smoke, **{n: _dataset(n) for n in names}}, "toy2d_vp")
