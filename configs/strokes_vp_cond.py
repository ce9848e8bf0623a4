"""Class-conditional pen-stroke digits (classes 0–9), VP SDE, bidirectional-GRU score network with a label embedding.

Label dropout ``p_uncond = 0.1``; samples with classifier-free guidance, every class in turn
(``class_label = -1``: ten rows, digit 0 at the top of ``workdir/samples/samples_0.png``). Variant: ``smoke``.

    python -m scoresde.main --config=configs/strokes_vp_cond.py --workdir=runs/strokes_cond
    python -m scoresde.main --config=configs/strokes_vp_cond.py --workdir=runs/strokes_cond --mode=sample \
        --config.sampling.class_label=7 --config.sampling.guidance_scale=2
"""

from scoresde import config_defaults as base

strokes_vp = base.sibling(__file__, "strokes_vp")


def smoke(config):
    strokes_vp.smoke(config)
    config.eval.num_samples = 10
    config.eval.sample_batch_size = 10
    config.training.snapshot_num_samples = 10


def get_config(variant=None):
    config = strokes_vp.get_config()
    base.add_guidance(config, 10, p_uncond=0.1, guidance="cfg", guidance_scale=1.0)
    return base.apply_variants(config, variant, {"smoke": smoke}, "strokes_vp_cond")
