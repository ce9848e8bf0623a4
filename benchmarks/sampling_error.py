"""Error vs NFE of every sampler on a Gaussian with a known probability-flow map, and sampler overhead.

Problem: D = 64 Gaussian, zero mean, stds linearly spaced in [0.05, 1], VP SDE, eps = 1e-3.
Every deterministic sampler starts from the same 256 prior draws; the error is the mean absolute
difference to the exact map ``GaussianMixture.flow_map`` from T to eps. Samplers run in float32
(``--x64`` for float64). The PC rows use the probability-flow predictors (the only deterministic PC
configurations). Cells show ``error (NFE)`` with the NFE the sampler reported.

Overhead: wall time per NFE of each sampler against a bare ``fori_loop`` of the same number of calls of
the same score function (a 4-layer MLP, width 256, batch 256, D = 64, parameters traced), on CPU;
minimum over 9 interleaved runs each.

It also has the multistep UniPC / DEIS rows and the same problem on ``RectifiedFlow`` (``--process
rectified_flow``): alpha = 1 - t, sigma = t, sampled from exactly T = 1 with the exact denoiser
``E[x_0 | x_t]`` attached (a score alone is undefined there); ``pc`` / ``ode`` integrate the drift, infinite at
t = 1, and are left out. The stochastic samplers (``euler_ancestral``, ``dpm_solver++_sde``) have no pointwise
map: ``--stochastic`` reports ``mean_d |std of 4096 samples - exact std|`` instead, with the Monte-Carlo floor
of the exact law's own 4096 draws.

Run: ``python benchmarks/sampling_error.py [--x64] [--no-timing] [--process vp|rectified_flow]
[--only SUBSTRING] [--stochastic]``.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

TARGETS = (10, 20, 50, 100, 1000)


def rows():
    """(label, method, options(nfe) -> dict)."""
    return [
        (
            "pc euler_maruyama (prob. flow)",
            "pc",
            lambda n: dict(steps=n, predictor="euler_maruyama", corrector="none", probability_flow=True, denoise=False),
        ),
        (
            "pc reverse_diffusion (prob. flow)",
            "pc",
            lambda n: dict(
                steps=max(n, 21), predictor="reverse_diffusion", corrector="none", probability_flow=True, denoise=False
            ),
        ),
        ("ode euler, uniform t", "ode", lambda n: dict(solver="euler", steps=n)),
        ("ode heun, uniform t", "ode", lambda n: dict(solver="heun", steps=max(n // 2, 1))),
        ("ddim (eta=0), uniform t", "ddim", lambda n: dict(steps=n)),
        ("ddim (eta=0), log-SNR", "ddim", lambda n: dict(steps=n, grid="log_snr")),
        ("dpm_solver-2, log-SNR", "dpm_solver", lambda n: dict(order=2, steps=max(n // 2, 1))),
        ("dpm_solver-3, log-SNR", "dpm_solver", lambda n: dict(order=3, steps=max(round(n / 3), 1))),
        ("dpm_solver++(2M), log-SNR", "dpm_solver++", lambda n: dict(steps=n)),
        ("dpm_solver++(2M), uniform t", "dpm_solver++", lambda n: dict(steps=n, grid="uniform_t")),
        ("edm_heun, rho=7", "edm_heun", lambda n: dict(steps=max(n // 2, 1))),
        ("edm_heun, log-SNR", "edm_heun", lambda n: dict(steps=max(n // 2, 1), grid="log_snr")),
        # multistep UniPC (B(h) variants) and DEIS, log-SNR grid, lower_order_final
        ("unipc bh1 order 2, log-SNR", "unipc", lambda n: dict(steps=n, order=2, variant="bh1")),
        ("unipc bh2 order 2, log-SNR", "unipc", lambda n: dict(steps=n, order=2, variant="bh2")),
        ("unipc bh1 order 3, log-SNR", "unipc", lambda n: dict(steps=n, order=3, variant="bh1")),
        ("unipc bh2 order 3, log-SNR", "unipc", lambda n: dict(steps=n, order=3, variant="bh2")),
        ("deis_logsnr_x0 order 2, log-SNR", "deis_logsnr_x0", lambda n: dict(steps=n, order=2)),
        ("deis_logsnr_x0 order 3, log-SNR", "deis_logsnr_x0", lambda n: dict(steps=n, order=3)),
        ("deis (tAB) order 3, quadratic t", "deis", lambda n: dict(steps=n, order=3)),
    ]


STOCHASTIC_ROWS = [
    ("euler_ancestral (eta=1), edm grid", "euler_ancestral", lambda n: dict(steps=n)),
    ("dpm_solver++(2M) SDE, log-SNR", "dpm_solver++_sde", lambda n: dict(steps=n, order=2)),
    ("dpm_solver++(3M) SDE, log-SNR", "dpm_solver++_sde", lambda n: dict(steps=n, order=3)),
    ("ddim (eta=1), log-SNR", "ddim", lambda n: dict(steps=n, eta=1.0, grid="log_snr")),
]


def _problem(process: str, dtype):
    """``(sde, exact-score model with its denoiser, stds, exact_map(x_T))`` of the D = 64 Gaussian."""
    from scoresde import parameterization
    from scoresde import sde as sde_lib

    sde = {"vp": sde_lib.VPSDE, "rectified_flow": sde_lib.RectifiedFlow}[process]()
    stds = np.linspace(0.05, 1.0, 64)
    var = jnp.asarray(stds[None] ** 2, dtype)

    def score_fn(x, t):  # the exact score, in the sampler's dtype (zero mean)
        a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
        return -x / (a**2 * var + s**2)

    def denoiser(x, t):  # E[x_0 | x_t]: finite at alpha = 0 (it is the mean, 0, there)
        a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
        return a * var * x / (a**2 * var + s**2)

    def exact_map(x_init, eps):
        a1, s1 = sde.alpha(jnp.asarray(eps, dtype)), sde.sigma(jnp.asarray(eps, dtype))
        a0, s0 = sde.alpha(jnp.asarray(sde.T, dtype)), sde.sigma(jnp.asarray(sde.T, dtype))
        return x_init * jnp.sqrt((a1**2 * var + s1**2) / (a0**2 * var + s0**2))

    return sde, parameterization.with_denoiser(score_fn, denoiser), stds, exact_map


def stochastic_table(dtype, process: str = "vp", b: int = 4096):
    """``[(label, [(mean_d |std - exact std|, nfe)])]`` and the Monte-Carlo floor of ``b`` exact draws."""
    from scoresde import sampling

    eps = 1e-3
    sde, model, stds, exact_map = _problem(process, dtype)
    exact_std = np.asarray(exact_map(jnp.ones((1, 64), dtype), eps))[0]
    floor = float(
        np.mean(np.abs(np.std(np.asarray(jax.random.normal(jax.random.key(5), (b, 64))), axis=0) - 1.0) * exact_std)
    )

    def run(method, opts):
        x, nfe = sampling.sample(model, sde, (b, 64), jax.random.key(1), method=method, eps=eps, **opts)
        return float(np.mean(np.abs(np.std(np.asarray(x, np.float64), axis=0) - exact_std))), int(nfe)

    return [(label, [run(method, make(n)) for n in TARGETS]) for label, method, make in STOCHASTIC_ROWS], floor


def _wanted(label: str, only: str) -> bool:
    """Whether a row is selected by ``--only`` (``|``-separated substrings; empty: every row)."""
    return not only or any(part in label for part in only.split("|"))


def error_table(dtype, process: str = "vp", only: str = ""):
    from scoresde import analytic, sampling
    from scoresde import sde as sde_lib

    d, b, eps = 64, 256, 1e-3
    if process != "vp":
        sde, model, _, exact_map = _problem(process, dtype)
        x_init = jax.random.normal(jax.random.key(0), (b, d)).astype(dtype)
        exact = exact_map(x_init, eps)

        def run_rf(method, opts):
            x, nfe = sampling.sample(
                model, sde, (b, d), jax.random.key(1), method=method, x_init=x_init, eps=eps, **opts
            )
            return float(jnp.mean(jnp.abs(x - exact))), int(nfe)

        # pc and ode integrate the drift, infinite at alpha(T) = 0; ddim / dpm_solver++ uniform_t only
        keep = [r for r in rows() if r[1] not in ("pc", "ode") and _wanted(r[0], only)]
        return [(label, [run_rf(method, make(n)) for n in TARGETS]) for label, method, make in keep], []
    sde = sde_lib.VPSDE()
    stds = np.linspace(0.05, 1.0, d)
    gm = analytic.GaussianMixture(np.zeros((1, d)), stds[None])
    mu, var = jnp.zeros((1, d), dtype), jnp.asarray(stds[None] ** 2, dtype)

    def score_fn(x, t):  # the exact score, in the sampler's dtype
        a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
        return -(x - a * mu) / (a**2 * var + s**2)

    x_init = jax.random.normal(jax.random.key(0), (b, d)).astype(dtype)
    a1, s1 = sde.alpha(jnp.asarray(eps, dtype)), sde.sigma(jnp.asarray(eps, dtype))
    a0, s0 = sde.alpha(jnp.asarray(1.0, dtype)), sde.sigma(jnp.asarray(1.0, dtype))
    exact = (x_init - a0 * mu) * jnp.sqrt((a1**2 * var + s1**2) / (a0**2 * var + s0**2)) + a1 * mu
    if dtype == jnp.float32:  # cross-check the closed form against scoresde.analytic
        np.testing.assert_allclose(exact, gm.flow_map(sde, x_init, 1.0, eps), rtol=1e-5, atol=1e-6)

    def run(method, opts):
        x, nfe = sampling.sample(
            score_fn, sde, (b, d), jax.random.key(1), method=method, x_init=x_init, eps=eps, **opts
        )
        return float(jnp.mean(jnp.abs(x - exact))), int(nfe)

    table = []
    for label, method, make in rows():
        if _wanted(label, only):
            table.append((label, [run(method, make(n)) for n in TARGETS]))
    adaptive = (
        [] if only else [run("ode", dict(solver="tsit5", rtol=tol, atol=tol)) for tol in (1e-2, 1e-3, 1e-4, 1e-5, 1e-7)]
    )
    return table, adaptive


def overhead(repeats=9):
    from scoresde import sampling
    from scoresde import sde as sde_lib

    d, b, width, layers = 64, 256, 256, 4
    sde = sde_lib.VPSDE()
    keys = jax.random.split(jax.random.key(2), layers + 2)
    params = {
        "inp": jax.random.normal(keys[0], (d + 1, width)) / np.sqrt(d),
        "hidden": [jax.random.normal(k, (width, width)) / np.sqrt(width) for k in keys[1 : layers + 1]],
        "out": jax.random.normal(keys[-1], (width, d)) / np.sqrt(width),
    }

    def mlp_score(p, x, t):
        h = jnp.concatenate([x, t[:, None]], axis=-1) @ p["inp"]
        for w in p["hidden"]:
            h = h + jax.nn.silu(h) @ w
        return jnp.tanh(jax.nn.silu(h) @ p["out"])

    score_fn = jax.tree_util.Partial(mlp_score, params)
    x_init = jax.random.normal(jax.random.key(3), (b, d))

    @jax.jit
    def bare(p, x, n_calls):
        def body(i, x):
            return mlp_score(p, x, jnp.full((b,), 1.0 - i / 1000.0))

        return jax.lax.fori_loop(0, n_calls, body, x)

    def timed_pair(fn_a, fn_b):
        """Minimum wall times of two functions, runs interleaved: robust to load from other processes."""
        jax.block_until_ready(fn_a())  # compile
        jax.block_until_ready(fn_b())
        ta, tb = [], []
        for _ in range(repeats):
            for fn, ts in ((fn_a, ta), (fn_b, tb)):
                t0 = time.perf_counter()
                jax.block_until_ready(fn())
                ts.append(time.perf_counter() - t0)
        return min(ta), min(tb)

    cases = [
        ("pc euler_maruyama", "pc", dict(steps=100)),
        ("pc reverse_diffusion + langevin", "pc", dict(steps=50, predictor="reverse_diffusion", corrector="langevin")),
        ("ode euler (diffrax)", "ode", dict(solver="euler", steps=100)),
        ("ode tsit5 (diffrax, rtol=1e-3)", "ode", dict(rtol=1e-3, atol=1e-3)),
        ("ddim (eta=1)", "ddim", dict(steps=100, eta=1.0)),
        ("dpm_solver-2", "dpm_solver", dict(order=2, steps=50)),
        ("dpm_solver++(2M)", "dpm_solver++", dict(steps=100)),
        ("edm_heun (S_churn=10)", "edm_heun", dict(steps=50, S_churn=10.0)),
    ]
    out = []
    for label, method, opts in cases:
        _, nfe = sampling.sample(score_fn, sde, (b, d), jax.random.key(0), method=method, x_init=x_init, **opts)
        nfe = int(nfe)
        t_s, t_b = timed_pair(
            lambda: sampling.sample(score_fn, sde, (b, d), jax.random.key(0), method=method, x_init=x_init, **opts)[0],
            lambda: bare(params, x_init, nfe),
        )
        out.append((label, nfe, 1e3 * t_s / nfe, 1e3 * t_b / nfe, 100.0 * (t_s - t_b) / t_b))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--x64", action="store_true", help="run the samplers in float64")
    parser.add_argument("--no-timing", action="store_true", help="skip the overhead measurement")
    parser.add_argument("--timing-only", action="store_true", help="only the overhead measurement")
    parser.add_argument("--process", default="vp", choices=("vp", "rectified_flow"), help="the forward process")
    parser.add_argument(
        "--only", default="", help="only the error-table rows whose label contains one of these |-separated substrings"
    )
    parser.add_argument("--stochastic", action="store_true", help="the stochastic samplers' std-error table")
    args = parser.parse_args()
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.float64 if args.x64 else jnp.float32
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(
        f"# sampling_error.py  commit {commit}  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  "
        f"jax {jax.__version__}  {jax.devices()[0].platform}  {platform.processor() or platform.machine()}  "
        f"{'float64' if args.x64 else 'float32'}"
    )
    if args.stochastic:
        print_stochastic_table(dtype, args.process)
    elif not args.timing_only:
        print_error_table(dtype, args.process, args.only)
    if not args.no_timing:
        print(
            "\nSampler wall time per NFE vs a bare fori_loop of the same score calls "
            "(MLP 4x256, batch 256, D=64, CPU)\n"
        )
        print("| sampler | NFE | ms/NFE sampler | ms/NFE bare | overhead |")
        print("|---|---|---|---|---|")
        for label, nfe, ts, tb, ov in overhead():
            print(f"| {label} | {nfe} | {ts:.3f} | {tb:.3f} | {ov:+.1f}% |")
    return 0


def print_stochastic_table(dtype, process):
    print(
        f"\nmean_d |std of 4096 samples - exact std| on the D=64 Gaussian (stds 0.05..1, {process}, eps=1e-3); "
        "cells: error (NFE)\n"
    )
    table, floor = stochastic_table(dtype, process)
    print("| method | " + " | ".join(f"NFE≈{n}" for n in TARGETS) + " |")
    print("|---|" + "---|" * len(TARGETS))
    for label, cells in table:
        print(f"| {label} | " + " | ".join(f"{e:.2e} ({n})" for e, n in cells) + " |")
    print(f"\nMonte-Carlo floor (4096 exact draws): {floor:.2e}")


def print_error_table(dtype, process="vp", only=""):
    print(f"\nMean |x - exact flow map| on the D=64 Gaussian (stds 0.05..1, {process}, eps=1e-3); cells: error (NFE)\n")
    table, adaptive = error_table(dtype, process, only)
    print("| method | " + " | ".join(f"NFE≈{n}" for n in TARGETS) + " |")
    print("|---|" + "---|" * len(TARGETS))
    for label, cells in table:
        print(f"| {label} | " + " | ".join(f"{e:.2e} ({n})" for e, n in cells) + " |")
    if adaptive:
        print(
            "| ode tsit5, rtol=atol=1e-2,1e-3,1e-4,1e-5,1e-7 | "
            + " | ".join(f"{e:.2e} ({n})" for e, n in adaptive)
            + " |"
        )
    best = min((cells[1][0], label) for label, cells in table)
    print(f"\nbest at NFE≈20: {best[1]}: {best[0]:.2e} (goal <= 6.3e-3)")


if __name__ == "__main__":
    sys.exit(main())
