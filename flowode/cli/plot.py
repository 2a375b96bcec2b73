"""``flowode plot``: re-draw the figures (and table) of a results file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._util import csv, out_dir


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    p = sub.add_parser("plot", help="re-plot a results.jsonl file (error vs NFE, time vs error, table)",
                       description="Re-draw the figures of a `flowode bench` results file: error vs NFE (log-log, "
                                   "fitted order in the legend), time vs error with the Pareto front, sliced-W2 "
                                   "vs NFE when present; and rewrite table.md.")
    p.add_argument("results", help="a results.jsonl file written by `flowode bench` (or its folder)")
    p.add_argument("--out", metavar="DIR", help="folder for the figures (default: the results file's folder)")
    p.add_argument("--formats", metavar="LIST", default="png", help="png, pdf, svg (default png)")
    p.add_argument("--metric", default="rmse", choices=["rmse", "max_err", "sw"],
                   help="error measure of the error-vs-NFE figure (default rmse)")
    p.add_argument("--problem", metavar="LIST", help="only these problems")
    return p


def run(args: argparse.Namespace) -> int:
    from ..bench import markdown_table, read_results
    from ..plot import plot_error_vs_nfe, plot_results, plot_time_vs_error

    path = Path(args.results)
    if path.is_dir():
        path = path / "results.jsonl"
    if not path.exists():
        raise ValueError(f"results file {str(path)!r} does not exist.")
    records, skipped = read_results(path)
    if skipped:
        print(f"flowode plot: skipped {len(skipped)} unreadable line(s) of {str(path)!r} (line "
              f"{', '.join(map(str, skipped[:5]))}{', ...' if len(skipped) > 5 else ''}).", file=sys.stderr)
    if not records and skipped:
        raise ValueError(f"results file {str(path)!r} holds no readable records ({len(skipped)} line(s) are not "
                         "JSON objects); give a results.jsonl written by `flowode bench`.")
    if args.problem:
        keep = set(csv(args.problem) or [])
        records = [r for r in records if r.get("problem") in keep]
    if not records:
        raise ValueError(f"no records in {str(path)!r}" + (" for those problems." if args.problem else "."))
    out = out_dir(args.out) if args.out else path.parent
    formats = csv(args.formats) or ["png"]
    if args.metric == "rmse":
        paths = plot_results(records, out, formats)
    else:
        ok = [r for r in records if not r.get("error")]
        paths = [plot_error_vs_nfe(ok, out / f"{args.metric}_vs_nfe.{f}", metric=args.metric) for f in formats]
        paths += [plot_time_vs_error(ok, out / f"time_vs_{args.metric}.{f}", metric=args.metric) for f in formats]
    (out / "table.md").write_text(markdown_table(records))
    print(f"table: {out / 'table.md'}")
    for p in paths:
        print(f"figure: {p}")
    return 0
