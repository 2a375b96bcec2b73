"""``flowode bench``: problems x solvers x NFE budgets; results.jsonl + table.md + figures.

Resumable: re-running the same command skips every cell already in ``OUT/results.jsonl`` (a
cell's key holds the model's fingerprint, the device and ``--repeats``); ``--retry-failed`` reruns
the failed ones. Exit status 0 when at least one cell of the grid has a result, 1 when every cell
failed, 2 for a bad setting (refused before the first cell).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ._util import csv, floats, ints, load_config, out_dir

DEFAULT_NFE = "5,10,20,50"


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    p = sub.add_parser(
        "bench", help="benchmark solvers: error vs exact flow, NFE, time, memory (resumable)",
        description="Run a grid of problems x solvers x NFE budgets (x spacings x seeds). Each finished cell is "
                    "appended to OUT/results.jsonl at once; re-running the same command skips finished cells. "
                    "Writes OUT/table.md and figures (error vs NFE with fitted order, time vs error, 2-D paths).",
        epilog="Examples:\n"
               "  flowode bench --problem gmm2d --solvers ddim,heun,dpm_solver++_2m --nfe 5,10,20 --out runs/a\n"
               "  flowode bench --problem gmm2d,gaussian --solvers 'ddim,ddim[eta=0.5],heun' --seeds 0,1 --out runs/b\n"
               "  flowode bench --problem mypkg.models:make_problem --solvers heun --out runs/c\n"
               "  flowode bench --config grid.toml   (keys: problems, solvers, nfe, spacings, seeds, samples, ...)\n"
               "  torchrun --nproc_per_node=4 -m flowode bench ...   (cells spread over 4 ranks; docs/scale-out.md)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.epilog = (p.epilog or "") + ("\n\nExit status: 0 when some cell has a result, 1 when every cell failed, "
                                   "2 for a bad setting (refused before the first cell).")
    p.add_argument("--config", metavar="FILE", help="TOML or JSON file with the grid; flags given override it")
    p.add_argument("--problem", "--problems", dest="problems", metavar="LIST",
                   help="comma-separated problems: gmm2d, gmm2d_grid, gmm64, gaussian, shapes8x8, "
                        "module:function, or a shipped checkpoint name (default gmm2d)")
    p.add_argument("--solvers", metavar="LIST",
                   help="comma-separated solvers, options in brackets: 'ddim,ddim[eta=0.5],heun[coordinates=lambda]' "
                        "(default: a few good registered ones; see `flowode solvers`); other libraries' samplers "
                        "as peers: 'diffusers:ddim,k-diffusion:euler' (when installed)")
    p.add_argument("--nfe", metavar="LIST", help=f"comma-separated NFE budgets (default {DEFAULT_NFE})")
    p.add_argument("--spacing", "--spacings", dest="spacings", metavar="LIST",
                   help="comma-separated grid spacings (trailing, leading, linspace, quadratic, uniform_t, logsnr, "
                        "karras, optimized: flowode.optimize_grid per solver and budget); default: each solver's "
                        "own default")
    p.add_argument("--seeds", metavar="LIST", help="comma-separated seeds for the initial noise (default 0)")
    p.add_argument("--samples", type=int, help="batch size per cell (default: the problem's, e.g. 512 for gmm2d)")
    p.add_argument("--tolerances", metavar="LIST",
                   help="rtol=atol values for adaptive solvers (default 1e-2,1e-3,1e-4)")
    p.add_argument("--device", help="torch device (default cpu)")
    p.add_argument("--repeats", type=int, help="timing repeats per cell; the median is kept (default 1)")
    p.add_argument("--out", metavar="DIR", help="output folder (default bench-out)")
    p.add_argument("--formats", metavar="LIST", help="figure formats: png, pdf, svg (default png)")
    p.add_argument("--no-figures", action="store_true", help="write results and table only")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--retry-failed", action="store_true",
                   help="rerun cells whose earlier record is an error (e.g. out of memory); by default a resumed "
                        "run keeps them")
    return p


def spec_from_args(args: argparse.Namespace) -> tuple[Any, Path, list[str]]:
    from ..bench import BenchSpec, preferred_solvers

    conf: dict[str, Any] = load_config(args.config) if args.config else {}
    out = args.out or conf.pop("out", None) or "bench-out"
    conf.pop("out", None)
    formats = csv(getattr(args, "formats", None)) or conf.pop("formats", None) or ["png"]
    conf.pop("formats", None)
    if isinstance(formats, str):
        formats = csv(formats)
    flags = {
        "problems": csv(args.problems), "solvers": csv(args.solvers), "nfe": ints(args.nfe, "--nfe"),
        "spacings": csv(args.spacings), "seeds": ints(args.seeds, "--seeds"), "samples": args.samples,
        "tolerances": floats(args.tolerances, "--tolerances"), "device": args.device, "repeats": args.repeats,
    }
    conf.update({k: v for k, v in flags.items() if v is not None})
    conf.setdefault("problems", ["gmm2d"])
    conf.setdefault("solvers", preferred_solvers(4))
    conf.setdefault("nfe", ints(DEFAULT_NFE, "--nfe"))
    spec = BenchSpec.from_dict(conf)
    bad = [f for f in formats if f not in ("png", "pdf", "svg")]  # type: ignore[union-attr]
    if bad:
        raise ValueError(f"`--formats` {bad}: choose from png, pdf, svg.")
    return spec, Path(out), list(formats)  # type: ignore[arg-type]


def write_outputs(records: list[dict[str, Any]], missing: list[str], out: Path, formats: list[str],
                  spec: Any, figures: bool = True) -> list[Path]:
    """table.md and the figures for ``records``; returns the figure paths."""
    from ..bench import get_problem, is_peer, markdown_table

    table = markdown_table(records, missing)
    (out / "table.md").write_text(table)
    paths: list[Path] = []
    if not figures:
        return paths
    from ..plot import plot_results, plot_trajectories

    paths += plot_results(records, out, formats)
    budgets = sorted(spec.nfe)
    for name in spec.problems:
        prob = get_problem(name)
        specs: dict[str, tuple[str, dict[str, Any]]] = {}
        for r in records:
            if r["problem"] == name and not r.get("error") and not r.get("adaptive") and not is_peer(r["solver"]):
                specs.setdefault(r["label"].split(" (")[0], (r["solver"], dict(r.get("options") or {})))
        if prob.dim != 2 or not budgets or not specs:
            continue
        nfe = budgets[len(budgets) // 2]
        for fmt in formats:
            try:
                paths.append(plot_trajectories(prob, list(specs.values())[:4], out / f"trajectories_{name}.{fmt}",
                                               nfe=nfe, samples=min(128, spec.samples or 128),
                                               spacing=spec.spacings[0] if len(spec.spacings) == 1 else None))
            except ValueError as exc:
                print(f"flowode bench: no trajectory figure for {name}: {exc}", file=sys.stderr)
    return paths


def run(args: argparse.Namespace) -> int:
    from ..bench import run_bench

    spec, out, formats = spec_from_args(args)
    spec.validate()  # a bad setting is refused before the output folder is made
    out_dir(str(out))
    results = out / "results.jsonl"
    from ..distributed import session

    with session(spec.device) as dist:
        if dist.world > 1:
            _sharded(spec, results, dist, args)
            if not dist.main:
                return 0
            # every cell is in the merged file now: this collects them in the grid's order
            records, missing = run_bench(spec, results, progress=False, log=lambda _m: None, preflight=False)
        else:
            records, missing = run_bench(spec, results, progress=not args.no_progress,
                                         retry_failed=args.retry_failed)
    paths = write_outputs(records, missing, out, formats, spec, figures=not args.no_figures)
    print((out / "table.md").read_text())
    print(f"results: {results}  table: {out / 'table.md'}")
    for p in paths:
        print(f"figure: {p}")
    return failure_status(records, "bench")


def _sharded(spec: Any, results: Path, dist: Any, args: argparse.Namespace) -> None:
    """This rank's cells into its own part file (``OUT/results.parts/rankR-of-N.jsonl``, the cells
    already in ``results.jsonl`` or in any part skipped); after the barrier rank 0 appends the parts
    to ``results.jsonl`` and removes them (docs/scale-out.md)."""
    import shutil

    from ..bench import run_bench
    from ..bench.store import append_record, read_results

    parts = results.with_name("results.parts")
    parts.mkdir(exist_ok=True)
    mine = parts / f"rank{dist.rank}-of-{dist.world}.jsonl"
    # a device 'cuda' means the current device, which the session set to cuda:LOCAL_RANK, so the cell
    # keys hold the device as given and match a one-process run's
    run_bench(spec, mine, progress=dist.main and not args.no_progress, retry_failed=args.retry_failed,
              shard=(dist.rank, dist.world), also_done=[results, *sorted(parts.glob("*.jsonl"))])
    dist.barrier()  # the only collective: every rank's cells are on disk
    if not dist.main:
        return
    have = {r.get("key") for r in read_results(results)[0] if not (args.retry_failed and r.get("error"))}
    for part in sorted(parts.glob("*.jsonl")):
        for rec in read_results(part)[0]:
            if rec.get("key") not in have:
                append_record(results, rec)
                have.add(rec.get("key"))
    shutil.rmtree(parts, ignore_errors=True)


def failure_status(records: list[dict[str, Any]], command: str) -> int:
    """1 (with one line on stderr) when every cell failed, else 0; a partial failure is reported."""
    failed = [r for r in records if r.get("error")]
    if records and len(failed) == len(records):
        print(f"flowode {command}: error: all {len(records)} cells failed; the first: {failed[0]['error']}",
              file=sys.stderr)
        return 1
    if failed:
        print(f"flowode {command}: {len(failed)} of {len(records)} cells failed (their errors are in the table; "
              "rerun with --retry-failed after a fix).", file=sys.stderr)
    return 0
