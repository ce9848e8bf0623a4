"""Steering a score model: the conditional score and the posterior given a measurement.

* :mod:`~scoresde.guidance.conditional`: classifier and classifier-free guidance, replacement inpainting and
  colorization (re-exported here, so ``guidance.classifier_free_guidance`` works).
* :mod:`~scoresde.guidance.posterior`: DPS, ΠGDM, universal and embedding guidance as score transformers.
* :mod:`~scoresde.guidance.inverse`: measurement operators, ``posterior_sample`` and ILVR.
* :mod:`~scoresde.guidance.clip`: CLIP guidance by a noised CLIP, and by a clean CLIP through the denoiser.
"""

from scoresde.guidance.conditional import (  # noqa: F401
    COLOR_BASIS,
    ClassifierFreeGuidedScore,
    ClassifierGuidedScore,
    Replacement,
    class_log_prob_grad,
    classifier_free_guidance,
    classifier_guidance,
    classifier_inputs,
    classifier_log_prob_fn,
    colorization_projection,
    colorize,
    drop_conditioning,
    drop_labels,
    gamma_from_w,
    initial_state,
    inpaint,
    inpainting_projection,
    to_gray,
    w_from_gamma,
)
