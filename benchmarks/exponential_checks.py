"""Measured convergence orders and diffusers-oracle differences of the exponential integrators.

Usage: PYTHONPATH=. python benchmarks/exponential_checks.py > benchmarks/sections/exponential.md

Orders: float64, lambda-uniform grids from sigma 10 to 0.1 (Gaussian, exact flow map) or 0.2
(6-D Gaussian mixture, against ``reference_solve`` at rtol = atol = 1e-12), N = 32, 64, 128 steps,
least-squares slope of log(max error) against log N. "tiny" grids make the first two steps
O(h^2) long so that a multistep method's lower-order warm-up does not mask its order.
Oracle: the tests in tests/test_exponential_oracle.py, reporting the max |flowode - diffusers|.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import flowode  # noqa: E402
from flowode.analytic import Gaussian, gmm_random, reference_solve  # noqa: E402

torch.set_num_threads(1)
SCHED = flowode.DiscreteVPSchedule.linear(1000, 1e-4, 0.02)
GAUSS = Gaussian([0.5, -1.0, 2.0, 0.3], [0.3, 1.0, 0.1, 0.7])
GMM = gmm_random(dim=6, k=5, std=0.4, seed=1)

CASES = [
    ("dpm_solver_1", {}, 1), ("dpm_solver_2", {}, 2), ("dpm_solver_3", {}, 3), ("dpm_solver++_2s", {}, 2),
    ("dpm_solver++_2m", {}, 2), ("dpm_solver++_3m", {}, 3), ("dpm_solver++_3m", {"coefficients": "reference"}, 2),
    ("unipc", {"order": 1, "variant": "bh1"}, 2), ("unipc", {"order": 1, "variant": "bh2"}, 2),
    ("unipc", {"order": 2, "variant": "bh1"}, 3), ("unipc", {"order": 2, "variant": "bh2"}, 3),
    ("unipc", {"order": 3, "variant": "bh1"}, 4), ("unipc", {"order": 3, "variant": "bh2"}, 4),
    ("unipc", {"order": 2, "corrector": False}, 2), ("unipc", {"order": 3, "corrector": False}, 3),
    ("unipc", {"order": 3, "predictor": "dpm_solver++"}, 4),
]


def lambda_grid(n: int, tiny: bool, s_hi: float, s_lo: float) -> torch.Tensor:
    la, lb = -math.log(s_hi), -math.log(s_lo)
    if tiny:
        h = (lb - la) / n
        d = h * h / (lb - la)
        lam = torch.cat([torch.tensor([la, la + d], dtype=torch.float64),
                         torch.linspace(la + 2 * d, lb, n + 1, dtype=torch.float64)])
    else:
        lam = torch.linspace(la, lb, n + 1, dtype=torch.float64)
    return torch.exp(-lam)


def start(n: int, dim: int, sigma: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=torch.float64) * (sigma / math.sqrt(1 + sigma**2))


def slope(name: str, opts: dict, problem: str, tiny: bool) -> float:
    ns = [32, 64, 128]
    multistep = flowode.solvers.get_class(name).multistep
    kw = {**opts, "lower_order_final": False} if multistep else dict(opts)
    errs = []
    if problem == "gauss":
        model, x, lo = GAUSS.model(SCHED), start(16, 4, 10.0, 0), 0.1
        exact = GAUSS.flow(x, 10.0, lo, SCHED)
    else:
        model, x, lo = GMM.model(SCHED), start(8, 6, 10.0, 3), 0.2
        exact = reference_solve(model, x, 10.0, lo, rtol=1e-12, atol=1e-12)
    for n in ns:
        sol = flowode.integrate(model, x, lambda_grid(n, tiny, 10.0, lo), solver=name, **kw)
        errs.append(float((sol.x - exact).abs().max()))
    return -float(np.polyfit(np.log(ns), np.log(errs), 1)[0])


def orders_table() -> None:
    print("| solver | options | nominal order | Gaussian, uniform lambda | Gaussian, tiny warm-up | "
          "mixture, uniform lambda | mixture, tiny warm-up |")
    print("|---|---|---|---|---|---|---|")
    for name, opts, nominal in CASES:
        row = [slope(name, opts, p, t) for p in ("gauss", "gmm") for t in (False, True)]
        o = ", ".join(f"{k}={v}" for k, v in opts.items()) or "-"
        print(f"| {name} | {o} | {nominal} | " + " | ".join(f"{v:.2f}" for v in row) + " |")


def oracle_table() -> None:
    import test_exponential_oracle as T

    def run(test, *args):  # returns the max difference the test asserts on
        diffs = []
        real_abs = torch.Tensor.abs

        def spy(self):  # record every |a - b| max the test computes
            out = real_abs(self)
            diffs.append(float(out.max()))
            return out
        torch.Tensor.abs = spy
        try:
            test(*args)
        finally:
            torch.Tensor.abs = real_abs
        return max(d for d in diffs if math.isfinite(d))

    print("| flowode | diffusers scheduler (float64) | cases | max abs difference |")
    print("|---|---|---|---|")
    for order in (2, 3):
        d = max(run(T.test_dpm_solver_pp_multistep_vs_diffusers, c, order) for c in T.CASES)
        opt = "" if order == 2 else " coefficients='reference'"
        print(f"| dpm_solver++_{order}m{opt} | DPMSolverMultistepScheduler(dpmsolver++, solver_order={order}, "
              f"midpoint, lower_order_final=True) | N in 5,10,20 x linspace,trailing x final zero,sigma_min "
              f"| {d:.2e} |")
    ucases = T.UNIPC_CASES
    for variant in ("bh1", "bh2"):
        for order in (1, 2, 3):
            d = max(run(T.test_unipc_vs_diffusers, c, order, variant) for c in ucases)
            print(f"| unipc order={order} variant={variant} | UniPCMultistepScheduler(solver_order={order}, "
                  f"solver_type={variant}, predict_x0=True) | {len(ucases)} grids | {d:.2e} |")
    for name in ("dpm_solver_2", "dpm_solver_3", "dpm_solver++_2s"):
        finals = ["min"] if "++" not in name else ["zero", "min"]
        d = max(run(T.test_singlestep_vs_diffusers, name, f) for f in finals)
        print(f"| {name} | DPMSolverSinglestepScheduler on the interleaved grid | logsnr 6 steps, final "
              f"{'/'.join(finals)} | {d:.2e} |")


if __name__ == "__main__":
    print("### Exponential integrators: measured orders\n")
    print("Command: `OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/exponential_checks.py`\n")
    orders_table()
    print("\n### Exponential integrators: diffusers 0.42.1 oracles (float64, exact 6-D mixture eps)\n")
    oracle_table()
