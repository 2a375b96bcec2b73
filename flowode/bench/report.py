"""Tables of results: means over seeds (:func:`aggregate`), Markdown (:func:`markdown_table`), and
flowode against peer samplers (:func:`headline_table`, :func:`method_table`, :func:`failed_methods`)."""

from __future__ import annotations

import json
import math
from typing import Any, Optional, Sequence

from .peers import is_peer
from .spec import OPTIMIZED

__all__ = ["aggregate", "markdown_table", "full_range", "headline_table", "method_table", "failed_methods"]


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


# ------------------------------------------------------------------------- flowode against peers
def _library(r: dict[str, Any]) -> str:
    solver = str(r["solver"])
    return solver.split(":", 1)[0] if is_peer(solver) else "flowode"


def _method(r: dict[str, Any]) -> str:
    """The solver (after ``library:`` for a peer) with its options, less an adaptive tolerance."""
    name = str(r["solver"]).split(":", 1)[-1]
    opts = {k: v for k, v in (r.get("options") or {}).items()
            if not (r.get("nfe_budget") is None and k in ("rtol", "atol"))}
    return name + ("[" + ",".join(f"{k}={v}" for k, v in sorted(opts.items())) + "]" if opts else "")


def _grid(r: dict[str, Any]) -> str:
    """``default``, ``spacing:<name>``, ``optimized`` or ``tol:<rtol>`` (flowode); a peer's spacing."""
    sp = r.get("spacing_requested")
    if _library(r) != "flowode":
        return str(sp or "default")
    opts = r.get("options") or {}
    if r.get("nfe_budget") is None:
        return f"tol:{opts['rtol']:g}" if "rtol" in opts else "adaptive"
    return "default" if sp is None else str(sp) if sp == OPTIMIZED else f"spacing:{sp}"


def _ok(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if not r.get("error") and isinstance(r.get("rmse"), float) and math.isfinite(r["rmse"])]


