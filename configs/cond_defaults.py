"""Class-conditional / guidance fields shared by the ``*_cond`` and classifier configs (scoresde additions).

* ``model.num_classes``: a label embedding with a null label ``num_classes`` (classifier-free guidance).
* ``training.p_uncond``: label dropout probability (the null label replaces ``y``), Ho & Salimans's ``p_∅``.
* ``sampling.guidance`` ∈ ``none | cfg | classifier``; ``sampling.class_label`` (``-1``: all classes, one
  block of rows each); ``sampling.guidance_scale`` (``w`` of CFG, ``γ = 1 + w`` in the notes; the
  classifier scale for classifier guidance). The scale is a traced value in the samplers.
* ``classifier``: the noise-conditional classifier trained by ``--mode=train_classifier``.
"""

import ml_collections


def add_guidance(config, num_classes, *, p_uncond=0.1, guidance="cfg", guidance_scale=1.0):
    config.model.num_classes = num_classes
    config.training.p_uncond = p_uncond
    s = config.sampling
    s.guidance = guidance
    s.class_label = -1
    s.guidance_scale = guidance_scale
    return config


def add_classifier(config, name, num_classes, **fields):
    """``config.classifier`` with the reference's defaults (WRN-28-10, lr 2e-4) overridden by ``fields``."""
    c = config.classifier = ml_collections.ConfigDict()
    c.name = name
    c.num_classes = num_classes
    if name == "wrn":
        c.depth, c.width, c.embed_size, c.fourier_scale = 28, 10, 128, 16.0
    else:
        c.hidden, c.num_layers, c.embed_size, c.fourier_scale = 128, 3, 32, 4.0
    c.n_iters = 100000
    c.batch_size = config.training.batch_size
    c.lr = 2e-4
    c.warmup = 0
    c.grad_clip = 1.0
    c.weight_decay = 0.0
    c.ema_rate = 0.999
    c.log_freq = 50
    c.snapshot_freq = 10000
    c.num_eval_batches = 8
    c.tensorboard = False
    for k, v in fields.items():
        c[k] = v
    return config
