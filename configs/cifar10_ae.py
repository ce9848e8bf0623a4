"""Stage 1 of latent diffusion on CIFAR-10 (GPU): a KL autoencoder, 32×32×3 -> 16×16×4 latents (f = 2).

The recipe is LDM's first stage (Rombach et al. 2022, App. G: ``kl-f*`` autoencoders) scaled to 32×32 images,
the setting of LSGM (Vahdat et al. 2021) whose latent space is likewise spatial: width 128 with ``ch_mult``
(1, 2), 2 residual blocks per level, L1 reconstruction, β = 1e-6, Adam (0.5, 0.9) at LDM's 4.5e-6 × batch,
a patch discriminator (3 layers, weight 0.5, adaptive) from step 50,001, 200k steps at batch 64. Deliberate
deviations (``docs/recipes.md``): f = 2 for 32×32 images, and no perceptual loss ships (LPIPS needs downloaded
weights; see :func:`scoresde.latent.autoencoder_loss`'s hook).
Not trained here: a stated recipe, not a verified result. Variant: ``smoke``.

    python -m scoresde.main --config=configs/cifar10_ae.py --workdir=runs/cifar10_ae --mode=train_autoencoder
    python -m scoresde.main --config=configs/cifar10_ae.py:smoke --workdir=/tmp/ae_smoke --mode=train_autoencoder \
        --config.data.download=True
"""

from scoresde import config_defaults as base

cifar10_vp = base.sibling(__file__, "cifar10_vp")


def smoke(config):
    base.smoke(config)
    config.data.image_size = 32
    a = config.autoencoder
    a.n_iters, a.batch_size, a.base_width, a.num_res_blocks, a.log_freq, a.eval_freq, a.snapshot_freq = (
        2,
        8,
        8,
        1,
        1,
        2,
        2,
    )
    a.disc_width, a.disc_start, a.scale_num_examples, a.tensorboard = 8, 1, 16, False


def get_config(variant=None):
    config = cifar10_vp.get_config()
    config.data.centered = True
    config.data.random_flip = True
    base.add_autoencoder(
        config,
        latent_channels=4,
        f=2,
        base_width=128,
        num_res_blocks=2,
        ch_mult=(1, 2),
        reconstruction="l1",
        kl_weight=1e-6,
        discriminator=True,
        disc_start=50001,
        disc_weight=0.5,
        disc_layers=3,
        disc_width=64,
        n_iters=200000,
        batch_size=64,
        lr=4.5e-6 * 64,
        log_freq=100,
        eval_freq=5000,
        snapshot_freq=10000,
        scale_num_examples=10000,
    )
    return base.apply_variants(config, variant, {"smoke": smoke}, "cifar10_ae")
