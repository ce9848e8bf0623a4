"""Class-conditional 8×8 digits (classes 0–9), VP SDE, small DDPM++ with a label embedding.

Label dropout ``p_uncond = 0.1``; samples with classifier-free guidance, every class in turn
(``class_label = -1``): the 10×10 grid ``workdir/samples/samples_0.png`` has one digit class per row,
0 at the top. A small noise-conditional WRN-10-2 classifier is configured for classifier guidance.
Variants: ``smoke``, ``classifier`` (sample with classifier guidance).

    python -m scoresde.main --config=configs/digits_vp_cond.py --workdir=runs/digits_cond
    python -m scoresde.main --config=configs/digits_vp_cond.py --workdir=runs/digits_cond --mode=sample
    python -m scoresde.main --config=configs/digits_vp_cond.py --workdir=runs/digits_cond --mode=sample \
        --config.sampling.class_label=7 --config.sampling.guidance_scale=3
    python -m scoresde.main --config=configs/digits_vp_cond.py --workdir=runs/digits_cond --mode=train_classifier
    python -m scoresde.main --config=configs/digits_vp_cond.py:classifier --workdir=runs/digits_cond --mode=sample
"""

from scoresde import config_defaults as base

digits_vp = base.sibling(__file__, "digits_vp")


def smoke(config):
    digits_vp.smoke(config)
    config.eval.num_samples = 10
    config.eval.sample_batch_size = 10
    config.training.snapshot_num_samples = 10
    c = config.classifier
    c.n_iters, c.log_freq, c.batch_size, c.width, c.embed_size, c.num_eval_batches = 2, 1, 8, 1, 16, 1


def classifier_guidance(config):
    config.sampling.guidance = "classifier"


def get_config(variant=None):
    config = digits_vp.get_config()
    base.add_guidance(config, 10, p_uncond=0.1, guidance="cfg", guidance_scale=1.0)
    config.eval.num_samples = 100
    config.eval.sample_batch_size = 100
    config.training.snapshot_num_samples = 100
    base.add_classifier(
        config, "wrn", 10, depth=10, width=2, embed_size=64, n_iters=1500, lr=1e-3, batch_size=128, snapshot_freq=1500
    )
    return base.apply_variants(config, variant, {"smoke": smoke, "classifier": classifier_guidance}, "digits_vp_cond")
