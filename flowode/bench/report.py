"""Tables of results: means over seeds (:func:`aggregate`) and Markdown (:func:`markdown_table`)."""

from __future__ import annotations

import json
import math
from typing import Any, Optional, Sequence

__all__ = ["aggregate", "markdown_table"]


def _fmt(v: Any, spec: str = ".3e") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, spec)


def _mean(vals: list[float]) -> Optional[float]:
    vals = [v for v in vals if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def aggregate(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Average successful records over seeds: one row per (problem, label, nfe budget / tolerance)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("error"):
            continue
        k = (r["problem"], r.get("label", r["solver"]), r.get("nfe_budget"),
             json.dumps(r.get("options", {}), sort_keys=True))
        groups.setdefault(k, []).append(r)
    rows = []
    for rs in groups.values():
        row = dict(rs[0])
        for f in ("rmse", "max_err", "sw", "sw_ref", "seconds", "peak_mem_bytes", "nfe"):
            row[f] = _mean([r.get(f) for r in rs if r.get(f) is not None])  # type: ignore[misc]
        row["seeds"] = len(rs)
        rmses = [r["rmse"] for r in rs if r.get("rmse") is not None]
        row["rmse_std"] = (sum((v - row["rmse"]) ** 2 for v in rmses) / (len(rmses) - 1)) ** 0.5 if len(rmses) > 1 \
            else None
        rows.append(row)
    rows.sort(key=lambda r: (r["problem"], r.get("label", ""), r.get("nfe") or 0))
    return rows


def markdown_table(records: Sequence[dict[str, Any]], missing: Sequence[str] = ()) -> str:
    """Markdown: per problem, an RMSE-by-budget pivot, then the full table (means over seeds)."""
    rows = aggregate(records)
    out: list[str] = []
    problems = list(dict.fromkeys(r["problem"] for r in rows))
    for prob in problems:
        pr = [r for r in rows if r["problem"] == prob]
        budgets = sorted({r["nfe_budget"] for r in pr if r.get("nfe_budget") is not None})
        labels = list(dict.fromkeys(r["label"] for r in pr))
        out.append(f"### {prob}\n")
        ref_kinds = sorted({r.get("reference", "") for r in pr})
        out.append(f"RMSE against the exact flow ({', '.join(ref_kinds)}), mean over seeds; "
                   "the exact NFE used is in brackets.\n")
        if budgets:
            out.append("| solver | " + " | ".join(f"NFE {b}" for b in budgets) + " |")
            out.append("|---|" + "---|" * len(budgets))
            for lab in labels:
                cells = []
                for b in budgets:
                    hit = [r for r in pr if r["label"] == lab and r.get("nfe_budget") == b]
                    cells.append(f"{_fmt(hit[0]['rmse'])} ({_fmt(hit[0]['nfe'], '.0f')})" if hit else "-")
                if any(c != "-" for c in cells):
                    out.append(f"| {lab} | " + " | ".join(cells) + " |")
            out.append("")
        out.append("| solver | spacing | budget | NFE | steps | RMSE | max err | SW to data (floor) | seconds | "
                   "peak MiB | seeds |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in pr:
            rm = _fmt(r["rmse"]) + (f" ± {_fmt(r['rmse_std'], '.1e')}" if r.get("rmse_std") else "")
            sw = f"{_fmt(r.get('sw'), '.4f')} ({_fmt(r.get('sw_ref'), '.4f')})" if r.get("sw") is not None else "-"
            budget = r["nfe_budget"] if r.get("nfe_budget") is not None else (
                f"rtol {r['options'].get('rtol')}" if "rtol" in r.get("options", {}) else "adaptive")
            mem = _fmt(r["peak_mem_bytes"] / 2**20, ".1f") if r.get("peak_mem_bytes") is not None else "-"
            out.append(f"| {r['label']} | {r.get('spacing', '-')} | {budget} | {_fmt(r.get('nfe'), '.0f')} | "
                       f"{r.get('steps', '-')} | {rm} | {_fmt(r.get('max_err'))} | {sw} | "
                       f"{_fmt(r.get('seconds'), '.3f')} | {mem} | {r['seeds']} |")
        out.append("")
    failed = [r for r in records if r.get("error")]
    if failed:
        out.append("Failed cells:\n")
        out += [f"- {r['problem']} {r.get('label', r['solver'])} NFE={r.get('nfe_budget')}: {r['error']}"
                for r in failed]
        out.append("")
    if missing:
        out.append("Not run (not registered in this build):\n")
        out += [f"- {m}" for m in missing]
        out.append("")
    methods = sorted({str(r["mem_method"]) for r in records if r.get("mem_method")})
    if methods:
        out.append(f"Peak memory measured by: {', '.join(methods)} (see flowode.bench.MemoryMeter). "
                   "SW = sliced 2-Wasserstein distance to fresh data samples; the bracket is the reference "
                   "flow's own distance (the finite-sample floor).")
    return "\n".join(out).rstrip() + "\n"
