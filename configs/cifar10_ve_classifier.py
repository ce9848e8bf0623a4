"""The reference's class-conditional CIFAR-10 setup: unconditional VE NCSN++ (cont.) + WRN-28-10 classifier.

Song et al. 2021, App. I.1: a noise-conditional Wide-ResNet-28-10 (Fourier embedding of log σ) guides
the unconditional score model (classifier guidance, ``scale = guidance_scale``). The reference released
only a trained classifier; ``--mode=train_classifier`` trains one here (cross-entropy on VE-perturbed
data, t ~ U[1e-5, 1]) into ``workdir/classifier``. Variants: ``smoke``.

    python -m scoresde.main --config=configs/cifar10_ve_classifier.py --workdir=runs/cifar10_ve --mode=train_classifier
    python -m scoresde.main --config=configs/cifar10_ve_classifier.py --workdir=runs/cifar10_ve --mode=sample \
        --config.sampling.class_label=3
"""

from scoresde import config_defaults as base

cifar10_ve = base.sibling(__file__, "cifar10_ve")


def smoke(config):
    base.smoke(config)
    c = config.classifier
    c.n_iters, c.log_freq, c.batch_size, c.depth, c.width, c.embed_size, c.num_eval_batches = 2, 1, 8, 10, 1, 16, 1


def get_config(variant=None):
    config = cifar10_ve.get_config()
    # The score model stays unconditional (num_classes = 0); only sampling is guided.
    s = config.sampling
    s.guidance = "classifier"
    s.class_label = -1
    s.guidance_scale = 1.0
    base.add_classifier(config, "wrn", 10)
    return base.apply_variants(config, variant, {"smoke": smoke}, "cifar10_ve_classifier")
