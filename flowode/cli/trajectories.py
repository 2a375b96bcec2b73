"""``flowode trajectories``: 2-D sample paths from noise to data, one panel per solver."""

from __future__ import annotations

import argparse

from ._util import csv, out_file


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    p = sub.add_parser("trajectories", help="plot 2-D paths from noise to data for several solvers",
                       description="Integrate many samples of a 2-D problem with each solver at the same NFE budget "
                                   "and draw their paths over the data density, side by side; hollow circles mark "
                                   "where the exact flow from the same noise ends.")
    p.add_argument("--problem", default="gmm2d", help="a 2-D problem: gmm2d (default), gmm2d_grid, module:function")
    p.add_argument("--solvers", default=None, metavar="LIST",
                   help="comma-separated solvers, options in brackets (default: a few good registered ones)")
    p.add_argument("--nfe", type=int, default=10, help="NFE budget per solver (default 10)")
    p.add_argument("--samples", type=int, default=128, help="number of paths (default 128)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial noise (default 0)")
    p.add_argument("--spacing", default=None, help="grid spacing (default: each solver's own)")
    p.add_argument("--out", default="trajectories.png", help="figure file, .png/.pdf/.svg (default trajectories.png)")
    return p


def run(args: argparse.Namespace) -> int:
    from ..bench import preferred_solvers, resolve_solvers
    from ..plot import plot_trajectories

    if args.samples < 1:
        raise ValueError(f"`--samples` must be a positive integer, got {args.samples}.")
    out_file(args.out)
    specs, missing = resolve_solvers(csv(args.solvers) or preferred_solvers(3))
    for m in missing:
        print(f"flowode trajectories: skipped: {m}")
    if not specs:
        raise ValueError("none of the requested `--solvers` is registered.")
    path = plot_trajectories(args.problem, specs, args.out, nfe=args.nfe, samples=args.samples, seed=args.seed,
                             spacing=args.spacing)
    print(f"figure: {path}")
    return 0
