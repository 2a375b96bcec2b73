"""Accuracy per network evaluation: flowode's solvers and grids against diffusers and k-diffusion.

Built on :mod:`flowode.bench`: every row is an engine cell (resumable JSON lines), the peers are
engine solvers (:mod:`flowode.bench.peers`) and the tables come from :mod:`flowode.bench.report`.

Problems: the bench problems ``gmm2d`` (``gmm_ring()``, 2-D) and ``gmm64`` (``gmm_random(64)``):
exact analytic Gaussian-mixture models on the DDPM linear schedule (1000 steps, beta 1e-4 .. 0.02),
512 start states ``x_T ~ N(0, I)`` (seed 0), float64 everywhere the peer allows.

Error: RMSE over every entry of ``x_method - x_ref`` in the model's (VP) coordinates, where
``x_ref`` is the exact probability flow of the same start noise between the *same endpoints the
method used*: from its first noise level to its last one (``flowode.reference_solve``, scipy
DOP853, rtol = atol = 1e-10). Endpoint convention: flowode's grids end at ``sigma = 0`` (the last
step returns the denoised estimate, as DDIM with ``set_alpha_to_one=True``, diffusers'
``final_sigmas_type="zero"`` and k-diffusion's trailing zero do); a peer whose default ends at
``sigma_min = sigma(t=0)`` (diffusers' PNDM with ``set_alpha_to_one=False``, DEIS) is compared
with the exact flow to ``sigma_min``.

NFE: flowode's is ``Solution.nfe``; a peer's is counted by a counter around the model function
(actual calls). For a target budget ``N`` each method runs the largest step count whose NFE is
``<= N``. Adaptive flowode solvers run at a ladder of tolerances (stopping once one costs more
than twice the largest budget) and are reported at their actual NFE.

Headline: the best flowode row and the best peer row at each NFE among the *full-range* runs,
those that start at ``sigma_max`` (t = 999) and end at ``sigma = 0``; runs that start lower
(diffusers' ``leading`` spacing, flowode's ``leading`` / ``quadratic``) or end at ``sigma_min``
solve a shorter problem and are listed (marked) in the per-method table only. Solvers that fail
(or cannot fit a budget, e.g. PNDM's Runge-Kutta warm-up at NFE 5 and 10) are skipped and listed.

Rows:
* flowode: every registered deterministic solver x {default grid (the solver's / schedule's
  default spacing), each built-in spacing}, plus the grid of ``flowode.optimize_grid`` (the
  engine's spacing ``"optimized"``: fitted on a separate 256-sample calibration batch with its
  own seed, 300 solves) for the ``--optimize-top`` (default 3) solvers with the lowest built-in
  RMSE at each NFE (``0``: all);
* diffusers: DDIM, DPM-Solver++(2M), UniPC, Euler, Heun, LMS, PNDM, DEIS x {own default config,
  ``timestep_spacing="trailing"`` = flowode's default grid for this schedule};
* k-diffusion (if importable): Euler, Heun, LMS, DPM-2, DPM++(2M) x {Karras sigmas (rho = 7),
  flowode's default (trailing) grid}.

Usage::

    python benchmarks/accuracy.py                 # full run -> benchmarks/out/accuracy.jsonl, table, plot
    python benchmarks/accuracy.py --quick         # smoke test (small batch, NFE 5/10, few solvers)
    python benchmarks/accuracy.py --table-only    # rewrite the table / plot from the JSON lines
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Any, Optional

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import flowode  # noqa: E402
from flowode.bench import (  # noqa: E402
    OPTIMIZED,
    PEERS,
    BenchSpec,
    failed_methods,
    full_range,
    headline_table,
    is_peer,
    load_results,
    method_table,
    run_bench,
)
from flowode.grids import SPACINGS  # noqa: E402

PROBLEMS = ("gmm2d", "gmm64")
ADAPTIVE_TOLS = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 1e-5)
#: the grids each library's peers run: diffusers' own default config and flowode's trailing grid;
#: k-diffusion's Karras sigmas and flowode's trailing grid
PEER_SPACINGS: dict[str, list[Optional[str]]] = {"diffusers": [None, "trailing"], "k-diffusion": ["karras", "trailing"]}
QUICK_SOLVERS = ("ddim", "heun", "dpm_solver++_2m", "unipc", "dopri5")
QUICK_PEERS = ("diffusers:ddim", "diffusers:dpmsolver++_2m", "diffusers:heun", "k-diffusion:euler",
               "k-diffusion:dpmpp_2m")


def flowode_solvers(names: Optional[list[str]]) -> tuple[list[str], list[str], list[str]]:
    """``(fixed-step, adaptive, messages)``: the deterministic solvers among ``names`` (default
    every registered one); stochastic ones are left out, ones that cannot be built are reported."""
    fixed, adaptive, skipped = [], [], []
    for name in names or flowode.solvers.available():
        try:
            slv = flowode.solvers.make(name)
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            skipped.append(f"flowode `{name}`: cannot build: {type(e).__name__}: {e}")
            continue
        if not slv.stochastic:
            (adaptive if slv.adaptive else fixed).append(slv.name)
    return fixed, adaptive, skipped


def peer_groups(args: argparse.Namespace) -> tuple[dict[str, list[str]], list[str]]:
    """Peers to run per library, and messages for the libraries that are skipped."""
    groups: dict[str, list[str]] = {}
    skipped = []
    for lib, off in (("diffusers", args.no_diffusers), ("k-diffusion", args.no_k)):
        names = [n for n in PEERS if n.startswith(lib + ":") and (not args.peers or n in args.peers)]
        if off or not names:
            continue
        why = PEERS[names[0]].unavailable()
        if why is not None:
            msg = f"{lib} not importable; skipping its samplers ({why})"
            print(msg, flush=True)
            skipped.append(f"{lib}: {why}")
            continue
        groups[lib] = names
    return groups, skipped


def optimize_top(records: list[dict[str, Any]], problem: str, nfe: int, k: int) -> list[str]:
    """The ``k`` flowode solvers (all if 0) with the lowest RMSE on a built-in full-range grid at
    ``nfe`` (a run that starts below sigma_max solves a shorter problem and must not decide which
    solvers get a fitted grid)."""
    best: dict[str, float] = {}
    for r in full_range(records):
        if (r["problem"] == problem and not is_peer(r["solver"]) and r.get("nfe_budget") == nfe
                and r.get("spacing_requested") != OPTIMIZED and isinstance(r.get("rmse"), float)
                and math.isfinite(r["rmse"])):
            best[r["solver"]] = min(best.get(r["solver"], math.inf), r["rmse"])
    ranked = sorted(best, key=lambda s: best[s])
    return ranked[:k] if k > 0 else ranked


def run(args: argparse.Namespace) -> list[str]:
    """Every cell of the benchmark (finished ones are skipped); returns the skip messages."""
    fixed, adaptive, skipped = flowode_solvers(args.solvers)
    peers, peer_skipped = peer_groups(args)
    common: dict[str, Any] = {"problems": list(args.problems), "seeds": [args.seed], "samples": args.samples}
    specs = [BenchSpec(solvers=names, nfe=args.nfe, spacings=PEER_SPACINGS[lib], **common)
             for lib, names in peers.items()]
    if fixed:
        specs.append(BenchSpec(solvers=fixed, nfe=args.nfe, spacings=[None, *SPACINGS], **common))
    if adaptive:
        specs.append(BenchSpec(solvers=adaptive, nfe=[], tolerances=list(ADAPTIVE_TOLS),
                               adaptive_max_nfe=2 * max(args.nfe), **common))
    records: list[dict[str, Any]] = []
    for spec in specs:
        records += run_bench(spec, args.out, progress=args.progress, log=print)[0]
    if not args.no_optimize and fixed:
        for problem in args.problems:
            for nfe in [n for n in args.nfe if n in args.opt_nfe]:
                top = optimize_top(records, problem, nfe, args.optimize_top)
                if top:
                    spec = BenchSpec(solvers=top, nfe=[nfe], spacings=[OPTIMIZED], calibration=args.calibration,
                                     optimize_evals=args.opt_evals, **dict(common, problems=[problem]))
                    run_bench(spec, args.out, progress=args.progress, log=print)
    return skipped + peer_skipped


# ------------------------------------------------------------------------------------ table and plot
def this_run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The records of this configuration (problems, samples, seed) in the results file."""
    return [r for r in load_results(args.out) if r.get("problem") in args.problems
            and r.get("samples") == args.samples and r.get("seed") == args.seed]


