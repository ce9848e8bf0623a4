"""Class-conditional latent diffusion on the digits, with label dropout for classifier-free guidance.

``digits_ldm`` plus ``model.num_classes = 10`` and ``p_uncond = 0.1``; samples with CFG, every class in turn
(``class_label = -1``): the 10×10 grid ``workdir/samples/samples_0.png`` has one class per row, 0 at the top.
Needs the autoencoder of ``digits_ae`` (``config.latent.autoencoder_workdir``). Variant: ``smoke``.

    python -m scoresde.main --config=configs/digits_ae.py --workdir=runs/digits_ae --mode=train_autoencoder
    python -m scoresde.main --config=configs/digits_ldm_cond.py --workdir=runs/digits_ldm_cond
    python -m scoresde.main --config=configs/digits_ldm_cond.py --workdir=runs/digits_ldm_cond --mode=sample \
        --config.sampling.class_label=7 --config.sampling.guidance_scale=2
"""

from scoresde import config_defaults as base

digits_ldm = base.sibling(__file__, "digits_ldm")


def smoke(config):
    digits_ldm.smoke(config)
    config.eval.num_samples = 10
    config.eval.sample_batch_size = 10
    config.training.snapshot_num_samples = 10


def get_config(variant=None):
    config = digits_ldm.get_config()
    base.add_guidance(config, 10, p_uncond=0.1, guidance="cfg", guidance_scale=2.0)
    config.eval.num_samples = 100
    config.eval.sample_batch_size = 100
    config.training.snapshot_num_samples = 100
    return base.apply_variants(config, variant, {"smoke": smoke}, "digits_ldm_cond")
