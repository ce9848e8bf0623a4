"""Class-conditional 2-D Gaussian-mixture grid (class = mixture component, 9 classes), VP SDE, MLP.

Trained with label dropout (``p_uncond = 0.1``) so one network gives conditional and unconditional
scores; samples with classifier-free guidance (``w = guidance_scale``). An MLP noise-conditional
classifier is configured for classifier guidance. Variants: ``smoke``, ``classifier`` (sample with
classifier guidance instead of CFG).

    python -m scoresde.main --config=configs/toy2d_vp_cond.py --workdir=runs/toy2d_cond
    python -m scoresde.main --config=configs/toy2d_vp_cond.py --workdir=runs/toy2d_cond --mode=sample \
        --config.sampling.class_label=4 --config.sampling.guidance_scale=2
    python -m scoresde.main --config=configs/toy2d_vp_cond.py --workdir=runs/toy2d_cond --mode=train_classifier
    python -m scoresde.main --config=configs/toy2d_vp_cond.py:classifier --workdir=runs/toy2d_cond --mode=sample
"""

from scoresde import config_defaults as base

toy2d_vp = base.sibling(__file__, "toy2d_vp")


def smoke(config):
    toy2d_vp.smoke(config)
    config.classifier.n_iters = 2
    config.classifier.log_freq = 1
    config.classifier.batch_size = 64
    config.classifier.hidden = 32
    config.classifier.num_eval_batches = 1


def classifier_guidance(config):
    config.sampling.guidance = "classifier"


def get_config(variant=None):
    config = toy2d_vp.get_config()
    config.data.dataset = "gmm_grid"
    base.add_guidance(config, 9, p_uncond=0.1, guidance="cfg", guidance_scale=1.0)
    base.add_classifier(config, "mlp", 9, n_iters=2000, lr=1e-3, batch_size=512, snapshot_freq=2000)
    return base.apply_variants(config, variant, {"smoke": smoke, "classifier": classifier_guidance}, "toy2d_vp_cond")
