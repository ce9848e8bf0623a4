"""Stage 2 of latent diffusion on the digits: the small DDPM++ of ``digits_vp`` on the 8×8×2 latents of ``digits_ae``.

``config.latent.autoencoder_workdir`` names the trained autoencoder (``runs/digits_ae`` by default): each
batch of 16×16 digits is encoded on the device (posterior mean) and scaled by its stored scale factor; samples
are decoded back to 16×16 images, so ``--mode=sample`` writes the same ``samples/*.npz`` / PNG files as a pixel
model. ``--mode=likelihood`` reports the latent NLL and LSGM's variational bound on the data, term by term.
Variant: ``smoke`` (tiny, 2 steps; needs an autoencoder, e.g. one trained with ``digits_ae.py:smoke``).

    python -m scoresde.main --config=configs/digits_ae.py --workdir=runs/digits_ae --mode=train_autoencoder
    python -m scoresde.main --config=configs/digits_ldm.py --workdir=runs/digits_ldm
    python -m scoresde.main --config=configs/digits_ldm.py --workdir=runs/digits_ldm --mode=sample
    python -m scoresde.main --config=configs/digits_ldm.py --workdir=runs/digits_ldm --mode=likelihood
"""

from scoresde import config_defaults as base

digits_vp = base.sibling(__file__, "digits_vp")


def smoke(config):
    digits_vp.smoke(config)
    config.data.image_size = 16
    config.model.attn_resolutions = ()


def get_config(variant=None):
    config = digits_vp.get_config()
    config.data.image_size = 16  # the autoencoder's images; the score model sees its 8x8x2 latents
    config.data.centered = True
    config.latent.autoencoder_workdir = "runs/digits_ae"
    t = config.training
    t.n_iters, t.snapshot_freq, t.eval_freq = 1000, 1000, 500  # BENCHMARKS.md "Latent diffusion" ran these
    config.latent.use_posterior_mean = True
    config.eval.bpd_num_repeats = 1
    return base.apply_variants(config, variant, {"smoke": smoke}, "digits_ldm")
