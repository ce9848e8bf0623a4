"""Stage 1 of latent diffusion on the digits: a small KL autoencoder, 16×16 digits -> 8×8×2 latents (f = 2).

The 8×8 scikit-learn digits upscaled (bicubic) to 16×16 so that a spatial latent exists. L1 reconstruction,
β = 1e-6 (LDM's KL weight, on the summed error), no discriminator (LDM's patch discriminator, the ``disc``
variant, costs 8 dB of held-out PSNR here and changes neither recognition nor sharpness: BENCHMARKS.md). Trains on 2 CPU cores in
a few minutes and ends by writing ``workdir/autoencoder.json`` (scale factor, decoder std, checkpoint step);
reconstruction grids go to ``workdir/samples/recon_<step>.png``. Stage 2 is ``configs/digits_ldm.py``.
Variants: ``smoke`` (tiny, 2 steps), ``disc`` (patch discriminator after 300 steps).

    python -m scoresde.main --config=configs/digits_ae.py --workdir=runs/digits_ae --mode=train_autoencoder
    python -m scoresde.main --config=configs/digits_ldm.py --workdir=runs/digits_ldm \
        --config.latent.autoencoder_workdir=runs/digits_ae
"""

from scoresde import config_defaults as base

digits_vp = base.sibling(__file__, "digits_vp")


def smoke(config):
    digits_vp.smoke(config)
    config.data.image_size = 16
    a = config.autoencoder
    a.n_iters, a.batch_size, a.base_width, a.log_freq, a.eval_freq, a.snapshot_freq = 2, 8, 8, 1, 2, 2
    a.scale_num_examples, a.tensorboard = 16, False


def disc(config):
    a = config.autoencoder
    a.discriminator = True
    a.disc_start = 300
    a.disc_width = 16
    a.disc_layers = 2


def get_config(variant=None):
    config = digits_vp.get_config()
    config.data.image_size = 16
    config.data.centered = True
    base.add_autoencoder(
        config,
        latent_channels=2,
        f=2,
        base_width=16,
        num_res_blocks=1,
        ch_mult=(1, 2),
        reconstruction="l1",
        kl_weight=1e-6,
        n_iters=600,
        batch_size=32,
        lr=2e-3,
        beta1=0.9,
        beta2=0.999,
        warmup=0,
        log_freq=50,
        eval_freq=200,
        snapshot_freq=600,
        scale_num_examples=1024,
        tensorboard=False,
    )
    return base.apply_variants(config, variant, {"smoke": smoke, "disc": disc}, "digits_ae")
