"""Text to image in a latent space, Stable-Diffusion-style: ``digits_ldm`` conditioned on captions.

The score model of ``digits_ldm`` (a small DDPM++ on the 8×8×2 latents of the ``digits_ae`` autoencoder) with the
caption conditioning of ``digits_t2i``: a text encoder trained jointly with it, its pooled vector added to the time
embedding and its token features attended to by cross-attention at the 4×4 latent resolution and in the middle
(Rombach et al. 2022, Sec. 3.3), caption dropout ``p_uncond = 0.2`` and classifier-free guidance on the prompts.
Samples are decoded to 16×16 images; ``samples_<i>.txt`` names each grid row's caption. Needs the autoencoder
(``config.latent.autoencoder_workdir``). Variant: ``smoke`` (tiny, 2 steps; needs an autoencoder, e.g. one trained
with ``digits_ae.py:smoke``).

    python -m scoresde.main --config=configs/digits_ae.py --workdir=runs/digits_ae --mode=train_autoencoder
    python -m scoresde.main --config=configs/digits_ldm_t2i.py --workdir=runs/digits_ldm_t2i
    python -m scoresde.main --config=configs/digits_ldm_t2i.py --workdir=runs/digits_ldm_t2i --mode=sample \
        --config.sampling.prompt="a seven, slanted to the right" --config.sampling.guidance_scale=3
"""

from scoresde import config_defaults as base
from scoresde.data import captions

digits_ldm = base.sibling(__file__, "digits_ldm")
digits_t2i = base.sibling(__file__, "digits_t2i")


def smoke(config):
    digits_ldm.smoke(config)
    digits_t2i.smoke(config)
    config.data.image_size = 16
    config.model.attn_resolutions = ()


def get_config(variant=None):
    config = digits_ldm.get_config()
    base.add_text_guidance(config, len(captions.VOCAB), p_uncond=0.2, guidance_scale=2.0)
    m = config.model
    m.attn_resolutions = (4,)  # of the 8x8 latent grid
    m.text_width = 32
    m.text_depth = 2
    m.text_heads = 4
    m.cross_heads = 2
    config.data.caption_len = captions.MAX_LEN
    config.eval.num_samples = 100
    config.eval.sample_batch_size = 100
    config.training.snapshot_num_samples = 100
    return base.apply_variants(config, variant, {"smoke": smoke}, "digits_ldm_t2i")
