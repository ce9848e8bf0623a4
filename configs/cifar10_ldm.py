"""Stage 2 of latent diffusion on CIFAR-10 (GPU): DDPM++ (cont.) on the 16×16×4 latents of ``cifar10_ae``.

The VP SDE and DDPM++ of ``cifar10_vp`` at the latent resolution (``ch_mult`` (1, 2, 2), attention at 8×8),
batch 128, lr 2e-4, 5000 warm-up steps, EMA 0.9999, 600k steps; latents are posterior samples (LDM's
``get_first_stage_encoding`` draws ``encoder_posterior.sample()``) scaled by the stored scale factor (LDM's
``scale_by_std``). LSGM-sized in spirit (a score model on a VAE's spatial latents,
a likelihood bound from ``--mode=likelihood``), not LSGM's jointly trained NVAE: a stated recipe, not
a verified result. Variant: ``smoke`` (needs an autoencoder, e.g. one trained with ``cifar10_ae.py:smoke``).

    python -m scoresde.main --config=configs/cifar10_ae.py --workdir=runs/cifar10_ae --mode=train_autoencoder
    python -m scoresde.main --config=configs/cifar10_ldm.py --workdir=runs/cifar10_ldm
    python -m scoresde.main --config=configs/cifar10_ldm.py --workdir=runs/cifar10_ldm --mode=fid
"""

from scoresde import config_defaults as base

cifar10_vp = base.sibling(__file__, "cifar10_vp")


def smoke(config):
    base.smoke(config, image_size=32)
    config.model.ch_mult = (1, 2)
    config.model.attn_resolutions = ()


def get_config(variant=None):
    config = cifar10_vp.get_config()
    config.latent.autoencoder_workdir = "runs/cifar10_ae"
    config.latent.use_posterior_mean = False  # LDM trains on posterior samples
    m = config.model
    m.ch_mult = (1, 2, 2)
    m.attn_resolutions = (8,)
    config.training.n_iters = 600001
    return base.apply_variants(config, variant, {"smoke": smoke}, "cifar10_ldm")
