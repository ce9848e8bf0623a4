"""Text-to-image on the captioned 8×8 digits, GLIDE-style: a small DDPM++ conditioned on a caption.

``digits_vp`` plus captioned batches (``data.captions``: "a bold seven", "the digit 3 slanted to the right", ...,
:mod:`scoresde.data.captions`) and a text encoder trained jointly with the score network (``model.text_vocab``):
the pooled caption joins the time embedding, the token features are attended to by cross-attention after the
self-attentions (at 4×4 and in the middle). Caption dropout ``p_uncond = 0.2`` (GLIDE's 20%) trains the
unconditional model used by classifier-free guidance. Samples: ``config.sampling.prompt`` for every sample, or
``config.sampling.prompts_file`` (one caption a line, a grid row each), or by default one digit a row ("a zero" at
the top); ``samples_<i>.txt`` names the caption of each row. Variants: ``fm`` (a caption-conditioned rectified
flow, the source of ``digits_t2i_reflow.py``), ``smoke`` (tiny, 2 steps).

    python -m scoresde.main --config=configs/digits_t2i.py --workdir=runs/digits_t2i
    python -m scoresde.main --config=configs/digits_t2i.py --workdir=runs/digits_t2i --mode=sample
    python -m scoresde.main --config=configs/digits_t2i.py --workdir=runs/digits_t2i --mode=sample \
        --config.sampling.prompt="a bold seven" --config.sampling.guidance_scale=3
"""

from scoresde import config_defaults as base
from scoresde.data import captions

digits_vp = base.sibling(__file__, "digits_vp")
digits_fm = base.sibling(__file__, "digits_fm")


def smoke(config):
    digits_vp.smoke(config)
    config.model.text_width = 8
    config.model.text_depth = 1
    config.model.text_heads = 2
    config.eval.num_samples = 10
    config.eval.sample_batch_size = 10
    config.training.snapshot_num_samples = 10


def get_config(variant=None):
    config = digits_vp.get_config()
    base.add_text_guidance(config, len(captions.VOCAB), p_uncond=0.2, guidance_scale=2.0)
    m = config.model
    m.attn_resolutions = (4,)
    m.text_width = 32
    m.text_depth = 2
    m.text_heads = 4
    m.cross_heads = 2
    config.data.caption_len = captions.MAX_LEN
    t = config.training
    t.n_iters = 3000
    t.snapshot_freq = 3000
    config.eval.num_samples = 100
    config.eval.sample_batch_size = 100
    t.snapshot_num_samples = 100
    return base.apply_variants(config, variant, {"smoke": smoke, "fm": digits_fm.rectified_flow}, "digits_t2i")
