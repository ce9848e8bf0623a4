"""unCLIP (DALL·E 2) on the captioned 8×8 digits: a diffusion prior from CLIP text embeddings to CLIP image embeddings,
and a decoder (the U-Net of ``digits_vp``) conditioned on the CLIP image embedding, both with the VP SDE.

Both read the clean CLIP of ``configs/digits_clip.py`` trained in ``prior.clip_workdir`` (``runs/digits_clip``): the
prior trains on the (caption, image) embedding pairs of the training digits (``--mode=train_prior``, written to
``workdir/prior``); the decoder (``--mode=train``) on each digit with its CLIP image embedding, dropped to zeros
w.p. ``training.p_uncond`` for classifier-free guidance. Sampling a prompt runs text -> CLIP text embedding -> prior ->
decoder. Variant: ``smoke`` (tiny, 2 steps each).

    python -m scoresde.main --config=configs/digits_clip.py --workdir=runs/digits_clip --mode=train_clip
    python -m scoresde.main --config=configs/digits_unclip.py --workdir=runs/digits_unclip --mode=train_prior
    python -m scoresde.main --config=configs/digits_unclip.py --workdir=runs/digits_unclip
    python -m scoresde.main --config=configs/digits_unclip.py --workdir=runs/digits_unclip --mode=sample \\
        --config.sampling.prompt="a bold seven"
"""

from scoresde import config_defaults as base

digits_clip = base.sibling(__file__, "digits_clip")


def smoke(config):
    digits_clip.smoke(config)
    base.smoke(config, image_size=8)
    config.model.nf = 8
    config.model.attn_resolutions = ()
    config.model.cond_dim = config.clip.embed_dim
    p = config.prior
    p.n_iters, p.log_freq, p.batch_size, p.warmup, p.hidden, p.num_layers, p.embed_dim = 2, 1, 8, 0, 16, 1, 8


def get_config(variant=None):
    config = digits_clip.get_config()
    config.model.cond_dim = config.clip.embed_dim  # the decoder's conditioning: a CLIP image embedding
    # digits_vp's U-Net has no attention at 8x8: the embedding enters through the time embedding only
    config.training.p_uncond = 0.1
    config.training.n_iters = 3000
    config.training.snapshot_freq = 3000
    s = config.sampling
    s.guidance = "cfg"
    s.guidance_scale = 1.0  # w of the decoder's classifier-free guidance
    s.prompt = ""
    s.prompts_file = ""
    base.add_prior(config, clip_workdir="runs/digits_clip", n_iters=4000, batch_size=256, guidance_scale=1.0)
    return base.apply_variants(config, variant, {"smoke": smoke}, "digits_unclip")
