"""RMSE of the exponential integrators against a tight reference solve at NFE 5, 10, 20.

Usage: OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/exponential_nfe.py

DDPM linear schedule (1000 steps), exact Gaussian-mixture models (2-D ring of 8, 64-D random of 8),
float64, 256 samples from the prior at sigma_max, integrated to sigma = 0; the reference is
``reference_solve`` (DOP853, rtol = atol = 1e-10). Each solver gets the largest step count whose
NFE is within the budget (``flowode.sample(nfe=...)``), on the spacing named in the column.
"""

from __future__ import annotations

import math

import torch

import flowode
from flowode.analytic import gmm_random, gmm_ring, reference_solve

torch.set_num_threads(1)
SCHED = flowode.DiscreteVPSchedule.linear(1000, 1e-4, 0.02)
SOLVERS = [
    ("ddim", {}), ("dpm_solver_2", {}), ("dpm_solver_3", {}), ("dpm_solver++_2s", {}), ("dpm_solver++_2m", {}),
    ("dpm_solver++_3m", {}), ("dpm_solver++_3m", {"coefficients": "reference"}),
    ("unipc", {"order": 2}), ("unipc", {"order": 3}), ("unipc", {"order": 3, "variant": "bh1"}),
]


def main() -> None:
    for label, gmm in (("2-D ring", gmm_ring()), ("64-D random", gmm_random(dim=64))):
        model = gmm.model(SCHED)
        g = torch.Generator().manual_seed(0)
        x_T = model.prior_sample((256, gmm.dim), generator=g, dtype=torch.float64)
        ref = reference_solve(model, x_T, SCHED.sigma_max, 0.0)
        print(f"\n#### {label} mixture: RMSE vs reference (sigma_max -> 0)\n")
        cols = [(nfe, sp) for nfe in (5, 10, 20) for sp in ("logsnr", "trailing")]
        print("| solver | " + " | ".join(f"NFE {n} {sp}" for n, sp in cols) + " |")
        print("|---|" + "---|" * len(cols))
        for name, opts in SOLVERS:
            cells = []
            for nfe, sp in cols:
                try:
                    sol = flowode.sample(model, x_T, nfe=nfe, solver=name, spacing=sp, **opts)
                    rmse = math.sqrt(float(((sol.x - ref) ** 2).sum(-1).mean()))
                    cells.append(f"{rmse:.3g} ({sol.nfe})")
                except ValueError as e:  # budget too small for the solver
                    cells.append("-" if "too small" in str(e) else "err")
            o = "".join(f" {k}={v}" for k, v in opts.items())
            print(f"| {name}{o} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    print("### Exponential integrators: RMSE at fixed NFE\n")
    print("Command: `OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/exponential_nfe.py`")
    print("(cells: RMSE per sample (NFE used))")
    main()
