"""CLIP from scratch on the captioned 8×8 digits (scoresde.data.captions): a small CNN image encoder, a 2-layer
transformer text encoder, 64-d embeddings, learned temperature. Trains on 2 CPU cores in minutes and prints the
zero-shot digit accuracy from prompts alone and text->image recall on the test digits.

The ``noised`` variant is GLIDE's noised CLIP: the image encoder takes ``(x_t / alpha, sigma / alpha)`` of the VP
SDE of ``configs/digits_vp.py`` (the score model it guides), trained on perturbed digits; it is written to
``workdir/clip_noised`` next to the clean one. Variants: ``noised``, ``smoke`` (tiny, 2 steps).

    python -m scoresde.main --config=configs/digits_clip.py --workdir=runs/digits_clip --mode=train_clip
    python -m scoresde.main --config=configs/digits_clip.py:noised --workdir=runs/digits_clip --mode=train_clip
"""

from scoresde import config_defaults as base

digits_vp = base.sibling(__file__, "digits_vp")


def noised(config):
    config.clip.noised = True


def smoke(config):
    c = config.clip
    c.n_iters, c.log_freq, c.batch_size, c.warmup = 2, 1, 8, 0
    c.embed_dim, c.image_width, c.image_features, c.text_width, c.text_depth, c.text_heads = 8, 4, 8, 8, 1, 2
    config.training.progress = False


def get_config(variant=None):
    config = digits_vp.get_config()
    base.add_clip(config, n_iters=2000, batch_size=128, lr=1e-3, warmup=100, log_freq=50, snapshot_freq=1000)
    return base.apply_variants(config, variant, {"noised": noised, "smoke": smoke}, "digits_clip")
