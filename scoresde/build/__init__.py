"""The config edge: the only code that turns an ``ml_collections`` config into objects.

Everything below it (``sde``, ``parameterization``, ``losses``, ``sampling``, ``likelihood``, ``guidance``,
``fewstep``, ``latent``, ``models``, ``metrics``) takes typed arguments and callables; the run modes above it
ask it for what they need. One module per config concern:

* :mod:`~scoresde.build.run`: ``load_config`` (defaults applied once, ``with_defaults``), resume checks, RNG
  purposes (``PURPOSE``, ``purpose_key``).
* :mod:`~scoresde.build.score`: the SDE and the network's output convention (``ScoreModel``).
* :mod:`~scoresde.build.objectives`: the training losses (DSM, flow matching, EDM, reflow).
* :mod:`~scoresde.build.optim`: the optimiser.
* :mod:`~scoresde.build.networks`: networks and classifiers, also from checkpoints.
* :mod:`~scoresde.build.sampling`: samplers, guidance and the jitted sample function.
* :mod:`~scoresde.build.fewstep`: teachers, students and their record (``student.json``).
* :mod:`~scoresde.build.fewstep_condition`: the condition of a conditioned student and its (guided) teacher.
* :mod:`~scoresde.build.distill`: the distillation step (CD, CT, PD) and PD's rounds.
* :mod:`~scoresde.build.continuous`: the continuous-time few-step steps (sCM, ECT, MeanFlow) and their samplers.
* :mod:`~scoresde.build.inverse`: inverse problems (``config.inverse``).
* :mod:`~scoresde.build.metrics`: sample-quality settings, the FID feature extractor and reference statistics.
* :mod:`~scoresde.build.likelihood`: the bits/dim settings (``LikelihoodSettings``).
* :mod:`~scoresde.build.latent`: the autoencoder and the latent space of a latent model.
* :mod:`~scoresde.build.trainer`: a trainer's loop settings (``read_settings``) and its sample snapshots.
* :mod:`~scoresde.build.augment`: EDM's augmentation of training batches (``config.data.augment_p``).
* :mod:`~scoresde.build.ema`: the power-function EMA profiles tracked for post-hoc EMA (``config.ema``).
* :mod:`~scoresde.build.clip`: CLIP from ``config.clip``, and a trained CLIP from a workdir.
* :mod:`~scoresde.build.unclip`: unCLIP's prior and its CLIP (``config.prior``), CLIP guidance's encoders.

Every public name is also importable from ``scoresde.build`` itself.
"""

from scoresde.build.augment import (  # noqa: F401
    augment_batch,
    augment_dim,
    augment_settings,
    refuse_augmentation,
)
from scoresde.build.clip import (  # noqa: F401
    clip_dir,
    get_clip,
    load_clip,
    stored_clip_config,
)
from scoresde.build.continuous import (  # noqa: F401
    CONTINUOUS_METHODS,
    CONTINUOUS_SAMPLERS,
    continuous_sampler,
    ect_consistency_fn,
    init_continuous_state,
    is_continuous,
    make_continuous_step,
    meanflow_u,
    scm_variant,
    trigflow_net,
)
from scoresde.build.distill import (  # noqa: F401
    consistency_pair,
    init_distill_state,
    iters_per_round,
    make_distill_step,
    pd_rounds,
    round_of_step,
    total_steps,
)
from scoresde.build.ema import (  # noqa: F401
    posthoc_sigma_rels,
    tracked_sigma_rels,
    with_power_ema,
)
from scoresde.build.fewstep import (  # noqa: F401
    CONSISTENCY_METHODS,
    METHODS,
    NETWORK_KIND,
    STUDENT_FILE,
    Teacher,
    check_same_architecture,
    check_same_conditioning,
    distill_method,
    is_consistency_model,
    load_teacher,
    read_student_file,
    student_consistency_fn,
    teacher_config,
    write_student_file,
)
from scoresde.build.fewstep_condition import (  # noqa: F401
    batch_condition,
    call_network,
    guided_conditional_score,
    null_condition,
    teacher_guidance,
    teacher_score,
)
from scoresde.build.inverse import (  # noqa: F401
    INVERSE_OPERATORS,
    inverse_operator_name,
    make_restore_fn,
    operator_from_config,
    posterior_settings,
    restore_counts,
)
from scoresde.build.latent import (  # noqa: F401
    batch_transform,
    get_autoencoder,
    is_latent,
    load_latent_space,
    make_autoencoder_trainee,
    model_data_shape,
)
from scoresde.build.likelihood import (  # noqa: F401
    LikelihoodSettings,
    likelihood_settings,
)
from scoresde.build.metrics import (  # noqa: F401
    SampleQualitySettings,
    get_feature_fn,
    inception_weights_found,
    reference_stats_path,
    sample_batch_size,
    sample_quality_settings,
)
from scoresde.build.networks import (  # noqa: F401
    abstract_model,
    build_model,
    checkpoint_meta,
    classifier_dir,
    get_classifier,
    get_model,
    load_classifier,
    load_ema,
    load_guidance_classifier,
    load_model,
)
from scoresde.build.objectives import (  # noqa: F401
    cfg_with_denoiser,
    make_loss_fn,
    objective_loss_fn,
    reflow_loss_fn,
    reflow_sampler_options,
    reflow_source_guidance,
    reflow_source_score,
    velocity_fn_of,
)
from scoresde.build.optim import (  # noqa: F401
    OPTIMIZERS,
    ema_decay,
    ema_halflife_decay,
    lr_schedule,
    lr_schedule_from_config,
    make_optimizer,
    optimizer_from_config,
    optimizer_settings,
)
from scoresde.build.run import (  # noqa: F401
    PINNED_FIELDS,
    PURPOSE,
    RESUME_COMPARED_FIELDS,
    RESUME_SAFE_FIELDS,
    ConfigMismatchError,
    adopt_pinned_fields,
    as_config,
    check_checkpoint_config,
    check_resume_config,
    config_differences,
    config_digest,
    load_config,
    meaning_fields,
    missing_fields,
    params_digest,
    purpose_key,
    root_key,
    with_defaults,
)
from scoresde.build.sampling import (  # noqa: F401
    GUIDANCE,
    guided_score_fn,
    make_sample_fn,
    nonfinite_hint,
    parallel_settings,
    sample_class_labels,
    sample_conditioning,
    sample_prompts,
    sampler_description,
    sampler_from_config,
    sampling_options,
    student_condition,
)
from scoresde.build.score import (  # noqa: F401
    CONDITIONING_KEYS,
    OBJECTIVE_CONVENTIONS,
    OBJECTIVE_PROCESS,
    OBJECTIVES,
    ScoreModel,
    class_labels,
    conditioning_kind,
    guidance_kind,
    make_score_fn,
    make_score_model,
    make_sde,
    num_classes,
    sampling_eps,
    score_convention,
    training_objective,
)
from scoresde.build.trainer import Settings, Snapshots, read_settings, write_snapshot  # noqa: F401
from scoresde.build.unclip import (  # noqa: F401
    GuidanceCLIP,
    UnclipPrior,
    clean_image_embed_fn,
    clip_guided_score,
    clip_temperature,
    clip_workdir,
    configured_clip,
    decoder_conditioning,
    digit_prompt_embeddings,
    embedding_pairs,
    get_prior,
    has_prior,
    is_unclip_decoder,
    load_guidance_clip,
    load_prior,
    load_unclip_prior,
    noised_image_embed_fn,
    pair_batches,
    prior_dir,
    prior_image_embeddings,
    to_clip_space,
    to_prior_space,
    with_decoder_conditioning,
)
