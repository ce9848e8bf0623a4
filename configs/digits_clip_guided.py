"""CLIP guidance on the 8×8 digits: the unconditional model of ``configs/digits_vp.py`` steered towards a caption by
the gradient of ``E_I(x_t, t) · E_T(c) / τ`` of the noised CLIP of ``configs/digits_clip.py:noised`` (GLIDE's CLIP
guidance). Variant ``clean``: the clean CLIP through the denoiser instead; ``smoke``: the digits_vp smoke model.

    python -m scoresde.main --config=configs/digits_vp.py --workdir=runs/digits
    python -m scoresde.main --config=configs/digits_clip.py:noised --workdir=runs/digits_clip --mode=train_clip
    python -m scoresde.main --config=configs/digits_clip_guided.py --workdir=runs/digits --mode=sample \\
        --config.sampling.prompt="a bold seven" --config.sampling.guidance_scale=2
"""

from scoresde import config_defaults as base

digits_vp = base.sibling(__file__, "digits_vp")


def clean(config):
    config.sampling.clip_noised = False


def get_config(variant=None):
    config = digits_vp.get_config()
    base.add_clip_guidance(config, "runs/digits_clip", scale=2.0)
    variants = {"clean": clean, "smoke": digits_vp.smoke}
    return base.apply_variants(config, variant, variants, "digits_clip_guided")
