"""Config building blocks shared by ``configs/*.py``: the reference defaults, model recipes, smoke variants,
class-conditional / guidance fields, and :func:`sibling` to build on another config file.

Class-conditional / guidance fields (scoresde additions, :func:`add_guidance`, :func:`add_classifier`):

* ``model.num_classes``: a label embedding with a null label ``num_classes`` (classifier-free guidance).
* ``training.p_uncond``: label dropout probability (the null label replaces ``y``), Ho & Salimans's ``p_∅``.
* ``sampling.guidance`` ∈ ``none | cfg | classifier``; ``sampling.class_label`` (``-1``: all classes, one
  block of rows each); ``sampling.guidance_scale`` (``w`` of CFG, ``γ = 1 + w`` in the notes; the
  classifier scale for classifier guidance). The scale is a traced value in the samplers.
* ``classifier``: the noise-conditional classifier trained by ``--mode=train_classifier``.
* ``clip``: CLIP (or a noised CLIP) trained from scratch by ``--mode=train_clip`` (:func:`add_clip`).

Configs import this module (``from scoresde import config_defaults as base``) rather than each other,
and reach a sibling config with ``base.sibling(__file__, "digits_vp")``: no ``sys.path`` changes.

The defaults live here once: :func:`get_default_configs` (every section every config has),
:data:`MODEL_DEFAULTS` (the fields of one network architecture), :data:`CLASSIFIER_DEFAULTS`,
:data:`AUTOENCODER_DEFAULTS` and :data:`CLIP_DEFAULTS` (optional sections). :func:`with_defaults` fills whatever a config lacks from
them (``scoresde.build.load_config`` calls it), so the code reads ``config.training.max_nonfinite``
directly and never repeats a default.
"""

import copy
import difflib
import importlib.util
import math
import os

import ml_collections


