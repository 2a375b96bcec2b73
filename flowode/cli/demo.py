"""``flowode demo``: the README's main job.

Benchmarks a few registered solvers (DDIM, Heun and, when this build has them, DPM-Solver++(2M) /
UniPC) against the exact flow of an analytic 2-D Gaussian mixture (8 modes on a ring) and a single
Gaussian (closed-form flow map) on the DDPM linear schedule, prints the table and writes the
figures: error vs NFE with fitted orders, time vs error, sample paths, step sizes against sigma and
the per-step x0 predictions of an exact image-shaped model. Every solver gets the same log-SNR-uniform
grid by default (``--spacing``), so differences come from the solvers.

Beside it, the short form of DDPM vs DDIM on one network (the shipped ``ring8`` MLP): DDPM at 1000
steps against DDIM at 10 / 20 / 50 from the same keyed x_T, with the exact NLL under the true
density, sliced Wasserstein, the diversity of samples from one x_T and the round trip through the
DDIM latent (:func:`flowode.bench.study.short_form`), as a table (``ddpm_vs_ddim.md``) and a
figure (``ddpm_vs_ddim.png``). About 25 s of CPU time in all (15 s without the short form).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ._util import csv, ints, out_dir


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="compare solvers on analytic problems; table + figures (the README's main job)",
                       description="Compare a few solvers against the exact flow of analytic problems (a 2-D "
                                   "Gaussian mixture and a single Gaussian, DDPM linear schedule): print a table "
                                   "of error vs NFE and write figures into --out. Re-running skips finished cells.")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="folder for results.jsonl, table.md and the figures (without it only the table is printed)")
    p.add_argument("--samples", type=int, default=512, help="samples per cell (default 512)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--nfe", default="10,20,40,80,160", help="comma-separated NFE budgets (default 10,20,40,80,160)")
    p.add_argument("--solvers", default=None, metavar="LIST",
                   help="comma-separated solvers (default: ddim, heun and dpm_solver++_2m / unipc when registered)")
    p.add_argument("--spacing", default="logsnr",
                   help="grid spacing for every solver (default logsnr, uniform in log-SNR, where the fitted orders "
                        "show; 'default' = each solver's own)")
    p.add_argument("--problems", default="gmm2d,gaussian", metavar="LIST", help="problems (default gmm2d,gaussian)")
    from ..solvers.boundary import LAST_STEPS

    p.add_argument("--last-step", default="auto", choices=LAST_STEPS, metavar="MODE",
                   help="the last step to sigma = 0 of every solver (default auto: the floor-free extrapolation "
                        "where it is free, so the fitted orders show the solvers' orders, not the sigma_min^2 "
                        "floor of the denoising jump; 'jump' as diffusers; docs/grids.md)")
    p.add_argument("--formats", default="png", metavar="LIST", help="figure formats: png, pdf, svg (default png)")
    p.add_argument("--checkpoint", default=None, metavar="NAME",
                   help="also draw the per-step x0 predictions of this shipped checkpoint (needs load_pretrained)")
    p.add_argument("--no-ddpm-vs-ddim", action="store_true",
                   help="skip the short DDPM (1000 steps) vs DDIM (10/20/50) comparison on the ring8 network")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _ddpm_vs_ddim(samples: int, seed: int, out: Any, formats: list[str]) -> list[Path]:
    """The short DDPM-vs-DDIM form on ``ring8``: print the table; with ``out`` write it and the figure."""
    from ..analytic import gmm_ring
    from ..bench.study import short_form, short_markdown
    from ..pretrained import load_pretrained

    rows, fl = short_form(load_pretrained("ring8"), gmm_ring(), n=max(samples, 8), seed=seed)
    text = ("DDPM vs DDIM on one network (shipped ring8 MLP, float32, trailing grids, keyed noise seed "
            f"{seed}, {max(samples, 8)} samples):\n\n" + short_markdown(rows, fl, max(samples, 8)))
    print("\n" + text)
    if out is None:
        return []
    from ..plot import plot_ddpm_vs_ddim

    (out / "ddpm_vs_ddim.md").write_text(text + "\n")
    return [plot_ddpm_vs_ddim(rows, gmm_ring(), out / f"ddpm_vs_ddim.{fmt}",
                              title="ring8 network: DDPM 1000 steps vs DDIM (samples; x = draws from one x_T)")
            for fmt in formats]


def _step_size_solutions(prob: Any, solver: tuple[str, dict[str, Any]], nfe: int, seed: int) -> dict[str, Any]:
    """``solver`` at ``nfe`` on four grid spacings, plus the first registered adaptive solver."""

    from ..grids import sigma_grid
    from ..integrate import integrate, sample
    from ..solvers import SOLVERS

    sched = prob.model.schedule
    x_T = prob.prior(64, sched.sigma_max, seed)
    sols: dict[str, Any] = {}
    name, opts = solver
    for spacing in ("trailing", "quadratic", "karras", "logsnr"):
        sols[f"{name}, {spacing} grid"] = sample(prob.model, x_T, nfe=nfe, solver=name, save_trajectory=True,
                                                 spacing=spacing, seed=seed, **opts)
    for adaptive in sorted(SOLVERS):
        if SOLVERS[adaptive].adaptive:
            try:
                sols[f"{adaptive} (adaptive)"] = integrate(prob.model, x_T, sigma_grid(sched, 1), adaptive,
                                                           save_trajectory=True)
            except (ValueError, RuntimeError, TypeError) as exc:
                print(f"flowode demo: adaptive {adaptive!r} not shown: {exc}", file=sys.stderr)
            break
    return sols


def run(args: argparse.Namespace) -> int:

    from ..bench import BenchSpec, get_problem, markdown_table, preferred_solvers, resolve_solvers, run_bench
    from ..integrate import sample

    t_start = time.perf_counter()
    ckpt = _checkpoint_problem(args.checkpoint) if args.checkpoint else None  # refused now, not after the bench
    wanted = csv(args.solvers) or preferred_solvers(4, ("ddim", "heun", "dpm_solver++_2m", "unipc", "rk4"))
    wanted = [_with_last_step(w, args.last_step) for w in wanted]
    spec = BenchSpec(problems=csv(args.problems) or ["gmm2d"], solvers=wanted, nfe=ints(args.nfe, "--nfe") or [],
                     seeds=[args.seed], samples=args.samples,
                     spacings=[None if args.spacing in ("default", "") else args.spacing])
    out = Path(args.out) if args.out else None
    if out is None:
        import tempfile

        tmp = tempfile.TemporaryDirectory()
        results = Path(tmp.name) / "results.jsonl"
    else:
        out_dir(str(out))
        results = out / "results.jsonl"
    records, missing = run_bench(spec, results, progress=not args.no_progress)
    print(markdown_table(records, missing))
    print(_fitted_orders(records))
    from .bench import failure_status

    formats = csv(args.formats) or ["png"]
    short = [] if args.no_ddpm_vs_ddim else _ddpm_vs_ddim(args.samples, args.seed, out, formats)
    if out is None:
        print("(figures are written with --out DIR)")
        return failure_status(records, "demo")
    from ..plot import plot_denoised_grid, plot_step_sizes
    from .bench import write_outputs

    paths = write_outputs(records, missing, out, formats, spec) + short
    solvers, _ = resolve_solvers(wanted)
    mid = sorted(spec.nfe)[min(1, len(spec.nfe) - 1)] if spec.nfe else 20
    ring = get_problem("gmm2d")
    sols = _step_size_solutions(ring, solvers[0], mid, args.seed)
    imgs = get_problem("shapes8x8")
    x_T = imgs.prior(6, imgs.model.schedule.sigma_max, args.seed)
    name, opts = solvers[0]
    img_sol = sample(imgs.model, x_T, nfe=mid, solver=name, save_trajectory=True, spacing=spec.spacings[0],
                     seed=args.seed, **opts)
    for fmt in formats:
        paths.append(plot_step_sizes(sols, out / f"step_sizes.{fmt}"))
        paths.append(plot_denoised_grid(img_sol, out / f"x0_grid_shapes8x8.{fmt}",
                                        title=f"shapes8x8 (exact model), {name}, NFE {img_sol.nfe}: x0 prediction "
                                              "at the start of each step"))
    if ckpt is not None:
        paths += _checkpoint_grid(ckpt, args.checkpoint, name, opts, mid, args.seed, out, formats)
    print(f"results: {results}  table: {out / 'table.md'}")
    for p in paths:
        print(f"figure: {p}")
    print(f"done in {time.perf_counter() - t_start:.1f} s")
    return failure_status(records, "demo")


def _with_last_step(spec: str, mode: str) -> str:
    """``spec`` with ``last_step=mode`` added to its options (a peer or a spec that sets it: as given)."""
    from ..bench import parse_solver_spec
    from ..bench.peers import is_peer

    name, opts = parse_solver_spec(spec)
    if is_peer(name) or "last_step" in opts or mode == "jump":
        return spec
    return f"{spec[:-1]},last_step={mode}]" if spec.endswith("]") else f"{spec}[last_step={mode}]"


def _fitted_orders(records: list[dict[str, Any]]) -> str:
    """One line per problem: each deterministic solver's order fitted over the larger half of its
    budgets (:func:`flowode.plot.tail_order`, as in the figure's legend) and the last step it took."""
    from ..plot import tail_order

    lines = ["Fitted orders (-slope of log RMSE against log NFE over the larger half of the budgets; last step "
             "taken):"]
    for prob in dict.fromkeys(r["problem"] for r in records):
        parts = []
        rows = [r for r in records if r["problem"] == prob and not r.get("error") and not r.get("stochastic")]
        for lab in dict.fromkeys(r["label"] for r in rows):
            rr = sorted((r for r in rows if r["label"] == lab), key=lambda r: r["nfe"])
            p = tail_order([r["nfe"] for r in rr], [r["rmse"] for r in rr])
            steps = sorted({str(r.get("last_step")) for r in rr})
            parts.append(f"{rr[0]['solver']} {'-' if p is None else f'{p:.2f}'} ({'/'.join(steps)})")
        lines.append(f"  {prob}: " + ", ".join(parts))
    return "\n".join(lines)


def _checkpoint_problem(ckpt: str) -> Any:
    """The benchmark problem of ``--checkpoint``; a ``ValueError`` (exit status 2) when it cannot draw
    an x0 grid, so a requested figure is never silently missing."""
    from ..bench import get_problem

    try:
        prob = get_problem(ckpt)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"`--checkpoint` {ckpt!r} is unavailable: {exc}") from None
    if not prob.images:
        raise ValueError(f"`--checkpoint` {ckpt!r} is not an image model (samples of shape {prob.shape}), so it has "
                         "no x0 grid; give an image checkpoint such as 'digits'.")
    return prob


def _checkpoint_grid(prob: Any, ckpt: str, name: str, opts: dict[str, Any], nfe: int, seed: int, out: Path,
                     formats: list[str]) -> list[Path]:
    import torch

    from ..integrate import sample
    from ..plot import plot_denoised_grid

    x_T = prob.prior(6, prob.model.schedule.sigma_max, seed)
    with torch.no_grad():
        sol = sample(prob.model, x_T, nfe=nfe, solver=name, save_trajectory=True, **opts)
    return [plot_denoised_grid(sol, out / f"x0_grid_{ckpt}.{fmt}", title=f"{ckpt}, {name}, NFE {sol.nfe}")
            for fmt in formats]
