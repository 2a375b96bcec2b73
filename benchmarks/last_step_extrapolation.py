"""Probe for issue 15, item 2: does Richardson extrapolation in sigma^2 of the last two x0
predictions remove the last-step floor? (Measured, not yet an option of the driver.)

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/last_step_extrapolation.py

Along the exact flow the denoised estimate is ``D(x(sigma), sigma) = x0 + c sigma^2 + O(sigma^4)``
(exact for a Gaussian: ``x0 - (x0 - mu) sigma^2 / (2 s^2)``), so from the predictions ``D_a, D_b``
made at the last two levels ``sigma_a > sigma_b`` (no extra evaluation)
``x0 ~ D_b + (D_b - D_a) sigma_b^2 / (sigma_a^2 - sigma_b^2)``. Printed: RMSE of the solver's own
last step (the first-order jump to 0) and of the extrapolation against the exact flow, float64, 256
samples, DDPM linear schedule, logsnr grids.
"""
import torch

import flowode
from flowode.analytic import Gaussian, gmm_random, reference_solve

torch.set_default_dtype(torch.float64)
S = flowode.DiscreteVPSchedule.linear()
probs = {"gauss": Gaussian([0.5, -1.0, 2.0, 0.0], [0.2, 0.7, 1.5, 3.0]),
         "gmm64": gmm_random(dim=64, k=10, std=0.3, seed=3)}
for pname, g in probs.items():
    m = g.model(S)
    x = torch.randn(256, g.dim, generator=torch.Generator().manual_seed(5))
    for solver in ("dpm_solver++_2m", "unipc", "ipndm", "heun"):
        for nfe in (10, 20, 40, 160):
            sol = flowode.sample(m, x, None, nfe=nfe, solver=solver, spacing="logsnr", save_at="steps")
            grid = [float(v) for v in sol.sigmas]
            ref = g.flow(x, grid[0], 0.0, S) if isinstance(g, Gaussian) else reference_solve(m, x, grid[0], 0.0)
            D = sol.denoised  # predictions per step start
            sa, sb = grid[-3], grid[-2]
            Da, Db = D[-2], D[-1]
            ext = Db + (Db - Da) * sb**2 / (sa**2 - sb**2)
            e0 = float((sol.x - ref).pow(2).mean().sqrt())
            e1 = float((ext - ref).pow(2).mean().sqrt())
            print(f"{pname:6s} {solver:16s} nfe {nfe:4d} sig_a {sa:.3g} sig_b {sb:.3g} jump {e0:.2e} "
                  f"extrap {e1:.2e} ratio {e1 / e0:.3f}")
