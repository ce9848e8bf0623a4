"""Text-to-image CIFAR-10 from class-name captions, GLIDE-style: ``cifar10_vp``'s DDPM++ with a text encoder.

The reference's ``vp/cifar10_ddpmpp_continuous.py`` conditioned on captions of the class labels ("a photo of a
cat", "a blurry photo of a dog", ...: :mod:`scoresde.data.class_captions`, a template drawn per example and step):
a text encoder trained jointly with the score network (width 256, 4 layers), its pooled vector added to the time
embedding and its token features attended to by cross-attention after every self-attention (16×16 and the
middle; GLIDE, Nichol et al. 2022; Rombach et al. 2022, Sec. 3.3). Caption dropout ``p_uncond = 0.2`` (GLIDE's
20%) for classifier-free guidance. Samples: ``config.sampling.prompt`` for all, ``config.sampling.prompts_file``
(a grid row per caption), or by default "a photo of a {class}" for each class in turn. A project recipe (no
official one): the caption machinery of the digits configs at CIFAR-10 scale, for GPU users.
Variant: ``smoke`` (tiny, 2 steps; needs the CIFAR-10 tfds data).

    python -m scoresde.main --config=configs/cifar10_t2i.py --workdir=runs/cifar10_t2i
    python -m scoresde.main --config=configs/cifar10_t2i.py --workdir=runs/cifar10_t2i --mode=sample \
        --config.sampling.prompt="a photo of a horse" --config.sampling.guidance_scale=2
"""

from scoresde import config_defaults as base
from scoresde.data import class_captions


def smoke(config):
    base.smoke(config)
    m = config.model
    m.text_width, m.text_depth, m.text_heads, m.cross_heads = 8, 1, 2, 1
    config.eval.num_samples = 10
    config.eval.sample_batch_size = 10
    config.training.snapshot_num_samples = 10


def get_config(variant=None):
    config = base.sibling(__file__, "cifar10_vp").get_config()
    base.add_text_guidance(config, len(class_captions.vocabulary("cifar10")), p_uncond=0.2, guidance_scale=1.0)
    d = config.data
    d.captions = False  # the captions are made from the labels on the device, not read from the data set
    d.caption_set = "cifar10"
    d.caption_len = 8
    m = config.model
    m.text_width = 256
    m.text_depth = 4
    m.text_heads = 4
    m.cross_heads = 4
    return base.apply_variants(config, variant, {"smoke": smoke}, "cifar10_t2i")
