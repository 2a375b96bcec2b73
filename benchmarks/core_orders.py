"""Measured convergence orders of the fixed-step Runge-Kutta solvers and the DDIM identities.

Usage: ``python benchmarks/core_orders.py`` (about 30 s on one core). Prints Markdown tables:

1. observed order (log-log slope of max error vs steps) of every registered Runge-Kutta solver in
   each coordinate system, on the closed-form flow of an anisotropic Gaussian
   (mean (0.5, -1, 2, 0), std (0.2, 0.7, 1.5, 3)), LinearVPSchedule, geometric grid sigma 10 -> 0.5,
   float64 -- the same set-up as tests/test_solvers_fixed.py;
2. max |DDIM - Euler(sigma)| and max |flowode DDIM - diffusers DDIMScheduler| (float64 alphas_cumprod).
"""

from __future__ import annotations

import math

import numpy as np
import torch

import flowode
from flowode.analytic import Gaussian, gmm_random
from flowode.solvers import SOLVERS, RungeKutta

F64 = torch.float64


def orders() -> None:
    sched = flowode.LinearVPSchedule()
    g = Gaussian([0.5, -1.0, 2.0, 0.0], [0.2, 0.7, 1.5, 3.0])
    model = g.model(sched)
    x = torch.randn(8, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    exact = g.flow(x, 10.0, 0.5, sched)
    print("| solver | tableau order | steps | sigma | lambda | t |")
    print("|---|---|---|---|---|---|")
    for name in sorted(n for n, c in SOLVERS.items() if issubclass(c, RungeKutta)):
        cls = SOLVERS[name]
        steps = [8, 16, 32, 64] if cls.order <= 2 else [32, 64, 128, 256]
        row = []
        for coords in ("sigma", "lambda", "t"):
            errs = []
            for n in steps:
                grid = torch.exp(torch.linspace(math.log(10.0), math.log(0.5), n + 1, dtype=F64))
                errs.append(float((flowode.integrate(model, x, grid, solver=name, coordinates=coords).x - exact)
                                  .abs().max()))
            row.append(f"{-np.polyfit(np.log(steps), np.log(errs), 1)[0]:.3f}")
        print(f"| {name} | {cls.order} | {steps[0]}-{steps[-1]} | " + " | ".join(row) + " |")


def ddim_identities() -> None:
    gm = gmm_random(dim=16, k=4, std=0.3, seed=0)
    x = torch.randn(32, 16, dtype=F64, generator=torch.Generator().manual_seed(1))
    worst = 0.0
    for sched, spacing in [(flowode.DiscreteVPSchedule.linear(), "trailing"),
                           (flowode.DiscreteVPSchedule.linear(), "leading"),
                           (flowode.LinearVPSchedule(), "logsnr")]:
        model = gm.model(sched)
        sig = flowode.sigma_grid(sched, 25, spacing)
        a = flowode.integrate(model, x, sig, solver="ddim").x
        b = flowode.integrate(model, x, sig, solver="euler", coordinates="sigma").x
        worst = max(worst, float((a - b).abs().max()))
    print(f"\nmax |ddim - euler(sigma)| over 3 schedule/grid pairs, 25 steps, float64: {worst:.3e}")
    try:
        from diffusers import DDIMScheduler
    except ImportError:  # pragma: no cover
        print("diffusers not installed: oracle skipped")
        return
    sched = flowode.DiscreteVPSchedule.linear()
    model = gm.model(sched)
    worst = 0.0
    for spacing in ("leading", "trailing"):
        for one in (True, False):
            for steps in (10, 50):
                ds = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                                   set_alpha_to_one=one, timestep_spacing=spacing)
                ds.alphas_cumprod = sched.alphas_cumprod_knots.clone()
                ds.final_alpha_cumprod = torch.tensor(1.0, dtype=F64) if one else sched.alphas_cumprod_knots[0]
                ds.set_timesteps(steps)
                y = x.clone()
                for t in ds.timesteps:
                    y = ds.step(model.network(y, float(sched.sigma(float(t)))), t, y, eta=0.0).prev_sample
                grid = flowode.sigmas_from_timesteps(sched, ds.timesteps.numpy(), final="zero" if one else "min")
                worst = max(worst, float((flowode.integrate(model, x, grid, solver="ddim").x - y).abs().max()))
    print(f"max |flowode ddim - diffusers DDIMScheduler| (leading/trailing x set_alpha_to_one x 10/50 steps): "
          f"{worst:.3e}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    orders()
    ddim_identities()
