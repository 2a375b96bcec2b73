"""The last step without the floor (issue 15, item 2): every ``last_step`` against the jump.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/last_step_extrapolation.py           # run + section
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/last_step_extrapolation.py --table-only

Every deterministic fixed-step solver, on its default grid (``flowode.sample(..., nfe=N)``, the grid
a user gets), at NFE 5 .. 160, on the accuracy benchmark's problems (``gaussian``: 8-D, closed-form
flow; ``gmm2d``: the 8-Gaussian ring; ``gmm64``: 8 random Gaussians in 64-D) and the audit's 64-D
10-component mixture (``gmm64_k10`` = ``gmm_random(64, k=10, std=0.3, seed=3)``), DDPM linear
schedule, float64, 256 samples from ``N(0, I)`` at ``sigma_max`` (seed 5). Error: RMSE against the
exact flow from the same start to ``sigma = 0`` (closed form for the Gaussian, ``reference_solve``
at rtol = atol = 1e-10 for the mixtures). Each solve is run with ``last_step="jump"`` (the last step
as before: the denoising jump, or the solver's own update where it takes the step to 0 itself),
``"extrapolate"`` (sigma^2 Richardson of the last two x0 predictions) and ``"euler_sigma2"`` (Euler
in sigma^2 from the last level); both are free (same NFE). Also measured: ``exact from x_b``, the
exact flow from the solver's own state at the last level ``sigma_b = sigma_min`` to 0, i.e. the
solver's error without any last-step error.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import flowode  # noqa: E402
from flowode.analytic import gmm_random, reference_solve  # noqa: E402
from flowode.bench import get_problem  # noqa: E402

SOLVERS = ("ddim", "euler", "heun", "midpoint", "ralston", "rk4", "dpm_solver_2", "dpm_solver_3", "dpm_solver++_2s",
           "dpm_solver++_2m", "dpm_solver++_3m", "dpm_solver_singlestep", "unipc", "deis", "ipndm", "plms",
           "adams_bashforth")
NFES = (5, 10, 20, 40, 80, 160)
MODES = ("jump", "extrapolate", "euler_sigma2")
PROBLEMS = ("gaussian", "gmm2d", "gmm64", "gmm64_k10")
OUT = os.path.join(HERE, "out", "last_step.jsonl")
SECTION = os.path.join(HERE, "sections", "last_step.md")
COMMAND = "OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/last_step_extrapolation.py"


def _problem(name: str) -> tuple[Any, Any, int]:
    """(model, exact map (x, sigma_from, sigma_to) -> x or None, dimension)."""
    if name == "gmm64_k10":
        return gmm_random(dim=64, k=10, std=0.3, seed=3).model(flowode.DiscreteVPSchedule.linear()), None, 64
    prob = get_problem(name)
    return prob.model, prob.exact, prob.dim


def exact_flow(model: Any, exact: Any, x: torch.Tensor, s0: float, s1: float) -> torch.Tensor:
    return exact(x, s0, s1) if exact is not None else reference_solve(model, x, s0, s1, rtol=1e-10, atol=1e-10)


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean().sqrt())


def run(samples: int) -> list[dict[str, Any]]:
    rows = []
    for pname in PROBLEMS:
        model, exact, dim = _problem(pname)
        x = torch.randn(samples, dim, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        refs: dict[float, torch.Tensor] = {}
        t0 = time.perf_counter()
        for solver in SOLVERS:
            for nfe in NFES:
                row: dict[str, Any] = {"problem": pname, "solver": solver, "nfe_budget": nfe}
                try:
                    sols = {m: flowode.sample(model, x, nfe=nfe, solver=solver, last_step=m, save_at="steps")
                            for m in MODES}
                except (ValueError, RuntimeError, TypeError) as exc:
                    row["error"] = f"{type(exc).__name__}: {exc}"
                    rows.append(row)
                    continue
                sol = sols["jump"]
                s0, grid = float(sol.sigmas[0]), [float(v) for v in sol.sigmas]
                if s0 not in refs:
                    refs[s0] = exact_flow(model, exact, x, s0, 0.0)
                ref = refs[s0]
                x_b, s_b = sol.trajectory[-2], grid[-2]
                from_b = exact_flow(model, exact, x_b, s_b, 0.0)
                row.update({"nfe": sol.nfe, "steps": sol.steps, "sigma_a": grid[-3] if len(grid) > 2 else None,
                            "sigma_b": s_b, "exact_from_b": rmse(from_b, ref),
                            "jump_kind": sol.stats.get("last_step")})
                for m, s in sols.items():
                    assert s.nfe == sol.nfe, (solver, m)
                    row[m] = rmse(s.x, ref)
                rows.append(row)
        print(f"{pname}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return rows


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.2e}"


def section(rows: list[dict[str, Any]], samples: int, seconds: float) -> str:
    out = [
        "# The last step without the floor: `last_step` against the jump",
        "",
        "Command (writes this section; "
        f"{seconds:.0f} s on the 2-core build machine):",
        "",
        f"    {COMMAND}",
        "",
        __doc__.split("\n\n", 2)[2].strip().replace("\n", " ").replace("  ", " "),
        "",
        "Each cell: `extrapolate / jump` and `euler_sigma2 / jump` RMSE ratios (below 1: the floor-free step "
        "is better), then the jump's RMSE. `native` marks solvers whose own update takes the step to 0 "
        "(that update is the `jump` row). A ratio above 1 is never the floor-free step adding error: its error "
        "equals the solver's own error (`exact from x_b`, the exact flow from the solver's state at sigma_min) "
        "to 3 digits in every cell; the jump's floor happened to cancel part of the solver's error there.",
        "",
    ]
    worst: dict[str, float] = {}
    for pname in PROBLEMS:
        out += [f"## {pname}", "", "| solver | " + " | ".join(f"NFE {n}" for n in NFES) + " |",
                "|---|" + "---|" * len(NFES)]
        for solver in SOLVERS:
            cells = []
            kind = ""
            for n in NFES:
                r = next((r for r in rows if r["problem"] == pname and r["solver"] == solver and r["nfe_budget"] == n),
                         None)
                if r is None or r.get("error"):
                    cells.append("fails")
                    continue
                kind = " (native)" if r.get("jump_kind") == "native" and solver != "ddim" else ""
                e, h, j = r["extrapolate"] / r["jump"], r["euler_sigma2"] / r["jump"], r["jump"]
                worst[solver] = max(worst.get(solver, 0.0), e, h)
                cells.append(f"{e:.3f} / {h:.3f} ({_fmt(j)})")
            out.append(f"| {solver}{kind} | " + " | ".join(cells) + " |")
        out.append("")
    dev = max(abs(r["euler_sigma2"] / r["exact_from_b"] - 1) for r in rows if not r.get("error"))
    dev_e = max(abs(r["extrapolate"] / r["exact_from_b"] - 1) for r in rows if not r.get("error"))
    out += [f"Largest relative difference from `exact from x_b`: euler_sigma2 {dev:.1e}, extrapolate {dev_e:.1e} "
            f"(over all {sum(not r.get('error') for r in rows)} cells).", ""]
    out += ["Worst ratio per solver over all problems and NFE (max of the two floor-free steps): " +
            ", ".join(f"{k} {v:.3f}" for k, v in sorted(worst.items(), key=lambda kv: kv[1])), ""]
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--table-only", action="store_true", help="rewrite the section from benchmarks/out/last_step.jsonl")
    args = p.parse_args()
    t0 = time.perf_counter()
    if args.table_only:
        with open(OUT) as f:
            lines = [json.loads(line) for line in f]
        meta, rows = lines[0], lines[1:]
    else:
        rows = run(args.samples)
        meta = {"samples": args.samples, "seconds": time.perf_counter() - t0}
        os.makedirs(os.path.dirname(OUT), exist_ok=True)
        with open(OUT, "w") as f:
            for r in [meta, *rows]:
                f.write(json.dumps(r) + "\n")
    with open(SECTION, "w") as f:
        f.write(section(rows, meta["samples"], meta["seconds"]))
    print(f"wrote {SECTION}")
    bad = [r for r in rows if r.get("error")]
    for r in bad:
        print(f"failed: {r['problem']} {r['solver']} NFE {r['nfe_budget']}: {r['error']}", file=sys.stderr)
    if not math.isfinite(meta["seconds"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