def plot(records: list[dict[str, Any]], path: str) -> None:
    """Log-log RMSE against NFE, one panel per problem: the best full-range grid per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    ok = full_range([r for r in records if not r.get("error") and isinstance(r.get("rmse"), float)
                     and r["rmse"] > 0])
    probs = sorted({r["problem"] for r in ok})
    fig, axes = plt.subplots(1, max(len(probs), 1), figsize=(7 * max(len(probs), 1), 5.5), squeeze=False)
    for ax, prob in zip(axes[0], probs):
        pr = [r for r in ok if r["problem"] == prob]
        methods = sorted({(r["solver"].split(":")[0] if is_peer(r["solver"]) else "flowode",
                           r["solver"].split(":")[-1]) for r in pr})
        colors = plt.get_cmap("tab20")
        for i, (lib, meth) in enumerate(methods):
            pts: dict[int, float] = {}
            for r in pr:
                if r["solver"] == (meth if lib == "flowode" else f"{lib}:{meth}"):
                    key = r["nfe_budget"] if r.get("nfe_budget") else int(r["nfe"])
                    if key > 0 and (key not in pts or r["rmse"] < pts[key]):
                        pts[key] = r["rmse"]
            if not pts:
                continue
            xs = sorted(pts)
            style = "-" if lib == "flowode" else "--" if lib == "diffusers" else ":"
            ax.loglog(xs, [pts[k] for k in xs], style, marker="o", ms=3, color=colors(i % 20),
                      lw=1.8 if lib == "flowode" else 1.2, label=("" if lib == "flowode" else lib + " ") + meth)
        ax.set_title(f"{prob}: best full-range grid per method (sigma_max -> 0)\n"
                     "flowode solid (incl. optimised grids), diffusers dashed, k-diffusion dotted", fontsize=9)
        ax.set_xticks([5, 10, 20, 50], ["5", "10", "20", "50"])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("NFE (budget; adaptive: actual)")
        ax.set_ylabel("RMSE vs exact flow")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


PREAMBLE = """## Accuracy per network evaluation (RMSE against the exact flow)

