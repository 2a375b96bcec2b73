"""Measurements quoted in docs/multistep.md and docs/adaptive.md (float64, closed-form flows).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/multistep_adaptive.py > benchmarks/sections/multistep_adaptive.md

Prints Markdown tables: empirical orders of the multistep solvers, max differences to diffusers'
schedulers (float64 tables), adaptive error / NFE against the tolerance, and whole-batch against
per-sample error control.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import torch

import flowode
from flowode.analytic import Gaussian, gmm_ring, reference_solve

F64 = torch.float64
GAUSS = Gaussian([0.5, -1.0, 2.0], [0.5, 1.0, 2.0])
EDM, VP, LVP = flowode.EDMSchedule(), flowode.DiscreteVPSchedule.linear(), flowode.LinearVPSchedule()


def x_(n=4, scale=3.0, seed=0):
    return torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=F64) * scale


def geo(n):
    return torch.tensor(np.geomspace(10.0, 0.1, n + 1), dtype=F64)


def uni(n):
    return torch.linspace(2.0, 0.5, n + 1, dtype=F64)


def orders():
    print("### Empirical orders (Gaussian flow, float64, max-abs error; order = log2 of successive error ratios)\n")
    print("| solver | options | schedule | grid | errors at N = 32, 64, 128, 256 | orders |")
    print("|---|---|---|---|---|---|")
    cases = [
        ("plms", {}, EDM, uni), ("plms", {"skip_prk_steps": True}, EDM, uni), ("ipndm", {}, EDM, uni),
        ("plms", {}, EDM, geo), ("ipndm", {}, EDM, geo),
        ("adams_bashforth", {"order": 2, "warmup": "rk4"}, EDM, geo),
        ("adams_bashforth", {"order": 3, "warmup": "rk4"}, EDM, geo),
        ("adams_bashforth", {"order": 4, "warmup": "rk4"}, EDM, geo),
        ("adams_bashforth", {"order": 4}, EDM, geo),
        ("adams_bashforth", {"order": 3, "warmup": "rk4", "coordinates": "lambda"}, LVP, geo),
        ("deis", {"order": 1}, VP, geo),
        ("deis", {"order": 2, "warmup": "rk4", "lower_order_final": False}, VP, geo),
        ("deis", {"order": 3, "warmup": "rk4", "lower_order_final": False}, VP, geo),
        ("deis", {"order": 3, "lower_order_final": False}, VP, geo),
        ("deis", {"order": 3, "warmup": "rk4", "lower_order_final": False, "basis": "rho"}, VP, geo),
        ("deis", {"order": 3, "warmup": "rk4", "lower_order_final": False, "basis": "log_rho"}, VP, geo),
    ]
    for solver, opt, sched, grid in cases:
        m = GAUSS.model(sched)
        x = x_()
        errs = []
        for n in (32, 64, 128, 256):
            g = grid(n)
            ref = GAUSS.flow(x, float(g[0]), float(g[-1]), sched)
            errs.append(float((flowode.integrate(m, x, g, solver=solver, **opt).x - ref).abs().max()))
        ords = [math.log2(errs[i] / errs[i + 1]) for i in range(3)]
        gname = "uniform sigma 2->0.5" if grid is uni else "geometric 10->0.1"
        print(f"| {solver} | {opt or ''} | {type(sched).__name__} | {gname} | "
              f"{', '.join(f'{e:.2e}' for e in errs)} | {', '.join(f'{o:.2f}' for o in ords)} |")
    print()


def oracles():
    import diffusers

    print("### Oracle differences (max |flowode - diffusers|, float64 tables)\n")
    print("| diffusers scheduler | setting | steps | max abs diff | NFE flowode / diffusers |")
    print("|---|---|---|---|---|")

    def eps(x, s):
        return GAUSS.eps(x, s, 1.0 / math.sqrt(1.0 + s * s))

    for skip in (False, True):
        for steps in (10, 25, 50):
            ds = diffusers.PNDMScheduler(beta_schedule="linear", skip_prk_steps=skip, set_alpha_to_one=True,
                                         steps_offset=1, timestep_spacing="leading")
            ds.set_timesteps(steps)
            ds.alphas_cumprod = torch.exp(VP.log_alphas_cumprod)
            ds.final_alpha_cumprod = torch.tensor(1.0, dtype=F64)
            x = x_(scale=1.0)
            y = x.clone()
            for t in ds.timesteps.tolist():
                y = ds.step(eps(y, float(VP.sigma(float(t)))), t, y).prev_sample
            sol = flowode.integrate(GAUSS.model(VP), x, flowode.sigma_grid(VP, steps, "leading", offset=1),
                                    solver="plms", skip_prk_steps=skip, half_step="t")
            print(f"| PNDMScheduler | skip_prk_steps={skip} | {steps} | {float((sol.x - y).abs().max()):.1e} | "
                  f"{sol.nfe} / {len(ds.timesteps)} |")
    for order in (1, 2, 3):
        for steps in (8, 20):
            ds = diffusers.DEISMultistepScheduler(beta_schedule="linear", solver_order=order)
            ds.set_timesteps(steps)
            grid = flowode.sigmas_from_timesteps(VP, ds.timesteps.numpy(), final="min")
            ds.sigmas = grid.clone()
            x = x_(scale=1.0)
            y = x.clone()
            for i, t in enumerate(ds.timesteps):
                y = ds.step(eps(y, float(grid[i])), t, y).prev_sample
            sol = flowode.integrate(GAUSS.model(VP), x, grid, solver="deis", order=order, basis="log_rho")
            print(f"| DEISMultistepScheduler | solver_order={order} (basis='log_rho') | {steps} | "
                  f"{float((sol.x - y).abs().max()):.1e} | {sol.nfe} / {steps} |")
    sys.path.insert(0, "tests")
    from test_multistep import _VModel  # noqa: E402

    gauss0 = Gaussian([0.0, 0.0, 0.0], [0.5, 1.0, 2.0])
    zs = flowode.DiscreteVPSchedule.linear(zero_terminal_snr=True)
    for steps in (8, 12):
        ds = diffusers.IPNDMScheduler()
        ds.set_timesteps(steps)
        s = torch.cat([torch.linspace(1, 0, steps + 1, dtype=F64)[:-1], torch.zeros(1, dtype=F64)])
        ds.betas = torch.sin(s * math.pi / 2) ** 2
        ds.alphas = (1.0 - ds.betas**2) ** 0.5
        grid = torch.where(ds.alphas > 0, ds.betas / ds.alphas, torch.full_like(s, math.inf))
        model = _VModel(gauss0, zs)
        x = x_(scale=1.0)
        y = x.clone()
        for i, t in enumerate(ds.timesteps):
            y = ds.step(model.network(y, float(grid[i])), t, y).prev_sample
        sol = flowode.integrate(model, x, grid, solver="ipndm", order=4, coefficients="fixed")
        print(f"| IPNDMScheduler | v-prediction, zero-mean data, grid inf..0 | {steps} | "
              f"{float((sol.x - y).abs().max()):.1e} | {sol.nfe} / {steps} |")
    print()


def adaptive():
    print("### Adaptive solvers: error / tolerance and NFE (Gaussian flow, LinearVPSchedule, sigma 10 -> 0.1, "
          "16 samples, rtol = atol = tol)\n")
    tols = [1e-3, 1e-4, 1e-5, 1e-6, 1e-7]
    print("| solver | coordinates | " + " | ".join(f"tol {t:.0e}: err/tol, NFE (acc/rej)" for t in tols) + " |")
    print("|---|---|" + "---|" * len(tols))
    m = GAUSS.model(LVP)
    x = x_(16, scale=1.0)
    grid = torch.tensor([10.0, 0.1], dtype=F64)
    ref = GAUSS.flow(x, 10.0, 0.1, LVP)
    for solver in ["dopri5", "dp45", "bosh3", "bs23", "adaptive_heun", "dopri8", "scipy_rk45", "scipy_dop853",
                   "scipy_lsoda", "bs23_per_sample"]:
        for coords in ("sigma", "lambda", "t"):
            if solver == "bs23_per_sample" and coords != "sigma":
                continue
            cells = []
            for tol in tols:
                if solver == "adaptive_heun" and tol < 1e-5:
                    cells.append("-")
                    continue
                sol = flowode.integrate(m, x, grid, solver=solver, rtol=tol, atol=tol, coordinates=coords)
                e = float((sol.x - ref).abs().max())
                st = sol.stats
                cells.append(f"{e / tol:.2f}, {sol.nfe} ({st['accepted']}/{st['rejected']})")
            print(f"| {solver} | {coords} | " + " | ".join(cells) + " |")
    print()
    print("### Whole-batch (RMS over the batch) vs per-sample error control (8-mode ring mixture, std 0.05, "
          "LinearVPSchedule, sigma 10 -> 0.02, 64 samples, reference: scipy DOP853 rtol 1e-10; every solver in "
          "sigma coordinates)\n")
    print("| tol | solver | NFE | max err/tol | median err/tol |")
    print("|---|---|---|---|---|")
    g = gmm_ring(8, 2.0, 0.05)
    mg = g.model(LVP)
    xg = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    grid = torch.tensor([10.0, 0.02], dtype=F64)
    ref = reference_solve(mg, xg, 10.0, 0.02)
    for tol in (1e-3, 1e-4, 1e-5):
        for solver in ("bosh3", "bs23", "bs23_per_sample", "dopri5", "dp45", "scipy_rk45"):
            sol = flowode.integrate(mg, xg, grid, solver=solver, rtol=tol, atol=tol, coordinates="sigma")
            e = (sol.x - ref).abs().flatten(1).max(1).values / tol
            print(f"| {tol:.0e} | {solver} | {sol.nfe} | {float(e.max()):.2f} | {float(e.median()):.2f} |")
        alone, nfes = [], []
        for b in range(0, 64, 4):
            sol = flowode.integrate(mg, xg[b:b + 1], grid, solver="bosh3", rtol=tol, atol=tol)
            alone.append(float((sol.x - ref[b:b + 1]).abs().max()) / tol)
            nfes.append(sol.nfe)
        print(f"| {tol:.0e} | bosh3, one sample at a time (16 of them) | mean {np.mean(nfes):.0f}, max {max(nfes)} | "
              f"{max(alone):.2f} | {float(np.median(alone)):.2f} |")
    print()


if __name__ == "__main__":
    torch.set_num_threads(1)
    which = sys.argv[1:] or ["orders", "oracles", "adaptive"]
    print("```\nOMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/multistep_adaptive.py " + " ".join(which)
          + " > benchmarks/sections/multistep_adaptive.md\n```\n")
    for name in which:
        {"orders": orders, "oracles": oracles, "adaptive": adaptive}[name]()