def full_range(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records that integrate the whole flow: from the problem's largest start level among
    ``records`` (``sigma_max``) to ``sigma = 0``. Runs that start lower (``leading`` spacings)
    or stop at ``sigma_min`` solve a shorter problem."""
    top: dict[str, float] = {}
    for r in records:
        if r.get("sigma_from") is not None:
            top[r["problem"]] = max(top.get(r["problem"], 0.0), float(r["sigma_from"]))
    return [r for r in records if r.get("sigma_from") is not None and r.get("sigma_to") == 0.0
            and float(r["sigma_from"]) >= top[r["problem"]] * (1 - 1e-9)]


def _best(rows: Sequence[dict[str, Any]], nfe: int, flowode: bool) -> Optional[dict[str, Any]]:
    ok = [r for r in rows if (_library(r) == "flowode") == flowode and r["nfe"] <= nfe
          and r.get("nfe_budget") in (nfe, None)]
    return min(ok, key=lambda r: r["rmse"]) if ok else None


def _label(r: dict[str, Any]) -> str:
    lib = "" if _library(r) == "flowode" else _library(r) + " "
    return f"{lib}{_method(r)} [{_grid(r)}]"


def headline_table(records: Sequence[dict[str, Any]], budgets: Sequence[int]) -> str:
    """Markdown: per problem and NFE budget, the best flowode row and the best peer row among the
    :func:`full_range` runs (adaptive solvers at their actual NFE when it is within the budget),
    and the ratio of their RMSEs."""
    rows = full_range(_ok(records))
    out = ["| problem | NFE | best flowode (solver [grid], NFE) | RMSE | best peer (library solver [grid], NFE) "
           "| RMSE | ratio flowode/peer |", "|---|---|---|---|---|---|---|"]
    for prob in sorted({r["problem"] for r in rows}):
        pr = [r for r in rows if r["problem"] == prob]
        for n in budgets:
            f, p = _best(pr, n, True), _best(pr, n, False)
            fs = f"{_label(f)}, {f['nfe']} | {f['rmse']:.3e}" if f else "- | -"
            ps = f"{_label(p)}, {p['nfe']} | {p['rmse']:.3e}" if p else "- | -"
            ratio = f"{f['rmse'] / p['rmse']:.3f}" if f and p and p["rmse"] > 0 else "-"
            out.append(f"| {prob} | {n} | {fs} | {ps} | {ratio} |")
    return "\n".join(out) + "\n"


def _peer_grid_order(r: dict[str, Any]) -> tuple[int, str]:
    order = ["default", "karras", "trailing"]
    g = _grid(r)
    return (order.index(g) if g in order else len(order), g)


def method_table(records: Sequence[dict[str, Any]], budgets: Sequence[int]) -> str:
    """Markdown: per problem, one row per (library, method) and one column per NFE budget.

    flowode: ``default grid / best full-range built-in spacing (name) / optimised grid``; adaptive
    solvers: the best tolerance within the budget and its NFE; peers: every grid they ran
    (``default``, ``karras``, ``trailing``, ...), ``†`` marking a run that is not full-range."""
    ok = _ok(records)
    full = {id(r) for r in full_range(ok)}
    lines = []
    for prob in sorted({r["problem"] for r in ok}):
        lines += [f"\n**{prob}** (RMSE; flowode: default grid / best full-range built-in spacing / optimised "
                  "grid; peers: each grid they ran, in the order default, karras, trailing; † = the run does "
                  "not span sigma_max -> 0 (starts lower or ends at sigma_min), not eligible for the headline "
                  "table)\n",
                  "| library | method | " + " | ".join(f"NFE {n}" for n in budgets) + " |",
                  "|---|---|" + "---|" * len(budgets)]
        pr = [r for r in ok if r["problem"] == prob]
        methods = sorted({(_library(r), _method(r)) for r in pr}, key=lambda t: (t[0] != "flowode", t))
        for lib, meth in methods:
            mine = [r for r in pr if _library(r) == lib and _method(r) == meth]
            cells = []
            for n in budgets:
                rr = [r for r in mine if r.get("nfe_budget") == n]
                if not rr:
                    ad = [r for r in mine if r.get("nfe_budget") is None and r["nfe"] <= n]
                    ba = min(ad, key=lambda r: r["rmse"]) if ad else None
                    cells.append(f"{ba['rmse']:.2e} (nfe {ba['nfe']})" if ba else "-")
                elif lib == "flowode":
                    d = [r for r in rr if _grid(r) == "default"]
                    b = [r for r in rr if _grid(r).startswith("spacing:") and id(r) in full]
                    o = [r for r in rr if _grid(r) == "optimized"]
                    bb = min(b, key=lambda r: r["rmse"]) if b else None
                    cells.append(" / ".join([f"{d[0]['rmse']:.2e}" if d else "-",
                                             f"{bb['rmse']:.2e} ({_grid(bb)[8:]})" if bb else "-",
                                             f"{o[0]['rmse']:.2e}" if o else "-"]))
                else:
                    cells.append(" / ".join(f"{r['rmse']:.2e}" + ("" if id(r) in full else "†")
                                            for r in sorted(rr, key=_peer_grid_order)))
            lines.append(f"| {lib} | {meth} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def failed_methods(records: Sequence[dict[str, Any]]) -> str:
    """Markdown list: per (library, method), the first error of a budget at which none of its grids
    ran (a grid that failed while another one ran is not listed)."""
    ran = {(r["problem"], _library(r), _method(r), r.get("nfe_budget")) for r in _ok(records)}
    bad: dict[tuple[str, str], str] = {}
    for r in records:
        if r.get("error") and (r["problem"], _library(r), _method(r), r.get("nfe_budget")) not in ran:
            bad.setdefault((_library(r), _method(r)), str(r["error"]))
    return "\n".join(f"- {lib} `{m}`: {e[:200]}" for (lib, m), e in sorted(bad.items())) or "- none"
