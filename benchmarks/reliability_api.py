"""Costs of the Python API's reliability fixes (issue 10).

1. Choosing the step count for an NFE budget (``flowode.grids.steps_for_nfe``) with a continuous
   spacing. The search now takes O(log nfe) dry runs of the driver (each O(steps)); before, it
   walked down one step count at a time from a guess, so its time grew quadratically with the
   budget. The "before" column reruns that walk, written out below, at the budgets where it
   finishes in seconds.
2. The copy of the start state that ``integrate`` makes so that a network writing into its input
   never reaches the caller's tensor: the time of ``x.clone()`` against one 10-step DDIM sample.

Usage:  OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/reliability_api.py [--markdown]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import flowode
from flowode.grids.spec import steps_for_nfe
from flowode.nets import MLP, UNet
from flowode.solvers import make

HERE = Path(__file__).resolve().parent
COMMAND = "OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/reliability_api.py --markdown"


def walk_before(solver, nfe, grid_for, schedule):
    """The search before issue 10: a guess from the cost of the first count, then one count at a time."""
    first = solver.nfe(grid_for(1).tolist(), schedule)
    guess = max(1, min(nfe, int(nfe / max(1.0, first))))
    while guess > 1 and solver.nfe(grid_for(guess).tolist(), schedule) > nfe:
        guess -= 1
    while solver.nfe(grid_for(guess + 1).tolist(), schedule) <= nfe:
        guess += 1
    return guess


def budget_rows():
    sched = flowode.LinearVPSchedule()

    def grid_for(n):
        return flowode.sigma_grid(sched, n, "logsnr")

    rows = []
    for name in ("heun", "dpm_solver++_2m"):
        for nfe in (300, 1000, 10_000, 100_000):
            slv = make(name)
            t0 = time.perf_counter()
            steps = steps_for_nfe(slv, nfe, grid_for, sched)
            now = time.perf_counter() - t0
            before = "-"
            if nfe <= 1000:
                t0 = time.perf_counter()
                assert walk_before(slv, nfe, grid_for, sched) == steps
                before = f"{time.perf_counter() - t0:.2f}"
            rows.append((name, nfe, steps, f"{now:.2f}", before))
    return rows


def clone_rows():
    torch.manual_seed(0)
    sched = flowode.DiscreteVPSchedule.linear()
    rows = []
    for label, net, shape in (("MLP (flowode.nets), 2-D", MLP(dim=2), (4096, 2)),
                              ("UNet (flowode.nets), 1x8x8", UNet(in_channels=1), (256, 1, 8, 8)),
                              ("eps = 0 (free model), 3x64x64", lambda x, t: x * 0, (64, 3, 64, 64))):
        model = flowode.EpsilonModel(net, sched)
        x = torch.randn(shape)
        flowode.sample(model, x, steps=10)
        t0 = time.perf_counter()
        for _ in range(3):
            flowode.sample(model, x, steps=10)
        solve = (time.perf_counter() - t0) / 3
        t0 = time.perf_counter()
        for _ in range(200):
            x.clone()
        clone = (time.perf_counter() - t0) / 200
        rows.append((label, str(shape), f"{solve * 1e3:.1f}", f"{clone * 1e3:.4f}", f"{100 * clone / solve:.3f}"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--markdown", action="store_true", help="write benchmarks/sections/reliability_api.md")
    args = ap.parse_args()
    budget = budget_rows()
    clones = clone_rows()
    lines = [
        "## Step count for an NFE budget",
        "",
        "`flowode.sample(model, x, nfe=N, solver=...)` with a continuous spacing (`LinearVPSchedule`, `logsnr`): "
        "seconds to choose the step count (wall clock, one thread, 2-core CPU build machine, torch "
        f"{torch.__version__}). \"before\" reruns the old one-count-at-a-time walk (same answer, asserted); it "
        "took 425 s at nfe = 3000 with heun, so it is run only up to 1000.",
        "",
        "```", COMMAND, "```", "",
        "| solver | nfe | steps | seconds | before (s) |",
        "|---|---|---|---|---|",
        *[f"| `{r[0]}` | {r[1]} | {r[2]} | {r[3]} | {r[4]} |" for r in budget],
        "",
        "## The copy of the start state",
        "",
        "`integrate` solves on `x.clone()` so that a network writing into its input cannot change the caller's "
        "tensor (the write itself is caught through torch's version counter, at no cost). Mean time of one "
        "copy against one 10-step DDIM sample of the same batch:",
        "",
        "```", COMMAND, "```", "",
        "| network | batch | sample (ms) | x.clone() (ms) | share (%) |",
        "|---|---|---|---|---|",
        *[f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} |" for r in clones],
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        (HERE / "sections" / "reliability_api.md").write_text(text)


if __name__ == "__main__":
    main()
