"""The dtype policy measured: a bfloat16 network against the float32 one, for every deterministic solver.

Usage: PYTHONPATH=. python benchmarks/dtype.py > benchmarks/sections/dtype.md

Model: the shipped ``ring8`` MLP (eps-prediction, DDPM linear schedule), float32 weights, and its
copy ``model.cast_network(torch.bfloat16)`` (weights and input in bfloat16, output cast back; the
solver state, the conversions and the levels in float32). The same 256 keyed start samples
(seed 0); fixed-step solvers at NFE 20 on their default grid, adaptive ones at rtol = atol = 1e-3.
"rel. RMS" is ``rms(x_bf16 - x_f32) / rms(x_f32)``; "solver error" is ``rms(x_f32 - x_ref) /
rms(x_f32)`` with ``x_ref`` the float64 network solved by dopri5 at rtol = atol = 1e-9, the scale
the bfloat16 change is to be compared with.
"""

from __future__ import annotations

import time

import torch

import flowode
from flowode.solvers import SOLVERS

torch.set_num_threads(1)
SAMPLES, NFE, TOL = 256, 20, 1e-3


def rms(t: torch.Tensor) -> float:
    return float(t.double().pow(2).mean().sqrt())


def solve(model: flowode.EpsilonModel, x: torch.Tensor, name: str) -> flowode.Solution:
    if SOLVERS[name].adaptive:
        return flowode.sample(model, x, 1, solver=name, rtol=TOL, atol=TOL)
    return flowode.sample(model, x, nfe=NFE, solver=name)


def main() -> None:
    t0 = time.perf_counter()
    f32 = flowode.load_pretrained("ring8")
    bf16 = f32.cast_network(torch.bfloat16)
    f64 = f32.cast_network(torch.float64)
    x = f32.prior_sample((SAMPLES, 2), seed=0)
    ref = flowode.sample(f64, x.double(), 1, solver="dopri5", rtol=1e-9, atol=1e-9).x.float()
    names = [n for n, c in sorted(SOLVERS.items()) if not c.stochastic]
    rows, worst = [], 0.0
    for name in names:
        a, b = solve(f32, x, name), solve(bf16, x, name)
        scale = rms(a.x)
        rel = rms(b.x - a.x) / scale
        worst = max(worst, rel)
        budget = f"rtol {TOL:g}" if SOLVERS[name].adaptive else f"NFE {NFE}"
        rows.append(f"| {name} | {budget} | {a.nfe} / {b.nfe} | {rel:.2e} | {float((b.x - a.x).abs().max()):.3f} | "
                    f"{rms(a.x - ref) / scale:.2e} | {rms(b.x - ref) / scale:.2e} |")
    print("# bfloat16 network against float32 (the dtype policy)\n")
    print("Command: `PYTHONPATH=. python benchmarks/dtype.py > benchmarks/sections/dtype.md`\n")
    print(f"ring8 MLP, {SAMPLES} samples (seed 0), CPU, torch {torch.__version__}. The network runs in bfloat16 "
          "(`EpsilonModel.cast_network(torch.bfloat16)`); the state, conversions and levels stay float32. "
          "rel. RMS = rms(x_bf16 - x_f32) / rms(x_f32); max = max |x_bf16 - x_f32| (data units, samples of "
          f"rms {rms(ref):.2f}); solver error = rms(x - x_ref) / rms(x_f32) against the float64 network solved by "
          "dopri5 at rtol = atol = 1e-9.\n")
    print("| solver | budget | NFE f32 / bf16 | rel. RMS bf16 vs f32 | max abs | solver error f32 | "
          "solver error bf16 |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nWorst rel. RMS over the {len(names)} deterministic solvers: {worst:.2e} (documented tolerance in "
          f"docs/scale-out.md). Run time {time.perf_counter() - t0:.0f} s.")


if __name__ == "__main__":
    main()
