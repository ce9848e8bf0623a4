"""Convergence order of the DPM-Solver++(3M) update as k-diffusion (`sample_dpmpp_3m_sde`, eta = 0) and the
official DPM-Solver (`multistep_dpm_solver_third_update`) write it, on a prescribed denoiser D(lambda) = sin(lambda)
with the exact exponential-integrator solution as reference. Both codes use D2 = (D1_0 - D1_1) / (r0 + r1)
~ h² D'' / 2 with the coefficient -phi_3 ~ h / 6, where h³ D'' / 6 is needed: the update is second order as
written; doubling D2 makes it third order. Run: `python benchmarks/dpmpp_3m_order.py`.
"""

import numpy as np
from scipy.integrate import quad

D = np.sin


def exact(lam0, x0, lam1):
    return (
        np.exp(-(lam1 - lam0)) * x0 + quad(lambda u: np.exp(u - lam1) * D(u), lam0, lam1, epsabs=1e-14, epsrel=1e-14)[0]
    )


def run(n, d2_scale=1.0):
    lams = np.linspace(0.0, 2.0, n + 1)
    x = 0.3
    xs = [x]
    # exact starting values for the first two steps, so only the 3M update is measured
    for i in range(2):
        x = exact(lams[i], x, lams[i + 1])
        xs.append(x)
    for i in range(2, n):
        h, h0, h1 = lams[i + 1] - lams[i], lams[i] - lams[i - 1], lams[i - 1] - lams[i - 2]
        m0, m1, m2 = D(lams[i]), D(lams[i - 1]), D(lams[i - 2])
        r0, r1 = h0 / h, h1 / h
        d1_0, d1_1 = (m0 - m1) / r0, (m1 - m2) / r1
        d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
        d2 = d2_scale * (d1_0 - d1_1) / (r0 + r1)
        phi_1 = np.expm1(-h)
        phi_2 = phi_1 / h + 1
        phi_3 = phi_2 / h - 0.5
        x = np.exp(-h) * x - phi_1 * m0 + phi_2 * d1 - phi_3 * d2
    return abs(x - exact(0.0, 0.3, 2.0))


for scale in (1.0, 2.0):
    errs = [run(n, scale) for n in (10, 20, 40, 80, 160)]
    slopes = [np.log2(a / b) for a, b in zip(errs, errs[1:])]
    print(f"D2 x {scale}: errors {['%.2e' % e for e in errs]} slopes {['%.2f' % s for s in slopes]}")
