"""Side by side with the PyTorch reference on the same hardware, with identical weights.

    python benchmarks/vs_reference.py --reference=PATH/score_sde_pytorch --dpm-solver=PATH/dpm-solver
    python benchmarks/vs_reference.py --reference=... --dpm-solver=... --device=gpu --size=cifar10

The project ships none of the reference code: ``--reference`` is a checkout of score_sde_pytorch
(Song et al. 2021, github.com/yang-song/score_sde_pytorch) and ``--dpm-solver`` one of the official
DPM-Solver code (Lu et al. 2022, github.com/LuChengTHU/dpm-solver; its ``dpm_solver_pytorch.py``). Needs
``torch`` (not a dependency of the package). The network is the DDPM++ continuous VP network of
``configs/cifar10_vp.py``, built twice: by the reference's own ``models/ncsnpp.py`` and by
:mod:`scoresde.models`. The reference's weights (its initialisation, then perturbed by N(0, 0.02²) noise so
that the zero-initialised output layer does not make every output 0) are moved across with the project's
converter (:func:`scoresde.convert.params_from_torch`), and the two score functions are checked equal first.

``--size=small`` (the default, for a CPU run of minutes): 16×16×3 images, nf 32, ch_mult (1, 2), one res
block per level, attention at 8×8; ``--size=cifar10``: the full 32×32 network (nf 128, ch_mult (1, 2, 2, 2),
4 res blocks, attention at 16×16).

Figures (one JSON line each, then a Markdown table), each timed interleaved ours / reference / ours /
reference ... over ``--rounds`` rounds, the medians compared (``speedup`` = reference median / ours):

* ``forward``: one evaluation of the score function (eval mode), img/s.
* ``train_step``: one training step, the continuous DSM loss (reduce-mean), Adam with the config's
  warm-up and gradient clipping at 1, EMA; ours the jitted step of :mod:`scoresde.modes.train`, theirs
  ``losses.get_step_fn``.
* ``dpm_solver``: a 20-step DPM-Solver++(2M) sample (logSNR grid, ``t`` from 1 to 1e-3, lower-order final
  steps), ours ``sampling.sample(method="dpm_solver++")``, theirs the official ``DPM_Solver.sample`` on the
  same prior draw; ``max_abs_diff`` between the two samples.
* ``likelihood``: the probability-flow log-likelihood at rtol = atol = 1e-5 from eps = 1e-5 with the same
  Rademacher probe on both sides (theirs ``likelihood.get_likelihood_fn``: scipy's RK45 on the host, the
  whole batch as one ODE system; ours :func:`scoresde.likelihood.log_likelihood`, Dormand–Prince 5(4) on
  the device, one solve per example), both bits/dim (the reference's formula, offset 7 for centred data)
  and both NFE counts.

Ours is timed after compilation (``compile_s`` reports the ahead-of-time compile); theirs is eager PyTorch.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {
    "small": dict(image_size=16, nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,)),
    "cifar10": {},
}
DEVICES = ("cpu", "gpu")


def parse_args(argv=None) -> argparse.Namespace:
    """The command line, with the reference checkouts checked before anything heavy is imported.

    Raises:
        SystemExit: a missing or wrong checkout path, or a bad size.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, help="checkout of score_sde_pytorch")
    parser.add_argument("--dpm-solver", required=True, dest="dpm_solver", help="checkout of LuChengTHU/dpm-solver")
    parser.add_argument("--device", default="cpu", choices=DEVICES)
    parser.add_argument("--size", default="small", choices=tuple(SIZES))
    parser.add_argument("--batch", type=int, default=16, help="batch of the forward and training figures")
    parser.add_argument("--sample-batch", type=int, default=8, dest="sample_batch")
    parser.add_argument("--likelihood-batch", type=int, default=2, dest="likelihood_batch")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved A/B rounds per figure")
    parser.add_argument(
        "--likelihood-rounds", type=int, default=1, dest="likelihood_rounds", help="rounds of the (slow) likelihood"
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        dest="torch_threads",
        help="PyTorch's intra-op threads (default: its own choice); on a loaded host 1 can be much faster",
    )
    parser.add_argument("--only", default="forward,train_step,dpm_solver,likelihood")
    args = parser.parse_args(argv)
    checks = (
        ("--reference", args.reference, ("models/ncsnpp.py", "likelihood.py", "losses.py", "sde_lib.py")),
        ("--dpm-solver", args.dpm_solver, ("dpm_solver_pytorch.py",)),
    )
    for flag, path, files in checks:
        missing = [f for f in files if not os.path.isfile(os.path.join(path, f))]
        if not os.path.isdir(path) or missing:
            what = "does not exist" if not os.path.isdir(path) else f"has no {', '.join(missing)}"
            raise SystemExit(f"{flag}={path!r} {what}; expected a checkout holding {', '.join(files)}")
    for name in ("batch", "sample_batch", "likelihood_batch", "rounds", "likelihood_rounds", "torch_threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    figures = [f.strip() for f in args.only.split(",") if f.strip()]
    unknown = sorted(set(figures) - set(FIGURES))
    if unknown:
        raise SystemExit(f"unknown figure(s) {unknown}; expected some of: {', '.join(FIGURES)}")
    args.figures = figures
    return args


FIGURES = ("forward", "train_step", "dpm_solver", "likelihood")


def _interleaved(ours, theirs, rounds, warm_up=True):
    """Medians of ``rounds`` alternating timings ours, theirs, ours, ... (each callable blocks until done),
    after one untimed call of each (PyTorch's first call sets up its kernels, as a first JAX call compiles)."""
    if warm_up:
        ours()
        theirs()
    a, b = [], []
    for _ in range(rounds):
        for fn, out in ((ours, a), (theirs, b)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return statistics.median(a), statistics.median(b)


def _import_reference(reference, dpm_solver):
    """The reference's modules, imported from the checkouts.

    ``models/up_or_down_sampling.py`` imports the reference's ``op`` package, which builds CUDA extensions
    at import; the DDPM++ networks here have ``fir=False`` and never call it, so a stand-in that refuses to
    run is put in its place.
    """
    if "op" not in sys.modules:
        op = types.ModuleType("op")

        def upfirdn2d(*args, **kwargs):
            raise NotImplementedError("FIR resampling needs the reference's CUDA op; these networks use fir=False")

        op.upfirdn2d = upfirdn2d
        sys.modules["op"] = op
    for path in (reference, dpm_solver):
        if path not in sys.path:
            sys.path.insert(0, os.path.abspath(path))
    import dpm_solver_pytorch  # noqa: PLC0415
    import likelihood as ref_likelihood  # noqa: PLC0415
    import losses as ref_losses  # noqa: PLC0415
    import sde_lib as ref_sde_lib  # noqa: PLC0415
    from models import ema as ref_ema  # noqa: PLC0415
    from models import ncsnpp as ref_ncsnpp  # noqa: PLC0415
    from models import utils as ref_mutils  # noqa: PLC0415

    return types.SimpleNamespace(
        dpm=dpm_solver_pytorch,
        likelihood=ref_likelihood,
        losses=ref_losses,
        sde_lib=ref_sde_lib,
        ema=ref_ema,
        ncsnpp=ref_ncsnpp,
        mutils=ref_mutils,
    )


def run(args) -> list[dict]:
    """Runs the figures of ``args`` and returns their records (also printed, one JSON line each)."""
    if args.device == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax  # noqa: PLC0415  (after JAX_PLATFORMS is set)
    import jax.numpy as jnp  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415
    from flax import nnx  # noqa: PLC0415

    from scoresde import build, convert, likelihood, parallel, sampling, train_state  # noqa: PLC0415
    from scoresde.modes.train import make_train_step  # noqa: PLC0415

    ref = _import_reference(args.reference, args.dpm_solver)
    if args.torch_threads is not None:
        torch.set_num_threads(args.torch_threads)
    tdev = torch.device("cuda" if args.device == "gpu" else "cpu")
    if jax.devices()[0].platform != ("cpu" if args.device == "cpu" else "gpu"):
        raise SystemExit(f"--device={args.device} but JAX runs on {jax.devices()[0].platform}")

    config = build.load_config(os.path.join(REPO, "configs", "cifar10_vp.py"))
    with config.unlocked():
        for k, v in SIZES[args.size].items():
            config.model[k] = v
            if k == "image_size":
                config.data.image_size = v
    size = config.data.image_size
    shape = (size, size, config.data.num_channels)
    dim = int(np.prod(shape))

    # -- the same network twice, weights moved across by the converter --
    torch.manual_seed(0)
    tmodel = ref.ncsnpp.NCSNpp(config).to(tdev)
    with torch.no_grad():
        for p in tmodel.parameters():
            p.add_(0.02 * torch.randn_like(p))
    tmodel.eval()
    model = build.build_model(config, seed=0)
    sd = {k: v.detach().cpu().numpy() for k, v in tmodel.state_dict().items()}
    model = convert.model_with_params(config, convert.params_from_torch(sd, model), model=model)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    n_params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
    sde = build.make_sde(config)
    ref_sde = ref.sde_lib.VPSDE(beta_min=config.model.beta_min, beta_max=config.model.beta_max, N=1000)

    def score(p, x, t):
        return build.make_score_fn(nnx.merge(graphdef, p, rest), sde, config)(x, t)

    ref_score = ref.mutils.get_score_fn(ref_sde, tmodel, train=False, continuous=True)

    def to_torch(x):
        x = np.asarray(x)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2) if x.ndim == 4 else x)).to(tdev)

    def from_torch(x):
        x = x.detach().cpu().numpy()
        return x.transpose(0, 2, 3, 1) if x.ndim == 4 else x

    def sync():
        if tdev.type == "cuda":
            torch.cuda.synchronize()

    rng = np.random.default_rng(0)
    header = dict(
        device=getattr(jax.devices()[0], "device_kind", "cpu"),
        size=args.size,
        params=n_params,
        torch=torch.__version__,
        torch_threads=torch.get_num_threads(),
        jax=jax.__version__,
    )
    records = []

    def emit(figure, **fields):
        rec = {"figure": figure, **header, **fields, "load_avg_1m": round(os.getloadavg()[0], 2)}
        print(json.dumps(rec), flush=True)
        records.append(rec)

    # -- outputs equal first --
    x = rng.uniform(-1, 1, (args.batch,) + shape).astype(np.float32)
    t = rng.uniform(1e-3, 1.0, (args.batch,)).astype(np.float32)
    fwd = jax.jit(score).lower(params, x, t).compile()
    ours = np.asarray(fwd(params, x, t))
    with torch.no_grad():
        theirs = from_torch(ref_score(to_torch(x), to_torch(t)))
    rel = float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))
    emit("equal_outputs", batch=args.batch, max_abs_score=float(np.max(np.abs(theirs))), max_rel_diff=rel)
    if not rel < 1e-4:
        raise SystemExit(f"the two networks disagree: max relative difference {rel:.3g} (expected < 1e-4)")

    if "forward" in args.figures:
        xt, tt = to_torch(x), to_torch(t)

        def ref_forward():
            with torch.no_grad():
                ref_score(xt, tt)
            sync()

        a, b = _interleaved(lambda: jax.block_until_ready(fwd(params, x, t)), ref_forward, args.rounds)
        emit(
            "forward",
            batch=args.batch,
            ours_s=a,
            reference_s=b,
            ours_img_per_s=args.batch / a,
            reference_img_per_s=args.batch / b,
            speedup=b / a,
        )

    if "dpm_solver" in args.figures:
        x_t = rng.standard_normal((args.sample_batch,) + shape).astype(np.float32)

        def ours_sample(p, xx):
            out, nfe = sampling.sample(
                lambda a, b: score(p, a, b), sde, xx.shape, jax.random.key(0), method="dpm_solver++",
                x_init=xx, eps=1e-3, steps=20, order=2,
            )  # fmt: skip
            return out, nfe

        t0 = time.perf_counter()
        sample_c = jax.jit(ours_sample).lower(params, x_t).compile()
        compile_s = time.perf_counter() - t0
        ns = ref.dpm.NoiseScheduleVP("linear", continuous_beta_0=sde.beta_min, continuous_beta_1=sde.beta_max)
        noise_model = ref.dpm.model_wrapper(lambda xx, tt: tmodel(xx, tt * 999), ns, model_type="noise")
        solver = ref.dpm.DPM_Solver(noise_model, ns, algorithm_type="dpmsolver++")
        x_tt = to_torch(x_t)
        box = {}

        def ref_sample():
            with torch.no_grad():
                box["out"] = solver.sample(
                    x_tt, steps=20, t_start=1.0, t_end=1e-3, order=2, skip_type="logSNR", method="multistep",
                    lower_order_final=True,
                )  # fmt: skip
            sync()

        def our_sample():
            box["ours"] = jax.block_until_ready(sample_c(params, x_t))

        a, b = _interleaved(our_sample, ref_sample, args.rounds)
        diff = float(np.max(np.abs(np.asarray(box["ours"][0]) - from_torch(box["out"]))))
        emit(
            "dpm_solver",
            batch=args.sample_batch,
            steps=20,
            nfe=int(box["ours"][1]),
            compile_s=round(compile_s, 3),
            ours_s=a,
            reference_s=b,
            speedup=b / a,
            max_abs_diff=diff,
        )

    if "likelihood" in args.figures:
        n = args.likelihood_batch
        k = rng.integers(0, 256, (n,) + shape)
        data = (2 * (k + rng.uniform(size=k.shape)) / 256 - 1).astype(np.float32)  # dequantised, centred
        key = jax.random.key(1)
        # the probe log_likelihood draws for example i (rademacher of split(key, n)[i]), handed to the reference
        probes = np.stack(
            [np.asarray(jax.random.rademacher(ki, (1,) + shape, jnp.float32))[0] for ki in jax.random.split(key, n)]
        )
        tol = dict(rtol=1e-5, atol=1e-5, eps=1e-5)

        def ours_ll(p, xx, kk):
            return likelihood.log_likelihood(
                lambda a, b: score(p, a, b), sde, xx, kk, hutchinson="rademacher", solver="dopri5", **tol
            )

        t0 = time.perf_counter()
        ll_c = jax.jit(ours_ll).lower(params, data, key).compile()
        compile_s = time.perf_counter() - t0
        ref_ll = ref.likelihood.get_likelihood_fn(ref_sde, lambda v: (v + 1) / 2, "Rademacher", method="RK45", **tol)
        data_t, probes_t = to_torch(data), to_torch(probes)
        box = {}

        def ref_run():
            real = torch.randint_like
            torch.randint_like = lambda like, low, high: (probes_t + 1) / 2  # their probe: 2 u - 1
            try:
                box["ref"] = ref_ll(tmodel, data_t)
            finally:
                torch.randint_like = real
            sync()

        def our_run():
            box["ours"] = jax.block_until_ready(ll_c(params, data, key))

        # no untimed warm-up: both sides are warm from the figures before, and one reference solve takes minutes
        our_run()
        a, b = _interleaved(our_run, ref_run, args.likelihood_rounds, warm_up=False)
        logp, _, nfe = box["ours"]
        offset = 7.0  # the reference's 7 - inverse_scaler(-1) for centred data
        bpd_ours = -np.asarray(logp) / (dim * math.log(2)) + offset
        bpd_ref, _, nfe_ref = box["ref"]
        emit(
            "likelihood",
            batch=n,
            compile_s=round(compile_s, 3),
            ours_s=a,
            reference_s=b,
            speedup=b / a,
            bpd_ours=[round(float(v), 5) for v in bpd_ours],
            bpd_reference=[round(float(v), 5) for v in from_torch(bpd_ref)],
            nfe_ours=[int(v) for v in np.asarray(nfe)],
            nfe_reference=int(nfe_ref),
        )

    if "train_step" in args.figures:  # last: it changes the reference model's weights
        batch = parallel.shard_batch(parallel.make_mesh(), {"image": x})
        mesh = parallel.make_mesh()
        tx = build.optimizer_from_config(config)
        state = train_state.init_state(params, tx)
        step_fn = make_train_step(config, sde, graphdef, rest, tx, mesh, jax.random.key(0))
        t0 = time.perf_counter()
        step_c = step_fn.lower(state, batch).compile()
        compile_s = time.perf_counter() - t0
        optimizer = ref.losses.get_optimizer(config, tmodel.parameters())
        ref_state = dict(
            optimizer=optimizer,
            model=tmodel,
            ema=ref.ema.ExponentialMovingAverage(tmodel.parameters(), decay=config.model.ema_rate),
            step=0,
        )
        ref_step = ref.losses.get_step_fn(
            ref_sde,
            train=True,
            optimize_fn=ref.losses.optimization_manager(config),
            reduce_mean=config.training.reduce_mean,
            continuous=True,
            likelihood_weighting=config.training.likelihood_weighting,
        )
        xt = to_torch(x)
        holder = {"state": state}

        def our_step():
            holder["state"], m = step_c(holder["state"], batch)
            jax.block_until_ready(m["loss"])

        def their_step():
            ref_step(ref_state, xt)
            sync()

        a, b = _interleaved(our_step, their_step, args.rounds)
        emit(
            "train_step",
            batch=args.batch,
            compile_s=round(compile_s, 3),
            ours_s=a,
            reference_s=b,
            ours_img_per_s=args.batch / a,
            reference_img_per_s=args.batch / b,
            speedup=b / a,
        )
    return records


def markdown(records) -> str:
    """The records as the Markdown table of BENCHMARKS.md."""
    rows = [
        "| figure | batch | ours (median s) | reference (median s) | speedup | check |",
        "|---|---|---|---|---|---|",
    ]
    for r in records:
        if r["figure"] == "equal_outputs":
            continue
        check = {
            "dpm_solver": lambda: f"NFE {r['nfe']}, max abs diff {r['max_abs_diff']:.2g}",
            "likelihood": lambda: (
                f"bpd {r['bpd_ours']} vs {r['bpd_reference']}, NFE {r['nfe_ours']} vs {r['nfe_reference']}"
            ),
        }.get(r["figure"], lambda: "")()
        rows.append(
            f"| {r['figure']} | {r['batch']} | {r['ours_s']:.4g} | {r['reference_s']:.4g} | {r['speedup']:.2f}x | {check} |"
        )
    return "\n".join(rows)


def main(argv=None):
    args = parse_args(argv)
    records = run(args)
    print(markdown(records), flush=True)


if __name__ == "__main__":
    main()
