"""``flowode solvers``: list every registered solver with its order, NFE per step and source."""

from __future__ import annotations

import argparse
import math


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    return sub.add_parser("solvers", help="list registered solvers (order, NFE per step, source)",
                          description="List every registered solver with its order, NFE per step and source.")


def run(args: argparse.Namespace) -> int:
    from ..solvers import SOLVERS

    rows = []
    for name in sorted(SOLVERS):
        cls = SOLVERS[name]
        nfe = "adaptive" if cls.adaptive or math.isnan(cls.nfe_per_step) else f"{cls.nfe_per_step:g}"
        rows.append((name, str(cls.order), nfe, cls.source))
    widths = [max(len(r[i]) for r in rows + [("solver", "order", "NFE/step", "")]) for i in range(3)]
    print(f"{'solver':<{widths[0]}}  {'order':>{widths[1]}}  {'NFE/step':>{widths[2]}}  source")
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}")
    return 0
