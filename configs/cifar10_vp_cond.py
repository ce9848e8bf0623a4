"""Class-conditional CIFAR-10, VP SDE, DDPM++ (cont.) with a label embedding; classifier-free guidance.

The reference's `vp/cifar10_ddpmpp_continuous.py` plus ``model.num_classes = 10`` and label dropout
``p_uncond = 0.1``; samples with CFG ``w = guidance_scale`` (every class in turn by default). The
reference's WRN-28-10 noise-conditional classifier is configured for ``--mode=train_classifier`` /
classifier guidance (variant ``classifier``). Variants: ``smoke``, ``classifier``.

    python -m scoresde.main --config=configs/cifar10_vp_cond.py --workdir=runs/cifar10_vp_cond
    python -m scoresde.main --config=configs/cifar10_vp_cond.py --workdir=runs/cifar10_vp_cond --mode=sample \
        --config.sampling.class_label=3 --config.sampling.guidance_scale=2
"""

from scoresde import config_defaults as base

cifar10_vp = base.sibling(__file__, "cifar10_vp")


def smoke(config):
    base.smoke(config)
    c = config.classifier
    c.n_iters, c.log_freq, c.batch_size, c.depth, c.width, c.embed_size, c.num_eval_batches = 2, 1, 8, 10, 1, 16, 1


def classifier_guidance(config):
    config.sampling.guidance = "classifier"


def get_config(variant=None):
    config = cifar10_vp.get_config()
    base.add_guidance(config, 10, p_uncond=0.1, guidance="cfg", guidance_scale=1.0)
    base.add_classifier(config, "wrn", 10)
    return base.apply_variants(config, variant, {"smoke": smoke, "classifier": classifier_guidance}, "cifar10_vp_cond")
