"""Measured strong and weak orders of the stochastic samplers, and the cost of keyed Brownian noise.

Usage: PYTHONPATH=. python benchmarks/stochastic_orders.py > benchmarks/sections/stochastic.md

Problems: a 4-D Gaussian (mean [0.5, -1, 2, 0], std [0.2, 0.7, 1.5, 3]) and the 8-component ring
mixture (``flowode.analytic.gmm_ring``), exact eps, ``LinearVPSchedule``, float64, geometric grids
from sigma 10 to 0.1 (no boundary step), start states drawn from the exact marginal at sigma 10.

* strong: RMS over 32 samples of the distance to the same solver at 1024 steps on the same Brownian
  path (``seed=1``), N = 32, 64, 128 (nested grids); slope of log error against log N. On the ring,
  the median over 128 samples (a few samples switch mode; their count is reported).
* weak (Gaussian only): the exact mean and variance of the output (``flowode.sde_law.gaussian_law``,
  no Monte Carlo) against the true marginal at sigma 0.1, max over coordinates of
  |mean error| + |variance error|, N = 32, 64, 128, 256.
* cost: wall time of one 1000-step ``ddpm`` solve of 64 two-dimensional samples with ``seed=``
  (keyed Brownian path) and with a ``torch.Generator``; and one query of a torchsde ``BrownianTree``
  (one tree per sample, as k-diffusion's ``BrownianTreeNoiseSampler`` does for a list of seeds).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

import flowode
from flowode.noise import keyed_normal
from flowode.sde_law import gaussian_law
from flowode.solvers import SOLVERS

torch.set_num_threads(1)
SCHED = flowode.LinearVPSchedule()
MU = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
STD = torch.tensor([0.2, 0.7, 1.5, 3.0], dtype=torch.float64)
S0, S1 = 10.0, 0.1
CASES = [
    ("ddpm", {}), ("ddpm", {"variance": "large"}), ("ddim", {"eta": 0.5}), ("ddim", {"eta": 1.0}),
    ("euler_maruyama", {}), ("euler_ancestral", {}), ("dpm_solver++_2m_sde", {}),
    ("dpm_solver++_2m_sde", {"solver_type": "heun"}), ("dpm_solver++_sde", {}),
    ("edm_stochastic", {"s_churn": 1.0, "s_tmin": 0.0, "s_tmax": 1e9, "s_noise": 1.0}),
]


def grid(n: int) -> torch.Tensor:
    return torch.exp(torch.linspace(math.log(S0), math.log(S1), n + 1, dtype=torch.float64))


def slope(ns: list[int], errs: list[float]) -> float:
    return float(-np.polyfit(np.log(ns), np.log(errs), 1)[0])


def strong(model, x, name, opts, median: bool = False) -> tuple[float, list[float], list[int]]:
    """(order, errors, samples whose error exceeds 0.5: a different mode of the mixture)."""
    ref = flowode.integrate(model, x, grid(1024), name, seed=1, **opts).x
    ns = [32, 64, 128]
    errs, far = [], []
    for n in ns:
        d = (flowode.integrate(model, x, grid(n), name, seed=1, **opts).x - ref).pow(2).sum(1).sqrt()
        errs.append(float(d.median() if median else d.pow(2).mean().sqrt()))
        far.append(int((d > 0.5).sum()))
    return slope(ns, errs), errs, far


def weak(model, name, opts) -> tuple[float, list[float]]:
    a0, a1 = float(SCHED.alpha_from_sigma(S0)), float(SCHED.alpha_from_sigma(S1))
    ns = [32, 64, 128, 256]
    errs = []
    for n in ns:
        m, v = gaussian_law(model, a0 * MU, a0**2 * (STD**2 + S0**2), grid(n), name, **opts)
        errs.append(float((m - a1 * MU).abs().max() + (v - a1**2 * (STD**2 + S1**2)).abs().max()))
    return slope(ns, errs), errs


def label(name: str, opts: dict) -> str:
    return f"`{name}`" + (f" `{opts}`" if opts else "")


def fmt(v) -> str:
    return "n/a" if v is None else f"{v:g}"


def main() -> None:
    a0 = float(SCHED.alpha_from_sigma(S0))
    gauss = flowode.Gaussian(MU, STD).model(SCHED)
    ring = flowode.analytic.gmm_ring()
    ring_model = ring.model(SCHED)
    xg = keyed_normal((32, 4), 0, dtype=torch.float64) * (a0 * (STD**2 + S0**2).sqrt()) + a0 * MU
    xr = keyed_normal((128, 2), 0, dtype=torch.float64) * a0 * math.sqrt(1 + S0**2)  # ~ the marginal at 10

    print("Command: `PYTHONPATH=. python benchmarks/stochastic_orders.py > benchmarks/sections/stochastic.md`\n")
    print("Gaussian data (4-D) and the ring mixture, exact eps, `LinearVPSchedule`, float64, geometric grids "
          "sigma 10 -> 0.1. Strong: RMS distance (32 samples) to the same solver at 1024 steps on the same "
          "Brownian path, N = 32/64/128; on the ring the median distance over 128 samples, because a few "
          "samples end in another mode than the reference (in brackets: how many, error > 0.5, at N = 32/64/128), "
          "which makes an RMS meaningless there. Weak: exact mean and variance of the output "
          "(`flowode.sde_law.gaussian_law`) vs the true marginal, N = 32/64/128/256. Orders are "
          "least-squares slopes of log error against log N.\n")
    print("| solver | claimed strong | strong, Gaussian | strong, ring (median; mode switches) "
          "| error at N=32 (Gaussian) | claimed weak | weak, Gaussian | weak error at N=32 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, opts in CASES:
        cls = SOLVERS[name]
        w, werrs = weak(gauss, name, opts)
        if cls.strong_order is None:
            sg = sr = "n/a (no fixed path)"
            e32 = "n/a"
        else:
            p, errs, _ = strong(gauss, xg, name, opts)
            pr, _, far = strong(ring_model, xr, name, opts, median=True)
            sg, sr, e32 = f"{p:.2f}", f"{pr:.2f} ({'/'.join(map(str, far))})", f"{errs[0]:.2e}"
        print(f"| {label(name, opts)} | {fmt(cls.strong_order)} | {sg} | {sr} | {e32} | {fmt(cls.weak_order)} "
              f"| {w:.2f} | {werrs[0]:.2e} |")

    print("\nCost of the noise (2-D ring model, 64 samples, 1000 `ddpm` steps on the trailing grid; one run "
          "each, wall time on a shared 2-core machine):\n")
    sched = flowode.DiscreteVPSchedule.linear()
    model = ring.model(sched)
    x = model.prior_sample((64, 2), seed=0, dtype=torch.float64)
    rows = []
    gen = torch.Generator().manual_seed(0)
    for what, kw in (("`seed=0` (keyed, one Brownian path per sample)", {"seed": 0}),
                     ("`generator=torch.Generator()` (batch-dependent)", {"generator": gen})):
        t0 = time.perf_counter()
        flowode.sample(model, x, steps=1000, solver="ddpm", **kw)
        rows.append((what, time.perf_counter() - t0))
    same = torch.equal(flowode.sample(model, x[:7], steps=1000, solver="ddpm", seed=0).x,
                       flowode.sample(model, x, steps=1000, solver="ddpm", seed=0).x[:7])
    print("| noise | wall time (s) |")
    print("|---|---|")
    for what, t in rows:
        print(f"| {what} | {t:.2f} |")
    try:
        import torchsde

        tree = torchsde.BrownianTree(-24.0, torch.zeros(2, dtype=torch.float64), 24.0, entropy=0, tol=1e-7)
        levels = [math.log(v) for v in grid(200).tolist()]
        t0 = time.perf_counter()
        for a, b in zip(levels[:-1], levels[1:]):
            tree(b, a)
        per = (time.perf_counter() - t0) / (len(levels) - 1)
        print(f"| torchsde `BrownianTree` per sample (tol 1e-7 on the same tau range), one query | {per * 1e3:.2f} ms "
              f"-> {per * 64 * 1000:.0f} s for 64 samples x 1000 steps |")
    except ImportError:  # pragma: no cover
        print("| torchsde | not installed |")
    print(f"\nFirst 7 samples of the keyed 1000-step run bitwise the same at batch 7 and 64: {same}.")


if __name__ == "__main__":
    main()
