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
* :mod:`~scoresde.build.fewstep`: teachers, students and the distillation step.
* :mod:`~scoresde.build.inverse`: inverse problems (``config.inverse``).
* :mod:`~scoresde.build.metrics`: sample-quality settings, the FID feature extractor and reference statistics.
* :mod:`~scoresde.build.likelihood`: the bits/dim settings (``LikelihoodSettings``).
* :mod:`~scoresde.build.latent`: the autoencoder and the latent space of a latent model.

Every public name is also importable from ``scoresde.build`` itself.
"""

from scoresde.build.run import (  # noqa: F401
    load_config,
    with_defaults,
    missing_fields,
    as_config,
    ConfigMismatchError,
    RESUME_SAFE_FIELDS,
    RESUME_COMPARED_FIELDS,
    config_differences,
    check_resume_config,
    check_checkpoint_config,
    PINNED_FIELDS,
    adopt_pinned_fields,
    meaning_fields,
    config_digest,
    params_digest,
    PURPOSE,
    purpose_key,
    root_key,
)
from scoresde.build.score import (  # noqa: F401
    make_sde,
    sampling_eps,
    score_convention,
    ScoreModel,
    make_score_model,
    make_score_fn,
    num_classes,
    guidance_kind,
    class_labels,
    OBJECTIVES,
    OBJECTIVE_CONVENTIONS,
    OBJECTIVE_PROCESS,
    training_objective,
)
from scoresde.build.objectives import (  # noqa: F401
    make_loss_fn,
    velocity_fn_of,
    objective_loss_fn,
    reflow_loss_fn,
    reflow_sampler_options,
    cfg_with_denoiser,
)
from scoresde.build.optim import (  # noqa: F401
    lr_schedule,
    make_optimizer,
    optimizer_settings,
    optimizer_from_config,
)
from scoresde.build.networks import (  # noqa: F401
    get_model,
    build_model,
    abstract_model,
    load_model,
    load_ema,
    checkpoint_meta,
    get_classifier,
    classifier_dir,
    load_classifier,
    load_guidance_classifier,
)
from scoresde.build.sampling import (  # noqa: F401
    GUIDANCE,
    sampling_options,
    parallel_settings,
    sampler_from_config,
    sampler_description,
    nonfinite_hint,
    sample_class_labels,
    guided_score_fn,
    make_sample_fn,
)
from scoresde.build.fewstep import (  # noqa: F401
    CONSISTENCY_METHODS,
    is_consistency_model,
    student_consistency_fn,
    METHODS,
    STUDENT_FILE,
    distill_method,
    Teacher,
    teacher_config,
    load_teacher,
    check_same_architecture,
    pd_rounds,
    iters_per_round,
    total_steps,
    round_of_step,
    init_distill_state,
    make_distill_step,
    write_student_file,
    read_student_file,
)
from scoresde.build.inverse import (  # noqa: F401
    INVERSE_OPERATORS,
    inverse_operator_name,
    operator_from_config,
    restore_counts,
    posterior_settings,
    make_restore_fn,
)
from scoresde.build.metrics import (  # noqa: F401
    get_feature_fn,
    inception_weights_found,
    reference_stats_path,
    sample_batch_size,
    SampleQualitySettings,
    sample_quality_settings,
)
from scoresde.build.likelihood import (  # noqa: F401
    LikelihoodSettings,
    likelihood_settings,
)
from scoresde.build.latent import (  # noqa: F401
    get_autoencoder,
    make_autoencoder_trainee,
    is_latent,
    model_data_shape,
    load_latent_space,
    batch_transform,
)