Command (CPU, about 4 min on 2 cores with the solvers below; resumable, `--fresh` starts over):

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/accuracy.py --fresh --markdown benchmarks/sections/accuracy.md

Setup (`flowode.bench` engine, problems `gmm2d` and `gmm64`): exact analytic eps of two Gaussian
mixtures (`gmm_ring()`, 2-D, 8 components of std 0.1; `gmm_random(64)`, 64-D, 8 components of std
0.3), DDPM linear schedule (1000 steps, beta 1e-4 .. 0.02), {samples} start states `x_T ~ N(0, I)`
(seed {seed}), float64 (diffusers' Euler step computes in float32 internally: 5e-7 from float64).
RMSE over all entries of `x - x_ref`, `x_ref` = `flowode.reference_solve` (DOP853, rtol = atol =
1e-10) from the run's first noise level to its last one with the same start noise. NFE = model
calls (`Solution.nfe`; for peers a counter around the model function); each method runs the
largest step count whose count is <= the budget. Endpoint convention: the headline compares
full-range runs only (from sigma_max, t = 999, to sigma = 0, the last step returning the denoised
estimate); runs that start lower or stop at sigma_min are marked † below. flowode grids: the
solver's default, every built-in spacing, and `optimize_grid` (spacing `optimized`, fitted on a
separate {calibration}-sample calibration batch, {opt_evals} solves, for the {top} best solvers per
NFE; the error shown is on the {samples} evaluation samples). Peers (`flowode.bench.peers`):
diffusers {diffusers_version} schedulers with float64 `alphas_cumprod` / sigmas, own default config
and `timestep_spacing="trailing"`; k-diffusion {k_status}, Karras sigmas (rho 7) and flowode's
trailing grid.