def load_module(path: str):
    """The config file ``path`` as a module (its ``get_config``, variants and docstring)."""
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(f"_scoresde_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sibling(this_file: str, name: str):
    """The config module ``name`` (e.g. ``"digits_vp"``) that sits next to ``this_file``."""
    return load_module(os.path.join(os.path.dirname(os.path.abspath(this_file)), f"{name}.py"))


def get_default_configs():
    config = ml_collections.ConfigDict()
    # training
    config.training = training = ml_collections.ConfigDict()
    training.sde = "vpsde"
    training.batch_size = 128
    training.n_iters = 1300001
    training.snapshot_freq = 50000
    training.log_freq = 50
    training.eval_freq = 100
    training.snapshot_freq_for_preemption = 10000  # checkpoint cadence between snapshots
    training.snapshot_sampling = True
    training.likelihood_weighting = False
    # (scoresde) continuous DSM: weight max(SNR, 1) ||x0_hat - x0||^2 (Salimans & Ho's snr_trunc) instead of sigma^2
    training.snr_truncation = False
    training.importance_sampling = False  # (scoresde) t ~ g²/σ² with likelihood weighting
    training.continuous = True
    training.reduce_mean = False
    training.max_nonfinite = 10  # (scoresde) stop after this many consecutive non-finite steps
    training.keep_checkpoints = 3  # (scoresde) most recent checkpoints kept (plus every snapshot_freq)
    training.snapshot_num_samples = 64  # (scoresde)
    training.tensorboard = True  # (scoresde)
    training.progress = True  # (scoresde) tqdm bar
    # (scoresde) resume even if fields that change the run's meaning differ from the checkpoint's config
    # (fine-tuning); the change is recorded in metrics.jsonl
    training.allow_config_change = False

    # sampling
    config.sampling = sampling = ml_collections.ConfigDict()
    sampling.method = "pc"
    sampling.predictor = "euler_maruyama"
    sampling.corrector = "none"
    sampling.n_steps_each = 1
    sampling.noise_removal = True
    sampling.probability_flow = False
    sampling.snr = 0.16
    # (scoresde) options of the other methods (scoresde.sampling); "" / 0 = the method's default
    sampling.steps = 0  # grid steps (pc: sde.N; ode fixed-step: 100; ddim 50; dpm_solver 10; dpm_solver++ 20; edm 18)
    # grid methods: > 0 pads the time grid to this many steps and traces `steps`: one compiled sampler for every
    # step count up to it (0 = one program per step count)
    sampling.step_capacity = 0
    # dpm_solver 1-3 (2), dpm_solver++ 1-2 (2), unipc / deis_logsnr_x0 1-3 (2), deis 1-3 (3), dpm_solver++_sde 2-3 (2)
    sampling.order = 0
    sampling.eta = -1.0  # ddim [0], euler_ancestral / dpm_solver++_sde [1]; negative = the method's default
    sampling.s_noise = 1.0  # euler_ancestral, dpm_solver++_sde
    sampling.clip_denoised = False  # ddim: clip each data prediction to the data range ([-1, 1] centred, else [0, 1])
    sampling.variant = ""  # unipc: bh1 | bh2
    sampling.times = ()  # consistency: the re-noising times tau_1 > ... > tau_{k-1}; () = the default grid
    sampling.grid = ""  # uniform_t | log_snr | edm
    # dpm_solver: uniform (steps intervals of one order) | fast (DPM-Solver-fast: steps = the NFE budget, mixed
    # orders up to `order`, e.g. order 3 -> [3]*(K-2)+[2,1] for steps % 3 == 0); "" = the method's default (uniform)
    sampling.schedule = ""
    sampling.solver = ""  # ode: tsit5 | dopri5 | euler | heun
    sampling.rtol = 1e-5  # ode
    sampling.atol = 1e-5  # ode
    sampling.max_steps = 4096  # ode
    sampling.corrector_first = True  # pc: the reference's corrector-then-predictor order
    sampling.lower_order_final = True  # dpm_solver++
    sampling.S_churn = 0.0  # edm_heun
    sampling.S_tmin = 0.0
    sampling.S_tmax = 1e30
    sampling.S_noise = 1.0
    sampling.rho = 7.0
    sampling.num_points = 0  # (scoresde) strokes: sample sequences of this length; 0 = data.num_points

    # evaluation
    config.eval = evaluate = ml_collections.ConfigDict()
    evaluate.begin_ckpt = 9
    evaluate.end_ckpt = 26
    evaluate.batch_size = 1024
    evaluate.enable_sampling = False
    evaluate.num_samples = 50000
    evaluate.sample_batch_size = 500  # (scoresde)
    evaluate.enable_loss = True
    evaluate.enable_bpd = False
    evaluate.bpd_dataset = "test"
    # (scoresde) likelihood settings (scoresde.modes.likelihood); "" / 0 = the default for the data
    evaluate.bpd_batch_size = 0  # 0 = eval.batch_size
    evaluate.bpd_num_repeats = 0  # 0 = 5 uniform-dequantisation passes for images (the reference), 1 otherwise
    evaluate.bpd_dequantization = ""  # uniform | none; "" = uniform for images, none otherwise
    evaluate.bpd_num_bits = 0  # 0 = 8 for images, none (a continuous density) otherwise
    evaluate.bpd_hutchinson = "rademacher"  # rademacher | gaussian | exact
    evaluate.bpd_n_probes = 1
    evaluate.bpd_rtol = 1e-5
    evaluate.bpd_atol = 1e-5
    evaluate.bpd_eps = 1e-5
    evaluate.bpd_solver = "tsit5"  # tsit5 | dopri5
    evaluate.bpd_max_steps = 16384
    # (scoresde) bits/dim of log p(x | c): each example under its own class label or caption (a conditional model)
    evaluate.bpd_conditional = False
    evaluate.num_eval_batches = 0  # (scoresde) 0 = the whole test split
    # (scoresde) sample-quality metrics (scoresde.modes.fid): FID / IS / KID
    evaluate.inception_weights = ""  # (scoresde) .pth / .npz / .msgpack; "" = $SCORESDE_INCEPTION_WEIGHTS or cache
    evaluate.feature_extractor = "inception"  # (scoresde) the FID Inception; others only by explicit choice
    evaluate.inception_batch_size = 250  # (scoresde) images per compiled feature-extractor call
    evaluate.fid_stats_path = ""  # (scoresde) "" = workdir/fid_stats/<dataset>_<split>_<size>.npz
    evaluate.stats_split = "train"  # (scoresde) split of the reference statistics (--mode=fid_stats)
    evaluate.stats_max_features = 50000  # (scoresde) keep pool_3 features (for KID) up to this many
    evaluate.is_splits = 10  # (scoresde) Inception Score splits
    evaluate.kid_subsets = 100  # (scoresde) KID subsets
    evaluate.kid_subset_size = 1000  # (scoresde) KID subset size
    # (scoresde) --mode=fid: evaluate this many sample seeds (each a full set of eval.num_samples) and report each
    # FID, their mean ± std and the minimum (the protocol of Karras et al. 2022); 1 = one set (the reference's)
    evaluate.fid_seeds = 1

    # data
    config.data = data = ml_collections.ConfigDict()
    data.dataset = "CIFAR10"
    data.image_size = 32
    data.random_flip = True
    data.centered = False
    data.uniform_dequantization = False
    data.num_channels = 3
    data.tfds_data_dir = ""  # (scoresde) tfds data_dir ("" = tfds default / $TFDS_DATA_DIR)
    data.download = False  # (scoresde) let tfds download a missing dataset (needs network)
    data.path = ""  # (scoresde) for dataset 'npz' / 'folder'
    data.category = ""  # LSUN category
    # (scoresde) EDM's non-leaking augmentation (scoresde.augment): each transform applied with probability
    # multiplier x augment_p, its labels fed to the network (model augment_dim); 0 = off (EDM's CIFAR-10: 0.12)
    data.augment_p = 0.0
    data.augment_pipeline = "xflip=1e8,yflip,scale,rotate_frac,aniso,translate_frac"  # EDM's: 9 labels
    data.num_points = 64  # (scoresde) strokes: points per drawing N (the sequence length)
    data.num_drawings = 2000  # (scoresde) strokes: drawings generated (train + test, every tenth block is test)
    data.stroke_chars = "digits"  # (scoresde) strokes: digits | letters | digits+letters (class k = k-th character)
    # (scoresde) digits: every batch also carries "caption", int32 (B, caption_len) tokens of one caption per image
    # made from its label and measured attributes (scoresde.data.captions; caption seed = data seed 0)
    data.captions = False
    data.caption_len = 16  # tokens per caption (scoresde.data.captions.MAX_LEN)
    # (scoresde) "" = no class captions; a scoresde.data.class_captions set (cifar10): a caption-conditioned model
    # trains on "a photo of a {class}"-style captions of each batch's labels (a template drawn per example)
    data.caption_set = ""

    # model
    config.model = model = ml_collections.ConfigDict()
    model.name = "ncsnpp"
    model.sigma_min = 0.01
    model.sigma_max = 50.0
    model.num_scales = 1000
    model.beta_min = 0.1
    model.beta_max = 20.0
    model.dropout = 0.1
    model.embedding_type = "fourier"
    model.ema_rate = 0.9999
    # (scoresde) EDM's EMA by half-life in images (> 0 replaces ema_rate: beta = 0.5 ** (batch / half-life) per
    # update), ramped up as min(half-life, images seen * ema_rampup_ratio) when the ratio is > 0
    model.ema_halflife_img = 0.0
    model.ema_rampup_ratio = 0.0
    model.output = ""  # (scoresde) "" = reference convention; or eps | score | x0 | v
    model.time_label = ""  # (scoresde) "" = reference convention
    model.remat = False  # (scoresde) rematerialise each resolution level in the backward pass (less memory)
    # (scoresde) run each run of equal residual blocks as one lax.scan (same parameters and checkpoints); off by
    # default: on XLA:CPU it compiles and runs slower than the unrolled U-Net (BENCHMARKS.md, "Compile time")
    model.scan_blocks = False
    model.dtype = "float32"  # (scoresde) compute dtype; "bfloat16" for speed (params stay float32)

    # (scoresde) post-hoc EMA (Karras et al. 2024, scoresde.posthoc_ema): power-function EMA profiles tracked in
    # the optimizer state, stored with every kept checkpoint (every training.snapshot_freq steps), and the
    # relative widths --mode=posthoc_ema synthesises from them
    config.ema = ema = ml_collections.ConfigDict()
    ema.track_sigma_rels = ""  # comma list, e.g. "0.05,0.10" (EDM2); "" = none tracked
    ema.sigma_rel = ""  # comma list of the sigma_rel to synthesise, e.g. "0.08" or "0.04,0.08,0.12"

    # optimization
    config.optim = optim = ml_collections.ConfigDict()
    optim.weight_decay = 0.0
    optim.optimizer = "Adam"  # Adam | RAdam (scoresde)
    optim.lr = 2e-4
    optim.beta1 = 0.9
    optim.eps = 1e-8
    optim.warmup = 5000
    optim.grad_clip = 1.0  # global-norm clipping; <= 0 or inf: off
    optim.beta2 = 0.999  # (scoresde)
    optim.lr_decay_steps = 0  # (scoresde) > 0: lr decays linearly to 0 over every lr_decay_steps updates (PD rounds)

    # (scoresde) latent diffusion: a trained autoencoder's workdir turns the config into a latent one
    config.latent = latent = ml_collections.ConfigDict()
    latent.autoencoder_workdir = ""  # "" = pixel space; else the workdir of a --mode=train_autoencoder run
    latent.use_posterior_mean = True  # encode training batches by the posterior mean (False: a posterior sample)
    # the autoencoder this latent model was trained on (step, parameter hash); filled in when it is loaded, so a
    # checkpoint records it and a retrained autoencoder is refused; 0 / "" = the one the checkpoint records
    latent.autoencoder_step = 0
    latent.autoencoder_hash = ""
    # (scoresde) few-step generation, --mode=distill (scoresde.build): cd | ct | pd | scm | ect | meanflow
    config.distill = distill = ml_collections.ConfigDict()
    distill.method = ""  # cd | ct | pd | scm | ect | meanflow; "" = not a distilled / consistency run
    # cd / pd / ect: a workdir trained with --mode=train (or imported by scoresde.convert); scm: sCD with one, sCT without
    distill.teacher_workdir = ""
    # the teacher checkpoint (step, parameter hash); filled in when it is loaded, so a resumed run refuses a teacher
    # that was trained on meanwhile; 0 / "" = the one the checkpoint records
    distill.teacher_step = 0
    distill.teacher_hash = ""
    distill.sigma_data = 0.5  # cd / ct: sigma_d of the consistency parameterisation
    distill.num_scales = 18  # cd: N of the rho-grid
    distill.rho = 7.0  # cd / ct
    distill.solver = "heun"  # cd: the teacher's step, euler | heun | dpm_solver-2
    distill.metric = "l2"  # cd / ct: l2 | l1 | pseudo_huber (LPIPS needs downloaded weights: not offline)
    distill.metric_reduction = "sum"  # cd / ct, l2 / l1: sum over an example's elements, or their mean
    # cd / ct: evaluate the target in train mode with the online network's dropout key (the consistency-models
    # code); False: the target runs without dropout
    distill.shared_dropout = False
    distill.weighting = "uniform"  # cd / ct: uniform | icm (1 / (sigma_{n+1} - sigma_n))
    distill.schedule = "uniform"  # cd / ct: index sampling, uniform | lognormal
    distill.target_ema = 0.95  # cd: mu of the target network (0 = the online network)
    distill.ct_s0 = 10  # ct: iCT curriculum N(k) = min(s0 2^floor(k/K'), s1) + 1
    distill.ct_s1 = 1280
    distill.start_steps = 1024  # pd: the round-0 teacher's DDIM step count
    distill.end_steps = 1  # pd: the last student's step count (training.n_iters is split evenly over the rounds)
    distill.pd_weighting = "truncated_snr"  # pd: truncated_snr | snr_plus_one
    # cd / pd / scm (sCD) of a class- or caption-conditioned teacher trained with condition dropout: the teacher is
    # read with classifier-free guidance (1 + w) s(x, t, c) - w s(x, t, null) (guided distillation, Meng et al.
    # 2023); 0 = the plain conditional teacher
    distill.teacher_guidance = 0.0
    # scm (Lu & Song 2025, App. G CIFAR-10): log-normal proposal of sigma_d tan(t), tangent warm-up H (steps),
    # tangent normalisation c (0 = off), the learned weighting w(t)
    distill.scm_p_mean = -1.0
    distill.scm_p_std = 1.4
    distill.scm_warmup = 10000
    distill.scm_tangent_c = 0.1
    distill.scm_adaptive_weight = True
    # scm: the network's time input, trigflow (c_noise(t) = t, the paper) | sde (the label of config.training.sde at
    # the same noise level, e.g. 999 s for VP: a teacher's own embedding, but its large scale swamps df/dt)
    distill.scm_time_label = "trigflow"
    # ect (Geng et al. 2025, locuslab/ect defaults): stage length d (steps), mapping r = t - t n(t) / q^(stage+1),
    # n(t) = 1 + k sigmoid(-b t); metric sqrt(||.||^2 + c^2) - c; log t ~ N(p_mean, p_std^2)
    distill.ect_stage_steps = 25000
    distill.ect_q = 2.0
    distill.ect_k = 8.0
    distill.ect_b = 1.0
    distill.ect_huber_c = 0.0
    distill.ect_p_mean = -1.1
    distill.ect_p_std = 2.0
    # meanflow (Geng et al. 2025, Table 1 ImageNet defaults): logit-normal (r, t), fraction with r != t, adaptive
    # weight 1 / (||err||^2 + c)^p
    distill.mf_p_mean = -0.4
    distill.mf_p_std = 1.0
    distill.mf_ratio = 0.25
    distill.mf_power = 1.0
    distill.mf_weight_c = 1e-3
    model.second_time = False  # a two-time network u(x, r, t) (meanflow: called with r=)
    # (scoresde) text / vector conditioning of the U-Nets (GLIDE, Stable Diffusion, the unCLIP decoder):
    # text_vocab > 0 = captions, y = tokens (B, data.caption_len) from batch["caption"] through a jointly trained
    # text encoder (width / depth / heads) and cross-attention (cross_heads) after every self-attention;
    # cond_dim > 0 = a float vector y (B, cond_dim) through cond_tokens context tokens. Null: zeros_like(y).
    model.text_vocab = 0
    model.text_width = 64
    model.text_depth = 2
    model.text_heads = 4
    model.cross_heads = 1
    model.cond_dim = 0
    model.cond_tokens = 4
    # (scoresde) flow matching, EDM and reflow: training.sde may also be rectified_flow | edm
    # dsm (DSM / DDPM / SMLD) | flow_matching | edm | ct (consistency training: --mode=distill)
    training.objective = "dsm"
    training.time_sampling = "uniform"  # flow_matching: uniform | logit_normal (t = sigmoid(m + s n))
    training.logit_mean = 0.0  # flow_matching logit_normal m
    training.logit_std = 1.0  # flow_matching logit_normal s
    training.p_mean = -1.2  # edm: ln sigma ~ N(p_mean, p_std^2)
    training.p_std = 1.2
    sampling.to_zero = False  # grid methods: k-diffusion's / EDM's ending, the last of `steps` steps goes to sigma = 0
    model.sigma_data = 0.5  # edm preconditioning; the edm sde reads model.sigma_min / sigma_max (EDM: 0.002 / 80)
    # vp_cosine: the cosine log-SNR schedule's ends, lambda(0) = logsnr_max, lambda(T) = logsnr_min (Salimans & Ho)
    model.logsnr_min = -20.0
    model.logsnr_max = 20.0
    model.rf_T = 1.0  # rectified_flow: the process's T; < 1 (e.g. 0.999) for pc / ode sampling and likelihood
    config.reflow = reflow = ml_collections.ConfigDict()  # --mode=reflow
    reflow.source_workdir = ""  # the trained flow whose ODE map gives the couplings ("" = the workdir itself)
    reflow.num_pairs = 0  # (noise, sample) couplings to generate (0 = none: reflow needs a positive number)
    reflow.batch_size = 0  # couplings per sampler call (0 = eval.sample_batch_size)
    reflow.method = "dpm_solver++"  # a deterministic method of scoresde.sampling
    reflow.steps = 20
    reflow.order = 0  # 0 = the method's default
    reflow.init_from_source = True  # initialise the next flow from the source's EMA weights
    # a conditioned flow's couplings: each pair made under a training example's condition, stored with it; the
    # source read with classifier-free guidance of this weight (0 = the conditional flow; needs training.p_uncond > 0)
    reflow.source_guidance = 0.0
    # (scoresde) inverse problems and parallel-in-time sampling. --mode=sample restores
    # config.inverse.num_images test images when inverse.operator != "none" (scoresde.guidance.inverse,
    # scoresde.build "inverse problems"); sampling.parallel_window > 0 samples ddim with ParaDiGMS.
    config.inverse = inverse = ml_collections.ConfigDict()
    inverse.operator = "none"  # none | inpainting | super_resolution | deblur | colorization | random_projection
    inverse.method = "pigdm"  # replacement | dps | pigdm
    inverse.sigma_y = 0.05  # measurement-noise std, in model space (centered data: [-1, 1])
    inverse.scale = 1.0  # guidance scale (dps, pigdm)
    inverse.weighting = "gaussian"  # dps: gaussian (1 / sigma_y^2) | normalized (1 / ||y - A x0||^2)
    inverse.data_var = 1.0  # pigdm: c of r_t^2 = c sigma_t^2 / (alpha_t^2 c + sigma_t^2)
    inverse.cg_steps = 50  # pigdm: conjugate-gradient iterations (deblur)
    inverse.jacobian = "network"  # pigdm: network (VJP through the score) | isotropic (alpha r_t^2 / sigma_t^2)
    inverse.mask = "half"  # inpainting: half (the lower half missing) | random
    inverse.mask_fraction = 0.5  # inpainting 'random': the fraction of pixels missing
    inverse.seed = 0  # the random inpainting mask / random projection matrix
    inverse.factor = 4  # super_resolution: k x k box average
    inverse.blur_sigma = 1.0  # deblur: Gaussian std in pixels
    inverse.blur_size = 5  # deblur: odd kernel size
    inverse.num_measurements = 0  # random_projection: rows M of the matrix; 0 = D // 4
    inverse.num_images = 64  # test images restored (the first ones of the test split, in order)
    inverse.samples_per_image = 1  # K posterior samples per image (K > 1: also their mean and std)
    config.sampling.parallel_window = 0  # ParaDiGMS window W (ddim only); 0 = the sequential sampler
    config.sampling.parallel_tol = 1e-3  # ParaDiGMS per-step tolerance (scoresde.sampling.parallel)

    config.seed = 42
    return config


def ddpmpp_model(model):
    """DDPM++ (cont.) of the reference ``vp/cifar10_ddpmpp_continuous.py``."""
    model.name = "ncsnpp"
    model.scale_by_sigma = False
    model.ema_rate = 0.9999
    model.normalization = "GroupNorm"
    model.nonlinearity = "swish"
    model.nf = 128
    model.ch_mult = (1, 2, 2, 2)
    model.num_res_blocks = 4
    model.attn_resolutions = (16,)
    model.resamp_with_conv = True
    model.conditional = True
    model.fir = False
    model.fir_kernel = [1, 3, 3, 1]
    model.skip_rescale = True
    model.resblock_type = "biggan"
    model.progressive = "none"
    model.progressive_input = "none"
    model.progressive_combine = "sum"
    model.attention_type = "ddpm"
    model.init_scale = 0.0
    model.embedding_type = "positional"
    model.fourier_scale = 16
    model.conv_size = 3
    return model


def ncsnpp_model(model):
    """NCSN++ (cont.) of the reference ``ve/cifar10_ncsnpp_continuous.py``."""
    ddpmpp_model(model)
    model.scale_by_sigma = True
    model.ema_rate = 0.999
    model.fir = True
    model.progressive_input = "residual"
    model.embedding_type = "fourier"
    return model


def smoke(config, image_size=16):
    """A tiny, fast variant for tests: small net, small batch, a handful of steps."""
    t = config.training
    t.batch_size = 8
    t.n_iters = 2
    t.log_freq = 1
    t.eval_freq = 2
    t.snapshot_freq = 2
    t.snapshot_freq_for_preemption = 2
    t.snapshot_num_samples = 4
    t.tensorboard = False
    t.progress = False
    config.eval.batch_size = 8
    config.eval.num_samples = 8
    config.eval.sample_batch_size = 8
    config.eval.num_eval_batches = 1
    config.optim.warmup = 0
    config.data.image_size = image_size
    m = config.model
    m.num_scales = 20
    if "nf" in m:
        m.nf = 8
        m.ch_mult = (1, 2)
        m.num_res_blocks = 1
        m.attn_resolutions = (image_size // 2,)
        m.dropout = 0.0
    return config


def apply_variants(config, variant, known, doc):
    """Applies comma-separated variants, each a key of ``known`` (name -> fn(config))."""
    for v in [v for v in (variant or "").split(",") if v]:
        if v not in known:
            near = difflib.get_close_matches(v, list(known), n=1)
            hint = f"; did you mean {near[0]}?" if near else ""
            raise ValueError(f"unknown variant {v!r} of {doc}; expected one of: {', '.join(known)}{hint}")
        known[v](config)
    return config


def add_guidance(config, num_classes, *, p_uncond=0.1, guidance="cfg", guidance_scale=1.0):
    config.model.num_classes = num_classes
    config.training.p_uncond = p_uncond
    s = config.sampling
    s.guidance = guidance
    s.class_label = -1
    s.guidance_scale = guidance_scale
    return config


def add_text_guidance(config, vocab_size, *, p_uncond=0.1, guidance_scale=1.0, prompt=""):
    """A caption-conditioned config: ``model.text_vocab``, captioned batches, caption dropout and CFG on prompts.

    ``sampling.prompt`` (one caption for every sample) and ``sampling.prompts_file`` (one caption a line, a grid row
    each); both empty: every digit in turn (:func:`scoresde.build.sample_prompts`). Like :func:`add_guidance`,
    these fields exist only in the configs that use them.
    """
    config.model.text_vocab = vocab_size
    config.data.captions = True
    config.training.p_uncond = p_uncond
    s = config.sampling
    s.guidance = "cfg"
    s.guidance_scale = guidance_scale
    s.prompt = prompt
    s.prompts_file = ""
    return config


def add_classifier(config, name, num_classes, **fields):
    """``config.classifier`` with the reference's defaults (WRN-28-10, lr 2e-4) overridden by ``fields``."""
    c = config.classifier = ml_collections.ConfigDict(copy.deepcopy(CLASSIFIER_DEFAULTS))
    c.name = name
    c.num_classes = num_classes
    c.update(copy.deepcopy(CLASSIFIER_ARCHITECTURES.get(name, {})))
    c.n_iters = 100000
    c.batch_size = config.training.batch_size
    c.snapshot_freq = 10000
    for k, v in fields.items():
        c[k] = v
    return config


def add_autoencoder(config, **fields):
    """``config.autoencoder``: the KL autoencoder and its training for ``--mode=train_autoencoder``.

    Architecture (:class:`scoresde.models.autoencoder.AutoencoderKL`): ``latent_channels``, ``f`` (downsampling
    factor 1/2/4/8), ``base_width``, ``num_res_blocks``, ``ch_mult`` (``()`` = the model's default). Loss
    (:func:`scoresde.latent.autoencoder_loss`): ``reconstruction`` (l1 | l2), ``kl_weight`` (β). Optional patch
    discriminator (``discriminator``, ``disc_start``, ``disc_weight``, ``disc_lr``, ``disc_width``,
    ``disc_layers``, ``max_adaptive_weight``) with its own Adam. Training: ``n_iters``, ``batch_size``, ``lr``,
    ``warmup``, ``grad_clip``, ``ema_rate`` (0: no EMA), ``log_freq``, ``eval_freq``, ``snapshot_freq``,
    ``scale_num_examples`` (training examples the latent scale factor and decoder std are computed on).
    """
    a = config.autoencoder = ml_collections.ConfigDict()
    a.latent_channels = 4
    a.f = 4
    a.base_width = 64
    a.num_res_blocks = 2
    a.ch_mult = ()
    a.reconstruction = "l1"
    a.kl_weight = 1e-6
    a.discriminator = False
    a.disc_start = 50001
    a.disc_weight = 0.5
    a.disc_lr = 0.0  # 0 = a.lr
    a.disc_width = 64
    a.disc_layers = 3
    a.max_adaptive_weight = 1e4
    a.n_iters = 100000
    a.batch_size = config.training.batch_size
    a.lr = 4.5e-6 * config.training.batch_size  # LDM: base_learning_rate 4.5e-6 scaled by the batch size
    a.beta1 = 0.5  # LDM's Adam betas (0.5, 0.9)
    a.beta2 = 0.9
    a.warmup = 0
    a.grad_clip = -1.0
    a.ema_rate = 0.0
    a.log_freq = 50
    a.eval_freq = 500
    a.snapshot_freq = 5000
    a.scale_num_examples = 1024
    a.max_nonfinite = 10
    a.tensorboard = True
    for k, v in fields.items():
        a[k] = v
    return config


def add_clip(config, **fields):
    """``config.clip``: :data:`CLIP_DEFAULTS` overridden by ``fields``, and caption batches (``data.captions``)."""
    config.clip = ml_collections.ConfigDict(copy.deepcopy(CLIP_DEFAULTS))
    config.data.captions = True
    for k, v in fields.items():
        config.clip[k] = v
    return config


# Fields of one network architecture (config.model.name), filled only for that architecture. The recipes
# above set them all; these are what a config that names the architecture without them gets.
_UNET_DEFAULTS = dict(scale_by_sigma=False, resamp_with_conv=True, conditional=True, nonlinearity="swish")
MODEL_DEFAULTS = {
    "mlp": dict(hidden=128, num_layers=3, embed_dim=64),
    "birnn": dict(hidden=128, num_layers=2, embed_dim=64),
    "ncsnpp": dict(
        _UNET_DEFAULTS,
        fir=False,
        fir_kernel=(1, 3, 3, 1),
        skip_rescale=True,
        resblock_type="biggan",
        progressive="none",
        progressive_input="none",
        progressive_combine="sum",
        fourier_scale=16.0,
        init_scale=0.0,
    ),
    "ddpm": dict(_UNET_DEFAULTS),
}
MODEL_DEFAULTS["ddpmpp"] = MODEL_DEFAULTS["ncsnpp"]

# config.classifier (optional: filled only when a config has the section), trained by --mode=train_classifier.
# :func:`add_classifier` starts from these and sets its own n_iters, batch_size and snapshot_freq.
CLASSIFIER_DEFAULTS = dict(
    num_classes=0,  # 0 = config.model.num_classes
    n_iters=100000,
    batch_size=0,  # 0 = config.training.batch_size
    optimizer="Adam",
    lr=2e-4,
    beta1=0.9,
    beta2=0.999,
    eps=1e-8,
    warmup=0,
    grad_clip=1.0,
    weight_decay=0.0,
    lr_decay_steps=0,
    ema_rate=0.999,
    log_freq=50,
    snapshot_freq=0,  # 0 = n_iters
    num_eval_batches=8,
    max_nonfinite=10,
    tensorboard=False,
)
CLASSIFIER_ARCHITECTURES = {  # by config.classifier.name
    "wrn": dict(depth=28, width=10, embed_size=128, fourier_scale=16.0),
    "mlp": dict(hidden=128, num_layers=3, embed_size=32, fourier_scale=4.0),
}

# The optimiser, EMA and logging fields of the small trainers' sections (CLIP, the unCLIP prior).
_SMALL_TRAINER = dict(
    optimizer="Adam",
    lr=1e-3,
    beta1=0.9,
    beta2=0.999,
    eps=1e-8,
    warmup=100,
    grad_clip=1.0,
    weight_decay=0.0,
    lr_decay_steps=0,
    ema_rate=0.999,
    log_freq=50,
    snapshot_freq=0,  # 0 = n_iters
    max_nonfinite=10,
    tensorboard=False,
)

# config.autoencoder (optional, see :func:`add_autoencoder`, which sets every field itself): what a hand-made
# section or the record of an older autoencoder run lacks. latent_channels, f, reconstruction, kl_weight, n_iters
# and lr have no default.
AUTOENCODER_DEFAULTS = dict(
    base_width=64,
    num_res_blocks=2,
    ch_mult=(),  # () = the model's default
    discriminator=False,
    disc_start=0,
    disc_weight=0.5,
    disc_lr=0.0,
    disc_width=64,
    disc_layers=3,
    max_adaptive_weight=1e4,
    batch_size=0,  # 0 = config.training.batch_size
    beta1=0.5,
    beta2=0.9,
    warmup=0,
    grad_clip=-1.0,
    ema_rate=0.0,
    log_freq=50,
    eval_freq=0,  # 0 = never
    snapshot_freq=0,  # 0 = n_iters
    scale_num_examples=1024,
    max_nonfinite=10,
    tensorboard=True,
)
# config.clip (optional, see :func:`add_clip`): CLIP trained from scratch by --mode=train_clip (scoresde.models.clip).
CLIP_DEFAULTS = dict(
    noised=False,  # True: the image encoder takes (x_t / alpha, sigma / alpha), trained on the config SDE's x_t
    embed_dim=64,  # the shared embedding size
    image_width=32,  # channels of the image encoder's first level (twice that at the second)
    image_features=128,  # the image encoder's output size (before the projection)
    text_width=64,  # the text transformer's width
    text_depth=2,
    text_heads=4,
    init_temperature=0.07,  # CLIP's initial tau; the learned 1 / tau is capped at max_logit_scale
    max_logit_scale=100.0,
    embed_size=32,  # noised: Fourier frequencies of log(noise level)
    fourier_scale=4.0,
    eval_times=(0.001, 0.25, 0.5),  # noised: t of the zero-shot / retrieval evaluation on the test split
    n_iters=3000,
    batch_size=0,  # 0 = config.training.batch_size
    **_SMALL_TRAINER,
)
OPTIONAL_SECTIONS = {"classifier": CLASSIFIER_DEFAULTS, "autoencoder": AUTOENCODER_DEFAULTS, "clip": CLIP_DEFAULTS}

# config.prior (optional, see :func:`add_prior`): unCLIP's diffusion prior over CLIP image embeddings given the text
# embedding, trained by --mode=train_prior on the pairs a trained CLIP computes (:mod:`scoresde.build.unclip`).
PRIOR_DEFAULTS = dict(
    clip_workdir="",  # the --mode=train_clip run whose CLIP embeds the pairs and conditions the decoder (required)
    hidden=256,  # the MLP score network (scoresde.models.mlp.MLPScore with cond_dim = the CLIP embedding size)
    num_layers=4,
    embed_dim=64,
    p_uncond=0.1,  # text-embedding dropout to zeros, for classifier-free guidance of the prior
    guidance_scale=0.0,  # w of the prior's classifier-free guidance when sampling (0 = the conditional prior)
    n_iters=4000,
    batch_size=0,  # 0 = config.training.batch_size
    **_SMALL_TRAINER,
)
OPTIONAL_SECTIONS["prior"] = PRIOR_DEFAULTS


def add_clip_guidance(config, clip_workdir, *, scale=1.0, noised=True, prompt=""):
    """CLIP guidance of an unconditional model towards ``sampling.prompt`` / ``sampling.prompts_file``: the CLIP of the
    ``--mode=train_clip`` run in ``clip_workdir`` (its noised CLIP, or with ``noised=False`` the clean one through the
    denoiser), ``sampling.guidance_scale`` = ``scale``. Like :func:`add_guidance`, only configs that use them have
    these fields."""
    s = config.sampling
    s.guidance = "clip"
    s.guidance_scale = scale
    s.clip_workdir = clip_workdir
    s.clip_noised = noised
    s.prompt = prompt
    s.prompts_file = ""
    return config


def add_prior(config, **fields):
    """``config.prior``: :data:`PRIOR_DEFAULTS` overridden by ``fields`` (unCLIP's prior, ``--mode=train_prior``)."""
    config.prior = ml_collections.ConfigDict(copy.deepcopy(PRIOR_DEFAULTS))
    for k, v in fields.items():
        config.prior[k] = v
    return config


def _missing(have, table, path=()):
    """``(path, value)`` of every field of ``table`` that ``have`` lacks (whole sections at once)."""
    for k, v in table.items():
        if k not in have:
            yield path + (k,), v
        elif isinstance(v, dict) and isinstance(have[k], dict | ml_collections.ConfigDict):
            yield from _missing(have[k], v, path + (k,))


def _defaults_for(config) -> dict:
    table = get_default_configs().to_dict()
    model = config.get("model") or {}
    table["model"].update(MODEL_DEFAULTS.get(str(model.get("name", table["model"]["name"])), {}))
    for name, defaults in OPTIONAL_SECTIONS.items():
        section = config.get(name)
        if section is not None:  # absent: the run has no such part
            table[name] = dict(defaults)
            if name == "classifier":
                table[name].update(CLASSIFIER_ARCHITECTURES.get(str(section.get("name", "")).lower(), {}))
    return table


def _count(least: int):
    return lambda v: float(v) == int(v) and int(v) >= least, f"an integer >= {least}"


_POSITIVE = (lambda v: math.isfinite(float(v)) and float(v) > 0, "a finite number > 0")
_UNIT = (lambda v: 0.0 <= float(v) <= 1.0, "a number in [0, 1]")

# The range of every field whose bad value would otherwise crash deep in a run, or run and do nothing
# useful: checked once when a config is completed (a field the config lacks is not checked).
VALID_RANGES = {
    "training.n_iters": _count(1),
    "training.batch_size": _count(1),
    "training.log_freq": _count(1),
    "training.snapshot_freq": _count(1),
    "training.snapshot_freq_for_preemption": _count(1),
    "training.eval_freq": (_count(0)[0], "an integer >= 0 (0 = never)"),
    "training.keep_checkpoints": (_count(1)[0], "an integer >= 1 (the newest complete checkpoint is always kept)"),
    "training.max_nonfinite": _count(1),
    "training.snapshot_num_samples": _count(1),
    "optim.lr": _POSITIVE,
    "distill.scm_p_std": _POSITIVE,
    "distill.scm_warmup": _count(0),
    "distill.scm_tangent_c": (lambda v: float(v) >= 0, "a number >= 0 (0 = no tangent normalisation)"),
    "distill.teacher_guidance": (
        lambda v: math.isfinite(float(v)) and float(v) >= 0,
        "a finite number >= 0 (the CFG weight w of the teacher; 0 = unguided)",
    ),
    "distill.ect_stage_steps": _count(1),
    "distill.ect_q": (lambda v: float(v) > 1, "a number > 1 (the factor dt shrinks by per stage)"),
    "distill.ect_huber_c": (lambda v: float(v) >= 0, "a number >= 0 (0 = the L2 norm)"),
    "distill.ect_p_std": _POSITIVE,
    "distill.mf_p_std": _POSITIVE,
    "distill.mf_ratio": _UNIT,
    "distill.mf_power": (lambda v: float(v) >= 0, "a number >= 0 (0 = plain L2)"),
    "distill.mf_weight_c": _POSITIVE,
    "data.num_points": _count(2),
    "data.num_drawings": _count(10),
    "data.caption_len": _count(1),
    "model.text_vocab": _count(0),
    "model.text_width": _count(1),
    "model.text_depth": _count(0),
    "model.text_heads": _count(1),
    "model.cross_heads": _count(1),
    "model.cond_dim": _count(0),
    "model.cond_tokens": _count(1),
    "sampling.num_points": (_count(0)[0], "an integer >= 0 (0 = data.num_points)"),
    "optim.warmup": _count(0),
    "model.ema_rate": _UNIT,
    "model.ema_halflife_img": (lambda v: float(v) >= 0, "a number >= 0 (0 = use model.ema_rate)"),
    "model.ema_rampup_ratio": (lambda v: float(v) >= 0, "a number >= 0 (0 = no ramp-up)"),
    "optim.lr_decay_steps": (_count(0)[0], "an integer >= 0 (0 = no decay)"),
    "data.augment_p": _UNIT,
    "eval.fid_seeds": _count(1),
    "eval.batch_size": _count(1),
    "eval.bpd_eps": (lambda v: 0.0 < float(v) < 1.0, "a number in (0, 1), the time the ODE integral starts at"),
    "eval.bpd_rtol": _POSITIVE,
    "eval.bpd_atol": _POSITIVE,
    "classifier.n_iters": _count(1),
    "classifier.log_freq": _count(1),
    "classifier.lr": _POSITIVE,
    "clip.n_iters": _count(1),
    "clip.log_freq": _count(1),
    "clip.lr": _POSITIVE,
    "clip.embed_dim": _count(1),
    "clip.image_width": _count(4),
    "clip.image_features": _count(1),
    "clip.text_width": _count(1),
    "clip.text_depth": _count(0),
    "clip.text_heads": _count(1),
    "clip.init_temperature": _POSITIVE,
    "clip.max_logit_scale": _POSITIVE,
    "autoencoder.n_iters": _count(1),
    "autoencoder.log_freq": _count(1),
    "autoencoder.lr": _POSITIVE,
    "autoencoder.max_nonfinite": _count(1),
    "prior.n_iters": _count(1),
    "prior.log_freq": _count(1),
    "prior.lr": _POSITIVE,
    "prior.hidden": _count(1),
    "prior.num_layers": _count(1),
    "prior.embed_dim": _count(2),
    "prior.p_uncond": _UNIT,
}


def validate(config) -> None:
    """Checks every field of :data:`VALID_RANGES` that ``config`` has.

    Raises:
        ValueError: naming each bad field, its value and the valid range.
    """
    bad = []
    for field, (ok, expected) in VALID_RANGES.items():
        node = config
        for k in field.split("."):
            node = node.get(k) if isinstance(node, dict | ml_collections.ConfigDict) else None
            if node is None:
                break
        if node is None:
            continue
        try:
            good = not isinstance(node, str) and bool(ok(node))
        except (TypeError, ValueError, OverflowError):
            good = False
        if not good:
            bad.append(f"config.{field}={node!r} (expected {expected})")
    if bad:
        raise ValueError("invalid config value(s): " + "; ".join(bad))


def missing_fields(config) -> list[str]:
    """The dotted names of the fields :func:`with_defaults` would add to ``config``, sorted."""
    return sorted(".".join(path) for path, _ in _missing(config, _defaults_for(config)))


def with_defaults(config):
    """``config`` with every field it lacks taken from this module's defaults.

    A section the config lacks is added whole, except the optional ones (:data:`OPTIONAL_SECTIONS`), whose
    absence means the run has no such part. Fields the config has are never changed, nor are fields the
    defaults do not know (a locked config still rejects a misspelt field afterwards).

    Args:
        config: a ``ConfigDict`` (one of ours, a reference config, a hand-made one) or a plain dict (a JSON dump).

    Returns:
        ``config`` itself when it lacks nothing; else a completed copy, locked if ``config`` was: the caller's
        object never changes.

    Raises:
        ValueError: a field out of its range (:func:`validate`).
    """
    if not isinstance(config, ml_collections.ConfigDict):
        config = ml_collections.ConfigDict(config)
    missing = list(_missing(config, _defaults_for(config)))
    validate(config)
    if not missing:
        return config
    out = copy.deepcopy(config)
    with out.unlocked():
        for path, value in missing:
            parent = out
            for k in path[:-1]:
                parent = parent[k]
            parent[path[-1]] = copy.deepcopy(value)
    return out


def section_with_defaults(section, name: str):
    """An optional section (``name`` ∈ classifier | autoencoder) on its own, e.g. from an autoencoder's record."""
    return with_defaults(ml_collections.ConfigDict({name: section}))[name]
