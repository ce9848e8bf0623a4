"""Reflow of a caption-conditioned flow: the 2-rectified flow of a `digits_t2i:fm` run, sampled from a caption in one
Euler step (Liu et al. 2023, Sec. 2.3; InstaFlow, Liu et al. 2024, reflows a text-to-image flow the same way).

`--mode=reflow` makes `reflow.num_pairs` couplings, each under the caption of a training digit (the entries
`--mode=train` reads: `batch["caption"]`), with the source's classifier-free guidance `reflow.source_guidance`
(guided couplings, as InstaFlow), and stores the captions beside the pairs in `workdir/reflow/`; then fine-tunes
the source's EMA weights by flow matching on the fixed pairs, each under its own caption, dropped to the empty
caption with `training.p_uncond` as in training. Samples: `--config.sampling.prompt="a bold seven"`, one Euler
step (`sampling.method=ddim`, `steps=1`) unguided by default: one network pass. On the digits,
`--config.reflow.source_guidance=0.0` (unguided couplings) sampled with `--config.sampling.guidance=cfg
--config.sampling.guidance_scale=1` (two passes) keeps more diversity (BENCHMARKS.md). Variant: `smoke`.

    python -m scoresde.main --config=configs/digits_t2i.py:fm --workdir=runs/digits_t2i_fm
    python -m scoresde.main --config=configs/digits_t2i_reflow.py --workdir=runs/digits_t2i_reflow --mode=reflow \
        --config.reflow.source_workdir=runs/digits_t2i_fm
    python -m scoresde.main --config=configs/digits_t2i_reflow.py --workdir=runs/digits_t2i_reflow --mode=sample \
        --config.sampling.prompt="a bold seven"
"""

from scoresde import config_defaults as base

_t2i = base.sibling(__file__, "digits_t2i")
_reflow = base.sibling(__file__, "digits_reflow")


def get_config(variant=None):
    smoke = "smoke" in (variant or "").split(",")
    config = _reflow.reflow_settings(_t2i.get_config("fm,smoke" if smoke else "fm"), smoke)
    r = config.reflow
    r.source_workdir = "runs/digits_t2i_fm"
    r.num_pairs = 20 if smoke else 8192
    r.batch_size = 10 if smoke else 512
    r.steps = 2 if smoke else 20
    r.source_guidance = 1.0
    config.sampling.guidance = "none"  # the couplings were guided: the 2-RF samples its captions unguided
    return base.apply_variants(config, variant, {"smoke": lambda c: None}, "digits_t2i_reflow")