flowode solvers in this run: {solvers}. Peers get their own grids only (no optimised grid);
flowode's "best built-in spacing" is picked on the evaluation samples, its optimised grid on the
separate calibration batch. Plot (log-log, best full-range grid per method):
`benchmarks/accuracy.png`.
"""


def _preamble(args: argparse.Namespace, records: list[dict[str, Any]]) -> str:
    def version(lib: str) -> str:
        names = [n for n in PEERS if n.startswith(lib + ":")]
        if not names or PEERS[names[0]].unavailable() is not None:
            return "(not importable: skipped)"
        return PEERS[names[0]].version() or "(version unknown)"

    k_status = version("k-diffusion")
    if not k_status.startswith("("):
        k_status += " (`k_diffusion.sampling` loaded alone when the package does not import)"
    solvers = sorted({r["solver"] for r in records if not is_peer(r["solver"]) and not r.get("error")})
    return PREAMBLE.format(samples=args.samples, seed=args.seed, calibration=args.calibration,
                           opt_evals=args.opt_evals, top=args.optimize_top or "all",
                           diffusers_version=version("diffusers"), k_status=k_status,
                           solvers=", ".join(f"`{s}`" for s in solvers) or "-")


def write_report(args: argparse.Namespace, skipped: list[str]) -> None:
    records = this_run(args)
    nf = [n for n in args.nfe if n in (5, 10, 20, 50)] or args.nfe
    md = [_preamble(args, records),
          "### Best flowode solver + grid vs best peer (same model, same start noise, same run)\n",
          headline_table(records, nf), "### Per method\n", method_table(records, nf), "### Skipped / failed\n",
          "\n".join([failed_methods(records)] + [f"- {m}" for m in skipped])]
    text = "\n".join(md) + "\n"
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    if args.plot:
        plot(records, args.plot)
        print(f"plot -> {args.plot}")


def main(argv: Optional[list[str]] = None) -> None:
    # float64 is torch's default dtype inside main() only (as in every run of this benchmark so far),
    # so importing this module or calling main() (the tests do) leaves the process's default alone
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        _main(argv)
    finally:
        torch.set_default_dtype(before)


def _main(argv: Optional[list[str]]) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke test: 64 samples, NFE 5 and 10, few solvers")
    p.add_argument("--out", default=None, help="JSON-lines results file (resumable)")
    p.add_argument("--markdown", default=None, help="write the tables here")
    p.add_argument("--plot", default=None, help="log-log plot path")
    p.add_argument("--table-only", action="store_true", help="only rebuild the table / plot from --out")
    p.add_argument("--fresh", action="store_true", help="delete --out (and its cached references) first")
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--calibration", type=int, default=256, help="calibration batch of optimize_grid (own seed)")
    p.add_argument("--opt-evals", type=int, default=300, help="objective evaluations per optimize_grid")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20, 50])
    p.add_argument("--problems", nargs="+", default=list(PROBLEMS), help="bench problems (default gmm2d gmm64)")
    p.add_argument("--solvers", nargs="+", default=None, help="flowode solvers (default: every registered one)")
    p.add_argument("--peers", nargs="+", default=None,
                   help=f"peers, as library:method (default: all of {', '.join(PEERS)})")
    p.add_argument("--no-optimize", action="store_true")
    p.add_argument("--opt-nfe", type=int, nargs="+", default=[5, 10, 20, 50],
                   help="NFE budgets that get an optimised grid")
    p.add_argument("--optimize-top", type=int, default=3,
                   help="optimise grids for the K flowode solvers with the best built-in RMSE per NFE (0: all)")
    p.add_argument("--no-diffusers", action="store_true")
    p.add_argument("--no-k", action="store_true")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    args = p.parse_args(argv)
    out_dir = os.path.join(HERE, "out")
    if args.quick:
        args.samples, args.calibration, args.opt_evals = min(args.samples, 64), 32, 40
        args.nfe = args.opt_nfe = [5, 10]
        args.solvers = args.solvers or [s for s in QUICK_SOLVERS if s in flowode.solvers.available()]
        args.peers = args.peers or list(QUICK_PEERS)
        args.out = args.out or os.path.join(out_dir, "accuracy_quick.jsonl")
    args.out = args.out or os.path.join(out_dir, "accuracy.jsonl")
    if args.plot is None:
        args.plot = os.path.join(out_dir, "accuracy_quick.png") if args.quick else os.path.join(HERE, "accuracy.png")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    if args.fresh and not args.table_only:
        import shutil

        if os.path.exists(args.out):
            os.remove(args.out)
        shutil.rmtree(args.out + ".refs", ignore_errors=True)
    if args.table_only:  # the same skip messages as the run that wrote the records, without running
        skipped = flowode_solvers(args.solvers)[2] + peer_groups(args)[1]
    else:
        t0 = time.perf_counter()
        skipped = run(args)
        print(f"benchmark time: {time.perf_counter() - t0:.0f} s")
    write_report(args, skipped)


if __name__ == "__main__":
    main()
